"""Which videos earlier runs finished under an output, in a form a restart reads in a few large reads.

    resume/segment-<first>-<last>-<run id>.parquet

Each segment holds one row per video a run finished (done, or failed), with what decides
whether this run takes it as done (clipforge.provenance.matches: its settings, source version and
model digests) and what the run report counts of it (errors, clip counts). A run writes a new
segment every FLUSH_VIDEOS videos or FLUSH_S seconds and at its end, after the videos'
processed_videos/ records, which stay the source of truth. A segment covers the sequence numbers
<first> to <last>: a run's own segments one number each, a compaction the range of the segments it
merged. A later number's row of a video supersedes an earlier one's.

Every segment is a new object, never rewritten: a crash leaves at worst the last videos' rows
unwritten (a restart redoes them; their chunks resume). Compaction, once a restart finds more than
COMPACT_AT segments, writes the merged segment before it deletes those it covers, and a reader
skips any segment a wider one covers, so a crash in between reads the same state.

A restart lists resume/ once and reads each segment once. An output without segments but with
processed_videos/ records (written before segments were) is rebuilt from those records, one read
each, once. A segment that cannot be read fails the run (ResumeStateError): taking it as "nothing
done" would redo the whole dataset.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clipforge import layout
from clipforge.provenance import Provenance, matches
from clipforge.storage import Storage, StorageError

FLUSH_VIDEOS = 10_000
FLUSH_S = 60.0
COMPACT_AT = 16
# Concurrent reads of segments (and, once, of the records an older output holds).
READERS = 16
# Rows per segment when an older output's records are rebuilt into segments.
REBUILD_ROWS = 100_000

SCHEMA = pa.schema([
    ("relative_path", pa.string()),
    ("video", pa.string()),  # a failed video's URI (the run report names it); null for one done
    # JSON text; null where the record has no such key (recorded before the key was): it matches anything.
    ("source", pa.string()),
    ("settings", pa.string()),
    ("models", pa.string()),
    ("errors", pa.string()),  # JSON text, "{}" for a video done
    ("retryable", pa.bool_()),
    ("num_clips_passed", pa.int64()),
    ("num_clips_filtered", pa.int64()),
    ("num_clips_failed", pa.int64()),
])
_JSON_KEYS = ("source", "settings", "models")
# Read as dictionaries: a run's settings and models are one long text shared by all its rows.
_SHARED = ("settings", "models")
READ_SCHEMA = pa.schema([pa.field(f.name, pa.dictionary(pa.int32(), pa.string())) if f.name in _SHARED else f
                         for f in SCHEMA])
_SEGMENT = re.compile(r"segment-(\d{10})-(\d{10})-([0-9a-f]+)\.parquet")


class ResumeStateError(RuntimeError):
    """The resume state cannot be read; the message names it and what to do."""


def segment_row(record: dict) -> dict:
    """A processed_videos/ record's row (runner.video_record)."""
    row = {key: json.dumps(record[key], sort_keys=True) if key in record else None for key in _JSON_KEYS}
    return {**row, "relative_path": record["relative_path"], "video": record["video"] if record.get("errors") else None,
            "errors": json.dumps(record.get("errors") or {}, sort_keys=True),
            "retryable": bool(record.get("retryable", True)),
            **{f"num_clips_{kind}": int(record.get(f"num_clips_{kind}", 0)) for kind in ("passed", "filtered", "failed")}}


@dataclass(frozen=True)
class Segment:
    uri: str
    first: int
    last: int

    def covers(self, other: Segment) -> bool:
        return self != other and self.first <= other.first and other.last <= self.last


def segment_uri(root: str, first: int, last: int, run_id: str) -> str:
    return layout.join(root, layout.RESUME, f"segment-{first:010d}-{last:010d}-{run_id}.parquet")


def live_segments(storage: Storage, root: str) -> list[Segment]:
    """The segments under root that no other covers, oldest first: one listing."""
    found = []
    for listed in storage.list_files(layout.join(root, layout.RESUME), ["segment-*.parquet"], missing_ok=True):
        name = _SEGMENT.fullmatch(listed.relative.rsplit("/", 1)[-1])
        if name:
            found.append(Segment(listed.uri, int(name[1]), int(name[2])))
    live = [s for s in found if not any(other.covers(s) for other in found)]
    return sorted(live, key=lambda s: (s.last, -s.first, s.uri))


def _read_segment(storage: Storage, segment: Segment) -> pa.Table:
    try:
        table = pq.read_table(pa.BufferReader(storage.read_bytes(segment.uri)), read_dictionary=list(_SHARED))
        return table.select(READ_SCHEMA.names).cast(READ_SCHEMA)
    except (StorageError, pa.ArrowException, OSError, KeyError) as exc:
        raise ResumeStateError(
            f"the resume state segment {segment.uri} cannot be read ({exc}): it says which videos are done."
            f" Make it readable, or delete {layout.RESUME}/ to rebuild it from {layout.PROCESSED_VIDEOS}/"
            " (one read per video)") from None


def _concat(tables: list[pa.Table]) -> pa.Table:
    """`tables` (oldest first) as one, without copying: a video's later row supersedes its earlier."""
    return pa.concat_tables([t.cast(READ_SCHEMA) for t in tables]) if tables else READ_SCHEMA.empty_table()


def _latest(table: pa.Table) -> pa.Table:
    """The rows of `table` (oldest first), the latest of each video only."""
    table = table.unify_dictionaries().append_column("_order", pa.array(np.arange(len(table), dtype=np.int64)))
    latest = table.group_by("relative_path").aggregate([("_order", "max")])["_order_max"]
    return table.take(latest.take(pc.sort_indices(latest))).drop_columns(["_order"])


class ResumeState:
    """The resume state of one output, as this run found it, and its writer for this run."""

    def __init__(self, storage: Storage, root: str, run_id: str):
        self.storage, self.root, self.run_id = storage, root, run_id
        self.segments = live_segments(storage, root)
        self.next_number = max((s.last for s in self.segments), default=-1) + 1
        self._rows: list[dict] = []
        self._flushed = time.monotonic()

    def read(self) -> pa.Table:
        """The rows of every video earlier runs finished, oldest first (a video's later row
        supersedes its earlier ones); compacts what it read when it found more than COMPACT_AT
        segments, and rebuilds an older output's from its records."""
        if not self.segments:
            return self._rebuild()
        with ThreadPoolExecutor(max_workers=READERS) as pool:
            table = _concat(list(pool.map(lambda s: _read_segment(self.storage, s), self.segments)))
        if len(self.segments) > COMPACT_AT:
            self.compact(_latest(table))
        return table

    def compact(self, table: pa.Table) -> None:
        """Replaces the live segments by one holding `table` (their latest rows, read): written
        first, so a crash before the deletes leaves the same state to read."""
        covered = self.segments
        first, last = min(s.first for s in covered), max(s.last for s in covered)
        merged = Segment(segment_uri(self.root, first, last, self.run_id), first, last)
        self._write(merged.uri, table)
        for segment in covered:
            self.storage.delete(segment.uri)
        self.segments = [merged]

    def _rebuild(self) -> pa.Table:
        records_root = layout.join(self.root, layout.PROCESSED_VIDEOS)

        def row(uri: str) -> dict:
            try:
                return segment_row(json.loads(self.storage.read_bytes(uri)))
            except (StorageError, ValueError, KeyError) as exc:
                raise ResumeStateError(f"the resume state is rebuilt from {layout.PROCESSED_VIDEOS}/, and {uri}"
                                       f" cannot be read ({exc}): make it readable, or delete it to redo its video")\
                    from None

        tables = []
        with ThreadPoolExecutor(max_workers=READERS) as pool:
            for uris in _batches((f.uri for page in self.storage.list_pages(records_root, ["*.json"], missing_ok=True)
                                  for f in page.files), REBUILD_ROWS):
                tables.append(pa.Table.from_pylist(list(pool.map(row, uris)), schema=SCHEMA))
                self.write_segment(tables[-1])
        return _concat(tables)

    def add(self, record: dict) -> None:
        """A video this run finished (its record written): in the next segment, written when
        FLUSH_VIDEOS have gathered or FLUSH_S have passed."""
        self._rows.append(segment_row(record))
        if len(self._rows) >= FLUSH_VIDEOS or time.monotonic() - self._flushed >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        if self._rows:
            self.write_segment(pa.Table.from_pylist(self._rows, schema=SCHEMA))
            self._rows = []
        self._flushed = time.monotonic()

    def write_segment(self, table: pa.Table) -> None:
        """`table` (SCHEMA) as the next segment."""
        number = self.next_number
        segment = Segment(segment_uri(self.root, number, number, self.run_id), number, number)
        self._write(segment.uri, table)
        self.segments.append(segment)
        self.next_number += 1

    def _write(self, uri: str, table: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        self.storage.write_bytes(uri, sink.getvalue().to_pybytes())


def _batches(items: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass(frozen=True)
class DoneVideo:
    """An input an earlier run finished as this run would have."""

    errors: dict  # {} when done
    clips: list[int]  # passed, filtered, failed
    video: str | None  # its URI when it failed (the run report lists it), else None


class DoneVideos:
    """The rows of a resume state this run takes as done, looked up by relative path as inputs are
    listed. Settings and models are matched once per distinct value, the source per input. Rows
    stay in Arrow as read (no copy); a dictionary gives each video's latest row."""

    def __init__(self, table: pa.Table, settings: dict, provenance: Provenance | None, retry_failed: bool):
        self._index = dict(zip(table["relative_path"].to_pylist(), range(len(table))))  # the later row wins
        self._done = self._final(table, retry_failed) & self._made_alike(table, settings, provenance)
        self._sources, self._videos, self._errors = table["source"], table["video"], table["errors"]
        self._clips = np.stack([table[f"num_clips_{k}"].to_numpy() for k in ("passed", "filtered", "failed")], axis=1) \
            if len(table) else np.zeros((0, 3), dtype=np.int64)

    @staticmethod
    def _final(table: pa.Table, retry_failed: bool) -> np.ndarray:
        """Done, or failed for good (the input's fault); under `retry_failed`, done with no clip failed."""
        failed = pc.not_equal(table["errors"], "{}")
        if retry_failed:  # failed clips are the input's failures too: split redoes their chunks
            final = pc.invert(pc.or_(failed, pc.greater(table["num_clips_failed"], 0)))
        else:
            final = pc.invert(pc.and_(failed, table["retryable"]))
        return final.to_numpy(zero_copy_only=False).astype(bool) if len(table) else np.zeros(0, bool)

    @staticmethod
    def _made_alike(table: pa.Table, settings: dict, provenance: Provenance | None) -> np.ndarray:
        """Rows whose settings and models match this run's (provenance.matches), each distinct pair
        of a segment's dictionaries once."""
        masks, verdicts = [np.zeros(0, bool)], {}
        for batch in table.to_batches():
            columns = [batch.column(name) for name in _SHARED]
            values = [column.dictionary.to_pylist() for column in columns]
            codes = [column.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
                     for column in columns]
            width = len(values[1]) + 1
            pairs = codes[0] * width + codes[1] + 1
            alike = []
            for pair in np.unique(pairs).tolist():
                settings_code, models_code = divmod(pair, width)  # -1 and 0: null (a key the record lacked)
                texts = (values[0][settings_code] if settings_code >= 0 else None,
                         values[1][models_code - 1] if models_code else None)
                if texts not in verdicts:
                    recorded = {name: json.loads(text) for name, text in zip(_SHARED, texts) if text is not None}
                    verdicts[texts] = matches(recorded, settings, provenance, None)
                if verdicts[texts]:
                    alike.append(pair)
            masks.append(np.isin(pairs, alike))
        return np.concatenate(masks)

    def get(self, relative: str, version: dict | None) -> DoneVideo | None:
        row = self._index.get(relative)
        if row is None or not self._done[row]:
            return None
        recorded = self._sources[row].as_py()
        if version is not None and recorded is not None and json.loads(recorded) != version:
            return None  # a new version of the source is a new input
        errors = self._errors[row].as_py()
        if errors == "{}":
            return DoneVideo({}, self._clips[row].tolist(), None)
        return DoneVideo(json.loads(errors), self._clips[row].tolist(), self._videos[row].as_py())
