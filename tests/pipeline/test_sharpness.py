"""Sharpness filter: the Laplacian-variance score, and a job that sets a blurred scene aside."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from clipforge.cli import main
from clipforge.spec import VideoCurationJobSpec
from clipforge.stages import pipeline_stages
from clipforge.stages.sharpness import ANALYSIS_SHORT_SIDE, laplacian_variance
from support.jobs import load_json, manifest, write_manifest

WIDTH, HEIGHT, FPS = 640, 360, 24
KERNEL = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64)


def box_blur(image: np.ndarray, radius: int) -> np.ndarray:
    """A (2 * radius + 1)-wide box filter along both axes, edges repeated."""
    out = image.astype(np.float64)
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in range(out.ndim)], mode="edge")
        sums = np.cumsum(padded, axis=axis)
        sums = np.concatenate([np.zeros_like(np.take(sums, [0], axis=axis)), sums], axis=axis)
        width = 2 * radius + 1
        out = (np.take(sums, range(width, sums.shape[axis]), axis=axis)
               - np.take(sums, range(0, sums.shape[axis] - width), axis=axis)) / width
    return out


def write_sharp_then_blurred(path: Path) -> Path:
    """2 s of a panned texture of hard-edged blocks, then 2 s of the same pan heavily blurred."""
    rng = np.random.default_rng(7)
    blocks = rng.integers(0, 256, size=(HEIGHT // 8, WIDTH // 4, 3), dtype=np.uint8)
    texture = np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8))
    blurred = texture.astype(np.float64)
    for _ in range(3):
        blurred = box_blur(blurred, 6)
    blurred = blurred.round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.options = {"preset": "veryfast", "crf": "18"}
        for i in range(4 * FPS):
            picture = texture if i < 2 * FPS else blurred
            frame = np.ascontiguousarray(np.roll(picture, -2 * i, axis=1)[:, :WIDTH])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def expected_score(source: Path, start: int, end: int) -> float:
    """The clip's score computed here: its source frames at 1 fps as gray at the analysis size,
    each frame's Laplacian by a 3x3 correlation, variance, mean over the frames."""
    with av.open(str(source)) as container:
        frames = [f for i, f in enumerate(container.decode(video=0)) if start <= i < end and (i - start) % FPS == 0]
    variances = []
    for frame in frames:
        assert min(frame.width, frame.height) <= ANALYSIS_SHORT_SIDE  # no scaling at this size
        luma = frame.reformat(format="gray").to_ndarray().astype(np.float64)
        windows = np.lib.stride_tricks.sliding_window_view(luma, (3, 3))
        variances.append(np.tensordot(windows, KERNEL, axes=([2, 3], [0, 1])).var())
    return float(np.mean(variances))


def test_laplacian_variance_of_flat_and_checkerboard_planes():
    assert laplacian_variance(np.full((32, 48), 77, dtype=np.uint8)) == 0.0
    checkerboard = (np.indices((32, 48)).sum(axis=0) % 2 * 255).astype(np.uint8)
    # Every interior pixel differs from its four neighbours by 255: the Laplacian is +-1020, mean 0.
    assert laplacian_variance(checkerboard) == 1020.0**2
    gradient = np.tile(np.arange(48, dtype=np.uint8) * 5, (32, 1))  # linear: no second derivative
    assert laplacian_variance(gradient) == 0.0


def test_the_stage_runs_only_when_enabled():
    spec = {"input": {"uri": "/in"}, "output": {"uri": "/out"}}
    names = [s.name for s in pipeline_stages(VideoCurationJobSpec.model_validate(spec))]
    assert "sharpness" not in names
    enabled = VideoCurationJobSpec.model_validate({**spec, "sharpnessFilter": {"enabled": True}})
    names = [s.name for s in pipeline_stages(enabled)]
    assert names[names.index("motion") + 1] == "sharpness"  # cheap filters before the model stages


def test_job_sets_the_blurred_scene_aside(tmp_path):
    source = write_sharp_then_blurred(tmp_path / "in" / "sharp_then_blurred.mp4")
    out = tmp_path / "out"
    document = manifest(
        str(source.parent), str(out),
        splitting={"algorithm": "fixed-stride", "fixedStride": {"clipLengthS": 2, "strideS": 2}},
        transcoding={"preset": "ultrafast"},
        previews={"enabled": False},
        embeddings={"enabled": False},
        sharpnessFilter={"enabled": True},
        execution={"executor": "local"},
    )
    assert main(["run", str(write_manifest(tmp_path / "job.yaml", document)), "--no-progress"]) == 0

    metas = sorted((load_json(p) for p in (out / "metas" / "v0").glob("*.json")), key=lambda m: m["span_frames"])
    assert [m["span_frames"] for m in metas] == [[0, 48], [48, 96]]
    sharp, blurred = metas
    for meta in metas:
        assert meta["valid"] is True and meta["errors"] == {} and meta["missing_outputs"] == []
        assert meta["scores"]["sharpness"] == pytest.approx(expected_score(source, *meta["span_frames"]), rel=1e-5)
    assert sharp["scores"]["sharpness"] > 1000 and sharp["filtered_by"] is None
    assert blurred["scores"]["sharpness"] < 100 and blurred["filtered_by"] == "sharpness"
    assert [p.stem for p in (out / "clips").glob("*.mp4")] == [sharp["span_uuid"]]
    assert [p.stem for p in (out / "filtered_clips").glob("*.mp4")] == [blurred["span_uuid"]]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clips"]["passed"] == 1 and summary["clips"]["filtered"] == 1
