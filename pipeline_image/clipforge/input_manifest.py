"""`input.manifest`: the videos of a job as a table instead of a listing.

A parquet, CSV or JSONL file (by its extension), local or s3://, with a column `uri` (local
paths or s3:// URIs) and any other columns, which every record and clip index row of the video
carries as `input_columns` (JSON text: the dataset's own labels, ids, licences travel with its
clips). A video's records are named after its URI without the scheme (`s3://b/a.mp4` ->
`b/a.mp4`). Nothing is listed or looked up per video: its version is the row's `size` and
`mtime` columns when the manifest has them; without them a video is taken as unchanged while
its URI is. It is read a batch of rows at a time, as the run goes: a manifest of millions of
videos is never held whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.csv
import pyarrow.json
import pyarrow.parquet as pq

from clipforge.storage import Storage

FORMATS = (".parquet", ".csv", ".jsonl")
BATCH_ROWS = 10_000
VERSION_COLUMNS = ("size", "mtime")


class ManifestError(ValueError):
    """The manifest cannot be used; the message names it."""


@dataclass(frozen=True)
class ManifestEntry:
    uri: str
    relative: str  # names its records: the URI without its scheme
    version: dict | None  # {"size", "mtime"} from the row, when the manifest has those columns
    columns: str | None  # the row's other columns, as JSON text


def _batches(reader: pa.NativeFile, uri: str) -> Iterator[pa.RecordBatch]:
    if uri.endswith(".parquet"):
        yield from pq.ParquetFile(reader).iter_batches(batch_size=BATCH_ROWS)
    elif uri.endswith(".csv"):
        yield from pyarrow.csv.open_csv(reader)
    else:
        yield from pyarrow.json.open_json(reader)


def manifest_pages(storage: Storage, uri: str) -> Iterator[list[ManifestEntry]]:
    """The manifest's videos in its order, each once, a batch of rows at a time. Raises
    ManifestError naming the manifest (and the row) when it cannot be used."""
    if not uri.endswith(FORMATS):
        raise ManifestError(f"input.manifest {uri}: the name must end in one of {', '.join(FORMATS)}")
    seen: set[str] = set()  # one video, one set of records
    number = 0
    with storage.open_read(uri) as reader:
        batches = _batches(pa.PythonFile(reader, mode="r"), uri)
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowInvalid, OSError) as exc:
                raise ManifestError(f"input.manifest {uri} cannot be read: {exc}") from None
            if batch is None:
                return
            if "uri" not in batch.schema.names:
                raise ManifestError(f"input.manifest {uri} has no column `uri` (columns: {', '.join(batch.schema.names)})")
            versioned = all(c in batch.schema.names for c in VERSION_COLUMNS)
            page = []
            for row in batch.to_pylist():
                number += 1
                source = row.pop("uri")
                if not source:
                    raise ManifestError(f"input.manifest {uri}, row {number}: empty uri")
                relative = source.split("://", 1)[-1].lstrip("/")
                if relative in seen:
                    continue
                seen.add(relative)
                version = {"size": row["size"], "mtime": str(row["mtime"])} if versioned else None
                page.append(ManifestEntry(source, relative, version,
                                          json.dumps(row, sort_keys=True, default=str) if row else None))
            yield page
