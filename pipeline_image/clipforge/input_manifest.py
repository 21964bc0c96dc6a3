"""`input.manifest`: the videos of a job as a table instead of a listing.

A parquet, CSV or JSONL file (by its extension), local or s3://, with a column `uri` (local
paths or s3:// URIs) and any other columns, which every record and clip index row of the video
carries as `input_columns` (JSON text: the dataset's own labels, ids, licences travel with its
clips). A video's records are named after its URI without the scheme (`s3://b/a.mp4` ->
`b/a.mp4`). Nothing is listed or looked up per video: its version is the row's `size` and
`mtime` columns when the manifest has them; without them a video is taken as unchanged while
its URI is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.csv
import pyarrow.json
import pyarrow.parquet as pq

from clipforge.storage import Storage

FORMATS = (".parquet", ".csv", ".jsonl")
VERSION_COLUMNS = ("size", "mtime")


class ManifestError(ValueError):
    """The manifest cannot be used; the message names it."""


@dataclass(frozen=True)
class ManifestEntry:
    uri: str
    relative: str  # names its records: the URI without its scheme
    version: dict | None  # {"size", "mtime"} from the row, when the manifest has those columns
    columns: str | None  # the row's other columns, as JSON text


def _table(data: bytes, uri: str) -> pa.Table:
    buffer = pa.BufferReader(data)
    if uri.endswith(".parquet"):
        return pq.read_table(buffer)
    if uri.endswith(".csv"):
        return pyarrow.csv.read_csv(buffer)
    return pyarrow.json.read_json(buffer)


def read_manifest(storage: Storage, uri: str) -> list[ManifestEntry]:
    if not uri.endswith(FORMATS):
        raise ManifestError(f"input.manifest {uri}: the name must end in one of {', '.join(FORMATS)}")
    data = storage.read_bytes(uri)
    try:
        table = _table(data, uri)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(f"input.manifest {uri} cannot be read: {exc}") from None
    if "uri" not in table.column_names:
        raise ManifestError(f"input.manifest {uri} has no column `uri` (columns: {', '.join(table.column_names)})")
    versioned = all(c in table.column_names for c in VERSION_COLUMNS)
    entries, seen = [], set()
    for number, row in enumerate(table.to_pylist(), start=1):
        source = row.pop("uri")
        if not source:
            raise ManifestError(f"input.manifest {uri}, row {number}: empty uri")
        relative = source.split("://", 1)[-1].lstrip("/")
        if relative in seen:  # one video, one set of records
            continue
        seen.add(relative)
        version = {"size": row["size"], "mtime": str(row["mtime"])} if versioned else None
        entries.append(ManifestEntry(source, relative, version,
                                     json.dumps(row, sort_keys=True, default=str) if row else None))
    return entries
