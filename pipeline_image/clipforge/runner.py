"""Runs one VideoCurationJob: list, skip what is done, execute, record, dedup, summarise.

`run_job` owns a run from its start to its end state: the executor, the Ray it runs on, dedup
and how failed videos weigh. Inputs are listed (or read from input.manifest) a page at a time
and fed to the executor as they come, checked against what earlier runs finished
(resume_state.py, read in a few large reads before the first page); the counts grow as the
listing goes on. The driver sees only small per-chunk records. It writes a
video's processed_videos/ record once all its chunks are in, then its row of the resume state, and the run report
(clipforge.spec.RunReport: progress.json, then summary.json) at the output root, which is
what the operator reads.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from clipforge import clip_index, layout, preflight
from clipforge.embedding_files import write_video_parquet
from clipforge.input_manifest import ManifestEntry, ManifestError, manifest_pages
from clipforge.lease import RENEW_S, OutputLease, OutputLocked
from clipforge.provenance import Provenance, new_run_id
from clipforge.report import publish
from clipforge.resume_state import DoneVideo, DoneVideos, ResumeState, ResumeStateError
from clipforge.spec import (
    NO_INPUT_VIDEOS, NOT_STARTED, PROGRESS_INTERVAL_S, TOO_MANY_CLIPS_FAILED, TOO_MANY_VIDEOS_FAILED,
    TOO_MANY_VIDEOS_FAILED_RETRYABLE, ClipCounts, FailuresSpec, RunReport, RunState, VideoCounts, VideoCurationJob,
    VideoCurationJobSpec, VideoFailure, clip_settings, stage_enabled,
)
from clipforge.stages import pipeline_stages
from clipforge.storage import Listed, Storage, StorageError
from clipforge.tasks import VideoTask

log = logging.getLogger(__name__)

# How long a run's first storage calls (the output's first write, the input listing) retry
# before the run is refused as not started.
START_RETRY_S = 10.0


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


class RunNotStarted(Exception):
    """Nothing ran: the output cannot be written, another run holds it, or the inputs cannot be listed."""


class OutputLost(Exception):
    """This run's claim on its output was taken over (clipforge.lease): it must not write on."""


# RunStats.phase, as `clipforge run`'s progress bar shows it.
LISTING, STARTING_RAY, CURATING = "listing inputs", "starting Ray", "curating"


@dataclass
class RunStats:
    total: int = 0
    skipped: int = 0
    unmatched: int = 0  # files under the input that no pattern matched
    done: int = 0
    failed: int = 0
    clips_passed: int = 0
    clips_filtered: int = 0
    clips_failed: int = 0
    video_seconds: float = 0.0
    started: float = field(default_factory=time.monotonic)
    failures: list[VideoFailure] = field(default_factory=list)  # this run's
    earlier_failures: list[VideoFailure] = field(default_factory=list)  # inputs that failed for good before
    run_id: str | None = None
    job: str | None = None  # the job's namespace/name
    # For `clipforge run`'s progress bar: what the run is doing, and the passed clips of the chunks
    # done of videos not done yet (a long video's clips count as its chunks end, not at its end).
    phase: str = LISTING
    clips_passed_unfinished: int = 0
    earlier_clips: int = 0  # clips passed or filtered by earlier runs, of the videos this one skipped
    # The listing (on the Ray executor's feeding thread), the results and the progress thread share these counts.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def listed(self, done: DoneVideo | None) -> None:
        """Counts an input as listed; `done`: what an earlier run made of it, when it is done."""
        with self.lock:
            self.total += 1
            if done is None:
                return
            passed, filtered, failed = done.clips
            self.clips_passed, self.clips_filtered = self.clips_passed + passed, self.clips_filtered + filtered
            self.clips_failed += failed
            self.earlier_clips += passed + filtered
            # Videos (and clips) whose input failed for good stay failed in this run's counts and exit
            # status: the dataset still lacks them. The clips count every video done, as videos.done does.
            if done.errors:
                self.failed += 1
                self.earlier_failures.append(VideoFailure(video=done.video, errors=done.errors, earlier=True))
            else:
                self.skipped += 1

    def report(self, state: RunState, **end: Any) -> RunReport:
        """The run report as of now; `end`: summary.json's fields (RunReport's last ones)."""
        with self.lock:
            return self._report(state, **end)

    def _report(self, state: RunState, **end: Any) -> RunReport:
        elapsed = time.monotonic() - self.started
        return RunReport(
            state=state,
            run_id=self.run_id,
            job=self.job,
            updated_at=_now(),
            elapsed_seconds=round(elapsed, 3),
            videos=VideoCounts(total=self.total, done=self.done + self.skipped, failed=self.failed,
                               skipped=self.skipped, unmatched=self.unmatched),
            clips=ClipCounts(passed=self.clips_passed, filtered=self.clips_filtered, failed=self.clips_failed),
            video_seconds_processed=round(self.video_seconds, 3),
            throughput_video_seconds_per_second=round(self.video_seconds / elapsed, 4) if elapsed else 0.0,
            clips_per_second=(round((self.clips_passed + self.clips_filtered - self.earlier_clips) / elapsed, 4)
                              if elapsed else 0.0),
            **end,
        )


class ProgressWriter:
    """Refreshes progress.json on a timer, so it stays fresh while a long video is in flight."""

    def __init__(self, run: JobRun):
        self.run = run
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="clipforge-progress", daemon=True)

    def __enter__(self) -> ProgressWriter:
        self.run.write_progress(RunState.running)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        renewed = time.monotonic()
        while not self._stop.wait(PROGRESS_INTERVAL_S):
            try:
                if time.monotonic() - renewed >= RENEW_S:
                    self.run.lease.renew()
                    renewed = time.monotonic()
                if not self.run.lease.lost:
                    self.run.write_progress(RunState.running, retry_seconds=0)
            except StorageError as exc:  # a storage outage must not kill the run; the next tick tries again
                log.warning("could not write progress or renew the output's claim: %s", exc)


def _over_limits(limits: FailuresSpec, failed: int, total: int, what: str, max_failed: int | None) -> str | None:
    if max_failed is not None and failed > max_failed:
        return f"{failed} {what} failed, more than execution.failures.maxFailedVideos ({max_failed})"
    if total and failed / total > limits.max_failed_fraction:
        return (f"{failed} of {total} {what} failed, more than execution.failures.maxFailedFraction"
                f" ({limits.max_failed_fraction:g})")
    return None


def source_version(listed: Listed) -> dict:
    """Which version of a source a record was made from: a changed file is a new input."""
    return {"size": listed.size, "mtime": listed.mtime}


def input_pages(spec: VideoCurationJobSpec, storage: Storage) -> Iterator[tuple[list[ManifestEntry], int]]:
    """The job's inputs a page at a time, in order, each page with how many files no pattern
    matched: its input.manifest's rows, or the listing of input.uri (whose first call retries
    only START_RETRY_S)."""
    if spec.input.manifest:
        for entries in manifest_pages(storage, spec.input.manifest):
            yield entries, 0
        return
    for page in storage.list_pages(spec.input.uri, spec.input.patterns, first_retry_seconds=START_RETRY_S):
        yield [ManifestEntry(f.uri, f.relative, source_version(f), None) for f in page.files], page.unmatched


def _passed(chunk: VideoTask) -> int:
    return chunk.chunk_record["num_clips_passed"] if chunk.chunk_record else 0


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
        "source": first.source_version,  # a rerun redoes the video when its source has changed
        "retryable": any(c.retryable for c in chunks),
        "relative_path": first.relative_path,
        "input_columns": first.input_columns,
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
        **(first.provenance.fields() if first.provenance else {}),
        "processed_at": _now().isoformat().replace("+00:00", "Z"),
    }


class JobRun:
    def __init__(self, job: VideoCurationJob, overwrite: bool = False, retry_failed: bool = False):
        self.job, self.spec = job, job.spec
        self.storage = Storage.from_spec(self.spec.storage)
        self.root = self.spec.output.uri
        self.overwrite, self.retry_failed = overwrite, retry_failed
        self.stats = RunStats(run_id=new_run_id(), job=job.metadata.key)
        self.lease: OutputLease | None = None
        self.resume: ResumeState | None = None  # read and written from prepare() on
        self.dedup: dict | None = None  # dedup's counts (or its error) once it has run
        self._progress_lock = threading.Lock()

    def prepare(self, force_unlock: bool = False) -> Iterator[VideoTask]:
        """Claims the output, checks it, reads what earlier runs finished and lists the inputs' first
        page: storage problems surface here, before any work, after a short retry (a wrong endpoint
        must not look like an outage to ride out). Returns the videos to run, found as the listing
        goes on (and counted in self.stats as they are). Raises OutputLocked when another run holds
        the output, ResumeStateError when what earlier runs finished cannot be read."""
        storage = self.storage.retrying_for(START_RETRY_S)
        # The claim, the run's first object, doubles as the check that the output is writable;
        # a throwaway probe object would leave a directory marker behind on S3.
        self.lease = OutputLease.acquire(storage, self.job, self.stats.run_id, force=force_unlock)
        self.write_progress(RunState.starting, retry_seconds=START_RETRY_S)
        provenance = Provenance.of_run(self.stats.run_id, storage, preflight.requirements(self.spec))
        self.resume = ResumeState(self.storage, self.root, self.stats.run_id)
        done = None if self.overwrite else DoneVideos(self.resume.read(), clip_settings(self.spec), provenance,
                                                      self.retry_failed)
        pages = input_pages(self.spec, self.storage)
        first = next(pages, None)  # an input that cannot be listed or read fails the run here, before any work
        return self._tasks(itertools.chain([first] if first else [], pages), done, provenance)

    def _tasks(self, pages: Iterator[tuple[list[ManifestEntry], int]], done: DoneVideos | None,
               provenance: Provenance) -> Iterator[VideoTask]:
        limit = self.spec.input.limit
        for entries, unmatched in pages:
            with self.stats.lock:
                self.stats.unmatched += unmatched
            for entry in entries:
                if limit and self.stats.total >= limit:
                    return
                earlier = done.get(entry.relative, entry.version) if done is not None else None
                self.stats.listed(earlier)
                if earlier is None:
                    yield VideoTask(source=entry.uri, relative_path=entry.relative, source_version=entry.version,
                                    input_columns=entry.columns, provenance=provenance, redo=self.overwrite,
                                    retry_failed=self.retry_failed)

    def no_input(self) -> str | None:
        """Why there is nothing to curate, naming the input and patterns; None when there is."""
        if self.stats.total:
            return None
        patterns = ", ".join(self.spec.input.patterns)
        found = f"{self.stats.unmatched} files, none matching" if self.stats.unmatched else "no file matching"
        if self.spec.input.manifest:
            return f"input.manifest {self.spec.input.manifest} names no video"
        return f"input {self.spec.input.uri} holds {found} input.patterns ({patterns})"

    def consume(self, results: Iterator[VideoTask], on_progress: Callable[[RunStats], None] | None = None) -> None:
        pending: dict[str, list[VideoTask]] = {}
        for chunk in results:
            if self.lease.lost:
                raise OutputLost(f"this run's claim on {self.root} was taken over; it stopped writing")
            chunks = pending.setdefault(chunk.relative_path, [])
            chunks.append(chunk)
            if len(chunks) < chunk.num_chunks:
                with self.stats.lock:
                    self.stats.clips_passed_unfinished += _passed(chunk)
                if on_progress is not None:
                    on_progress(self.stats)
                continue
            del pending[chunk.relative_path]
            with self.stats.lock:
                self.stats.clips_passed_unfinished -= sum(_passed(c) for c in chunks[:-1])
            record = video_record(chunks, clip_settings(self.spec))
            if stage_enabled(self.spec, "embed"):  # before the record: a done video has its parquet
                write_video_parquet(self.storage, self.root, self.spec.embeddings.algorithm, chunks)
            # Its index row before the record: a crash in between leaves the video not done, and
            # the next run commits the row again; the other way round the row would stay missing.
            clip_index.commit_video(self.storage, self.root, record)
            self.storage.write_json(layout.video_record(self.root, chunk.relative_path), record)
            self.resume.add(record)
            self._count(record)
            if on_progress is not None:
                on_progress(self.stats)

    def _count(self, record: dict) -> None:
        with self.stats.lock:
            self._count_locked(record)

    def _count_locked(self, record: dict) -> None:
        stats = self.stats
        stats.clips_passed += record["num_clips_passed"]
        stats.clips_filtered += record["num_clips_filtered"]
        stats.clips_failed += record["num_clips_failed"]
        if record["errors"]:
            stats.failed += 1
            stats.failures.append(VideoFailure(video=record["video"], errors=record["errors"],
                                               retryable=record["retryable"]))
        else:
            stats.done += 1
            stats.video_seconds += record["metadata"]["duration_s"]

    def deduplicate(self) -> None:
        """Semantic dedup of the output's embeddings (on Ray when this process joined one); a
        failure is recorded as dedup's {error} and fails the run."""
        from clipforge.dedup import DedupError, dedup_output

        try:
            self.dedup = dedup_output(self.spec, self.storage)
        except (DedupError, StorageError) as exc:
            self.dedup = {"error": str(exc)}

    def too_many_failures(self) -> tuple[str, str] | None:
        """(reason, message) when this run's failed videos, or failed clips, fail it as a whole
        (execution.failures); None otherwise. Clip failures are the input's (a clip the stages
        could not make); for videos, when only the environment's failures put them over the
        limits the reason says so: a retry may succeed."""
        limits, stats = self.spec.execution.failures, self.stats
        message = _over_limits(limits, stats.failed, stats.total, "videos", limits.max_failed_videos)
        if message:
            content = stats.failed - sum(f.retryable for f in stats.failures)
            input_fault = _over_limits(limits, content, stats.total, "videos", limits.max_failed_videos)
            return (TOO_MANY_VIDEOS_FAILED if input_fault else TOO_MANY_VIDEOS_FAILED_RETRYABLE), message
        clips = stats.clips_passed + stats.clips_filtered + stats.clips_failed
        message = _over_limits(limits, stats.clips_failed, clips, "clips", None)
        return (TOO_MANY_CLIPS_FAILED, message) if message else None

    def write_progress(self, state: RunState, retry_seconds: float | None = None, reason: str | None = None,
                       message: str | None = None) -> None:
        """retry_seconds: instead of the storage's own (0 for the progress thread's ticks: the next tick repeats);
        reason and message: why a run ended as it did, for its last progress.json."""
        storage = self.storage if retry_seconds is None else self.storage.retrying_for(retry_seconds)
        report = self.stats.report(state, reason=reason, message=(message or "") if reason else None)
        # Called from the progress thread and the driver: one document at a time.
        with self._progress_lock:
            storage.write_json(layout.join(self.root, layout.PROGRESS), report.to_json())

    def summary(self, state: RunState, reason: str | None = None, message: str | None = None) -> RunReport:
        """Writes summary.json; a failed run's `reason` (one CamelCase word) and `message` say why."""
        failures = self.stats.earlier_failures + self.stats.failures
        report = self.stats.report(state, output=self.root, failures=failures, reason=reason,
                                   message=(message or "") if reason else None, dedup=self.dedup)
        self.storage.write_json(layout.join(self.root, layout.SUMMARY), report.to_json())
        publish(self.storage, self.root)  # the report over what the output's index now holds
        return report


def run_job(job: VideoCurationJob, executor: str | None = None, ray_address: str | None = None,
            overwrite: bool = False, on_progress: Callable[[RunStats], None] | None = None,
            retry_failed: bool = False, force_unlock: bool = False) -> RunReport:
    """Runs the job to its end state and returns its summary (written as summary.json too).

    `executor` overrides spec.execution.executor. Videos an earlier run recorded as failed by
    their input are not tried again unless `retry_failed` (clipforge.failures). The Ray
    executor joins `ray_address`, or a Ray this process has joined, or starts a private local
    Ray for the run and stops it at the end; dedup (when enabled) runs after every video, on that
    Ray. `on_progress` is told the counts (RunStats) after the inputs' first page is listed, when the
    run's phase changes, and after each chunk.

    Raises RunNotStarted when the output or the inputs cannot be reached, or another run holds
    the output (clipforge.lease; `force_unlock` removes every claim first), or what earlier runs
    finished cannot be read (clipforge.resume_state). Anything raised later
    ends the run as failed, with its summary written, and propagates; OutputLost when another
    run took the output over, after which this one writes nothing more there. An input that
    matches no file ends the run in state no-input.
    """
    run = JobRun(job, overwrite=overwrite, retry_failed=retry_failed)
    try:
        tasks = run.prepare(force_unlock)
    except (StorageError, OutputLocked, ManifestError, ResumeStateError) as exc:
        if run.lease is not None:  # held: the output is this run's to say why it ends here
            with contextlib.suppress(StorageError):
                run.write_progress(RunState.failed, retry_seconds=0, reason=NOT_STARTED, message=str(exc))
                run.lease.release()
        raise RunNotStarted(str(exc)) from exc
    if on_progress is not None:
        on_progress(run.stats)
    state, reason, message = RunState.failed, None, None
    with contextlib.ExitStack() as ray:  # Ray, when the run starts its own, stops after the summary
        try:
            with ProgressWriter(run):
                first = next(tasks, None)  # listed until the first video to run, or the listing's end
                nothing = run.no_input() if first is None else None
                if nothing:
                    state, reason, message = RunState.no_input, NO_INPUT_VIDEOS, nothing
                else:
                    todo = itertools.chain([first], tasks) if first is not None else None
                    state, reason, message = _execute(run, todo, executor, ray_address, ray, on_progress)
        finally:
            if not run.lease.lost:  # else the output is another run's now
                try:
                    with contextlib.suppress(StorageError):  # a run that failed keeps what it finished
                        run.resume.flush()
                    summary = run.summary(state, reason, message)
                finally:  # progress.json never stays at `running`, even when summary.json cannot be written
                    try:
                        run.write_progress(state, reason=reason, message=message)
                    finally:
                        run.lease.release()
    if run.lease.lost:
        raise OutputLost(f"this run's claim on {run.root} was taken over; it stopped writing")
    return summary


def _phase(run: JobRun, phase: str, on_progress: Callable[[RunStats], None] | None) -> None:
    run.stats.phase = phase
    if on_progress is not None:
        on_progress(run.stats)


def _execute(run: JobRun, tasks: Iterator[VideoTask] | None, executor: str | None, ray_address: str | None,
             ray: contextlib.ExitStack, on_progress: Callable[[RunStats], None] | None
             ) -> tuple[RunState, str | None, str | None]:
    """The pipeline over `tasks` (None: every input is done), then dedup: the run's end (state,
    reason, message)."""
    spec = run.spec
    stages = pipeline_stages(spec)
    if (executor or spec.execution.executor) == "local":
        from clipforge.executors.local import run_local

        results = run_local(spec, tasks or [], stages)
    else:
        from clipforge.executors.ray_data import ray_session, run_ray

        _phase(run, STARTING_RAY, on_progress)
        ray.enter_context(ray_session(spec, ray_address))
        results = run_ray(spec, tasks or iter(()), stages)
    _phase(run, CURATING, on_progress)
    if tasks is not None:
        run.consume(results, on_progress)
        run.resume.flush()
    reason, message = run.too_many_failures() or (None, None)
    state = (RunState.failed if reason else RunState.completed_with_failures
             if run.stats.failed or run.stats.clips_failed else RunState.succeeded)
    if spec.dedup.enabled:  # after every video, on the Ray the run used (if any)
        run.deduplicate()
        if "error" in run.dedup:
            state = RunState.failed
    return state, reason, message


def dedup_job(job: VideoCurationJob, ray_address: str | None = None) -> dict:
    """`clipforge dedup`: semantic dedup of an existing output's embeddings (dedup.inputUri or
    output.uri), in this process or, with `ray_address` ("local" starts a private Ray), spread
    over Ray. Returns dedup's counts and records them as summary.json's `dedup`; the rest of the
    summary stays as its run wrote it. Raises DedupError or StorageError."""
    from clipforge.dedup import dedup_output

    spec = job.spec
    storage = Storage.from_spec(spec.storage)
    with contextlib.ExitStack() as ray:
        if ray_address:
            from clipforge.executors.ray_data import ray_session

            ray.enter_context(ray_session(spec, None if ray_address == "local" else ray_address))
        dedup = dedup_output(spec, storage)
        summary_uri = layout.join(spec.output.uri, layout.SUMMARY)
        # Patched as JSON, not parsed as a RunReport: an output dedup'ed before any run has none.
        summary = json.loads(storage.read_bytes(summary_uri)) if storage.exists(summary_uri) else {}
        summary["dedup"] = dedup
        storage.write_json(summary_uri, summary)
    return dedup
