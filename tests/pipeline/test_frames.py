"""Frames for the per-clip stages: sampling plans, the sampler, the constant-rate grid, rotation."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from clipforge.frames import FrameRequest, Timeline, Upright, sample_encoded, sample_indices
from clipforge.samples import SampleVideo, Segment, frames, write_video


def test_sample_indices_follow_the_target_rate():
    assert sample_indices(60, 30.0, 2.0) == [0, 15, 30, 45]
    assert sample_indices(10, 30.0, 1.0) == [0]  # shorter than one period: the first frame
    assert sample_indices(5, 24.0, 30.0) == [0, 1, 2, 3, 4]
    assert sample_indices(0, 24.0, 2.0) == []


def test_requests_get_their_frames_at_their_size_and_format(tmp_path):
    video = SampleVideo("v", 160, 96, 24, (Segment(2, True, 3),))
    path = write_video(video, tmp_path / "v.mp4")
    requests = [
        FrameRequest("a", lambda n, fps, w, h: (sample_indices(n, fps, 2.0), (w, h))),
        FrameRequest("b", lambda n, fps, w, h: ([1, 5], (48, 32)), pixel_format="gray"),
        FrameRequest("c", lambda n, fps, w, h: ([], (w, h))),
    ]
    sampled = sample_encoded(path.read_bytes(), requests)
    assert sorted(sampled) == ["a", "b"]  # nothing asked of "c"
    assert sampled["a"].indices == [0, 12, 24, 36]
    assert sampled["a"].frames.shape == (4, 96, 160, 3) and sampled["a"].frames.dtype == np.uint8
    source = list(frames(video))
    for frame, index in zip(sampled["a"].frames, sampled["a"].indices):
        assert np.abs(frame.astype(int) - source[index].astype(int)).mean() < 12  # lossy codec
    assert sampled["b"].indices == [1, 5] and sampled["b"].frames.shape == (2, 32, 48)


class _Frame:
    def __init__(self, pts):  # noqa: ANN001
        self.pts = pts


def test_grid_holds_frames_over_gaps_and_drops_crowded_ones():
    timeline = Timeline(time_base=Fraction(1, 1000), fps=Fraction(10), origin=0)
    stamps = [0, 100, 300, 310, 400, 420, 600]  # a late frame, two crowding one index, a gap
    placed = [(index, frame.pts) for index, frame in timeline.grid(_Frame(t) for t in stamps)]
    # The frame before a gap stays on screen over it; of two frames for one index, the first.
    assert placed == [(0, 0), (1, 100), (2, 100), (3, 300), (4, 400), (5, 400), (6, 600)]
    assert [i for i, _ in timeline.grid((_Frame(t) for t in stamps), first=3)] == [3, 4, 5, 6]


def test_upright_turns_frames_by_their_display_rotation():
    picture = np.zeros((36, 64, 3), dtype=np.uint8)
    picture[:4, :8] = 255  # a mark in the top-left corner
    frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
    upright = Upright()
    for rotation, corner in ((90, (-1, 0)), (-90, (0, -1)), (180, (-1, -1))):
        out = upright(frame, rotation).to_ndarray()
        assert out.shape[:2] == ((64, 36) if rotation != 180 else (36, 64))
        # A counterclockwise quarter turn takes the top-left corner to the bottom-left.
        assert out[corner[0], corner[1]].min() == 255 and out[36 // 2, 36 // 2].max() == 0
    assert upright(frame, 0) is frame
