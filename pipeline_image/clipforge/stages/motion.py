"""Motion scores from the encoder's own motion vectors, as NeMo Curator computes them.

No optical flow is run: the H.264/VP9/AV1 decoder exports the motion vectors it already has
(codec flag `+export_mvs`), and each sampled frame's vectors are painted into a dense flow field
over their blocks. Two scores come out of the flow magnitudes, each normalised by the frame's
width + height so that they do not depend on resolution:

- `motion_score_global_mean`: the mean magnitude over every pixel of every sampled frame;
- `motion_score_per_patch_min`: the per-pixel mean magnitude over the sampled frames, sampled
  on a 256-pixel grid, then its minimum, i.e. how much the least-moving region moves.

The sampling, the block painting and the 256-grid reduction follow NeMo Curator's motion
filter so that its thresholds (the spec's defaults) mean the same here. In particular its
per-patch value is a bilinear downscale by 1/256 (OpenCV's `resize` with INTER_LINEAR), which
reads the mean field at the centre of each 256x256 cell rather than averaging the cell; that
is reproduced exactly, without OpenCV. A clip is static when its global mean is below
globalMeanThreshold OR its per-patch minimum is below perPatchMinThreshold; a clip that cannot
be scored counts as static too, as in NeMo.

One deliberate difference: NeMo refuses clips under 256 pixels on a side; here they are scored
(the grid then has one cell along that side), so a pipeline that downscales clips below 256
still gets scores instead of every clip being filtered.

Frames are decoded one at a time and only two running sums are kept (one number, one
height x width array), so memory does not grow with the clip's length.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import av
import numpy as np

from clipforge.spec import MotionMode
from clipforge.stages.base import Stage
from clipforge.tasks import VideoTask

log = logging.getLogger(__name__)

# NeMo Curator's sampling: frames every 1/2 s, at least 10 of them, at most half the clip at 2 fps.
TARGET_FPS = 2.0
TARGET_DURATION_RATIO = 0.5
MIN_SAMPLED_FRAMES = 10
PATCH = 256
# The block sizes whose vectors are painted; others (4x4 sub-blocks) leave zero flow.
BLOCK_SIZES = ((8, 8), (16, 16), (16, 8), (8, 16))

_MOTION_VECTORS = av.sidedata.sidedata.Type.MOTION_VECTORS


class MotionScoreError(RuntimeError):
    """A clip whose motion cannot be scored (undecodable, or no motion vectors at all)."""


@dataclass(frozen=True)
class MotionScores:
    global_mean: float
    per_patch_min: float
    frames_used: int

    def is_small_motion(self, global_mean_threshold: float, per_patch_min_threshold: float) -> bool:
        return self.global_mean < global_mean_threshold or self.per_patch_min < per_patch_min_threshold


def paint_flow_magnitude(mvs: np.ndarray, height: int, width: int) -> np.ndarray:
    """Flow magnitude per pixel (not normalised) from one frame's AVMotionVector records.

    Each vector fills its block, centred on its destination point and clipped to the frame,
    with |motion / motion_scale|; pixels no vector covers stay 0. Where blocks overlap (both
    directions of a B-block, clipped borders) the later vector wins, as in NeMo.
    """
    magnitude = np.zeros((height, width), dtype=np.float32)
    if mvs.size == 0:
        return magnitude
    scale = mvs["motion_scale"].astype(np.float32)
    scale[scale == 0] = 1.0
    norm = np.hypot(mvs["motion_x"] / scale, mvs["motion_y"] / scale).astype(np.float32)
    block_w, block_h = mvs["w"], mvs["h"]
    dst_x, dst_y = mvs["dst_x"].astype(np.int64), mvs["dst_y"].astype(np.int64)
    for bw, bh in BLOCK_SIZES:
        selected = (block_w == bw) & (block_h == bh)
        if not selected.any():
            continue
        xs = np.clip(dst_x[selected, None, None] + np.arange(-bw // 2, bw // 2)[None, :, None], 0, width - 1)
        ys = np.clip(dst_y[selected, None, None] + np.arange(-bh // 2, bh // 2)[None, None, :], 0, height - 1)
        magnitude[ys, xs] = norm[selected, None, None]
    return magnitude


def _linear_taps(n_out: int, n_in: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of a bilinear resize along one axis (OpenCV's pixel-centre rule)."""
    position = (np.arange(n_out) + 0.5) * scale - 0.5
    lo = np.floor(position).astype(np.int64)
    weight = position - lo
    before = lo < 0
    lo[before], weight[before] = 0, 0.0
    after = lo >= n_in - 1
    lo[after], weight[after] = n_in - 1, 0.0
    return lo, np.minimum(lo + 1, n_in - 1), weight


def patch_grid(field: np.ndarray, patch: int = PATCH) -> np.ndarray:
    """`field` downscaled by 1/patch with bilinear interpolation, as cv2.resize(fx=fy=1/patch) does.

    The output has round(side / patch) samples per side (ties to even, at least 1), read at the
    centres of patch-sized cells.
    """
    height, width = field.shape
    out_h, out_w = max(1, round(height / patch)), max(1, round(width / patch))
    y0, y1, wy = _linear_taps(out_h, height, float(patch))
    x0, x1, wx = _linear_taps(out_w, width, float(patch))
    f = field.astype(np.float64)
    top = f[np.ix_(y0, x0)] * (1 - wx) + f[np.ix_(y0, x1)] * wx
    bottom = f[np.ix_(y1, x0)] * (1 - wx) + f[np.ix_(y1, x1)] * wx
    return top * (1 - wy)[:, None] + bottom * wy[:, None]


def score_motion(data: bytes) -> MotionScores:
    """Decodes a clip's bytes once, sampling frames and accumulating flow magnitudes."""
    with av.open(io.BytesIO(data), metadata_errors="ignore") as container:
        if not container.streams.video:
            raise MotionScoreError("no video stream")
        stream = container.streams.video[0]
        stream.codec_context.options = {"flags2": "+export_mvs"}
        stream.thread_type = "AUTO"
        source_fps = float(stream.average_rate or stream.base_rate or 30)
        # NeMo reads the duration in whole seconds and assumes 30 s when it has none.
        duration_s = int(container.duration / av.time_base) if container.duration else 0
        if duration_s <= 0:
            duration_s = 30
        max_frames = max(MIN_SAMPLED_FRAMES, round(TARGET_FPS * duration_s * TARGET_DURATION_RATIO))
        step = max(1, round(source_fps / TARGET_FPS))

        height = width = 0
        per_pixel_sum: np.ndarray | None = None
        total = 0.0
        used = 0
        for i, frame in enumerate(container.decode(stream)):
            if i % step:
                continue
            if per_pixel_sum is None:
                height, width = frame.height, frame.width
                per_pixel_sum = np.zeros((height, width), dtype=np.float64)
            mvs = next((sd for sd in frame.side_data if sd.type == _MOTION_VECTORS), None)
            if mvs is None:
                continue  # intra frames carry no vectors and are not counted
            magnitude = paint_flow_magnitude(mvs.to_ndarray(), height, width) / np.float32(width + height)
            total += float(magnitude.sum(dtype=np.float64))
            per_pixel_sum += magnitude
            used += 1
            if used >= max_frames:
                break
    if used == 0 or per_pixel_sum is None:
        raise MotionScoreError("no motion vectors in the sampled frames")
    global_mean = total / (used * height * width)
    per_patch_min = float(patch_grid((per_pixel_sum / used).astype(np.float32)).min())
    return MotionScores(global_mean, per_patch_min, used)


class MotionStage(Stage):
    name = "motion"

    def process(self, task: VideoTask) -> list[VideoTask]:
        spec = self.spec.motion_filter
        if spec.mode == MotionMode.disable.value:
            return [task]
        filtering = spec.mode == MotionMode.enable.value
        for clip in task.clips:
            if not clip.encoded:
                continue  # nothing to score; transcode recorded why
            clip.errors.pop(self.name, None)
            try:
                scores = score_motion(clip.encoded)
            except Exception as exc:  # noqa: BLE001 - one clip's failure must not stop the others
                log.warning("motion scoring of clip %s failed: %s", clip.uuid, exc)
                clip.errors[self.name] = f"{type(exc).__name__}: {exc}"
                clip.motion_score_global_mean = clip.motion_score_per_patch_min = None
                small = True  # NeMo treats an unscorable clip as static
            else:
                clip.motion_score_global_mean = scores.global_mean
                clip.motion_score_per_patch_min = scores.per_patch_min
                small = scores.is_small_motion(spec.global_mean_threshold, spec.per_patch_min_threshold)
            if filtering and small and clip.filtered_by is None:
                clip.filtered_by = self.name
            elif clip.filtered_by == self.name and not (filtering and small):
                clip.filtered_by = None
        return [task]
