"""Fixtures for the clip stages' tests (transcode, motion, preview): a small source, tasks, decoding."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from clipforge.samples import SampleVideo, Segment, write_samples, write_video
from clipforge.spec import VideoCurationJobSpec
from clipforge.tasks import Clip, VideoMeta, VideoTask, clip_uuid

# 320x180 at 24 fps: 2 s moving, 2 s static, 2 s moving; keyframes every 48 frames (0, 48, 96).
STAGE_SAMPLE = SampleVideo(
    "stage_sample", 320, 180, 24, (Segment(2, True, 21), Segment(2, False, 22), Segment(2, True, 23))
)
STAGE_SAMPLE_GOP = 48


@pytest.fixture(scope="session")
def samples_dir(tmp_path_factory) -> Path:
    """tests/support/jobs.py's small_samples(), written once for the whole-job tests."""
    from support.jobs import small_samples

    directory = tmp_path_factory.mktemp("samples")
    write_samples(directory, small_samples())
    return directory


@pytest.fixture(scope="session")
def stage_source(tmp_path_factory) -> Path:
    return write_video(STAGE_SAMPLE, tmp_path_factory.mktemp("stage_source") / "source.mp4", gop=STAGE_SAMPLE_GOP)


@pytest.fixture(scope="session")
def stage_source_frames(stage_source) -> list[np.ndarray]:
    """The source's decoded frames (RGB), index = frame number: what clips are compared against."""
    with av.open(str(stage_source)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def probe(path: Path) -> VideoMeta:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        rate = Fraction(stream.average_rate)
        frames = stream.frames or sum(1 for _ in container.decode(stream))
        return VideoMeta(
            container="mp4", size_bytes=path.stat().st_size, duration_s=float(frames / rate),
            width=ctx.width, height=ctx.height, framerate=float(rate), num_frames=frames,
            video_codec=ctx.name, pix_fmt=ctx.format.name if ctx.format else "", bit_rate=ctx.bit_rate,
            has_audio=bool(container.streams.audio),
        )


@pytest.fixture(scope="session")
def make_task():
    """make_task(source path, [(start, end), ...]) -> a chunk's VideoTask as the split stage makes it."""

    def make(path: Path, spans: list[tuple[int, int]], meta: VideoMeta | None = None) -> VideoTask:
        meta = meta or probe(path)
        clips = [
            Clip(clip_uuid(str(path), s, e), str(path), s, e, s / meta.framerate, e / meta.framerate)
            for s, e in spans
        ]
        return VideoTask(
            source=str(path), relative_path=path.name, meta=meta, clips=clips,
            num_clips_total=len(clips), split_algorithm="fixed-stride",
        )

    return make


@pytest.fixture(scope="session")
def make_spec():
    """make_spec(transcoding={...}, motionFilter={...}, ...) -> a job spec (camelCase like a manifest)."""

    def make(**sections) -> VideoCurationJobSpec:
        return VideoCurationJobSpec.model_validate(
            {"input": {"uri": "/in"}, "output": {"uri": "/out"}, **sections}
        )

    return make


def decode(data: bytes) -> tuple[list[np.ndarray], str, int, int]:
    """(RGB frames, codec name, width, height) of encoded clip bytes."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return frames, stream.codec_context.name, stream.codec_context.width, stream.codec_context.height


@pytest.fixture(scope="session")
def decode_clip():
    return decode


@pytest.fixture(scope="session")
def stage_clips(stage_source, make_task, make_spec):
    """The sample's three scenes as transcoded clips (default encoder settings, faster preset):
    [0, 48) moving, [48, 96) static, [96, 144) moving. Tests copy the task before changing it."""
    from clipforge.stages import pipeline_stages
    from clipforge.stages.transcode import TranscodeStage

    task = make_task(stage_source, [(0, 48), (48, 96), (96, 144)])
    spec = make_spec(transcoding={"preset": "veryfast"})
    stage = TranscodeStage(spec, pipeline_stages(spec))
    stage.setup()
    stage.run(task)
    assert not task.errors and all(c.encoded for c in task.clips)
    return task


@pytest.fixture(scope="session")
def transcoded():
    """transcoded(spec, task) -> a copy of `task` transcoded under `spec`: its clips carry the frames
    the spec's later stages ask for, as in a job (each stage looks only at those)."""
    import copy

    from clipforge.stages import pipeline_stages
    from clipforge.stages.transcode import TranscodeStage

    def run(spec: VideoCurationJobSpec, task: VideoTask) -> VideoTask:
        task = copy.deepcopy(task)
        assert TranscodeStage(spec, pipeline_stages(spec)).run(task) == [task]
        assert not task.errors and all(c.encoded for c in task.clips)
        return task

    return run
