"""The clip index: parquet tables over everything an output holds, for dataframe and SQL tools.

    index/clips/chunk-<video key>-<chunk>.parquet   the clips of one recorded chunk (passed,
                                                    filtered, failed): every field of their
                                                    metas/v0 JSON under the same name (objects as
                                                    structs, dicts such as stage -> message as
                                                    their entries), plus `status` and `duration_s`
    index/videos/video-<video key>.parquet          one processed_videos/ record

The index is committed as the output is written: the writer commits a chunk's file right after its
chunk record (commit_chunk), the driver a video's just before its record (commit_video). Each file
is written whole under a hidden temporary name and renamed (one PUT on S3), and no commit touches
another file, so a reader pointed at the folder, whatever it is, sees whole commits only; a commit
killed part way leaves the last committed state. A chunk's file has the same name in every run:
split deletes it with the chunk record it redoes, and the redo commits it again. Files are never
merged: a merge is a change of several files at once, which a folder reader can see half done
(docs/index-and-report.md, "The index", has the figures).

The chunk records stay the source of truth: write_index rebuilds every file from them (the same
bytes the commits wrote) and deletes the files of chunks no record names. Locations are relative
to the output root (layout.py), older records' too (clip_outputs.current_locations), so the index
of a copied or moved output resolves under the copy. docs/index-and-report.md describes the schema.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq

from clipforge import layout
from clipforge.clip_outputs import current_locations, recorded_clip_ids
from clipforge.storage import Listed, Storage, StorageError

log = logging.getLogger(__name__)

READ_THREADS = 32
REBUILD_BATCH = 10_000


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
    unreadable: list[str]  # records skipped because they are missing or not JSON (named in the log too)


_warned_fields: set[str] = set()


def _parquet(rows: list[dict], schema: pa.Schema) -> bytes:
    """One index file's bytes; a record field the schema lacks is left out, and logged once."""
    extra = {key for row in rows for key in row} - set(schema.names) - _warned_fields
    if extra:
        _warned_fields.update(extra)
        log.warning("index: fields %s are not in the index schema and are left out", sorted(extra))
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), sink)
    return sink.getvalue()


def commit_chunk(storage: Storage, root: str, relative_path: str, chunk_index: int, metas: list[dict]) -> str:
    """Commits a recorded chunk's clips (their metas/v0 records, in the chunk record's order) as its
    index/clips file, in one atomic write; the file's URI."""
    uri = layout.index_chunk(root, relative_path, chunk_index)
    storage.write_bytes(uri, _parquet([clip_row(meta) for meta in metas], CLIP_SCHEMA))
    return uri


def commit_video(storage: Storage, root: str, record: dict) -> str:
    """Commits a processed_videos/ record as its index/videos file, in one atomic write; the file's URI."""
    uri = layout.index_video(root, record["relative_path"])
    storage.write_bytes(uri, _parquet([video_row(record)], VIDEO_SCHEMA))
    return uri


def _read_json(storage: Storage, uri: str, unreadable: list[str]) -> dict | None:
    """The JSON document at uri; None, named in the log and in `unreadable`, when missing or not JSON."""
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


def recorded_metas(storage: Storage, root: str, record: dict, unreadable: list[str]) -> list[dict]:
    """The metas/v0 records of the clips a chunk record names, in its order (missing ones left out)."""
    metas = (_read_json(storage, layout.clip_meta(root, clip_id), unreadable) for clip_id in recorded_clip_ids(record))
    return [meta for meta in metas if meta is not None]


def _rebuild(storage: Storage, root: str, directory: str, commit, unreadable: list[str]) -> tuple[set[str], int]:  # noqa: ANN001
    """Commits `commit(record, its path relative to directory without .json)` -> (uri, rows) for each
    JSON record under directory, READ_THREADS at a time; (the URIs written, their rows)."""

    def one(listed: Listed) -> tuple[str, int] | None:
        record = _read_json(storage, listed.uri, unreadable)
        return None if record is None else commit(record, listed.relative.removesuffix(".json"))

    uris = iter(storage.list_files(layout.join(root, directory), ["*.json"], missing_ok=True))
    written, rows = set(), 0
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        while batch := list(itertools.islice(uris, REBUILD_BATCH)):  # bounded: not one future per record at once
            for uri, count in filter(None, pool.map(one, batch)):
                written.add(uri)
                rows += count
    return written, rows


def _delete_others(storage: Storage, root: str, table: str, keep: set[str]) -> None:
    for uri in parts(storage, root, table):
        if uri not in keep:
            storage.delete(uri)


def write_index(storage: Storage, root: str) -> IndexResult:
    """Rebuilds index/clips and index/videos from the chunk records (and the metas/v0 they name) and
    the processed_videos/ records under root, and deletes index files no record names (an older
    ClipForge's shards among them). Each file is replaced atomically, as a commit is."""
    unreadable: list[str] = []

    def chunk(record: dict, name: str) -> tuple[str, int]:
        # Named by its path (layout.chunk_record), which records of every version have.
        relative_path, _, chunk_index = name.rpartition("_")
        metas = recorded_metas(storage, root, record, unreadable)
        return commit_chunk(storage, root, relative_path, int(chunk_index), metas), len(metas)

    chunks, clips = _rebuild(storage, root, layout.PROCESSED_CHUNKS, chunk, unreadable)
    _delete_others(storage, root, layout.CLIP_INDEX, chunks)
    videos, count = _rebuild(storage, root, layout.PROCESSED_VIDEOS,
                             lambda record, _: (commit_video(storage, root, record), 1), unreadable)
    _delete_others(storage, root, layout.VIDEO_INDEX, videos)
    return IndexResult(clips=clips, videos=count, unreadable=sorted(unreadable))


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
    """Whether root has an index this version commits: per-chunk and per-video files of CLIP_SCHEMA.
    An older ClipForge's (part-NNNNN.parquet shards, rewritten at the end of each run) has maps
    where this one has entries, and locations under the path its run was given; commits next to
    it would list rows twice. One listing request a table: an older index has a videos shard,
    and part- sorts before video-."""
    clips, videos = (_first_page(storage, root, table) for table in (layout.CLIP_INDEX, layout.VIDEO_INDEX))
    if not clips and not videos or any(os.path.basename(uri).startswith("part-") for uri in clips + videos):
        return False
    if not clips:
        return True
    fs, path = storage.resolve(clips[0])
    schema = storage.retry(lambda: pq.read_schema(path, filesystem=fs), f"cannot read {clips[0]}")
    return schema.equals(CLIP_SCHEMA, check_metadata=False)


def _first_page(storage: Storage, root: str, table: str) -> list[str]:
    page = next(storage.list_pages(layout.join(root, table), ["*.parquet"], missing_ok=True), None)
    return [listed.uri for listed in page.files] if page else []


def parts(storage: Storage, root: str, table: str) -> list[str]:
    """URIs of the files of an index table under root, in name order (none before the first commit)."""
    return [listed.uri for listed in storage.list_files(layout.join(root, table), ["*.parquet"], missing_ok=True)]


def read_table(storage: Storage, root: str, table: str, columns: list[str] | None = None) -> pa.Table:
    """An index table as committed under root (no rows, same schema, when it has no file)."""
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
