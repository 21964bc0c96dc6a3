"""What the report shows, gathered from an output: the run's end, the settings that decided its
clips, failure reasons in plain words, the gallery's rows, a 2-D map of the embeddings and the
duplicates dedup found. report.py turns it into the page; everything here is bounded in size
whatever the output's (the map is a sample, the duplicates a list of the closest).
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clipforge import clip_index, layout
from clipforge.dedup import DEDUP_DIR, DUPLICATES_FILE
from clipforge.storage import Storage, StorageError

log = logging.getLogger(__name__)

MAP_POINTS = 2000  # clips sampled for the embedding map
LISTED_DUPLICATES = 200  # duplicate pairs listed, the most similar first
READ_THREADS = 16

# A raw failure message (an exception's text, often FFmpeg's) and what it means for the input:
# the first pattern found in the message gives the words the report shows; the raw text stays
# in the report's detail view.
PLAIN_REASONS = [
    (r"Invalid data found when processing input", "the file is not a video FFmpeg can read"),
    (r"empty file \(0 bytes\)", "the file is empty (0 bytes)"),
    (r"no video stream", "the file has no video stream"),
    (r"No such file|NoSuchKey|not found", "the file is gone (moved or deleted after the run listed it)"),
    (r"over execution\.limits", "the video is over a limit set in execution.limits"),
    (r"no decodable|has no frames|no frames", "no frame of the video could be decoded"),
    (r"fewer than \d+ frames|no frame pair", "the clip is too short to score"),
    (r"smaller than one", "the frames are too small to score"),
    # before "out of memory": a dead worker's message names it among the possible causes
    (r"worker process died", "the process working on it died (a crash, memory running out, or a kill)"),
    (r"OutOfMemory|out of memory", "memory ran out while processing it"),
    (r"CUDA error", "the GPU failed while processing it"),
    (r"Connection|Timeout|timed out", "storage or the network could not be reached"),
]


def plain_reason(message: str) -> str:
    """A failure message in plain words (PLAIN_REASONS), else the message without its exception
    class and errno prefixes."""
    for pattern, words in PLAIN_REASONS:
        if re.search(pattern, message, re.IGNORECASE):
            return words
    text = re.sub(r"^(\w+(Error|Exception|Failure)):\s*", "", message)
    return re.sub(r"\[Errno -?\d+\]\s*", "", text)


def failures(errors: list[dict] | None) -> list[dict]:
    """An index errors column's value as [{stage, reason (plain), raw}]."""
    return [{"stage": stage, "reason": plain_reason(raw), "raw": raw}
            for stage, raw in clip_index.as_dict(errors).items()]


# ------------------------------------------------------------------------------------ the run


def _read_json(storage: Storage, uri: str) -> dict | None:
    try:
        return json.loads(storage.read_bytes(uri))
    except StorageError as exc:
        if exc.missing:
            return None
        raise
    except ValueError:
        return None


def run_outcome(storage: Storage, root: str) -> dict:
    """The last run as the header shows it, with `source` naming the file and start/end:
    summary.json's fields, or progress.json's when it is a later run's (one still going, or
    stopped before its summary) or there is no summary."""
    summary, progress = (_read_json(storage, layout.join(root, name)) for name in (layout.SUMMARY, layout.PROGRESS))
    if summary is not None and (progress is None or progress.get("runId") == summary.get("runId")):
        document, name = summary, layout.SUMMARY
    elif progress is not None:
        document, name = progress, layout.PROGRESS
    else:
        return {"source": None}
    outcome = {**document, "source": name}
    if document.get("updatedAt"):
        end = datetime.fromisoformat(document["updatedAt"].replace("Z", "+00:00"))
        start = end - timedelta(seconds=document.get("elapsedSeconds") or 0)
        outcome["started"] = start.strftime("%Y-%m-%d %H:%M:%S UTC")
        outcome["ended"] = end.strftime("%Y-%m-%d %H:%M:%S UTC")
    return outcome


def settings(videos: pa.Table) -> tuple[dict | None, int]:
    """(the settings the latest recorded video was curated with, how many distinct settings
    the output's videos were curated with)."""
    recorded = videos.filter(pc.is_valid(videos.column("settings")))
    if recorded.num_rows == 0:
        return None, 0
    latest = recorded.sort_by([("processed_at", "descending")]).column("settings")[0].as_py()
    return json.loads(latest), len(pc.unique(recorded.column("settings")))


def split_lengths(config: dict) -> tuple[str, dict]:
    """(splitting algorithm, its settings: the clip lengths it cuts)."""
    splitting = config.get("splitting", {})
    algorithm = splitting.get("algorithm", "")
    return algorithm, splitting.get("fixedStride" if algorithm == "fixed-stride" else algorithm, {}) or {}


def thresholds(config: dict | None) -> dict[str, float]:
    """The thresholds that decide a clip's fate, by the chart they belong on."""
    if not config:
        return {}
    found: dict[str, float] = {}
    _, lengths = split_lengths(config)
    if lengths.get("minClipLengthS", lengths.get("minLengthS")) is not None:
        found["length_min"] = lengths.get("minClipLengthS", lengths.get("minLengthS"))
    if lengths.get("maxLengthS") is not None:
        found["length_max"] = lengths["maxLengthS"]
    motion = config.get("motionFilter", {})
    if motion.get("mode") not in (None, "disable"):
        found["motion"] = motion.get("globalMeanThreshold")
        found["motion_patch"] = motion.get("perPatchMinThreshold")
    if config.get("aestheticFilter", {}).get("enabled"):
        found["aesthetic"] = config["aestheticFilter"]["threshold"]
    return {key: value for key, value in found.items() if value is not None}


# ------------------------------------------------------------------------------------ clips


def clip_row(clip: dict, videos: dict[str, str]) -> dict:
    """One clip as the gallery, its panel, the map and the duplicates view show it."""
    start, end = clip["duration_span"]
    motion = clip["motion_score"] or {}
    embedding = clip.get("embedding") or {}
    return {
        "id": clip["span_uuid"], "status": clip["status"],
        "video": videos.get(clip["source_video"], clip["source_video"]),
        "start": start, "end": end, "length": end - start,
        # The index's locations are relative to the output root, the page's parent folder.
        "clip": layout.location("..", clip["clip_location"]),
        "preview": layout.location("..", clip["preview_location"]),
        "motion": motion.get("global_mean"), "motion_patch": motion.get("per_patch_min_256"),
        "aesthetic": clip["aesthetic_score"], "scores": clip_index.as_dict(clip["scores"]),
        "filtered_by": clip["filtered_by"], "valid": clip["valid"], "missing": ", ".join(clip["missing_outputs"] or []),
        "caption": clip_index.caption_text(clip["windows"]),
        "size": f"{clip['width']}x{clip['height']}" if clip["width"] else None,
        "framerate": clip["framerate"], "frames": clip["num_frames"], "codec": clip["video_codec"],
        "bytes": clip["num_bytes"], "embedding": embedding.get("algorithm"),
        "errors": failures(clip["errors"]),
    }


def _spread(count: int, limit: int) -> np.ndarray:
    """At most `limit` indices spread evenly over range(count), the same every time."""
    return np.unique(np.linspace(0, count - 1, num=min(count, limit)).astype(np.int64)) if count else np.zeros(0, int)


class _ArrayUnpickler(pickle.Unpickler):
    """Loads the numpy array an embedding pickle holds (embedding_files.py) and nothing else: the
    report may be written for an output someone else made, and a pickle can name any callable."""

    ALLOWED = {("numpy", "dtype"), ("numpy", "ndarray"), ("numpy._core.numeric", "_frombuffer"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "_reconstruct")}

    def find_class(self, module: str, name: str):  # noqa: ANN201 - whatever the allowed global is
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a numpy array")
        return super().find_class(module, name)


def embedding_map(storage: Storage, root: str, clips: pa.Table, videos: dict[str, str]) -> dict | None:
    """Up to MAP_POINTS clips with an embedding (spread evenly over the index's order), projected
    onto their first two principal components: {algorithm, total, points: [{x, y, clip row}]}."""
    location = pc.struct_field(clips.column("embedding"), "location")
    embedded = clips.filter(pc.is_valid(location))
    if embedded.num_rows < 2:
        return None
    algorithms = Counter(pc.struct_field(embedded.column("embedding"), "algorithm").to_pylist())
    algorithm = algorithms.most_common(1)[0][0]
    embedded = embedded.filter(pc.equal(pc.struct_field(embedded.column("embedding"), "algorithm"), algorithm))
    sample = embedded.take(pa.array(_spread(embedded.num_rows, MAP_POINTS))).to_pylist()

    def vector(clip: dict) -> np.ndarray | None:
        try:
            data = storage.read_bytes(layout.location(root, clip["embedding"]["location"]))
        except StorageError as exc:
            if exc.missing:
                return None
            raise
        try:
            return np.asarray(_ArrayUnpickler(io.BytesIO(data)).load(), dtype=np.float64).ravel()
        except (pickle.UnpicklingError, ValueError, TypeError, EOFError) as exc:
            log.warning("embedding map: %s left out: %s", clip["embedding"]["location"], exc)
            return None

    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        vectors = list(pool.map(vector, sample))
    kept = [(clip, v) for clip, v in zip(sample, vectors) if v is not None]
    if len(kept) < 2 or len({v.size for _, v in kept}) != 1:
        return None
    matrix = np.stack([v for _, v in kept])
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    centred = matrix - matrix.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ components[:2].T
    if projected.shape[1] < 2:
        projected = np.column_stack([projected, np.zeros(len(projected))])
    # Deterministic orientation: SVD's signs are arbitrary.
    projected *= np.where(projected.sum(axis=0) < 0, -1.0, 1.0)
    low, span = projected.min(axis=0), np.ptp(projected, axis=0)
    unit = (projected - low) / np.where(span > 0, span, 1.0)
    points = [{**clip_row(clip, videos), "x": round(float(x), 4), "y": round(float(y), 4)}
              for (clip, _), (x, y) in zip(kept, unit)]
    return {"algorithm": algorithm, "total": embedded.num_rows, "points": points}


def duplicates(storage: Storage, root: str, clips: pa.Table, videos: dict[str, str]) -> dict | None:
    """dedup/duplicates.parquet when dedup ran: {total, pairs: the LISTED_DUPLICATES most similar
    [{similarity, clip, duplicate_of}]} with both clips' rows."""
    try:
        table = pq.read_table(pa.BufferReader(storage.read_bytes(layout.join(root, DEDUP_DIR, DUPLICATES_FILE))))
    except StorageError as exc:
        if exc.missing:
            return None
        raise
    listed = table.sort_by([("cosine_similarity", "descending"), ("id", "ascending")]).slice(0, LISTED_DUPLICATES)
    wanted = set(listed.column("id").to_pylist()) | set(listed.column("duplicate_of").to_pylist())
    rows = {c["span_uuid"]: clip_row(c, videos)
            for c in clips.filter(pc.is_in(clips.column("span_uuid"), pa.array(sorted(wanted)))).to_pylist()}
    pairs = [{"similarity": round(float(p["cosine_similarity"]), 4), "clip": rows.get(p["id"]),
              "duplicate_of": rows.get(p["duplicate_of"])} for p in listed.to_pylist()]
    return {"total": table.num_rows, "pairs": [p for p in pairs if p["clip"] and p["duplicate_of"]]}
