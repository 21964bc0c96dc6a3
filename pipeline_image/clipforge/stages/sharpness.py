"""Sharpness filter: blurry clips (out of focus, smeared by motion) are set aside.

A frame's sharpness is the variance of its Laplacian (the 4-neighbour kernel) over the luma plane,
the usual blur measure: edges make it large, blur flattens them. Frames are sampled at
`sharpnessFilter.fps` from transcode's decode, scaled to a short side of at most
ANALYSIS_SHORT_SIDE pixels (area filter), so that one threshold holds at every source
resolution. The clip's score is the mean over its frames; a clip scoring below `threshold` is
moved to filtered_clips/ with `filtered_by = "sharpness"`. Scores are in `scores.sharpness` of the
clip's metadata. A clip an earlier filter already moved aside is not scored.
"""

from __future__ import annotations

import logging

import numpy as np

from clipforge.failures import raise_if_environmental
from clipforge.frames import FrameRequest, fit_short_side, frames_for, sample_indices
from clipforge.spec import VideoCurationJobSpec
from clipforge.stages.base import Stage
from clipforge.tasks import Clip, VideoTask

log = logging.getLogger(__name__)

ANALYSIS_SHORT_SIDE = 360


def laplacian_variance(luma: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of a [H, W] luma plane, over its interior pixels."""
    plane = luma.astype(np.float32)
    laplacian = (plane[:-2, 1:-1] + plane[2:, 1:-1] + plane[1:-1, :-2] + plane[1:-1, 2:]
                 - 4 * plane[1:-1, 1:-1])
    return float(laplacian.var(dtype=np.float64))


class SharpnessStage(Stage):
    name = "sharpness"

    @classmethod
    def frame_request(cls, spec: VideoCurationJobSpec) -> FrameRequest | None:
        fps = spec.sharpness_filter.fps
        return FrameRequest(
            cls.name,
            lambda n, rate, w, h: (sample_indices(n, rate, fps), fit_short_side(w, h, ANALYSIS_SHORT_SIDE)),
            pixel_format="gray", interpolation="AREA",
        )

    @classmethod
    def missing_outputs(cls, spec: VideoCurationJobSpec, clip: Clip) -> list[str]:
        # Asked of the clips it scores: those no earlier filter moved aside.
        if clip.filtered_by in (None, cls.name) and cls.name not in clip.scores:
            return [f"scores.{cls.name}"]
        return []

    def process(self, task: VideoTask) -> list[VideoTask]:
        threshold = self.spec.sharpness_filter.threshold
        for clip in task.clips:
            if not clip.encoded or (clip.filtered_by is not None and clip.filtered_by != self.name):
                clip.frames.pop(self.name, None)
                continue  # nothing to score, or an earlier filter already moved it aside
            clip.errors.pop(self.name, None)
            try:
                frames = frames_for(clip, self.name).frames
                clip.scores[self.name] = float(np.mean([laplacian_variance(f) for f in frames]))
                blurry = clip.scores[self.name] < threshold
            except Exception as exc:  # noqa: BLE001 - one clip's failure must not stop the others
                raise_if_environmental(exc)
                log.warning("sharpness scoring of clip %s failed: %s", clip.uuid, exc)
                clip.errors[self.name] = f"{type(exc).__name__}: {exc}"
                clip.scores.pop(self.name, None)
                blurry = True  # as the other filters: a clip that cannot be scored does not pass
            clip.filtered_by = self.name if blurry else None
            clip.frames.pop(self.name, None)
        return [task]
