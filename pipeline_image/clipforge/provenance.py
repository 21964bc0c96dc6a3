"""What made a record: the run, the code, the models, the source and the spans.

Chunk records (processed_clip_chunks/) and video records (processed_videos/) carry it. A rerun
takes a record as done only when everything that decides its outputs is the same: the clip
settings, the source's version (size and modification time), the spans (chunk records, through
their clip ids), and the weights of every model the job loads (a content digest). A changed source or model
therefore redoes the videos and chunks it touched, and split deletes what they had written.

The code's versions (ClipForge, PyAV, FFmpeg) are recorded but not matched: upgrading them
must not redo a finished dataset of millions of videos, and the record says which versions
made each clip for anyone who needs to select by them. For the same reason, fields a record
from before they were recorded lacks match anything, and a setting a later ClipForge added
matches a record without it while this run leaves it at its default.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from clipforge.models import ModelRequirement
from clipforge.spec import VideoCurationJobSpec, clip_settings
from clipforge.storage import Storage, is_s3

# Per-file digests of local model weights, keyed by path, size and mtime: a model of many
# gigabytes is read once per machine and change, not once per run.
DIGEST_CACHE = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "clipforge" / "file-digests"


def new_run_id() -> str:
    return uuid.uuid4().hex


def code_versions() -> dict[str, str]:
    import av

    return {"clipforge": metadata.version("clipforge"), "pyav": av.__version__, "ffmpeg": av.ffmpeg_version_info}


def spans_digest(spans: Iterable[tuple[int, int]]) -> str:
    """A chunk's half-open frame spans, in order, as one digest."""
    return hashlib.sha256(json.dumps([list(s) for s in spans]).encode()).hexdigest()


def _file_digest(path: Path) -> str:
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()
    cached = DIGEST_CACHE / key
    try:
        return cached.read_text()
    except OSError:
        pass
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    try:  # the cache is an optimisation: a read-only home only costs the next run a re-read
        DIGEST_CACHE.mkdir(parents=True, exist_ok=True)
        tmp = DIGEST_CACHE / f".{key}.{uuid.uuid4().hex}"
        tmp.write_text(digest)
        tmp.rename(cached)
    except OSError:
        pass
    return digest


def model_digest(storage: Storage, req: ModelRequirement) -> str:
    """The identity of one model's weights: the package that ships them, the sha256 of every file
    of a local directory, or for an s3:// directory its objects' sizes and modification times
    (S3 hands out no content digest through a listing; a replaced object has a new mtime)."""
    if req.bundled:
        return f"{req.bundled}=={metadata.version(req.bundled)}"
    if is_s3(req.location):
        entries = [[f.relative, f.size, f.mtime] for f in storage.list_files(req.location, ["*"])]
        return "s3-listing:" + hashlib.sha256(json.dumps(entries).encode()).hexdigest()
    root = Path(req.location).expanduser()
    entries = [[p.relative_to(root).as_posix(), _file_digest(p)] for p in sorted(root.rglob("*")) if p.is_file()]
    return "sha256:" + hashlib.sha256(json.dumps(entries).encode()).hexdigest()


@dataclass(frozen=True)
class Provenance:
    """The run's part of every record it writes."""

    run_id: str
    versions: dict[str, str]
    models: dict[str, str]  # "<stage>/<model>" -> model_digest

    @classmethod
    def of_run(cls, run_id: str, storage: Storage, requirements: list[ModelRequirement]) -> Provenance:
        return cls(run_id=run_id, versions=code_versions(),
                   models={f"{req.stage}/{req.name}": model_digest(storage, req) for req in requirements})

    def fields(self) -> dict:
        return {"run_id": self.run_id, "versions": self.versions, "models": self.models}


def matches(record: dict, settings: dict, provenance: Provenance | None, source: dict | None) -> bool:
    """Whether `record` was made by what this run would make it with (see the module's doc); a
    chunk's spans are checked by its clip ids (stages/split.py), which follow from them."""
    if not _same_settings(record.get("settings"), settings, _default_settings()):
        return False
    expected = {"source": source, "models": provenance.models if provenance else None}
    return all(record.get(key, value) == value for key, value in expected.items() if value is not None)


_UNSET = object()


def _same_settings(recorded: object, current: object, default: object) -> bool:
    if not (isinstance(recorded, dict) and isinstance(current, dict)):
        return recorded == current
    defaults = default if isinstance(default, dict) else {}
    return recorded.keys() <= current.keys() and all(
        _same_settings(recorded[key], value, defaults.get(key, _UNSET)) if key in recorded
        else value == defaults.get(key, _UNSET)
        for key, value in current.items())


@functools.cache
def _default_settings() -> dict:
    return clip_settings(VideoCurationJobSpec(input={"uri": "-"}, output={"uri": "-"}))
