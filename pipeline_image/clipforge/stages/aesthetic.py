"""Aesthetic filter: CLIP ViT-L/14 image features scored by the LAION aesthetic MLP.

The method is NeMo Curator's (and LAION's improved-aesthetic-predictor): frames are sampled at
`aestheticFilter.fps`, each goes through CLIP's vision tower and projection, the projected
feature is L2-normalised and fed to a small MLP that predicts a 1-10 aesthetic rating. The
frame scores become the clip's score by their minimum (default: one ugly frame sinks the clip)
or mean, and a clip scoring below `threshold` is moved to filtered_clips/ with
`filtered_by = "aesthetic"`. A clip an earlier filter already moved aside is not scored. The
frames come from transcode's decode (frames.py), the short side at the CLIP model's image size
(its processor then crops the centre square, as it would from the full frame).

Model directories (under `models.uri`, never downloaded at run time):

- `<clipModel>/`: a transformers CLIP checkpoint (`config.json` of a CLIPModel or
  CLIPVisionModelWithProjection, its weights, `preprocessor_config.json`), for example
  openai/clip-vit-large-patch14 as saved by `save_pretrained`. Only the vision tower and
  its projection are loaded.
- `<mlpModel>/`: the MLP's state dict, in `model.safetensors` (safetensors, as NeMo Curator
  stages it) or `model.pth` (`torch.save(state_dict)`, as improved-aesthetic-predictor ships
  `sac+logos+ava1-l14-linearMSE.pth`; rename it). Keys follow that project's layout:
  `layers.{0,2,4,6,7}.{weight,bias}` for Linear(D,1024), Linear(1024,128), Linear(128,64),
  Linear(64,16), Linear(16,1), where D is CLIP's projection dim (768 for ViT-L/14).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from clipforge.failures import raise_if_environmental
from clipforge.frames import FrameRequest, fit_short_side, frames_for, sample_indices
from clipforge.models import PROCESSOR, WEIGHTS, ModelNotFoundError, ModelRequirement, model_dir, model_json
from clipforge.spec import VideoCurationJobSpec
from clipforge.stages.base import Stage
from clipforge.tasks import Clip, VideoTask

log = logging.getLogger(__name__)

# Frames per forward pass of the CLIP vision tower.
BATCH_FRAMES = 32
MLP_FILES = ("model.safetensors", "model.pth")
def build_mlp(input_dim: int):  # noqa: ANN201 - torch is imported lazily
    """The aesthetic MLP, state-dict compatible with improved-aesthetic-predictor (`layers.N.*`)."""
    from torch import nn

    class AestheticMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.Sequential(
                nn.Linear(input_dim, 1024), nn.Dropout(0.2),
                nn.Linear(1024, 128), nn.Dropout(0.2),
                nn.Linear(128, 64), nn.Dropout(0.1),
                nn.Linear(64, 16),
                nn.Linear(16, 1),
            )

        def forward(self, x):  # noqa: ANN001, ANN202
            return self.layers(x)

    return AestheticMLP()


def load_mlp_state(directory: Path) -> tuple[dict, Path]:
    """(state dict, the file it came from) of the aesthetic MLP in `directory`."""
    import torch

    for name in MLP_FILES:
        path = directory / name
        if not path.exists():
            continue
        try:
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                state = load_file(str(path))
            else:
                state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - say which file is broken
            raise ValueError(f"aesthetic MLP weights {path} cannot be read: {type(exc).__name__}: {exc}") from exc
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        return state, path
    raise ModelNotFoundError(f"aesthetic MLP: missing {' or '.join(str(directory / n) for n in MLP_FILES)}")


def reduce_scores(scores: np.ndarray, reduction: str) -> float:
    if reduction == "min":
        return float(np.min(scores))
    if reduction == "mean":
        return float(np.mean(scores))
    raise ValueError(f"unknown reduction {reduction!r}")


def clip_vision_config(clip_dir: Path):  # noqa: ANN201
    """The vision tower's config from a CLIPModel or a vision-only checkpoint.

    A full CLIPModel config keeps the projection width at its top level; the vision config
    transformers derives from it would fall back to its own default (512), so it is copied over.
    """
    from transformers import CLIPConfig, CLIPVisionConfig, PretrainedConfig

    raw = PretrainedConfig.get_config_dict(str(clip_dir), local_files_only=True)[0]
    if raw.get("model_type") == "clip":
        full = CLIPConfig.from_pretrained(str(clip_dir), local_files_only=True)
        vision = full.vision_config
        vision.projection_dim = full.projection_dim
        return vision
    return CLIPVisionConfig.from_pretrained(str(clip_dir), local_files_only=True)


class AestheticScorer:
    """CLIP vision features -> L2 normalisation -> aesthetic MLP, on CUDA when available."""

    def __init__(self, clip_dir: Path, mlp_dir: Path, device: str | None = None):
        import torch
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection
        from transformers.utils import logging as hf_logging

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        try:
            self.processor = CLIPImageProcessor.from_pretrained(str(clip_dir), local_files_only=True)
            config = clip_vision_config(clip_dir)
            # A full CLIPModel checkpoint has a text tower we skip: keep transformers' load report
            # (a table of every unused tensor) out of the logs; what matters is checked below.
            previous = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
            try:
                model, info = CLIPVisionModelWithProjection.from_pretrained(
                    str(clip_dir), config=config, local_files_only=True, output_loading_info=True
                )
            finally:
                hf_logging.set_verbosity(previous)
        except (OSError, ValueError) as exc:
            raise ValueError(f"CLIP model in {clip_dir} cannot be loaded: {exc}") from exc
        # transformers re-initialises what it cannot load: a scorer on random weights must not run.
        broken = list(info.get("missing_keys") or []) + [str(m) for m in info.get("mismatched_keys") or []]
        if broken:
            raise ValueError(f"CLIP weights in {clip_dir} lack or mismatch {len(broken)} tensors: {broken[:4]}")
        self.clip = model.to(self.device, self.dtype).eval()
        projection_dim = int(model.config.projection_dim)

        state, path = load_mlp_state(mlp_dir)
        first = state.get("layers.0.weight")
        if first is None:
            raise ValueError(
                f"aesthetic MLP weights {path} do not have the improved-aesthetic-predictor layout"
                f" (no layers.0.weight; keys: {sorted(state)[:6]})"
            )
        if first.shape[1] != projection_dim:
            raise ValueError(
                f"aesthetic MLP weights {path} take {first.shape[1]}-d features but the CLIP model in"
                f" {clip_dir} projects to {projection_dim}"
            )
        mlp = build_mlp(projection_dim)
        try:
            mlp.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"aesthetic MLP weights {path} do not fit the MLP: {exc}") from exc
        self.mlp = mlp.to(self.device).eval()

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """One score per frame of `frames` [N, H, W, 3] uint8 RGB."""
        import torch

        scores = []
        with torch.inference_mode():
            for start in range(0, len(frames), BATCH_FRAMES):
                batch = list(frames[start:start + BATCH_FRAMES])
                pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"]
                features = self.clip(pixel_values=pixels.to(self.device, self.dtype)).image_embeds.float()
                features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                scores.append(self.mlp(features).squeeze(-1).cpu())
        return torch.cat(scores).numpy()


class AestheticStage(Stage):
    name = "aesthetic"

    @classmethod
    def models(cls, spec: VideoCurationJobSpec) -> list[ModelRequirement]:
        cfg = spec.aesthetic_filter
        return [
            ModelRequirement(cls.name, cfg.clip_model, CLIP_FILES, description="CLIP ViT-L/14 (transformers)"),
            ModelRequirement(
                cls.name, cfg.mlp_model, ("|".join(MLP_FILES),),
                description="LAION aesthetic MLP state dict (improved-aesthetic-predictor layout)",
            ),
        ]

    @classmethod
    def frame_request(cls, spec: VideoCurationJobSpec) -> FrameRequest | None:
        fps = spec.aesthetic_filter.fps
        config = model_json(spec, spec.aesthetic_filter.clip_model, ("config.json",))
        # A CLIPModel keeps the vision tower's settings under vision_config; a vision-only one at the top.
        short = int(config.get("vision_config", config).get("image_size", 224))
        return FrameRequest(cls.name, lambda n, rate, w, h: (sample_indices(n, rate, fps), fit_short_side(w, h, short)))

    @classmethod
    def missing_outputs(cls, spec: VideoCurationJobSpec, clip: Clip) -> list[str]:
        # Asked of the clips it scores: those no earlier filter moved aside (a clip this filter
        # itself moved aside still needs its score).
        if clip.filtered_by in (None, cls.name) and clip.aesthetic_score is None:
            return ["aesthetic_score"]
        return []

    def setup(self) -> None:
        spec = self.spec.aesthetic_filter
        with self.torch_threads():
            self.scorer = AestheticScorer(
                model_dir(self.spec, spec.clip_model, CLIP_FILES),
                model_dir(self.spec, spec.mlp_model, ("|".join(MLP_FILES),)),
            )

    def process(self, task: VideoTask) -> list[VideoTask]:
        spec = self.spec.aesthetic_filter
        for clip in task.clips:
            if not clip.encoded:
                continue  # nothing to score; transcode recorded why
            if clip.filtered_by is not None and clip.filtered_by != self.name:
                clip.frames.pop(self.name, None)
                continue  # an earlier filter already moved it aside, as NeMo drops it before scoring
            clip.errors.pop(self.name, None)
            try:
                with self.torch_threads():
                    scores = self.scorer(frames_for(clip, self.name).frames)
                clip.aesthetic_score = reduce_scores(scores, spec.reduction)
                low = clip.aesthetic_score < spec.threshold
            except Exception as exc:  # noqa: BLE001 - one clip's failure must not stop the others
                raise_if_environmental(exc)
                log.warning("aesthetic scoring of clip %s failed: %s", clip.uuid, exc)
                clip.errors[self.name] = f"{type(exc).__name__}: {exc}"
                clip.aesthetic_score = None
                low = True  # as NeMo: a clip that cannot be scored does not pass
            clip.filtered_by = self.name if low else None
            clip.frames.pop(self.name, None)
        return [task]


# What transformers needs to load the CLIP vision tower.
CLIP_FILES = ("config.json", WEIGHTS, PROCESSOR)
