"""Motion scores from block motion estimation on the frames transcode decoded, NeMo Curator's filter.

NeMo Curator scores a clip from the motion vectors its H.264 decoder exports. Those exist only
for H.264 (FFmpeg exports none for VP9, AV1 or HEVC, so such clips were all "unscorable" and
filtered), and reading them means decoding every clip a second time. Here the vectors come from
FFmpeg's own block motion estimator (the `mestimate` filter, EPZS search, 16x16 blocks) run on
pairs of frames the transcode stage already decoded: frame k and frame k - 2 (NeMo's vectors
point about two frames away on x264's default GOPs, so scores land on NeMo's scale and its
thresholds keep their meaning; see docs/architecture.md for the measurements). The score no
longer depends on the codec of the clip or of the source, nor on the encoder's thread count.

NeMo's sampling is kept: a frame every 1/2 s, at most max(10, the clip's whole seconds) of
them (its `TARGET_DURATION_RATIO` of a clip at 2 fps; 30 s assumed for clips under a second).
Pairs are analysed at a short side of at most 360 pixels (the estimate is normalised, so the
scale does not change it) and each block's displacement fills its block of a flow-magnitude
field, normalised by the frame's width + height. Two scores come out:

- `motion_score_global_mean`: the mean magnitude over every pixel of every sampled pair;
- `motion_score_per_patch_min`: the per-pixel mean over the pairs, read on the clip's 256-pixel
  grid (a bilinear downscale by 1/256, as NeMo's cv2.resize does, which reads the mean field at
  the centre of each 256x256 cell), then its minimum: how much the least-moving region moves.

A clip is static when its global mean is below globalMeanThreshold OR its per-patch minimum
is below perPatchMinThreshold. A clip too short to hold one pair (3 frames) cannot be scored:
that is recorded in its errors and, as in NeMo, it counts as static.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from clipforge.failures import raise_if_environmental
from clipforge.frames import FrameRequest, SampledFrames, fit_short_side
from clipforge.spec import MotionMode, VideoCurationJobSpec
from clipforge.stages.base import Stage
from clipforge.tasks import VideoTask

log = logging.getLogger(__name__)

# NeMo Curator's sampling: frames every 1/2 s, at least 10 of them, at most half the clip at 2 fps.
TARGET_FPS = 2.0
TARGET_DURATION_RATIO = 0.5
MIN_SAMPLED_FRAMES = 10
PATCH = 256
# Frames between the two pictures of a pair: the reference distance of NeMo's H.264 vectors.
PAIR_DISTANCE = 2
ANALYSIS_SHORT_SIDE = 360
BLOCK = 16
SEARCH_RANGE = 16  # pixels at the analysis size, each way

_MOTION_VECTORS = av.sidedata.sidedata.Type.MOTION_VECTORS


class MotionScoreError(RuntimeError):
    """A clip whose motion cannot be scored (too short, or its frames are missing)."""


@dataclass(frozen=True)
class MotionScores:
    global_mean: float
    per_patch_min: float
    frames_used: int

    def is_small_motion(self, global_mean_threshold: float, per_patch_min_threshold: float) -> bool:
        return self.global_mean < global_mean_threshold or self.per_patch_min < per_patch_min_threshold


def sampled_frames(num_frames: int, fps: float) -> list[int]:
    """The clip-relative frames scored (each against the frame PAIR_DISTANCE before it)."""
    step = max(1, round(fps / TARGET_FPS))
    # NeMo reads the duration in whole seconds and assumes 30 s when it has none.
    duration_s = int(num_frames / fps) if fps > 0 else 0
    if duration_s <= 0:
        duration_s = 30
    max_frames = max(MIN_SAMPLED_FRAMES, round(TARGET_FPS * duration_s * TARGET_DURATION_RATIO))
    return [k for k in range(step, num_frames, step) if k >= PAIR_DISTANCE][:max_frames]


def _plan(num_frames: int, fps: float, width: int, height: int) -> tuple[list[int], tuple[int, int]]:
    wanted = {i for k in sampled_frames(num_frames, fps) for i in (k - PAIR_DISTANCE, k)}
    return sorted(wanted), fit_short_side(width, height, ANALYSIS_SHORT_SIDE)


def block_displacements(previous: np.ndarray, current: np.ndarray) -> np.ndarray:
    """[rows, cols] displacement in pixels of each 16x16 block of `previous` found in `current`
    (gray frames of one size), by FFmpeg's mestimate (EPZS)."""
    height, width = previous.shape
    graph = av.filter.Graph()
    graph.threads = 1
    source = graph.add_buffer(width=width, height=height, format="gray", time_base=Fraction(1, 1000))
    estimate = graph.add("mestimate", f"method=epzs:mb_size={BLOCK}:search_param={SEARCH_RANGE}")
    sink = graph.add("buffersink")
    source.link_to(estimate)
    estimate.link_to(sink)
    graph.configure()
    for pts, picture in enumerate((previous, current)):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="gray")
        frame.pts = pts
        graph.vpush(frame)
    # The filter emits the first frame once it has the next: its "+1" vectors point into `current`.
    out = graph.vpull()
    vectors = next(sd for sd in out.side_data if sd.type == _MOTION_VECTORS).to_ndarray()
    forward = vectors[vectors["source"] == 1]
    rows, cols = height // BLOCK, width // BLOCK
    # mestimate fills only src/dst positions: the displacement is their difference, in pixels.
    dx = forward["src_x"].astype(np.float32) - forward["dst_x"]
    dy = forward["src_y"].astype(np.float32) - forward["dst_y"]
    grid = np.zeros((rows, cols), dtype=np.float32)
    grid[(forward["dst_y"] // BLOCK).astype(int), (forward["dst_x"] // BLOCK).astype(int)] = np.hypot(dx, dy)
    return grid


def flow_magnitude(blocks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Per-pixel magnitude: each block's value over its 16x16 pixels; the strips right and below
    the last whole block (narrower than a block) take their neighbouring block's value."""
    field = np.repeat(np.repeat(blocks, BLOCK, axis=0), BLOCK, axis=1)
    return np.pad(field, ((0, height - field.shape[0]), (0, width - field.shape[1])), mode="edge")


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


def patch_grid(field: np.ndarray, patch: float = PATCH) -> np.ndarray:
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


def score_motion(sampled: SampledFrames | None, num_frames: int, fps: float,
                 clip_size: tuple[int, int]) -> MotionScores:
    """Scores one clip of `clip_size` (width, height) from its sampled frame pairs (the motion
    request's frames)."""
    samples = sampled_frames(num_frames, fps)
    if not samples:
        raise MotionScoreError(f"a clip of {num_frames} frames holds no frame pair {PAIR_DISTANCE} frames apart")
    if sampled is None:
        raise MotionScoreError("transcode handed over no frames for motion scoring")
    position = {index: i for i, index in enumerate(sampled.indices)}
    pairs = [(position[k - PAIR_DISTANCE], position[k]) for k in samples
             if k in position and k - PAIR_DISTANCE in position]
    if not pairs:
        raise MotionScoreError("none of the clip's sampled frame pairs were handed over")
    _, height, width = sampled.frames.shape
    if height < BLOCK or width < BLOCK:
        raise MotionScoreError(f"frames of {width}x{height} are smaller than one {BLOCK}x{BLOCK} block")
    per_pixel_sum = np.zeros((height, width), dtype=np.float64)
    total = 0.0
    for before, after in pairs:
        blocks = block_displacements(sampled.frames[before], sampled.frames[after]) / np.float32(width + height)
        magnitude = flow_magnitude(blocks, height, width)
        total += float(magnitude.sum(dtype=np.float64))
        per_pixel_sum += magnitude
    # The clip's 256-pixel cells, measured at the analysis size (short sides: rotation-proof).
    patch = PATCH * min(height, width) / min(clip_size)
    per_patch_min = float(patch_grid((per_pixel_sum / len(pairs)).astype(np.float32), patch).min())
    return MotionScores(total / (len(pairs) * height * width), per_patch_min, len(pairs))


class MotionStage(Stage):
    name = "motion"

    @classmethod
    def frame_request(cls, spec: VideoCurationJobSpec) -> FrameRequest | None:
        return FrameRequest(cls.name, _plan, pixel_format="gray", interpolation="AREA")

    def process(self, task: VideoTask) -> list[VideoTask]:
        spec = self.spec.motion_filter
        if spec.mode == MotionMode.disable.value:
            return [task]
        filtering = spec.mode == MotionMode.enable.value
        for clip in task.clips:
            sampled = clip.frames.pop(self.name, None)
            if not clip.encoded:
                continue  # nothing to score; transcode recorded why
            clip.errors.pop(self.name, None)
            try:
                scores = score_motion(sampled, clip.num_frames, clip.framerate, (clip.width, clip.height))
            except Exception as exc:  # noqa: BLE001 - one clip's failure must not stop the others
                raise_if_environmental(exc)
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
