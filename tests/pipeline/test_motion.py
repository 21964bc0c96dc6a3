"""MotionStage: NeMo Curator's motion-vector scores, the filter rule and its modes."""

from __future__ import annotations

import copy

import numpy as np
from jobs import run_stage

from clipforge.samples import SampleVideo, Segment, write_video
from clipforge.stages.motion import MotionScores, MotionStage, paint_flow_magnitude, patch_grid, score_motion
from clipforge.stages.transcode import TranscodeStage

# FFmpeg's AVMotionVector, as PyAV's MotionVectors.to_ndarray() returns it.
MV_DTYPE = np.dtype({
    "names": ["source", "w", "h", "src_x", "src_y", "dst_x", "dst_y", "flags", "motion_x", "motion_y", "motion_scale"],
    "formats": ["<i4", "u1", "u1", "<i2", "<i2", "<i2", "<i2", "<u8", "<i4", "<i4", "<u2"],
    "offsets": [0, 4, 5, 6, 8, 10, 12, 16, 24, 28, 32], "itemsize": 40, "aligned": True,
})


def vectors(*rows: tuple[int, int, int, int, int, int, int]) -> np.ndarray:
    """(w, h, dst_x, dst_y, motion_x, motion_y, motion_scale) rows as AVMotionVector records."""
    out = np.zeros(len(rows), dtype=MV_DTYPE)
    for i, (w, h, x, y, mx, my, scale) in enumerate(rows):
        out[i] = (-1, w, h, x - mx // scale, y - my // scale, x, y, 0, mx, my, scale)
    return out


def run_motion(spec, task):  # noqa: ANN001
    return run_stage(MotionStage, spec, copy.deepcopy(task))


def test_flow_painting_fills_blocks_around_their_destination():
    mvs = vectors(
        (16, 16, 8, 8, 8, 0, 4),     # |(8, 0) / 4| = 2 over x, y in [0, 16)
        (8, 8, 4, 36, 0, -12, 4),    # 3 over x in [0, 8), y in [32, 40)
        (8, 16, 30, 8, 6, 8, 2),     # 5 over x in [26, 34), y in [0, 16): overwrites part of the first
        (4, 4, 50, 50, 40, 0, 4),    # 4x4 blocks are not painted (as in NeMo)
        (16, 8, 62, 2, 4, 0, 1),     # clipped at the frame's edges: x in [54, 64), y in [0, 6)
    )
    magnitude = paint_flow_magnitude(mvs, 48, 64)
    expected = np.zeros((48, 64), dtype=np.float32)
    expected[0:16, 0:16] = 2
    expected[32:40, 0:8] = 3
    expected[0:16, 26:34] = 5
    expected[0:6, 54:64] = 4
    np.testing.assert_allclose(magnitude, expected)


def test_patch_grid_reads_cell_centres_like_a_bilinear_resize():
    for height, width, cells in ((360, 640, (1, 2)), (180, 320, (1, 1)), (1080, 1920, (4, 8)), (720, 1280, (3, 5))):
        y, x = np.mgrid[0:height, 0:width]
        grid = patch_grid((x + 1000 * y).astype(np.float32))
        assert grid.shape == cells
        # Bilinear between the two pixels either side of each 256-cell's centre (127.5, 383.5, ...),
        # the last pixel for a centre past the edge.
        xs = np.minimum(127.5 + 256 * np.arange(cells[1]), width - 1)
        ys = np.minimum(127.5 + 256 * np.arange(cells[0]), height - 1)
        expected = xs[None, :] + 1000 * ys[:, None]
        np.testing.assert_allclose(grid, expected, rtol=1e-6)
    # A frame smaller than a cell has one cell, read at the nearest pixel to the centre.
    y, x = np.mgrid[0:100, 0:100]
    assert patch_grid((x + 1000 * y).astype(np.float32)).tolist() == [[99 + 99_000]]


def test_small_motion_rule_is_either_score_below_its_threshold():
    assert MotionScores(0.01, 0.0, 9).is_small_motion(0.00098, 1e-6)       # one region never moves
    assert MotionScores(0.0005, 0.0004, 9).is_small_motion(0.00098, 1e-6)  # little motion overall
    assert not MotionScores(0.002, 0.001, 9).is_small_motion(0.00098, 1e-6)


def test_static_scene_is_filtered_and_moving_scenes_pass(stage_clips, make_spec):
    task = run_motion(make_spec(), stage_clips)
    moving_a, static, moving_b = task.clips
    # The sample pans 4 pixels a frame: |flow| / (width + height) = 4 / 500 = 0.008 per frame of
    # distance to the reference (B-frames also refer to frames 2 or 3 ahead).
    for clip in (moving_a, moving_b):
        assert clip.errors == {} and clip.filtered_by is None
        assert 0.004 < clip.motion_score_global_mean < 0.024
        assert 0.004 < clip.motion_score_per_patch_min < 0.024
    assert static.errors == {}
    assert static.motion_score_global_mean < 0.00098 and static.motion_score_per_patch_min < 1e-6
    assert static.filtered_by == "motion"


def test_thresholds_come_from_the_spec(stage_clips, make_spec):
    task = run_motion(make_spec(motionFilter={"globalMeanThreshold": 0.5}), stage_clips)
    assert [c.filtered_by for c in task.clips] == ["motion"] * 3
    task = run_motion(make_spec(motionFilter={"globalMeanThreshold": 0, "perPatchMinThreshold": 0}), stage_clips)
    assert [c.filtered_by for c in task.clips] == [None] * 3


def test_score_only_scores_without_filtering(stage_clips, make_spec):
    task = run_motion(make_spec(motionFilter={"mode": "score-only"}), stage_clips)
    assert [c.filtered_by for c in task.clips] == [None] * 3
    assert all(c.motion_score_global_mean is not None for c in task.clips)
    assert task.clips[1].motion_score_global_mean < 0.00098


def test_disable_is_a_no_op(stage_clips, make_spec):
    task = run_motion(make_spec(motionFilter={"mode": "disable"}), stage_clips)
    assert all(c.motion_score_global_mean is None and c.filtered_by is None for c in task.clips)


def test_scores_sample_two_frames_a_second(stage_clips):
    # 24 fps, one frame in 12: frames 0, 12, 24, 36 of a 48-frame clip, of which 0 is intra.
    assert score_motion(stage_clips.clips[0].encoded).frames_used == 3


def test_unscorable_clips_are_recorded_and_count_as_static(tmp_path, stage_clips, make_task, make_spec):
    # All-intra video: no motion vectors at all, as NeMo, the clip cannot pass.
    video = SampleVideo("intra", 320, 180, 24, (Segment(1, True, 3),))
    intra = write_video(video, tmp_path / "intra.mp4", gop=1)
    intra_task = make_task(intra, [(0, 24)])
    TranscodeStage(make_spec(transcoding={"mode": "copy"})).run(intra_task)

    task = copy.deepcopy(stage_clips)
    task.clips[0].encoded = b"\x00\x00\x00\x18ftypmp42 definitely not a video"
    task.clips[1].encoded = None  # transcode failed: nothing to score, left alone
    task.clips[2] = intra_task.clips[0]
    run = run_motion(make_spec(), task)
    corrupt, missing, intra_clip = run.clips
    assert "motion" in corrupt.errors and corrupt.filtered_by == "motion"
    assert corrupt.motion_score_global_mean is None
    assert "no motion vectors" in intra_clip.errors["motion"] and intra_clip.filtered_by == "motion"
    assert missing.errors == {} and missing.filtered_by is None and missing.motion_score_global_mean is None

    scored_only = run_motion(make_spec(motionFilter={"mode": "score-only"}), task)
    assert [c.filtered_by for c in scored_only.clips] == [None] * 3
    assert "motion" in scored_only.clips[0].errors
