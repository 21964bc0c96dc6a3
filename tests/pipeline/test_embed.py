"""The embed stage and the model directories.

EfficientNet-Lite0 runs with its real, shipped ImageNet weights. CLIP and SigLIP run as tiny
checkpoints this module builds with transformers (random weights, tiny sizes, a word-level
tokenizer made offline) and saves with save_pretrained: they test our loading and calling
path, not the models' quality. Cosmos-Embed1 is a tiny remote-code model written here that
follows the real model's interface (see TINY_COSMOS below): it too tests only our code.
"""

from __future__ import annotations

import copy
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clipforge import models, preflight
from clipforge.cli import main
from clipforge.stages import pipeline_stages
from clipforge.stages.embed import EmbedStage, embed_files, load_embedder

# [0, 24) and [24, 48): two halves of scene 1; [96, 120) and [120, 144): two halves of scene 3.
SCENE_HALVES = [(0, 24), (24, 48), (96, 120), (120, 144)]


@pytest.fixture(scope="module")
def scene_clips(stage_source, make_task, make_spec):
    from clipforge.stages.transcode import TranscodeStage

    task = make_task(stage_source, SCENE_HALVES)
    spec = make_spec(transcoding={"preset": "ultrafast"})
    stage = TranscodeStage(spec, pipeline_stages(spec))
    stage.setup()
    stage.run(task)
    assert not task.errors and all(c.encoded for c in task.clips)
    return task


def embed(spec, task):
    from clipforge.stages.transcode import TranscodeStage

    task = copy.deepcopy(task)
    TranscodeStage(spec, pipeline_stages(spec)).run(task)  # transcode samples the frames this spec's embedder takes
    stage = EmbedStage(spec)
    stage.setup()
    stage.run(task)
    assert not task.errors, task.errors
    return task


def vectors(task) -> np.ndarray:
    return np.concatenate([c.embedding for c in task.clips]).astype(np.float32)


def test_efficientnet_lite0_clip_embeddings(scene_clips, make_spec):
    task = embed(make_spec(), scene_clips)
    for clip in task.clips:
        assert clip.embedding.dtype == np.float16 and clip.embedding.shape == (1, 1280)
        assert clip.embedding_algorithm == "efficientnet-lite0"
        assert np.linalg.norm(clip.embedding.astype(np.float32)) == pytest.approx(1.0, abs=1e-2)
    v = vectors(task)
    sim = v @ v.T
    assert sim[2, 3] > max(sim[0, 2], sim[0, 3], sim[1, 2], sim[1, 3])  # the two halves of scene 3


def test_efficientnet_lite0_frames_of_a_scene_are_closer(tmp_path, make_spec):
    """Real ImageNet weights: each frame's nearest frame is from its own scene."""
    from clipforge.frames import FrameRequest, sample_encoded, sample_indices
    from clipforge.samples import SampleVideo, Segment, write_video

    video = SampleVideo("three_scenes", 640, 360, 24, tuple(Segment(2, True, seed) for seed in (1, 3, 4)))
    request = FrameRequest("frames", lambda n, fps, w, h: (sample_indices(n, fps, 4), (224, 224)))
    sampled = sample_encoded(write_video(video, tmp_path / "v.mp4").read_bytes(), [request])["frames"]
    frames, indices = sampled.frames, sampled.indices
    scene = np.array(indices) // 48
    embedder = load_embedder(make_spec(), "cpu")
    with torch.inference_mode():
        v = embedder.embed([f[None] for f in frames])  # each frame on its own
    sim = v @ v.T
    np.fill_diagonal(sim, -1)
    assert (scene[sim.argmax(axis=1)] == scene).all(), sim
    same = (scene[:, None] == scene[None]) & ~np.eye(len(scene), dtype=bool)
    assert sim[same].mean() > sim[scene[:, None] != scene[None]].mean() + 0.05


def test_efficientnet_lite0_folded_model_gives_the_published_models_features(scene_clips, make_spec):
    """The embedder runs the model with its batch norms folded into the convolutions, channels-last:
    its features are the model's as published, to float rounding."""
    embedder = load_embedder(make_spec(), "cpu")
    published = embedder.published_model()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in published.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in embedder.model.modules())
    frames = embedder.frames(scene_clips.clips[0])
    with torch.inference_mode():
        expected = published.extract_features(embedder.normalised(frames)).mean(dim=(2, 3))
        got = embedder.embed_frames(frames)
    assert got.shape == expected.shape == (len(frames), 1280)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4), (got - expected).abs().max()


def test_filtered_and_failed_clips_are_not_embedded(scene_clips, make_spec):
    task = copy.deepcopy(scene_clips)
    task.clips[0].filtered_by = "motion"
    del task.clips[1].frames["embed"]
    stage = EmbedStage(make_spec())
    stage.setup()
    stage.run(task)
    assert task.clips[0].embedding is None and "embed" not in task.clips[0].errors
    assert task.clips[1].embedding is None and "no frames" in task.clips[1].errors["embed"]
    assert all(c.embedding is not None for c in task.clips[2:])
    # The frames were for this stage only: none travel on.
    assert all("embed" not in c.frames for c in task.clips)


def test_frames_come_at_the_size_each_model_takes(scene_clips, model_root, make_spec):
    from clipforge.stages.embed import embed_plan

    for algorithm, model, size in (("efficientnet-lite0", None, (224, 224)), ("clip", None, (114, 64)),
                                   ("cosmos-embed1-224p", None, (224, 224))):
        spec = make_spec(models={"uri": str(model_root)}, embeddings={"algorithm": algorithm, "model": model})
        indices, got = embed_plan(spec)(48, 24.0, 320, 180)
        assert got == size, algorithm
        assert indices == ([0, 12, 24, 36] if algorithm != "cosmos-embed1-224p" else [0, 6, 12, 18, 24, 30, 36, 42])


@pytest.mark.gpu
def test_efficientnet_lite0_on_cuda_matches_cpu(scene_clips, make_spec):
    spec = make_spec()
    clip = scene_clips.clips[0]
    cpu, gpu = load_embedder(spec, "cpu"), load_embedder(spec, "cuda")
    frames = [cpu.frames(clip)]
    with torch.inference_mode():
        a, b = cpu.embed(frames), gpu.embed(frames)
    assert float(a @ b.T) > 0.999


# --- tiny transformers checkpoints ----------------------------------------------------------

WORDS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "a", "photo", "of", "cat", "dog", "street", "lake", "forest"]


def _tokenizer():
    import transformers
    from tokenizers import Tokenizer, models as tok_models, pre_tokenizers

    tok = Tokenizer(tok_models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]",
        model_max_length=16,
    )


def _towers() -> tuple[dict, dict]:
    text = dict(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=16)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=32, patch_size=8)
    return text, vision


def make_tiny_clip(directory: Path) -> Path:
    import transformers

    text, vision = _towers()
    torch.manual_seed(0)
    model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(directory)
    images = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    transformers.CLIPProcessor(image_processor=images, tokenizer=_tokenizer()).save_pretrained(directory)
    return directory


def make_tiny_siglip(directory: Path) -> Path:
    import transformers

    text, vision = _towers()
    torch.manual_seed(0)
    transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=vision)).save_pretrained(directory)
    images = transformers.SiglipImageProcessor(size={"height": 32, "width": 32})
    transformers.SiglipProcessor(image_processor=images, tokenizer=_tokenizer()).save_pretrained(directory)
    return directory


# A stand-in for Cosmos-Embed1's remote code, following the interface NeMo Curator uses: the
# processor's num_video_frames, processor(videos=[B, T, C, H, W] uint8)["videos"],
# processor(text=[...]), model.get_video_embeddings(videos=...).visual_proj and
# model.get_text_embeddings(...).text_proj. It is NOT the real model: it checks the shapes it
# is given and pools a linear projection, so the test covers our loading and calling code.
TINY_COSMOS = {
    "configuration_tiny_cosmos.py": '''
from transformers import PretrainedConfig


class TinyCosmosConfig(PretrainedConfig):
    model_type = "tiny_cosmos_embed"

    def __init__(self, embed_dim=16, resolution=224, num_video_frames=8, vocab_size=64, **kwargs):
        self.embed_dim = embed_dim
        self.resolution = resolution
        self.num_video_frames = num_video_frames
        self.vocab_size = vocab_size
        super().__init__(**kwargs)
''',
    "modeling_tiny_cosmos.py": '''
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_tiny_cosmos import TinyCosmosConfig


@dataclass
class VideoOutput(ModelOutput):
    visual_proj: torch.Tensor = None


@dataclass
class TextOutput(ModelOutput):
    text_proj: torch.Tensor = None


class TinyCosmosEmbed(PreTrainedModel):
    config_class = TinyCosmosConfig

    def __init__(self, config):
        super().__init__(config)
        self.visual = torch.nn.Linear(3, config.embed_dim)
        self.text = torch.nn.Embedding(config.vocab_size, config.embed_dim)
        self.post_init()

    def get_video_embeddings(self, videos):
        b, t, c, h, w = videos.shape
        cfg = self.config
        assert (t, c, h, w) == (cfg.num_video_frames, 3, cfg.resolution, cfg.resolution), videos.shape
        return VideoOutput(visual_proj=self.visual(videos.mean(dim=(1, 3, 4))))

    def get_text_embeddings(self, input_ids, attention_mask=None):
        return TextOutput(text_proj=self.text(input_ids).mean(dim=1))
''',
    "processing_tiny_cosmos.py": '''
import json
import os

import numpy as np
import torch
from transformers import BatchFeature


class TinyCosmosProcessor:
    def __init__(self, num_video_frames=8, resolution=224):
        self.num_video_frames = num_video_frames
        self.resolution = resolution

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoProcessor"):
        pass  # transformers calls this on remote-code processors (ProcessorMixin has it)

    @classmethod
    def from_pretrained(cls, directory, **kwargs):
        with open(os.path.join(directory, "processor_config.json")) as f:
            config = json.load(f)
        return cls(config["num_video_frames"], config["resolution"])

    def __call__(self, videos=None, text=None, return_tensors="pt"):
        if videos is not None:
            videos = np.asarray(videos)
            assert videos.dtype == np.uint8 and videos.ndim == 5 and videos.shape[2] == 3, videos.shape
            return BatchFeature({"videos": torch.from_numpy(videos.astype(np.float32) / 255.0)})
        ids = [[sum(map(ord, word)) % 64 for word in t.split()] or [0] for t in text]
        width = max(map(len, ids))
        return BatchFeature({"input_ids": torch.tensor([i + [0] * (width - len(i)) for i in ids])})
''',
}


def make_tiny_cosmos(directory: Path, resolution: int = 224) -> Path:
    import importlib

    directory.mkdir(parents=True, exist_ok=True)
    package = directory.name.replace("-", "_") + "_src"
    (directory.parent / package).mkdir(exist_ok=True)
    for name, source in TINY_COSMOS.items():
        (directory / name).write_text(source)
        (directory.parent / package / name).write_text(source)
    (directory.parent / package / "__init__.py").write_text("")
    sys.path.insert(0, str(directory.parent))
    try:
        modeling = importlib.import_module(f"{package}.modeling_tiny_cosmos")
        config = importlib.import_module(f"{package}.configuration_tiny_cosmos")
    finally:
        sys.path.remove(str(directory.parent))
    torch.manual_seed(0)
    modeling.TinyCosmosEmbed(config.TinyCosmosConfig(resolution=resolution)).save_pretrained(directory)
    auto_map = {
        "AutoConfig": "configuration_tiny_cosmos.TinyCosmosConfig",
        "AutoModel": "modeling_tiny_cosmos.TinyCosmosEmbed",
        "AutoProcessor": "processing_tiny_cosmos.TinyCosmosProcessor",
    }
    cfg = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**cfg, "auto_map": auto_map}))
    (directory / "processor_config.json").write_text(
        json.dumps({"auto_map": {"AutoProcessor": auto_map["AutoProcessor"]}, "num_video_frames": 8,
                    "resolution": resolution})
    )
    return directory


@pytest.fixture(scope="module")
def model_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    make_tiny_clip(root / "clip")
    make_tiny_siglip(root / "siglip-tiny")
    make_tiny_cosmos(root / "cosmos-embed1-224p")
    return root


TEXTS = ["a photo of a cat", "a street"]


@pytest.mark.parametrize(
    ("algorithm", "model", "dim"),
    [("clip", None, 16), ("siglip", "siglip-tiny", 32), ("cosmos-embed1-224p", None, 16)],
)
def test_tiny_models_load_through_the_real_path(algorithm, model, dim, model_root, scene_clips, make_spec):
    spec = make_spec(models={"uri": str(model_root)},
                     embeddings={"algorithm": algorithm, "model": model, "textsToVerify": TEXTS})
    assert preflight.check(spec) == []
    task = embed(spec, scene_clips)
    for clip in task.clips:
        assert clip.embedding.dtype == np.float16 and clip.embedding.shape == (1, dim)
        assert np.linalg.norm(clip.embedding.astype(np.float32)) == pytest.approx(1.0, abs=1e-2)
        assert clip.embedding_algorithm == algorithm
        assert clip.text_match["best"] in TEXTS and set(clip.text_match["scores"]) == set(TEXTS)
        assert all(-1.01 <= s <= 1.01 for s in clip.text_match["scores"].values())


def test_missing_model_directory_names_the_path(tmp_path, make_spec):
    spec = make_spec(models={"uri": str(tmp_path)}, embeddings={"algorithm": "clip"})
    [problem] = preflight.check(spec)
    assert str(tmp_path / "clip") in problem and "config.json" in problem
    with pytest.raises(models.ModelNotFoundError, match=str(tmp_path / "clip")):
        EmbedStage(spec).setup()


def test_missing_model_file_names_the_file(tmp_path, model_root, make_spec):
    import shutil

    shutil.copytree(model_root / "clip", tmp_path / "clip")
    (tmp_path / "clip" / "model.safetensors").unlink()
    spec = make_spec(models={"uri": str(tmp_path)}, embeddings={"algorithm": "clip"})
    [problem] = preflight.check(spec)
    assert str(tmp_path / "clip" / "model.safetensors") in problem
    with pytest.raises(models.ModelNotFoundError, match="model.safetensors"):
        EmbedStage(spec).setup()


def test_models_uri_unset_is_reported(make_spec):
    [problem] = preflight.check(make_spec(embeddings={"algorithm": "siglip"}))
    assert "models.uri" in problem and "siglip" in problem
    assert preflight.check(make_spec()) == []  # efficientnet-lite0 ships with the package
    assert preflight.check(make_spec(embeddings={"enabled": False, "algorithm": "siglip"})) == []


def _job(tmp_path: Path, **spec) -> Path:
    from support.jobs import manifest, write_manifest

    return write_manifest(tmp_path / "job.yaml", manifest(str(tmp_path / "in"), str(tmp_path / "out"), **spec))


def test_models_command_lists_and_checks(tmp_path, model_root, capsys):
    assert main(["models", str(_job(tmp_path, models={"uri": str(model_root)},
                                     embeddings={"algorithm": "clip"}))]) == 0
    out = capsys.readouterr().out
    assert f"embed: clip -> {model_root / 'clip'}" in out and "config.json" in out

    assert main(["models", str(_job(tmp_path))]) == 0
    assert "efficientnet-lite0" in capsys.readouterr().out

    job = _job(tmp_path, models={"uri": str(tmp_path / "nowhere")}, embeddings={"algorithm": "siglip"})
    assert main(["models", str(job)]) == 2
    assert str(tmp_path / "nowhere" / "siglip") in capsys.readouterr().err


def test_run_fails_at_submission_when_a_model_is_missing(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    job = _job(tmp_path, models={"uri": str(tmp_path / "models")},
               embeddings={"algorithm": "cosmos-embed1-336p"}, execution={"executor": "local"})
    assert main(["run", str(job), "--no-progress"]) == 2
    assert str(tmp_path / "models" / "cosmos-embed1-336p") in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing started


def test_embedding_pickle_round_trips():
    from clipforge.embedding_files import embedding_pickle

    a = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float16)
    b = pickle.loads(embedding_pickle(a))
    assert b.dtype == np.float16 and b.shape == (1, 8) and np.array_equal(a, b)


def test_models_under_s3_are_staged_once_into_the_cache(tmp_path, model_root, s3_server, s3_bucket, monkeypatch,
                                                       scene_clips, make_spec):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    client = s3_server.client()
    for path in (model_root / "clip").rglob("*"):
        if path.is_file():
            client.upload_file(str(path), s3_bucket, f"models/clip/{path.relative_to(model_root / 'clip')}")
    cache = tmp_path / "cache"
    spec = make_spec(
        storage={"endpoint": s3_server.endpoint, "region": s3_server.region},
        models={"uri": f"s3://{s3_bucket}/models", "cacheDir": str(cache)},
        embeddings={"algorithm": "clip", "textsToVerify": TEXTS},
    )
    assert preflight.check(spec) == []
    local = models.model_dir(spec, "clip", embed_files("clip"))
    assert local == cache / "clip"
    assert sorted(p.name for p in local.iterdir()) == sorted(p.name for p in (model_root / "clip").iterdir())
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp dir left behind
    stamp = (local / "config.json").stat().st_mtime_ns
    task = embed(spec, scene_clips)  # loads from the cache, not from S3 again
    assert (local / "config.json").stat().st_mtime_ns == stamp
    assert task.clips[0].embedding.shape == (1, 16)

    missing = make_spec(storage={"endpoint": s3_server.endpoint, "region": s3_server.region},
                        models={"uri": f"s3://{s3_bucket}/nothing", "cacheDir": str(cache)},
                        embeddings={"algorithm": "siglip"})
    assert any(f"s3://{s3_bucket}/nothing/siglip/config.json" in p for p in preflight.check(missing))
    with pytest.raises(models.ModelNotFoundError, match=f"s3://{s3_bucket}/nothing/siglip"):
        models.model_dir(missing, "siglip")


@pytest.mark.ray
@pytest.mark.slow
def test_ray_job_writes_the_embeddings(tmp_path, samples_dir):
    """The embed stage as a Ray actor: a pickle per embedded clip and a parquet per video."""
    import os
    import subprocess

    import pandas as pd
    from support.jobs import FIVE_SECOND_CLIPS, manifest, write_manifest

    out = tmp_path / "out"
    job = write_manifest(tmp_path / "job.yaml", manifest(
        str(samples_dir), str(out), splitting=FIVE_SECOND_CLIPS, execution={"executor": "ray", "clipsPerChunk": 1}))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run([sys.executable, "-m", "clipforge.cli", "run", str(job), "--no-progress"],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    passed = {p.stem for p in (out / "clips").glob("*.mp4")}
    assert {p.stem for p in (out / "efficientnet-lite0_embd").glob("*.pickle")} == passed and len(passed) == 3
    ids = set()
    for rel in ("moving_then_static.mp4", "sub/three_scenes.mp4"):
        frame = pd.read_parquet(out / "efficientnet-lite0_embd_parquet" / f"{rel}.parquet")
        ids |= set(frame["id"])
        for embedding in frame["embedding"]:
            assert len(embedding) == 1280 and float(np.linalg.norm(embedding)) == pytest.approx(1.0, abs=1e-2)
    assert ids == passed
