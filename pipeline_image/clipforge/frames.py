"""Frames for the per-clip stages, taken from the one decode of the source that transcode does.

The stages that look at a clip's pictures each declare a `FrameRequest`: which of a clip's
frames they look at (clip-relative indices), at what size and in what pixel format. Transcode
decodes every source frame once; as it hands a frame to a clip's encoder, a `FrameSampler`
converts it for each request that wants that index, and the clip carries the results to the
stages (`Clip.frames[stage]`, a `SampledFrames`). No stage decodes a clip's encoded bytes again.
Stream copy decodes nothing to cut; there each clip's copied packets are decoded once, through
`sample_encoded`, for the same requests. The stages get SDR frames even from HDR clips (a copied
HDR source, `hdr: keep`): tone-mapped as a tone-mapped clip's frames are (codec/colour.py).

Also here, because split and transcode must agree on it: `Timeline`, which puts a stream's
frames on its constant-rate grid of indices, and `Upright`, which applies the stream's display
rotation.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from clipforge.codec.colour import Colour

# (clip frames, clip fps, clip width, clip height) -> (clip-relative frame indices, (width, height)).
FramePlanFn = Callable[[int, float, int, int], tuple[list[int], tuple[int, int]]]


def sample_indices(num_frames: int, source_fps: float, target_fps: float) -> list[int]:
    """Frame indices on a regular grid of `target_fps` over a clip of `num_frames` at `source_fps`.

    The first frame is always taken; at or above the source rate every frame is.
    """
    if num_frames <= 0:
        return []
    if target_fps >= source_fps:
        return list(range(num_frames))
    count = max(1, math.floor(num_frames / source_fps * target_fps))
    step = source_fps / target_fps
    return sorted({min(num_frames - 1, round(k * step)) for k in range(count)})


def fit_short_side(width: int, height: int, short: int) -> tuple[int, int]:
    """(width, height) scaled so that the short side is at most `short`, even, aspect kept."""
    if min(width, height) <= short:
        return width, height
    scale = short / min(width, height)
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


@dataclass(frozen=True)
class FrameRequest:
    """The frames one stage wants from every clip."""

    stage: str
    plan: FramePlanFn
    pixel_format: str = "rgb24"  # rgb24 -> [N, H, W, 3]; gray -> [N, H, W]; yuv420p -> [N, H*3/2, W]
    interpolation: str | None = None  # swscale's; None is its default (bilinear)


@dataclass
class SampledFrames:
    """A request's frames of one clip, in index order."""

    indices: list[int]  # clip-relative; a clip cut short by its source has only those it reached
    frames: np.ndarray


class FrameSampler:
    """Collects one clip's requested frames while the clip is encoded (or decoded), frame by frame."""

    def __init__(self, requests: Iterable[FrameRequest], num_frames: int, fps: float, width: int, height: int):
        self._wanted: dict[int, list[tuple[FrameRequest, tuple[int, int]]]] = {}
        self._got: dict[str, tuple[list[int], list[np.ndarray]]] = {}
        for request in requests:
            indices, size = request.plan(num_frames, fps, width, height)
            self._got[request.stage] = ([], [])
            for index in indices:
                self._wanted.setdefault(index, []).append((request, size))

    def wants(self, index: int) -> bool:
        return index in self._wanted

    def offer(self, index: int, frame: av.VideoFrame) -> None:
        """`frame` is the clip's frame `index` (clip-relative), as the clip shows it."""
        converted: dict[tuple, np.ndarray] = {}  # requests asking for the same conversion share it
        for request, (width, height) in self._wanted.pop(index, ()):
            key = (width, height, request.pixel_format, request.interpolation)
            if key not in converted:
                out = frame.reformat(width, height, request.pixel_format, interpolation=request.interpolation)
                converted[key] = out.to_ndarray()
            indices, arrays = self._got[request.stage]
            indices.append(index)
            arrays.append(converted[key])

    def result(self) -> dict[str, SampledFrames]:
        return {stage: SampledFrames(indices, np.stack(arrays)) for stage, (indices, arrays) in self._got.items() if arrays}


def frames_for(clip, stage: str) -> SampledFrames:  # noqa: ANN001 - a tasks.Clip
    """The frames transcode sampled of `clip` for `stage`; a clip without them cannot be processed."""
    sampled = clip.frames.get(stage)
    if sampled is None:
        raise ValueError(f"transcode handed over no frames for {stage}")
    return sampled


def sample_encoded(data: bytes, requests: list[FrameRequest], threads: int = 1) -> dict[str, SampledFrames]:
    """The requested frames of an encoded clip, decoded once (stream copy's clips) by `threads`.

    Frames are counted in presentation order and shown upright (the stream's display rotation
    applied), as an encoded clip's frames are; an HDR clip's tone-mapped to SDR, as the models
    get an encoded clip's.
    """
    with av.open(io.BytesIO(data), metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        fps = float(stream.average_rate or stream.guessed_rate or 30)
        num_frames = stream.frames or sum(1 for p in container.demux(stream) if p.size)
        container.seek(0)
        upright = Upright()
        sampler = colour = None
        for index, frame in enumerate(container.decode(stream)):
            rotation = rotation_of(frame)
            if sampler is None:
                colour = Colour.of(frame, keep_hdr=True)
                sampler = FrameSampler(requests, num_frames, fps, *upright_size(frame.width, frame.height, rotation))
            if sampler.wants(index):
                sdr = colour.sdr(frame, frame.width, frame.height) if colour.kept_hdr else frame
                sampler.offer(index, upright(sdr, rotation))
    if sampler is None:
        raise ValueError("clip has no decodable frames")
    return sampler.result()


@dataclass
class Timeline:
    """Maps a video stream's timestamps to frame indices on its constant-rate grid, and back.

    Frame n of a video is the frame on screen n / fps seconds after the start. A
    constant-frame-rate source has exactly one frame per index; a variable-rate one is put on
    the grid as a screen shows it (`grid()`): a frame goes to the index nearest its time, the
    frame before a gap is held over the indices the gap skips, and a frame that lands on an
    index already taken is dropped. Split and transcode both count frames this way, so a cut
    found at index n is where clips start.
    """

    time_base: Fraction
    fps: Fraction
    origin: int  # pts of frame 0

    @classmethod
    def of(cls, stream: av.video.stream.VideoStream, fallback_fps: float | None = None) -> Timeline:
        fps = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not fps and fallback_fps:
            fps = Fraction(fallback_fps).limit_denominator(1001)
        if not fps:
            raise ValueError("the video's frame rate is unknown")
        if stream.time_base is None:
            raise ValueError("the video stream has no time base")
        return cls(Fraction(stream.time_base), Fraction(fps), stream.start_time or 0)

    def index(self, pts: int | None) -> int | None:
        if pts is None:
            return None
        return math.floor((pts - self.origin) * self.time_base * self.fps + Fraction(1, 2))

    def pts(self, index: int) -> int:
        return self.origin + math.floor(index / self.fps / self.time_base)

    def seconds(self, index: int) -> float:
        return float(index / self.fps)

    def fill(self, pts: int | None, written: int) -> range:
        """The grid indices from the next free one (after `written`) up to a frame's own index, for
        a frame with timestamp `pts`: all but the last are the previous frame's, held over a gap.
        Empty when the frame lands on an index already taken."""
        index = self.index(pts)
        return range(written + 1, (written + 1 if index is None else index) + 1)

    def grid(self, frames: Iterable[av.VideoFrame], first: int = 0) -> Iterator[tuple[int, av.VideoFrame]]:
        """(index, frame) for every grid index from `first` on (earlier frames are dropped)."""
        written, previous = first - 1, None
        for frame in frames:
            indices = self.fill(frame.pts, written)
            for index in indices:
                # Before the first frame there is none to hold: the first fills the start.
                yield index, (frame if index == indices[-1] or previous is None else previous)
            if indices:
                written, previous = indices[-1], frame


# Display rotation (degrees counterclockwise, as FFmpeg's display matrix states it) -> filters
# that turn the coded picture upright.
_ROTATIONS = {90: ("transpose", "cclock"), -90: ("transpose", "clock"), 270: ("transpose", "clock")}


def rotation_of(frame: av.VideoFrame) -> int:
    """The frame's display rotation, rounded to a quarter turn, in (-180, 180]."""
    angle = round((frame.rotation or 0) / 90) * 90 % 360
    return angle - 360 if angle > 180 else angle


def upright_size(width: int, height: int, rotation: int) -> tuple[int, int]:
    return (height, width) if rotation in (90, -90) else (width, height)


class Upright:
    """Turns decoded frames upright, following each frame's display rotation (phone video)."""

    def __init__(self) -> None:
        self._graph: av.filter.Graph | None = None
        self._key: tuple | None = None

    def __call__(self, frame: av.VideoFrame, rotation: int | None = None) -> av.VideoFrame:
        """`frame` as shown; `rotation` overrides the frame's own (frames already reformatted lose it)."""
        rotation = rotation_of(frame) if rotation is None else rotation
        if rotation == 0:
            return frame
        key = (rotation, frame.width, frame.height, frame.format.name)
        if key != self._key:
            self._graph, self._key = self._build(*key), key
        pts = frame.pts
        self._graph.vpush(frame)
        out = self._graph.vpull()
        out.pts = pts
        return out

    @staticmethod
    def _build(rotation: int, width: int, height: int, pixel_format: str) -> av.filter.Graph:
        graph = av.filter.Graph()
        graph.threads = 1  # a transpose per frame; the stage's threads go to the codecs
        node = graph.add_buffer(width=width, height=height, format=pixel_format, time_base=Fraction(1, 1000))
        if rotation == 180:
            steps = [("hflip", ""), ("vflip", "")]
        else:
            steps = [_ROTATIONS[rotation]]
        for name, args in steps:
            nxt = graph.add(name, args)
            node.link_to(nxt)
            node = nxt
        sink = graph.add("buffersink")
        node.link_to(sink)
        graph.configure()
        return graph
