"""Limits that hold: probe rejects inputs over the pixel and duration limits, and each stage's
time limit (split's growing with the video's length).

The time limit stopping a worker stuck in native code, holding the GIL, is in test_job_failures.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from clipforge.cli import main
from clipforge.stages import pipeline_stages
from clipforge.stages.probe import ProbeStage
from clipforge.stages.split import SplitStage
from clipforge.stages.transcode import TranscodeStage
from clipforge.tasks import Clip, VideoMeta, VideoTask
from support.jobs import FIVE_SECOND_CLIPS, load_json, manifest, write_manifest


def run(tmp_path: Path, inputs: Path, out: Path, **execution) -> int:
    spec = {"splitting": FIVE_SECOND_CLIPS, "embeddings": {"enabled": False},
            "execution": {"executor": "local", **execution}}
    return main(["run", str(write_manifest(tmp_path / "job.yaml", manifest(str(inputs), str(out), **spec))),
                 "--no-progress"])


@pytest.fixture
def one_video(tmp_path, samples_dir) -> Path:
    """moving_then_static: 320x180, 24 fps, 10 s, two 5 s clips (120 frames each)."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(samples_dir / "moving_then_static.mp4", inputs / "video.mp4")
    return inputs


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


def meta(width: int, height: int) -> VideoMeta:
    return VideoMeta("mp4", 0, 0.0, width, height, 24.0, 0, "h264", "yuv420p", None, False)


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
