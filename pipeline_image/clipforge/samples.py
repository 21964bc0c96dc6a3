"""Synthetic sample videos with known hard cuts, static and moving segments.

Each segment is a distinct scene (its own palette and texture); a `moving` segment pans
its texture a few pixels per frame, a `static` one holds a single picture. The frame index
of every cut is known exactly, which is what the splitting and motion tests check against.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


@dataclass(frozen=True)
class Segment:
    seconds: float
    moving: bool
    seed: int


@dataclass(frozen=True)
class SampleVideo:
    name: str
    width: int
    height: int
    fps: int
    segments: tuple[Segment, ...]

    def segment_frames(self) -> list[int]:
        return [round(s.seconds * self.fps) for s in self.segments]

    def cut_frames(self) -> list[int]:
        """Frame indices at which a new scene starts (the first frame of each later segment)."""
        return [int(f) for f in np.cumsum(self.segment_frames())[:-1]]

    @property
    def num_frames(self) -> int:
        return sum(self.segment_frames())


def _texture(seed: int, height: int, width: int) -> np.ndarray:
    """A smooth random colour field with sharp blobs: distinct per seed, rich in edges to track."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(height // 16 + 2, width // 16 + 2, 3), dtype=np.uint8)
    field = np.kron(coarse, np.ones((16, 16, 1), dtype=np.uint8))[:height, :width].astype(np.float32)
    palette = rng.uniform(0.3, 1.0, size=3).astype(np.float32)
    field *= palette
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(12):
        cy, cx, r = rng.integers(0, height), rng.integers(0, width), rng.integers(height // 20 + 2, height // 6 + 3)
        field[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 256, size=3)
    return field.clip(0, 255).astype(np.uint8)


def frames(video: SampleVideo):
    """Yields the video's RGB frames in order."""
    for segment, count in zip(video.segments, video.segment_frames()):
        # A wider texture so a pan never wraps visibly within a segment.
        texture = _texture(segment.seed, video.height, video.width * 2)
        for i in range(count):
            offset = 4 * i if segment.moving else 0
            yield np.ascontiguousarray(np.roll(texture, -offset, axis=1)[:, : video.width])


def write_video(video: SampleVideo, path: Path, codec: str = "libx264", gop: int = 48, preset: str = "veryfast") -> Path:
    """Encodes the sample; `preset` is libx264's (benchmarks writing hours of input use ultrafast)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(video.fps))
        stream.width, stream.height, stream.pix_fmt = video.width, video.height, "yuv420p"
        stream.codec_context.gop_size = gop
        if codec == "libx264":
            stream.codec_context.options = {"preset": preset, "crf": "20"}
        for frame_array in frames(video):
            frame = av.VideoFrame.from_ndarray(frame_array, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def default_samples() -> list[SampleVideo]:
    """The README's sample set: small, with cuts, static and moving scenes."""
    return [
        SampleVideo("street_scenes", 640, 360, 24, (
            Segment(6, True, 1), Segment(5, False, 2), Segment(7, True, 3), Segment(4, True, 4),
        )),
        SampleVideo("nature/lake_pan", 640, 360, 30, (
            Segment(12, True, 5), Segment(3, False, 6), Segment(9, True, 7),
        )),
        SampleVideo("static_slides", 480, 270, 25, (
            Segment(8, False, 8), Segment(8, False, 9),
        )),
    ]


def write_samples(directory: Path, samples: list[SampleVideo] | None = None) -> list[Path]:
    """Writes each sample as <name>.mp4 and an index (samples.json) of the known cuts."""
    samples = samples if samples is not None else default_samples()
    written, index = [], []
    for video in samples:
        written.append(write_video(video, directory / f"{video.name}.mp4"))
        index.append({**asdict(video), "cut_frames": video.cut_frames(), "num_frames": video.num_frames})
    (directory / "samples.json").write_text(json.dumps(index, indent=2) + "\n")
    return written
