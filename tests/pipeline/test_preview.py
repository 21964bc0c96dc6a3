"""PreviewStage: an animated, endlessly looping WebP per clip at the spec's rate and height."""

from __future__ import annotations

import copy
import io
import struct

import av
import numpy as np
from support.jobs import run_stage
from PIL import Image

from clipforge.stages.preview import PreviewStage, preview_indices, preview_size
from clipforge.stages.transcode import TranscodeStage


def riff_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(fourcc, payload) of a WebP file's top-level chunks."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8
    chunks, pos = [], 12
    while pos < len(data):
        fourcc, size = data[pos: pos + 4], struct.unpack("<I", data[pos + 4: pos + 8])[0]
        chunks.append((fourcc, data[pos + 8: pos + 8 + size]))
        pos += 8 + size + (size & 1)
    return chunks


def webp_animation(data: bytes) -> dict:
    """Canvas size, loop count and frame durations (ms) read from the container itself."""
    chunks = riff_chunks(data)
    vp8x = next(p for f, p in chunks if f == b"VP8X")
    anim = next(p for f, p in chunks if f == b"ANIM")
    frames = [p for f, p in chunks if f == b"ANMF"]
    return {
        "animated": bool(vp8x[0] & 0x02),
        "size": (int.from_bytes(vp8x[4:7], "little") + 1, int.from_bytes(vp8x[7:10], "little") + 1),
        "loop": struct.unpack("<H", anim[4:6])[0],
        "durations": [int.from_bytes(p[12:15], "little") for p in frames],
    }


def run_preview(spec, task):  # noqa: ANN001
    return run_stage(PreviewStage, spec, copy.deepcopy(task))


def previews_of_scenes(spec, stage_source, make_task):  # noqa: ANN001
    """Transcode (which samples the preview's frames) then preview, of the sample's three scenes."""
    task = run_stage(TranscodeStage, spec, make_task(stage_source, [(0, 48), (48, 96), (96, 144)]))
    return run_preview(spec, task)


def test_animated_webp_at_the_spec_rate_and_height(stage_source, stage_source_frames, make_task, make_spec):
    spec = make_spec(transcoding={"preset": "ultrafast"}, previews={"fps": 2, "height": 120, "quality": 60})
    task = previews_of_scenes(spec, stage_source, make_task)
    moving = task.clips[0]
    info = webp_animation(moving.preview)
    # 2 s at 2 fps: frames at 0, 0.5, 1 and 1.5 s, looping forever.
    assert info == {"animated": True, "size": (214, 120), "loop": 0, "durations": [500] * 4}

    with Image.open(io.BytesIO(moving.preview)) as image:
        assert image.format == "WEBP" and image.is_animated and image.n_frames == 4
        assert image.size == (214, 120)
        for n, source_index in enumerate((0, 12, 24, 36)):
            image.seek(n)
            got = np.asarray(image.convert("RGB"), dtype=np.int16)
            expected = av.VideoFrame.from_ndarray(stage_source_frames[source_index], format="rgb24").reformat(214, 120)
            assert np.abs(got - expected.to_ndarray(format="rgb24")).mean() < 12
    # Every clip with bytes has its preview; the static one is one picture held (WebP merges repeats).
    assert all(webp_animation(c.preview)["loop"] == 0 for c in task.clips)
    assert sum(webp_animation(task.clips[1].preview)["durations"]) == 2000


def test_default_rate_is_one_frame_a_second(stage_clips, make_spec):
    task = run_preview(make_spec(), stage_clips)
    info = webp_animation(task.clips[2].preview)
    assert info["durations"] == [1000, 1000] and info["size"] == (426, 240)


def test_preview_frames_are_the_first_at_or_after_each_tick():
    assert preview_indices(48, 24.0, 2.0) == [0, 12, 24, 36]
    assert preview_indices(50, 29.97, 1.0) == [0, 30]
    assert preview_indices(5, 2.0, 4.0) == [0, 1, 2, 3, 4]  # slower than the preview: each frame once
    assert preview_indices(0, 24.0, 1.0) == []


def test_sizes_are_even_and_follow_the_aspect_ratio():
    assert preview_size(320, 180, 120) == (214, 120)
    assert preview_size(180, 320, 120) == (68, 120)
    assert preview_size(1920, 1080, 240) == (426, 240)


def test_disabled_previews_and_clips_without_frames(stage_source, make_task, make_spec):
    spec = make_spec(transcoding={"preset": "ultrafast"}, previews={"enabled": False})
    task = previews_of_scenes(spec, stage_source, make_task)
    assert all(c.preview is None and "preview" not in c.frames for c in task.clips)

    spec = make_spec(transcoding={"preset": "ultrafast"}, previews={"height": 64})
    broken = run_stage(TranscodeStage, spec, make_task(stage_source, [(0, 48), (48, 96), (96, 144)]))
    broken.clips[0].encoded = None
    del broken.clips[1].frames["preview"]
    task = run_preview(spec, broken)
    skipped, without_frames, good = task.clips
    assert skipped.preview is None and skipped.errors == {}
    assert without_frames.preview is None and "no frames" in without_frames.errors["preview"]
    assert good.errors == {} and webp_animation(good.preview)["size"] == (114, 64)
