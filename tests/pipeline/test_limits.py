"""Each stage's time limit, split's growing with the video's length.

The time limit stopping a worker stuck in native code, holding the GIL, is in test_job_failures.py.
"""

from __future__ import annotations

from clipforge.stages import pipeline_stages
from clipforge.stages.probe import ProbeStage
from clipforge.stages.split import SplitStage
from clipforge.stages.transcode import TranscodeStage
from clipforge.tasks import Clip, VideoMeta, VideoTask


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
