"""The clip index: parquet tables over everything an output holds, for dataframe and SQL tools.

    index/clips/part-NNNNN.parquet    one row per clip a chunk record names (passed, filtered,
                                      failed): every field of its metas/v0 JSON under the same
                                      name (objects as structs, dicts such as stage -> message as
                                      their entries), plus `status` and `duration_s`
    index/videos/part-NNNNN.parquet   one row per processed_videos/ record

Locations are relative to the output root (layout.py), older records' too (clip_outputs.current_locations),
so the index of a copied or moved output resolves under the copy.

The index is built from those records, not from the run's memory, so it covers whatever the
output now holds, earlier runs included, and a rebuild over unchanged records writes the same
bytes. Records are read concurrently and ROWS_PER_FILE at a time, so memory stays bounded; a
rebuild deletes the shards it no longer needs. docs/index-and-report.md describes the schema.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq

from clipforge import layout
from clipforge.clip_outputs import current_locations, recorded_clip_ids
from clipforge.storage import Storage, StorageError

log = logging.getLogger(__name__)

ROWS_PER_FILE = 100_000
READ_THREADS = 32



def entries_type(value: pa.DataType) -> pa.DataType:
    """A dict column (stage -> score, stage -> message) as its entries, sorted by key: Hugging Face
    datasets has no map type, and every reader (pandas, DuckDB, polars, Ray Data) takes a list of
    structs; DuckDB's map_from_entries and a pyarrow cast to map_ turn it back into a map."""
    return pa.list_(pa.struct([("key", pa.string()), ("value", value)]))


_ERRORS = entries_type(pa.string())
_SCORES = entries_type(pa.float64())

CLIP_SCHEMA = pa.schema([
    ("span_uuid", pa.string()),
    ("status", pa.string()),  # derived: passed | filtered | failed
    ("duration_s", pa.float64()),  # derived: duration_span[1] - duration_span[0]
    ("source_video", pa.string()),
    ("input_columns", pa.string()),  # the video's input.manifest row's other columns, JSON text
    ("duration_span", pa.list_(pa.float64())),
    ("span_frames", pa.list_(pa.int64())),
    ("keyframe_aligned", pa.bool_()),
    ("width_source", pa.int64()),
    ("height_source", pa.int64()),
    ("framerate_source", pa.float64()),
    ("width", pa.int64()),
    ("height", pa.int64()),
    ("framerate", pa.float64()),
    ("num_frames", pa.int64()),
    ("video_codec", pa.string()),
    ("audio_codec", pa.string()),
    ("rotation", pa.int64()),
    ("num_bytes", pa.int64()),
    ("clip_location", pa.string()),
    ("preview_location", pa.string()),
    ("motion_score", pa.struct([("global_mean", pa.float64()), ("per_patch_min_256", pa.float64())])),
    ("filtered_by", pa.string()),
    ("aesthetic_score", pa.float64()),
    ("scores", _SCORES),
    ("windows", pa.list_(pa.struct([
        ("start_frame", pa.int64()),
        ("end_frame", pa.int64()),
        ("frames_used", pa.int64()),
        ("draft_caption", pa.string()),
        ("caption", pa.string()),
        ("enhanced_caption", pa.string()),
        ("preview_location", pa.string()),
    ]))),
    ("embedding", pa.struct([("algorithm", pa.string()), ("dim", pa.int64()), ("location", pa.string())])),
    ("text_match", pa.struct([("best", pa.string()), ("scores", _SCORES)])),
    ("valid", pa.bool_()),
    ("missing_outputs", pa.list_(pa.string())),
    ("errors", _ERRORS),
])

VIDEO_SCHEMA = pa.schema([
    ("video", pa.string()),
    ("relative_path", pa.string()),
    ("input_columns", pa.string()),
    ("metadata", pa.struct([
        ("container", pa.string()),
        ("size_bytes", pa.int64()),
        ("duration_s", pa.float64()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("framerate", pa.float64()),
        ("num_frames", pa.int64()),
        ("video_codec", pa.string()),
        ("pix_fmt", pa.string()),
        ("bit_rate", pa.int64()),
        ("has_audio", pa.bool_()),
        ("rotation", pa.int64()),
    ])),
    ("split_algorithm", pa.string()),
    ("num_chunks", pa.int64()),
    ("num_clips", pa.int64()),
    ("num_clips_passed", pa.int64()),
    ("num_clips_filtered", pa.int64()),
    ("num_clips_failed", pa.int64()),
    ("clip_chunks", pa.list_(pa.string())),
    ("errors", _ERRORS),
    ("retryable", pa.bool_()),
    ("source", pa.struct([("size", pa.int64()), ("mtime", pa.string())])),
    # The settings that decided the video's clips (spec.clip_settings): JSON text, as their shape
    # follows the spec's.
    ("settings", pa.string()),
    # Provenance (clipforge.provenance): the run, the code's versions, the models' digests (JSON
    # text, keyed by stage/model).
    ("run_id", pa.string()),
    ("versions", pa.struct([("clipforge", pa.string()), ("pyav", pa.string()), ("ffmpeg", pa.string())])),
    ("models", pa.string()),
    ("processed_at", pa.timestamp("ms", tz="UTC")),  # parquet has no seconds unit
])


def clip_status(meta: dict) -> str:
    """passed / filtered / failed, as the chunk records count them: failed clips have no file."""
    if meta.get("clip_location") is None:
        return "failed"
    return "passed" if meta.get("filtered_by") is None else "filtered"


def entries(mapping: dict | None) -> list[dict] | None:
    """A record's dict as the index stores it (entries_type)."""
    return None if mapping is None else [{"key": k, "value": v} for k, v in sorted(mapping.items())]


def as_dict(stored: list[dict] | None) -> dict:
    """An index dict column's value (entries_type) as the record's dict."""
    return {entry["key"]: entry["value"] for entry in stored or []}


def clip_row(meta: dict) -> dict:
    start, end = meta["duration_span"]
    row = {**current_locations(meta), "status": clip_status(meta), "duration_s": end - start,
           "scores": entries(meta.get("scores")), "errors": entries(meta.get("errors"))}
    if meta.get("text_match") is not None:
        row["text_match"] = {**meta["text_match"], "scores": entries(meta["text_match"].get("scores"))}
    return row


def caption_text(windows: list[dict] | None) -> str | None:
    """A clip's text: each caption window's enhanced caption (else its caption), one per line."""
    texts = [w.get("enhanced_caption") or w.get("caption") for w in windows or []]
    return "\n".join(t for t in texts if t) or None


def video_row(record: dict) -> dict:
    settings, models = record.get("settings"), record.get("models")
    return {**record, "processed_at": datetime.fromisoformat(record["processed_at"]),
            "errors": entries(record.get("errors")),
            "settings": None if settings is None else json.dumps(settings, sort_keys=True),
            "models": None if models is None else json.dumps(models, sort_keys=True)}


@dataclass(frozen=True)
class IndexResult:
    clips: int
    videos: int
    unreadable: list[str]  # records skipped because they are not JSON (named in the log too)


def _read_json(storage: Storage, uris: Iterable[str], unreadable: list[str]) -> Iterator[list[dict]]:
    """The JSON documents at `uris`, ROWS_PER_FILE at a time, in order; one that is missing or not
    JSON is left out, named in the log and in `unreadable`."""

    def read(uri: str) -> dict | None:
        try:
            return json.loads(storage.read_bytes(uri))
        except StorageError as exc:
            if not exc.missing:
                raise
        except ValueError:
            pass
        log.warning("index: %s is missing or not JSON; left out", uri)
        unreadable.append(uri)
        return None

    uris = iter(uris)
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        while batch := list(itertools.islice(uris, ROWS_PER_FILE)):
            yield [doc for doc in pool.map(read, batch) if doc is not None]


def _records(storage: Storage, directory: str, unreadable: list[str]) -> Iterator[list[dict]]:
    """The JSON records under directory, ROWS_PER_FILE at a time, in path order."""
    listing = storage.list_files(directory, ["*.json"], missing_ok=True)
    return _read_json(storage, (listed.uri for listed in listing), unreadable)


def _recorded_clip_metas(storage: Storage, root: str, unreadable: list[str]) -> Iterator[str]:
    """The metas/v0 URIs of the clips chunk records name, in record order: a clip whose chunk
    never recorded it (a chunk that failed part way) is not in the dataset."""
    for batch in _records(storage, layout.join(root, layout.PROCESSED_CHUNKS), unreadable):
        for record in batch:
            for clip_id in recorded_clip_ids(record):
                yield layout.clip_meta(root, clip_id)


def _write_table(storage: Storage, root: str, table: str, schema: pa.Schema,
                 batches: Iterator[list[dict]]) -> int:
    """Writes one shard per batch, then deletes shards of an earlier, larger index; row count."""
    rows = shards = 0
    for batch in batches:
        if not batch:
            continue
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(batch, schema=schema), sink)
        storage.write_bytes(layout.index_part(root, table, shards), sink.getvalue())
        rows += len(batch)
        shards += 1
    written = {os.path.basename(layout.index_part("", table, shard)) for shard in range(shards)}
    for uri, relative, *_ in storage.list_files(layout.join(root, table), ["*.parquet"], missing_ok=True):
        if relative not in written:
            storage.delete(uri)
    return rows


def _unknown_fields(batches: Iterator[list[dict]], known: set[str]) -> Iterator[list[dict]]:
    """Passes batches on, warning once about record fields the schema lacks (they would be dropped)."""
    warned: set[str] = set()
    for batch in batches:
        for row in batch:
            extra = row.keys() - known - warned
            if extra:
                warned |= extra
                log.warning("index: fields %s are not in the index schema and are left out", sorted(extra))
        yield batch


def write_index(storage: Storage, root: str) -> IndexResult:
    """(Re)builds index/clips and index/videos from the metas/v0 of recorded chunks and from
    processed_videos under root."""
    unreadable: list[str] = []
    metas = (
        [clip_row(meta) for meta in batch]
        for batch in _read_json(storage, _recorded_clip_metas(storage, root, unreadable), unreadable)
    )
    clips = _write_table(storage, root, layout.CLIP_INDEX, CLIP_SCHEMA,
                         _unknown_fields(metas, set(CLIP_SCHEMA.names)))
    records = (
        [video_row(record) for record in batch]
        for batch in _records(storage, layout.join(root, layout.PROCESSED_VIDEOS), unreadable)
    )
    videos = _write_table(storage, root, layout.VIDEO_INDEX, VIDEO_SCHEMA,
                          _unknown_fields(records, set(VIDEO_SCHEMA.names)))
    return IndexResult(clips=clips, videos=videos, unreadable=unreadable)


class NotAnOutputError(RuntimeError):
    """A folder or prefix given as an output that holds no ClipForge records; the message names it."""


def write_output_index(storage: Storage, root: str) -> IndexResult:
    """write_index for an output a user names (`clipforge report`, `export`): raises
    NotAnOutputError, having written nothing, when root holds no chunk or video record."""
    result = write_index(storage, root)
    if not result.clips and not result.videos:
        raise NotAnOutputError(f"{root} holds no {layout.PROCESSED_CHUNKS}/ or {layout.PROCESSED_VIDEOS}/ records:"
                               " not a ClipForge output")
    return result


def is_current(storage: Storage, root: str) -> bool:
    """Whether root has a clip index this version wrote (CLIP_SCHEMA). An older ClipForge's has
    maps where this one has entries, and locations under the path its run was given."""
    shards = parts(storage, root, layout.CLIP_INDEX)
    if not shards:
        return False
    fs, path = storage.resolve(shards[0])
    schema = storage.retry(lambda: pq.read_schema(path, filesystem=fs), f"cannot read {shards[0]}")
    return schema.equals(CLIP_SCHEMA, check_metadata=False)


def parts(storage: Storage, root: str, table: str) -> list[str]:
    """URIs of the shards of an index table under root, in order (none before the first index)."""
    return [listed.uri for listed in storage.list_files(layout.join(root, table), ["part-*.parquet"], missing_ok=True)]


def read_table(storage: Storage, root: str, table: str, columns: list[str] | None = None) -> pa.Table:
    """An index table as written under root (no rows, same schema, when it has no shard)."""
    import pyarrow.dataset as ds

    schema = CLIP_SCHEMA if table == layout.CLIP_INDEX else VIDEO_SCHEMA
    shards = parts(storage, root, table)
    if not shards:
        empty = schema.empty_table()
        return empty.select(columns) if columns else empty
    fs, _ = storage.resolve(root)
    paths = [storage.resolve(uri)[1] for uri in shards]
    return storage.retry(lambda: ds.dataset(paths, filesystem=fs, format="parquet", schema=schema).to_table(
        columns=columns), f"cannot read {layout.join(root, table)}")
