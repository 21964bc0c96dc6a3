"""MotionStage: block motion on transcode's frames, NeMo Curator's scores, filter rule and modes."""

from __future__ import annotations

import copy

import numpy as np
from support.jobs import run_stage

from clipforge.samples import SampleVideo, Segment, frames, write_video
from clipforge.stages.motion import (
    MotionScores,
    MotionStage,
    block_displacements,
    flow_magnitude,
    patch_grid,
    sampled_frames,
    score_motion,
)
from clipforge.stages.transcode import TranscodeStage


def run_motion(spec, task):  # noqa: ANN001
    return run_stage(MotionStage, spec, copy.deepcopy(task))


def gray(rgb: np.ndarray) -> np.ndarray:
    return rgb.mean(axis=2).astype(np.uint8)


def test_block_displacements_measure_a_pan():
    video = SampleVideo("pan", 160, 96, 24, (Segment(1, True, 7),))
    pictures = [gray(f) for f in frames(video)]
    blocks = block_displacements(pictures[0], pictures[2])  # 2 frames of a 4-pixel-a-frame pan
    assert blocks.shape == (6, 10)
    # Every block whose match stays inside the frame moved 8 pixels (the texture is rich in edges).
    assert np.median(blocks) == 8 and (blocks[:, 1:-1] == 8).mean() > 0.9
    assert (block_displacements(pictures[0], pictures[0]) == 0).all()


def test_flow_fills_each_block_and_the_strips_past_the_last_whole_block():
    field = flow_magnitude(np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32), 40, 36)
    assert field.shape == (40, 36)
    assert (field[:16, :16] == 1).all() and (field[:16, 16:] == 2).all()
    assert (field[16:, :16] == 3).all() and (field[16:, 16:] == 4).all()


def test_sampling_follows_nemo():
    # A frame every half second, each scored against the frame two before it.
    assert sampled_frames(48, 24.0) == [12, 24, 36]
    # At most max(10, whole seconds) of them: the first half of a long clip at 2 fps.
    assert sampled_frames(30 * 30, 30.0)[-1] == 15 * 30 and len(sampled_frames(30 * 30, 30.0)) == 30
    assert len(sampled_frames(300, 30.0)) == 10
    assert sampled_frames(2, 24.0) == []


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
    # The sample pans 4 pixels a frame: 8 pixels between the frames of a pair, and
    # |flow| / (width + height) = 8 / 500 = 0.016 where the texture can be matched.
    for clip in (moving_a, moving_b):
        assert clip.errors == {} and clip.filtered_by is None
        assert 0.012 < clip.motion_score_global_mean < 0.0161
        assert 0.012 < clip.motion_score_per_patch_min < 0.0161
    assert static.errors == {}
    assert static.motion_score_global_mean == 0 and static.motion_score_per_patch_min == 0
    assert static.filtered_by == "motion"
    # Each stage takes its frames out of the clip: they do not travel further.
    assert all("motion" not in c.frames for c in task.clips)


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
    # 24 fps, one frame in 12: frames 12, 24, 36 of a 48-frame clip, against 10, 22, 34.
    clip = stage_clips.clips[0]
    assert clip.frames["motion"].indices == [10, 12, 22, 24, 34, 36]
    assert score_motion(clip.frames["motion"], 48, 24.0, (320, 180)).frames_used == 3


def test_every_codec_scores_alike(stage_source, make_task, make_spec):
    """The score comes from the source's frames, not from the clip's codec: VP9 and AV1 clips (whose
    decoders export no motion vectors) pass and fail exactly as H.264 ones, with the same scores."""
    spans = [(0, 48), (48, 96), (96, 144)]
    results = {}
    for encoder in ("libx264", "libvpx-vp9", "libsvtav1"):
        spec = make_spec(transcoding={"encoder": encoder, "crf": 40, "preset": {"libx264": "ultrafast",
                                                                              "libvpx-vp9": "8",
                                                                              "libsvtav1": "12"}[encoder]})
        task = run_stage(TranscodeStage, spec, make_task(stage_source, spans))
        task = run_motion(spec, task)
        results[encoder] = [(c.filtered_by, c.motion_score_global_mean, c.motion_score_per_patch_min, c.errors)
                            for c in task.clips]
    assert [r[0] for r in results["libx264"]] == [None, "motion", None]
    assert results["libvpx-vp9"] == results["libx264"] == results["libsvtav1"]


def test_stream_copy_of_hevc_is_scored(tmp_path, make_task, make_spec):
    video = SampleVideo("hevc", 160, 96, 25, (Segment(2, True, 6), Segment(2, False, 7)))
    path = write_video(video, tmp_path / "hevc.mp4", codec="libx265", gop=25)
    spec = make_spec(transcoding={"mode": "copy"})
    task = run_motion(spec, run_stage(TranscodeStage, spec, make_task(path, [(0, 50), (50, 100)])))
    moving, static = task.clips
    assert moving.video_codec == "hevc" and moving.errors == {} and moving.filtered_by is None
    assert moving.motion_score_global_mean > 0.00098
    assert static.errors == {} and static.filtered_by == "motion"


def test_unscorable_clips_are_recorded_and_count_as_static(tmp_path, stage_clips, make_task, make_spec):
    video = SampleVideo("tiny", 320, 180, 24, (Segment(1, True, 3),))
    tiny = write_video(video, tmp_path / "tiny.mp4")
    short_task = run_stage(TranscodeStage, make_spec(), make_task(tiny, [(0, 2)]))

    task = copy.deepcopy(stage_clips)
    del task.clips[0].frames["motion"]  # as from a transcode that was not asked for motion's frames
    task.clips[1].encoded = None  # transcode failed: nothing to score, left alone
    task.clips[2] = short_task.clips[0]
    run = run_motion(make_spec(), task)
    without_frames, missing, short = run.clips
    assert "no frames" in without_frames.errors["motion"] and without_frames.filtered_by == "motion"
    assert without_frames.motion_score_global_mean is None
    assert "no frame pair" in short.errors["motion"] and short.filtered_by == "motion"
    assert missing.errors == {} and missing.filtered_by is None and missing.motion_score_global_mean is None

    scored_only = run_motion(make_spec(motionFilter={"mode": "score-only"}), task)
    assert [c.filtered_by for c in scored_only.clips] == [None] * 3
    assert "motion" in scored_only.clips[0].errors
