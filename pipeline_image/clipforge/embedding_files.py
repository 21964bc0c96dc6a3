"""The embedding files: one pickled (1, dim) float16 array per clip and one parquet per video.

The per-clip pickle holds a plain numpy array (`pickle.loads` gives it back, nothing of
ClipForge is needed to read it). The per-video parquet has columns id, embedding
(list<float>), source_video, span_start, span_end (seconds), one row per embedded clip; the
driver writes it once every chunk of the video is in, before the video's processed_videos/
record, so a video recorded as done always has its parquet.
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Iterable

import numpy as np

from clipforge import layout
from clipforge.storage import Storage, StorageError
from clipforge.tasks import VideoTask


def embedding_pickle(embedding: np.ndarray) -> bytes:
    return pickle.dumps(np.ascontiguousarray(embedding, dtype=np.float16), protocol=pickle.HIGHEST_PROTOCOL)


def parquet_bytes(rows: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("id", pa.string()),
            ("embedding", pa.list_(pa.float32())),
            ("source_video", pa.string()),
            ("span_start", pa.float64()),
            ("span_end", pa.float64()),
        ]
    )
    table = pa.Table.from_pylist(rows, schema=schema)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _row(clip_id: str, embedding: np.ndarray, source: str, start: float, end: float) -> dict:
    return {
        "id": clip_id,
        "embedding": np.asarray(embedding, dtype=np.float32).reshape(-1).tolist(),
        "source_video": source,
        "span_start": float(start),
        "span_end": float(end),
    }


def _resumed_rows(storage: Storage, root: str, algorithm: str, chunk: VideoTask) -> list[dict]:
    """Rows of a chunk an earlier run wrote: read back from its pickles and clip metadata."""
    rows = []
    for clip_id in (chunk.chunk_record or {}).get("clips", []):
        uri = layout.embedding_file(root, algorithm, clip_id)
        if not storage.exists(uri):
            continue  # written by a run that had embeddings off or another algorithm
        embedding = pickle.loads(storage.read_bytes(uri))
        meta = json.loads(storage.read_bytes(layout.clip_meta(root, clip_id)))
        start, end = meta["duration_span"]
        rows.append(_row(clip_id, embedding, meta["source_video"], start, end))
    return rows


def video_rows(storage: Storage, root: str, algorithm: str, chunks: Iterable[VideoTask]) -> list[dict]:
    rows = []
    for chunk in sorted(chunks, key=lambda c: c.chunk_index):
        if chunk.resumed:
            rows.extend(_resumed_rows(storage, root, algorithm, chunk))
            continue
        for clip in chunk.clips:
            if clip.embedding is not None:
                rows.append(_row(clip.uuid, clip.embedding, clip.source_video, clip.start_s, clip.end_s))
    return rows


def write_video_parquet(storage: Storage, root: str, algorithm: str, chunks: list[VideoTask]) -> str | None:
    """Writes the video's embeddings parquet; returns its URI (None when no clip has one: an
    earlier run's parquet is then deleted, so dedup never compares against clips now gone)."""
    try:
        rows = video_rows(storage, root, algorithm, chunks)
    except (StorageError, OSError, KeyError, pickle.UnpicklingError) as exc:
        raise StorageError(f"cannot read back the embeddings of {chunks[0].relative_path}: {exc}") from exc
    uri = layout.embeddings_parquet(root, algorithm, chunks[0].relative_path)
    if not rows:
        storage.delete(uri)
        return None
    storage.write_bytes(uri, parquet_bytes(rows))
    return uri
