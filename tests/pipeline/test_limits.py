"""Limits that hold: probe rejects inputs over the pixel and duration limits, chunks follow their
decoded bytes, and each stage's time limit (split's growing with the video's length).

The time limit stopping a worker stuck in native code, holding the GIL, is in test_job_failures.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from clipforge.stages import pipeline_stages
from clipforge.stages.probe import ProbeStage
from clipforge.stages.split import SplitStage, chunk_clips
from clipforge.stages.transcode import TranscodeStage
from clipforge.tasks import Clip, VideoMeta, VideoTask
from support.jobs import FIVE_SECOND_CLIPS, forget_resume_state, load_json, run_in_process, sample_copies


def run(tmp_path: Path, inputs: Path, out: Path, **execution) -> int:
    return run_in_process(tmp_path, inputs, out, splitting=FIVE_SECOND_CLIPS, embeddings={"enabled": False},
                          execution={"executor": "local", **execution})


@pytest.fixture
def one_video(tmp_path, samples_dir) -> Path:
    """moving_then_static: 320x180, 24 fps, 10 s, two 5 s clips (120 frames each)."""
    return sample_copies(samples_dir, tmp_path / "inputs", "video.mp4")


@pytest.mark.parametrize(("limits", "reason"), [
    ({"maxPixels": 320 * 180 - 1}, "320x180 is 57,600 pixels a frame, over execution.limits.maxPixels (57,599)"),
    ({"maxDurationSeconds": 9.5}, "10 s long, over execution.limits.maxDurationSeconds (9.5 s)"),
])
def test_probe_rejects_a_video_over_a_limit_naming_it(tmp_path, one_video, limits, reason):
    out = tmp_path / "out"
    assert run(tmp_path, one_video, out, limits=limits) == 1  # its only video failed
    record = load_json(out / "processed_videos" / "video.mp4.json")
    # The input's fault: final, as a corrupt file is.
    assert record["errors"] == {"probe": f"ProbeError: {reason}"} and record["retryable"] is False
    assert not list((out / "metas").rglob("*.json"))


def test_a_video_within_the_limits_passes(tmp_path, one_video):
    out = tmp_path / "out"
    assert run(tmp_path, one_video, out, limits={"maxPixels": 320 * 180, "maxDurationSeconds": 10}) == 0


def clips(count: int, frames: int) -> list[Clip]:
    return [Clip(f"c{i}", "v.mp4", i * frames, (i + 1) * frames, 0.0, 0.0) for i in range(count)]


def meta(width: int, height: int) -> VideoMeta:
    return VideoMeta("mp4", 0, 0.0, width, height, 24.0, 0, "h264", "yuv420p", None, False)


def test_chunks_are_sized_by_decoded_bytes(make_spec):
    execution = make_spec().execution  # clipsPerChunk 16, chunkDecodedMegabytes 12288
    # 10 s at 24 fps: 1080p, 712 MiB decoded a clip, keeps 16 clips a chunk; 4K, 2,848 MiB, 4.
    assert [len(g) for g in chunk_clips(clips(20, 240), meta(1920, 1080), execution)] == [16, 4]
    assert [len(g) for g in chunk_clips(clips(10, 240), meta(3840, 2160), execution)] == [4, 4, 2]
    # A 60 s 4K clip is over the budget alone: one a chunk.
    assert [len(g) for g in chunk_clips(clips(3, 1440), meta(3840, 2160), execution)] == [1, 1, 1]
    assert chunk_clips([], meta(3840, 2160), execution) == [[]]


def test_a_rerun_redoes_a_recorded_chunk_whose_clips_moved(tmp_path, one_video):
    """An interrupted run chunked by other budgets (a chunk of each 5 s clip, 9.9 MiB decoded each)
    left chunk 0 with one clip; now chunk 0 holds both: it is redone, not resumed as one clip."""
    out = tmp_path / "out"
    assert run(tmp_path, one_video, out, chunkDecodedMegabytes=10) == 0
    assert load_json(out / "processed_videos" / "video.mp4.json")["num_chunks"] == 2
    (out / "processed_videos" / "video.mp4.json").unlink()  # interrupted before the video's record
    forget_resume_state(out)
    assert run(tmp_path, one_video, out, chunkDecodedMegabytes=20) == 0
    record = load_json(out / "processed_videos" / "video.mp4.json")
    assert record["num_chunks"] == 1 and record["num_clips_passed"] + record["num_clips_filtered"] == 2
    # Resumed, chunk 0 would have claimed the second clip, and removing the stale chunk 1 deleted it.
    assert len(list((out / "metas" / "v0").glob("*.json"))) == 2
    assert sorted(p.name for p in (out / "processed_clip_chunks").rglob("*.json")) == ["video.mp4_0.json"]


def test_each_stage_has_its_time_limit_and_split_s_grows_with_the_video(make_spec):
    spec = make_spec(execution={"failures": {"taskTimeoutSeconds": 600},
                                "stages": {"transcode": {"timeoutSeconds": 100, "timeoutSecondsPerMinute": 10}}})
    video = VideoTask("v.mp4", "v.mp4", meta=meta(1920, 1080))
    video.meta.duration_s = 1800.0
    chunk = VideoTask("v.mp4", "v.mp4", meta=video.meta, clips=[Clip("c", "v.mp4", 0, 240, 0.0, 120.0)])
    stages = pipeline_stages(spec)
    assert ProbeStage(spec, stages).time_limit(VideoTask("v.mp4", "v.mp4")) == (
        600, "execution.failures.taskTimeoutSeconds")
    assert SplitStage(spec, stages).time_limit(video) == (600 + 60 * 30, (
        "execution.failures.taskTimeoutSeconds + 60 s x 30.0 min of video"
        " (execution.stages.split.timeoutSecondsPerMinute)"))
    # After split a task holds its clips' minutes, not the video's.
    assert TranscodeStage(spec, stages).time_limit(chunk) == (100 + 10 * 2, (
        "execution.stages.transcode.timeoutSeconds + 10 s x 2.0 min of video"
        " (execution.stages.transcode.timeoutSecondsPerMinute)"))
