"""Frames sampled from an encoded clip at a target rate: what the model stages look at."""

from __future__ import annotations

import io
import math

import av
import numpy as np


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


def sample_frames(
    data: bytes, target_fps: float, size: tuple[int, int] | None = None
) -> tuple[np.ndarray, list[int]]:
    """(frames [N, H, W, 3] uint8 RGB, their indices) of the clip `data`, sampled at `target_fps`.

    `size` is (width, height) to resize to. Only the sampled frames are converted and kept,
    so memory follows the sample count, not the clip's length.
    """
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or stream.guessed_rate)
        num_frames = stream.frames or math.floor(float(stream.duration * stream.time_base) * fps)
        wanted = set(sample_indices(num_frames, fps, target_fps))
        width, height = size if size else (stream.codec_context.width, stream.codec_context.height)
        frames, indices = [], []
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                frames.append(frame.to_ndarray(width=width, height=height, format="rgb24"))
                indices.append(index)
    if not frames:
        raise ValueError("clip has no decodable frames")
    return np.stack(frames), indices
