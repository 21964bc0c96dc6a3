"""Aesthetic filter: a tiny CLIP saved with transformers and a hand-set MLP saved with torch.

The MLP is purely linear (as the LAION one is: no activations), so the hand-set weights make
each frame's score exactly v . normalise(clip_features(frame)) + b, which the tests compute
independently from the same tiny CLIP.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from clipforge.cli import main  # noqa: E402
from clipforge.frames import FrameRequest, fit_short_side, sample_encoded, sample_indices  # noqa: E402
from clipforge.models import ModelNotFoundError  # noqa: E402
from clipforge.samples import write_samples  # noqa: E402
from clipforge.stages.aesthetic import AestheticScorer, AestheticStage, clip_vision_config, reduce_scores  # noqa: E402
from support.jobs import load_json, manifest, small_samples, write_manifest  # noqa: E402

PROJECTION = 16
BIAS = 5.0


def _save_tiny_clip(directory: Path) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    config = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "vocab_size": 64, "max_position_embeddings": 16},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=PROJECTION,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(directory)  # a full CLIPModel, like openai/clip-vit-large-patch14
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(directory)


def linear_mlp_state(direction: np.ndarray, bias: float) -> dict:
    """improved-aesthetic-predictor weights whose output is direction . x + bias."""
    dims = [len(direction), 1024, 128, 64, 16, 1]
    state = {}
    for layer, (n_in, n_out) in zip((0, 2, 4, 6, 7), zip(dims, dims[1:])):
        weight = torch.zeros(n_out, n_in)
        if layer == 0:
            weight[0] = torch.from_numpy(direction.astype(np.float32))
        else:
            weight[0, 0] = 1.0
        state[f"layers.{layer}.weight"] = weight
        state[f"layers.{layer}.bias"] = torch.zeros(n_out)
    state["layers.7.bias"] = torch.tensor([bias])
    return state


DIRECTION = np.random.default_rng(7).normal(size=PROJECTION) * 4


@pytest.fixture(scope="module")
def models_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    _save_tiny_clip(root / "clip-vit-large-patch14")
    (root / "laion-aesthetic-mlp").mkdir()
    torch.save(linear_mlp_state(DIRECTION, BIAS), root / "laion-aesthetic-mlp" / "model.pth")
    return root


def expected_frame_scores(clip_dir: Path, frames: np.ndarray) -> np.ndarray:
    """The score computed without the stage: CLIP projection, normalised, dotted with DIRECTION."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    processor = CLIPImageProcessor.from_pretrained(clip_dir)
    model = CLIPVisionModelWithProjection.from_pretrained(clip_dir, config=clip_vision_config(clip_dir)).eval()
    with torch.no_grad():
        features = model(pixel_values=processor(images=list(frames), return_tensors="pt")["pixel_values"]).image_embeds
    features = torch.nn.functional.normalize(features, dim=-1).numpy()
    return features @ DIRECTION + BIAS


def spec_with(make_spec, models_root: Path, **aesthetic):
    return make_spec(models={"uri": str(models_root)}, transcoding={"preset": "ultrafast"},
                     aestheticFilter={"enabled": True, **aesthetic})


def source_frames(path: Path, start: int, end: int, fps: float) -> np.ndarray:
    """Frames [start, end) of a source file sampled at `fps`, as the aesthetic stage takes them:
    decoded, short side scaled to the tiny CLIP's 32 pixels."""
    def plan(n, rate, w, h):  # noqa: ANN001, ANN202
        return [start + i for i in sample_indices(end - start, rate, fps)], fit_short_side(w, h, 32)

    return sample_encoded(path.read_bytes(), [FrameRequest("aesthetic", plan)])["aesthetic"].frames


def aesthetic_run(spec, stage_clips, transcoded):  # noqa: ANN001
    stage = AestheticStage(spec)
    stage.setup()
    task = transcoded(spec, stage_clips)
    stage.run(task)
    return task


def test_scores_are_the_mlp_of_normalised_clip_features(models_root, stage_clips, stage_source, make_spec, transcoded):
    task = aesthetic_run(spec_with(make_spec, models_root, fps=4, threshold=-100), stage_clips, transcoded)
    for clip in task.clips:
        # The source's frames at 4 fps (2 s: 8 frames), at the model's size: what transcode handed over.
        frames = source_frames(stage_source, clip.start_frame, clip.end_frame, 4)
        assert frames.shape == (8, 32, 56, 3)
        expected = expected_frame_scores(models_root / "clip-vit-large-patch14", frames)
        assert clip.aesthetic_score == pytest.approx(float(expected.min()), abs=1e-4)
        assert clip.filtered_by is None and not clip.errors
        assert "aesthetic" not in clip.frames


def test_min_and_mean_reductions_and_threshold(models_root, stage_clips, make_spec, transcoded):
    scores = {}
    for reduction in ("min", "mean"):
        spec = spec_with(make_spec, models_root, fps=4, threshold=-100, reduction=reduction)
        scores[reduction] = [c.aesthetic_score for c in aesthetic_run(spec, stage_clips, transcoded).clips]
    moving = [0, 2]  # [0, 48) and [96, 144) move; [48, 96) is a still scene
    for i in moving:
        assert scores["min"][i] < scores["mean"][i] - 1e-4
    assert scores["min"][1] == pytest.approx(scores["mean"][1], abs=1e-2)  # a still scene (up to coding noise)

    # A threshold between a moving clip's min and mean filters it with min only.
    threshold = (scores["min"][0] + scores["mean"][0]) / 2
    for reduction, filtered in (("min", True), ("mean", False)):
        spec = spec_with(make_spec, models_root, fps=4, threshold=threshold, reduction=reduction)
        task = aesthetic_run(spec, stage_clips, transcoded)
        assert (task.clips[0].filtered_by == "aesthetic") is filtered
        for clip, score in zip(task.clips, scores[reduction]):
            assert (clip.filtered_by == "aesthetic") is (score < threshold)


def test_clips_filtered_earlier_are_not_scored(models_root, stage_clips, make_spec, transcoded):
    spec = spec_with(make_spec, models_root, threshold=1e9)
    stage = AestheticStage(spec)
    stage.setup()
    task = transcoded(spec, stage_clips)
    task.clips[1].filtered_by = "motion"
    stage.run(task)
    assert task.clips[1].filtered_by == "motion" and task.clips[1].aesthetic_score is None
    assert [task.clips[i].filtered_by for i in (0, 2)] == ["aesthetic", "aesthetic"]


def test_safetensors_weights_load_too(models_root, tmp_path, stage_source):
    from safetensors.torch import save_file

    (tmp_path / "mlp").mkdir()
    save_file(linear_mlp_state(DIRECTION, BIAS), str(tmp_path / "mlp" / "model.safetensors"))
    scorer = AestheticScorer(models_root / "clip-vit-large-patch14", tmp_path / "mlp")
    frames = source_frames(stage_source, 0, 48, 1)
    expected = expected_frame_scores(models_root / "clip-vit-large-patch14", frames)
    np.testing.assert_allclose(scorer(frames), expected, atol=1e-4)


def test_missing_and_wrong_files_name_the_path(models_root, tmp_path, make_spec):
    # No MLP directory at all: the model check and setup() both name it.
    spec = make_spec(models={"uri": str(tmp_path)}, aestheticFilter={"enabled": True})
    with pytest.raises(ModelNotFoundError, match=str(tmp_path / "clip-vit-large-patch14")):
        AestheticStage(spec).setup()

    clip_dir = models_root / "clip-vit-large-patch14"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotFoundError, match=str(empty / "model.safetensors")):
        AestheticScorer(clip_dir, empty)

    wrong_dim = tmp_path / "wrong_dim"
    wrong_dim.mkdir()
    torch.save(linear_mlp_state(np.ones(768), 0.0), wrong_dim / "model.pth")
    with pytest.raises(ValueError, match=f"{wrong_dim / 'model.pth'}.*768-d.*projects to {PROJECTION}"):
        AestheticScorer(clip_dir, wrong_dim)

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "model.pth").write_bytes(b"not a state dict")
    with pytest.raises(ValueError, match=str(garbage / "model.pth")):
        AestheticScorer(clip_dir, garbage)

    wrong_keys = tmp_path / "wrong_keys"
    wrong_keys.mkdir()
    torch.save({"fc.weight": torch.zeros(1, PROJECTION)}, wrong_keys / "model.pth")
    with pytest.raises(ValueError, match="improved-aesthetic-predictor layout"):
        AestheticScorer(clip_dir, wrong_keys)


def test_reduce_scores():
    assert reduce_scores(np.array([1.0, 3.0]), "min") == 1.0
    assert reduce_scores(np.array([1.0, 3.0]), "mean") == 2.0
    with pytest.raises(ValueError):
        reduce_scores(np.array([1.0]), "max")


@pytest.mark.gpu
def test_cuda_scores_match_cpu(models_root, stage_source):
    frames = source_frames(stage_source, 0, 48, 4)
    clip_dir, mlp_dir = models_root / "clip-vit-large-patch14", models_root / "laion-aesthetic-mlp"
    cpu = AestheticScorer(clip_dir, mlp_dir, device="cpu")(frames)
    cuda = AestheticScorer(clip_dir, mlp_dir, device="cuda")(frames)
    np.testing.assert_allclose(cuda, cpu, atol=2e-2)  # float16 on the GPU


def _run(tmp_path: Path, samples: Path, out: Path, models_root: Path, threshold: float) -> int:
    document = manifest(
        str(samples), str(out),
        splitting={"algorithm": "fixed-stride", "fixedStride": {"clipLengthS": 5, "strideS": 5}},
        transcoding={"preset": "ultrafast"},
        motionFilter={"mode": "disable"},
        previews={"enabled": False},
        embeddings={"enabled": False},
        models={"uri": str(models_root)},
        aestheticFilter={"enabled": True, "threshold": threshold},
        execution={"executor": "local", "clipsPerChunk": 2},
    )
    return main(["run", str(write_manifest(tmp_path / f"job-{out.name}.yaml", document)), "--no-progress"])


def test_job_filters_low_scores_into_filtered_clips(tmp_path, models_root):
    samples = tmp_path / "samples"
    write_samples(samples, small_samples())
    scored = tmp_path / "scored"
    assert _run(tmp_path, samples, scored, models_root, threshold=-1e9) == 0
    metas = {p.stem: load_json(p) for p in (scored / "metas" / "v0").glob("*.json")}
    assert len(metas) == 4
    for meta in metas.values():
        assert meta["valid"] is True and meta["filtered_by"] is None
        start, end = meta["span_frames"]
        frames = source_frames(Path(meta["source_video"]), start, end, 1)
        expected = expected_frame_scores(models_root / "clip-vit-large-patch14", frames).min()
        assert meta["aesthetic_score"] == pytest.approx(float(expected), abs=1e-4)

    threshold = float(np.median([m["aesthetic_score"] for m in metas.values()]))
    out = tmp_path / "filtered"
    assert _run(tmp_path, samples, out, models_root, threshold=threshold) == 0
    low = {k for k, m in metas.items() if m["aesthetic_score"] < threshold}
    assert len(low) == 2
    assert {p.stem for p in (out / "filtered_clips").glob("*.mp4")} == low
    assert {p.stem for p in (out / "clips").glob("*.mp4")} == set(metas) - low
    for clip_id in metas:
        meta = load_json(out / "metas" / "v0" / f"{clip_id}.json")
        assert meta["filtered_by"] == ("aesthetic" if clip_id in low else None)
        assert meta["aesthetic_score"] == pytest.approx(metas[clip_id]["aesthetic_score"], abs=1e-6)
        assert meta["valid"] is True
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clips"]["filtered"] == 2 and summary["clips"]["passed"] == 2
