"""`clipforge export`: an output's passed clips as WebDataset tar shards, for training loaders.

    DEST/shard-NNNNNN.tar   one sample per passed clip, its files named by the clip's id:
                            <id>.mp4 or <id>.mkv (the clip, as written), <id>.json (its metas/v0 record:
                            as written, locations relative to the output root; an older record's
                            locations made so by clip_outputs.current_locations),
                            <id>.txt (its captions, when captioned: clip_index.caption_text),
                            <id>.npy (its embedding as stored, a float16 (1, dim) array, when embedded)
    DEST/export.json        what DEST holds: source, seed, shard size, the plan's digest, the shards

The clips are the index's passed clips, sorted by id and shuffled with random.Random(seed), then
cut into shards of about shard_size bytes in that order: the plan (which clip goes into which
shard) depends only on the index, the seed and the size, and a shard's bytes only on its clips.
That makes an export resumable like a run: export.json records the plan before any shard is
written, shards are written atomically, and an export over a DEST holding the same plan writes
only the shards that are missing (none on a rerun). Another plan rewrites every shard and
removes the shards it no longer has.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import random
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from clipforge import clip_index, layout
from clipforge.clip_outputs import current_locations
from clipforge.storage import Storage, StorageError, join, json_bytes

MANIFEST = "export.json"
READ_THREADS = 16
TAR_BLOCK = 512
# A metas/v0 record is about 1-2 KiB: what the plan counts for <id>.json before reading it.
JSON_ALLOWANCE = 4096


class ExportError(RuntimeError):
    """An export that cannot be made; the message names the output, clip or destination."""


@dataclass(frozen=True)
class Sample:
    clip_id: str
    clip_location: str  # relative to the output root, as the index gives it
    num_bytes: int
    caption: str | None
    embedding_location: str | None
    embedding_dim: int | None

    @property
    def clip_member(self) -> str:
        return f"{self.clip_id}.{layout.clip_container(self.clip_location)}"

    def planned_bytes(self) -> int:
        members = [self.num_bytes, JSON_ALLOWANCE]
        if self.caption:
            members.append(len(self.caption.encode()))
        if self.embedding_dim:
            members.append(128 + 2 * self.embedding_dim)  # .npy header and float16 values
        return sum(TAR_BLOCK + -(-size // TAR_BLOCK) * TAR_BLOCK for size in members)


@dataclass(frozen=True)
class ExportResult:
    clips: int
    shards: list[str]
    written: int  # shards written by this call (the others were already there)


def parse_size(text: str) -> int:
    """Bytes in 512M, 1G, 100k or a plain number of bytes (binary units)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    value = text.strip().lower().removesuffix("b")
    scale = units.get(value[-1:], 1)
    number = value[:-1] if value[-1:] in units else value
    try:
        size = int(float(number) * scale)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (examples: 512M, 1G, 100000)") from None
    if size <= 0:
        raise ValueError(f"shard size must be positive, not {text!r}")
    return size


def passed_samples(storage: Storage, root: str) -> list[Sample]:
    """The index's passed clips, sorted by id (the index is built first if the output has none,
    or one an older version wrote). Raises clip_index.NotAnOutputError, having written nothing,
    when root holds no records."""
    columns = ["span_uuid", "status", "clip_location", "num_bytes", "windows", "embedding"]
    if not clip_index.is_current(storage, root):
        clip_index.write_output_index(storage, root)
    table = clip_index.read_table(storage, root, layout.CLIP_INDEX, columns)
    table = table.filter(pc.field("status") == "passed").sort_by("span_uuid")
    samples = []
    for row in table.to_pylist():
        embedding = row["embedding"] or {}
        samples.append(Sample(row["span_uuid"], row["clip_location"], row["num_bytes"],
                              clip_index.caption_text(row["windows"]), embedding.get("location"), embedding.get("dim")))
    return samples


def plan_shards(samples: list[Sample], seed: int, shard_size: int) -> list[list[Sample]]:
    order = list(samples)
    random.Random(seed).shuffle(order)
    shards: list[list[Sample]] = []
    size = 0
    for sample in order:
        planned = sample.planned_bytes()
        if not shards or (size + planned > shard_size and shards[-1]):
            shards.append([])
            size = 0
        shards[-1].append(sample)
        size += planned
    return shards


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def _digest(shards: list[list[Sample]], seed: int, shard_size: int) -> str:
    plan = {"seed": seed, "shard_size": shard_size, "shards": [[s.clip_id for s in shard] for shard in shards]}
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    # Fixed owner, mode and time: a shard's bytes depend on its clips only.
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def _record(storage: Storage, root: str, clip_id: str) -> bytes:
    """The clip's metas/v0 record as written, or, when it is an older one, with current locations."""
    written = storage.read_bytes(layout.clip_meta(root, clip_id))
    meta = json.loads(written)
    current = current_locations(meta)
    return written if current == meta else json_bytes(current)


def _sample_files(storage: Storage, root: str, sample: Sample) -> list[tuple[str, bytes]]:
    clip_id = sample.clip_id
    try:
        files = [(sample.clip_member, storage.read_bytes(layout.location(root, sample.clip_location))),
                 (f"{clip_id}.json", _record(storage, root, clip_id))]
        if sample.caption:
            files.append((f"{clip_id}.txt", sample.caption.encode()))
        if sample.embedding_location:
            array = pickle.loads(storage.read_bytes(layout.location(root, sample.embedding_location)))
            npy = io.BytesIO()
            np.save(npy, array, allow_pickle=False)
            files.append((f"{clip_id}.npy", npy.getvalue()))
    except (StorageError, pickle.UnpicklingError, ValueError) as exc:
        raise ExportError(f"clip {clip_id} of {root} cannot be exported: {exc}") from None
    return files


def shard_bytes(storage: Storage, root: str, shard: list[Sample], pool: ThreadPoolExecutor) -> bytes:
    sink = io.BytesIO()
    with tarfile.open(fileobj=sink, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for files in pool.map(lambda s: _sample_files(storage, root, s), shard):
            for name, data in files:
                _member(tar, name, data)
    return sink.getvalue()


def _read_manifest(storage: Storage, uri: str) -> dict | None:
    if not storage.exists(uri):
        return None
    try:
        return json.loads(storage.read_bytes(uri))
    except ValueError:
        return None  # not ours or torn: treat DEST as holding another plan


def export_webdataset(storage: Storage, root: str, dest: str, shard_size: int, seed: int) -> ExportResult:
    samples = passed_samples(storage, root)
    shards = plan_shards(samples, seed, shard_size)
    digest = _digest(shards, seed, shard_size)
    names = [shard_name(i) for i in range(len(shards))]
    manifest_uri = join(dest, MANIFEST)
    previous = _read_manifest(storage, manifest_uri)
    same_plan = previous is not None and previous.get("plan") == digest
    manifest = {
        "format": "webdataset", "source": root, "seed": seed, "shard_size": shard_size, "plan": digest,
        "clips": len(samples), "shards": [{"name": n, "clips": len(s)} for n, s in zip(names, shards)],
        "pattern": f"shard-{{000000..{len(shards) - 1:06d}}}.tar" if shards else None,
        "complete": False,
    }
    if same_plan and previous.get("complete"):
        return ExportResult(len(samples), names, 0)
    present = set()
    if same_plan:
        present = {listed.relative for listed in storage.list_files(dest, ["shard-*.tar"], missing_ok=True)}
    else:
        storage.write_json(manifest_uri, manifest)  # the plan first: shards written after it belong to it
    written = 0
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        for name, shard in zip(names, shards):
            if name in present:
                continue
            storage.write_bytes(join(dest, name), shard_bytes(storage, root, shard, pool), "application/x-tar")
            written += 1
    for uri, rel, *_ in storage.list_files(dest, ["shard-*.tar"], missing_ok=True):
        if rel not in names:
            storage.delete(uri)
    storage.write_json(manifest_uri, {**manifest, "complete": True})
    return ExportResult(len(samples), names, written)
