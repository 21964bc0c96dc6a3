"""An animated WebP per clip: a few frames a second, small, looping forever.

The frames come from transcode's decode (frames.py): for each preview tick k / fps seconds, the
clip's first frame at or after it, already scaled to the preview height (area filter). They go
straight to the libwebp_anim encoder, each shown from its own time in the clip.
"""

from __future__ import annotations

import logging
import math

import av
import numpy as np

from clipforge.failures import raise_if_environmental
from clipforge.frames import FrameRequest, SampledFrames
from clipforge.spec import PreviewSpec, VideoCurationJobSpec
from clipforge.stages.base import Stage
from clipforge.tasks import Clip, VideoTask
from clipforge.webp import encode_animated_webp, preview_size

log = logging.getLogger(__name__)


def preview_indices(num_frames: int, fps: float, preview_fps: float) -> list[int]:
    """The clip's first frame at or after each tick k / preview_fps; a clip slower than the
    preview rate gives each of its frames once (ticks are skipped, not repeated)."""
    indices: list[int] = []
    for tick in range(math.ceil(num_frames / fps * preview_fps) + 1):
        index = math.ceil(tick * fps / preview_fps - 1e-6)
        if index >= num_frames:
            break
        if not indices or index > indices[-1]:
            indices.append(index)
    return indices


def make_preview(sampled: SampledFrames, fps: float, spec: PreviewSpec) -> bytes:
    """The preview of one clip at `fps` from the preview request's frames."""
    frames = (av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="yuv420p") for f in sampled.frames)
    return encode_animated_webp(frames, (round(i / fps * 1000) for i in sampled.indices), spec.quality)


class PreviewStage(Stage):
    name = "preview"

    @classmethod
    def frame_request(cls, spec: VideoCurationJobSpec) -> FrameRequest | None:
        previews = spec.previews

        def plan(num_frames: int, fps: float, width: int, height: int) -> tuple[list[int], tuple[int, int]]:
            return preview_indices(num_frames, fps, previews.fps), preview_size(width, height, previews.height)

        return FrameRequest(cls.name, plan, pixel_format="yuv420p", interpolation="AREA")

    @classmethod
    def missing_outputs(cls, spec: VideoCurationJobSpec, clip: Clip) -> list[str]:
        return ["preview"] if clip.preview is None else []

    def process(self, task: VideoTask) -> list[VideoTask]:
        spec = self.spec.previews
        if not spec.enabled:
            return [task]
        for clip in task.clips:
            sampled = clip.frames.pop(self.name, None)
            if not clip.encoded:
                continue
            clip.errors.pop(self.name, None)
            try:
                if sampled is None:
                    raise ValueError("transcode handed over no frames for the preview")
                clip.preview = make_preview(sampled, clip.framerate, spec)
            except Exception as exc:  # noqa: BLE001 - one clip's failure must not stop the others
                raise_if_environmental(exc)
                log.warning("preview of clip %s failed: %s", clip.uuid, exc)
                clip.preview = None
                clip.errors[self.name] = f"{type(exc).__name__}: {exc}"
        return [task]
