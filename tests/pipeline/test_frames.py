"""Frame sampling for the model stages."""

from __future__ import annotations

import numpy as np

from clipforge.frames import sample_frames, sample_indices
from clipforge.samples import SampleVideo, Segment, frames, write_video


def test_sample_indices_follow_the_target_rate():
    assert sample_indices(60, 30.0, 2.0) == [0, 15, 30, 45]
    assert sample_indices(10, 30.0, 1.0) == [0]  # shorter than one period: the first frame
    assert sample_indices(5, 24.0, 30.0) == [0, 1, 2, 3, 4]
    assert sample_indices(0, 24.0, 2.0) == []


def test_sample_frames_returns_the_frames_at_those_indices(tmp_path):
    video = SampleVideo("v", 160, 96, 24, (Segment(2, True, 3),))
    path = write_video(video, tmp_path / "v.mp4")
    sampled, indices = sample_frames(path.read_bytes(), 2.0)
    assert indices == [0, 12, 24, 36]
    assert sampled.shape == (4, 96, 160, 3) and sampled.dtype == np.uint8
    source = list(frames(video))
    for frame, index in zip(sampled, indices):
        assert np.abs(frame.astype(int) - source[index].astype(int)).mean() < 12  # lossy codec
    small, _ = sample_frames(path.read_bytes(), 2.0, size=(48, 32))
    assert small.shape == (4, 32, 48, 3)
