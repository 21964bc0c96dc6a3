"""Runs one VideoCurationJob: discover, skip what is done, execute, record, summarise.

The driver sees only small per-chunk records. It writes a video's processed_videos/ record
once all its chunks are in, and progress.json / summary.json at the output root, which is
what the operator reads.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

from clipforge import layout
from clipforge.embedding_files import write_video_parquet
from clipforge.report import publish
from clipforge.spec import VideoCurationJob, VideoCurationJobSpec, clip_settings, stage_enabled
from clipforge.storage import Storage, StorageError
from clipforge.tasks import VideoTask

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 5.0


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")



@dataclass
class RunStats:
    total: int = 0
    skipped: int = 0
    done: int = 0
    failed: int = 0
    clips_passed: int = 0
    clips_filtered: int = 0
    clips_failed: int = 0
    video_seconds: float = 0.0
    started: float = field(default_factory=time.monotonic)
    failures: list[dict] = field(default_factory=list)

    def to_json(self, state: str) -> dict:
        elapsed = time.monotonic() - self.started
        return {
            "state": state,
            "updatedAt": _now(),
            "elapsedSeconds": round(elapsed, 3),
            "videos": {
                "total": self.total,
                "done": self.done + self.skipped,
                "failed": self.failed,
                "skipped": self.skipped,
            },
            "clips": {"passed": self.clips_passed, "filtered": self.clips_filtered, "failed": self.clips_failed},
            "videoSecondsProcessed": round(self.video_seconds, 3),
            "throughputVideoSecondsPerSecond": round(self.video_seconds / elapsed, 4) if elapsed else 0.0,
            "clipsPerSecond": round((self.clips_passed + self.clips_filtered) / elapsed, 4) if elapsed else 0.0,
        }


class ProgressWriter:
    """Refreshes progress.json on a timer, so it stays fresh while a long video is in flight."""

    def __init__(self, run: JobRun):
        self.run = run
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="clipforge-progress", daemon=True)

    def __enter__(self) -> ProgressWriter:
        self.run.write_progress("running")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(PROGRESS_INTERVAL_S):
            try:
                self.run.write_progress("running")
            except StorageError as exc:  # a storage hiccup must not kill the run; the next tick retries
                log.warning("could not write progress: %s", exc)


def processed_videos(storage: Storage, root: str, settings: dict) -> set[str]:
    """Relative paths of the videos recorded as processed without errors under root, with these
    clip settings (a video done under other settings is redone).

    One listing of processed_videos/ and concurrent reads of its records: a rerun over a
    large output must not cost a round trip per input video in sequence.
    """
    records_root = layout.join(root, layout.PROCESSED_VIDEOS)
    try:
        records = storage.list_files(records_root, ["*.json"])
    except StorageError:
        return set()  # no records yet

    def succeeded(record: tuple[str, str, int]) -> str | None:
        uri, relative, _size = record
        # Failed videos are recorded too, but retried: their failure may have been transient.
        done = json.loads(storage.read_bytes(uri))
        return None if done.get("errors") or done.get("settings") != settings else relative[: -len(".json")]

    with ThreadPoolExecutor(max_workers=16) as pool:
        return {path for path in pool.map(succeeded, records) if path is not None}


def discover(spec: VideoCurationJobSpec, storage: Storage, overwrite: bool) -> tuple[list[VideoTask], int, int]:
    """(tasks to run, total inputs, inputs skipped as already processed)."""
    inputs = storage.list_files(spec.input.uri, spec.input.patterns)
    if spec.input.limit:
        inputs = inputs[: spec.input.limit]
    done = set() if overwrite else processed_videos(storage, spec.output.uri, clip_settings(spec))
    tasks = [VideoTask(source=uri, relative_path=rel, redo=overwrite) for uri, rel, _size in inputs if rel not in done]
    return tasks, len(inputs), len(inputs) - len(tasks)


def video_record(chunks: list[VideoTask], settings: dict) -> dict:
    first = chunks[0]
    meta = next((c.meta for c in chunks if c.meta is not None), None)
    errors: dict[str, str] = {}
    for chunk in chunks:
        for stage, message in chunk.errors.items():
            errors[stage if chunk.num_chunks == 1 else f"{stage}[chunk {chunk.chunk_index}]"] = message
    records = sorted((c.chunk_record for c in chunks if c.chunk_record), key=lambda r: r["chunk_index"])
    return {
        "video": first.source,
        "relative_path": first.relative_path,
        "metadata": meta.to_json() if meta else None,
        "split_algorithm": first.split_algorithm,
        "num_chunks": first.num_chunks,
        "num_clips": first.num_clips_total,
        "num_clips_passed": sum(r["num_clips_passed"] for r in records),
        "num_clips_filtered": sum(r["num_clips_filtered"] for r in records),
        "num_clips_failed": sum(r["num_clips_failed"] for r in records),
        "clip_chunks": [layout.chunk_record("", first.relative_path, r["chunk_index"]) for r in records],
        "errors": errors,
        "settings": settings,  # what decided its clips: a rerun under other settings redoes it
        "processed_at": _now(),
    }


class JobRun:
    def __init__(self, job: VideoCurationJob, overwrite: bool = False):
        self.spec = job.spec
        self.storage = Storage.from_spec(self.spec.storage)
        self.root = self.spec.output.uri
        self.overwrite = overwrite
        self.stats = RunStats()
        self.dedup: dict | None = None  # dedup's counts (or its error) once it has run
        self._progress_lock = threading.Lock()

    def prepare(self) -> list[VideoTask]:
        """Checks the output and lists the inputs: storage problems surface here, before any work."""
        # The first object of a run doubles as the check that the output is writable; a
        # throwaway probe object would leave a directory marker behind on S3.
        self.write_progress("starting")
        tasks, self.stats.total, self.stats.skipped = discover(self.spec, self.storage, self.overwrite)
        return tasks

    def consume(self, results: Iterator[VideoTask], on_video=None) -> None:  # noqa: ANN001
        pending: dict[str, list[VideoTask]] = {}
        for chunk in results:
            chunks = pending.setdefault(chunk.relative_path, [])
            chunks.append(chunk)
            if len(chunks) < chunk.num_chunks:
                continue
            del pending[chunk.relative_path]
            record = video_record(chunks, clip_settings(self.spec))
            if stage_enabled(self.spec, "embed"):  # before the record: a done video has its parquet
                write_video_parquet(self.storage, self.root, self.spec.embeddings.algorithm, chunks)
            self.storage.write_json(layout.video_record(self.root, chunk.relative_path), record)
            self._count(record)
            if on_video is not None:
                on_video(record)

    def _count(self, record: dict) -> None:
        stats = self.stats
        stats.clips_passed += record["num_clips_passed"]
        stats.clips_filtered += record["num_clips_filtered"]
        stats.clips_failed += record["num_clips_failed"]
        if record["errors"]:
            stats.failed += 1
            stats.failures.append({"video": record["video"], "errors": record["errors"]})
        else:
            stats.done += 1
            stats.video_seconds += record["metadata"]["duration_s"]

    def deduplicate(self) -> dict:
        """Semantic dedup of the output's embeddings (on Ray when this process joined one)."""
        from clipforge.dedup import dedup_output

        self.dedup = dedup_output(self.spec, self.storage)
        return self.dedup

    def too_many_failures(self) -> str | None:
        """Why this run's failed videos fail it as a whole (execution.failures), or None."""
        limits = self.spec.execution.failures
        failed, total = self.stats.failed, self.stats.total
        if limits.max_failed_videos is not None and failed > limits.max_failed_videos:
            return f"{failed} videos failed, more than execution.failures.maxFailedVideos ({limits.max_failed_videos})"
        if total and failed / total > limits.max_failed_fraction:
            return (f"{failed} of {total} videos failed, more than execution.failures.maxFailedFraction"
                    f" ({limits.max_failed_fraction:g})")
        return None

    def write_progress(self, state: str) -> None:
        # Called from the progress thread and the driver: one document at a time.
        with self._progress_lock:
            self.storage.write_json(layout.join(self.root, layout.PROGRESS), self.stats.to_json(state))

    def summary(self, state: str, reason: str | None = None, message: str | None = None) -> dict:
        """Writes summary.json; a failed run's `reason` (one CamelCase word) and `message` say why."""
        document = {**self.stats.to_json(state), "failures": self.stats.failures, "output": self.root}
        if reason:
            document.update(reason=reason, message=message or "")
        if self.dedup is not None:
            document["dedup"] = self.dedup
        self.storage.write_json(layout.join(self.root, layout.SUMMARY), document)
        publish(self.storage, self.root)  # the clip index and the report over what the output now holds
        return document
