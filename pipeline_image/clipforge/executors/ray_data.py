"""Ray Data streaming executor: each stage is a streaming operator backed by an actor pool.

Every row is one task (a video, or after split one chunk of a video) and is its own block,
so the chunks of one long video are spread over a stage's workers like separate videos are.
Videos enter as the driver lists them (executors/feed.py).

Actor pools autoscale between the stage's min and max workers. A worker that dies (a decoder
crash, out of memory, a lost node) is restarted and the task it was running is retried (the
writer is idempotent: a retried chunk rewrites the same objects). Retries are bounded per
task: `TaskAttempts`, one small actor on the driver's node, counts the attempts at each task
across worker deaths, and once a task has used execution.failures.taskRetries retries its
next attempt records it as failed, with the reason, instead of running it again. A task that
runs past its stage's time limit (Stage.time_limit) has its worker process stopped by
faulthandler's watchdog, from outside the interpreter (native code stuck in a decoder cannot be
interrupted any other way, and may hold the GIL), which dumps every thread's stack to a file the
ledger reads into the reason.
"""

from __future__ import annotations

import atexit
import contextlib
import faulthandler
import logging
import math
import os
import pickle
import secrets
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import ray
from ray.actor import ActorHandle
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from clipforge import logs
from clipforge.executors.allocation import StageDemand, StageMeter, throughput_allocation
from clipforge.spec import VideoCurationJobSpec, stage_resource_name
from clipforge.stages import Stage, pipeline_stages
from clipforge.stages.base import run_attempts
from clipforge.tasks import VideoTask, task_row

log = logging.getLogger(__name__)

# What a pinned stage's actor asks of its node's custom resource; groups advertise plenty.
PINNED_RESOURCE_AMOUNT = 0.01
# Ray-level resubmissions per ledger attempt (see ray_task_retries).
QUEUED_RETRY_FACTOR = 4
# An attempt that left no reason behind: its process ended without a word (SIGKILL, segfault, OOM).
WORKER_DIED = "its worker process died (crash, out of memory or killed)"
TIME_LIMIT_REASON = "ran past the time limit"
# How long the ledger waits for a stopped attempt's stack dump to be read on its node.
DUMP_READ_TIMEOUT_S = 60


class WorkerSetupError(RuntimeError):
    """A stage's workers keep dying while they start: the run cannot go on."""


@dataclass(frozen=True)
class TimeLimitDump:
    """Where an attempt's time limit writes every thread's stack, and the reason it then gives."""

    node_id: str
    path: str
    reason: str


@dataclass
class _Attempt:
    reason: str = ""  # "" while the attempt runs (or if it ended without a word)
    dump: TimeLimitDump | None = None  # None: no time limit, or its dump was read


class TaskAttempts:
    """Attempts at each task (and at each stage's worker setup), kept outside the workers."""

    def __init__(self) -> None:
        self._attempts: dict[str, list[_Attempt]] = {}

    def begin(self, key: str, dump: TimeLimitDump | None = None) -> list[str]:
        """Starts an attempt whose time limit writes to `dump`; returns the reasons the earlier
        attempts ended. An earlier attempt is over once another begins: a stack dump it left
        (its process stopped by its time limit) is read into its reason now."""
        attempts = self._attempts.setdefault(key, [])
        for attempt in attempts:
            if attempt.dump is not None:
                attempt.reason = attempt.reason or _time_limit_reason(attempt.dump)
                attempt.dump = None
        attempts.append(_Attempt(dump=dump))
        return [attempt.reason for attempt in attempts[:-1]]

    def finish(self, key: str) -> None:
        self._attempts.pop(key, None)


@ray.remote(num_cpus=0)
def _take_dump(path: str) -> str:
    """The file at `path` on this node, removed; "" when there is none."""
    try:
        with open(path) as dump:
            text = dump.read()
    except FileNotFoundError:
        return ""
    os.unlink(path)
    return text


def _time_limit_reason(dump: TimeLimitDump) -> str:
    """The reason an attempt that wrote `dump` ended: its time limit with its threads' stacks when
    the dump holds them, else "" (it died otherwise, or with its node)."""
    try:
        stacks = ray.get(_take_dump.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(dump.node_id, soft=False)).remote(dump.path),
            timeout=DUMP_READ_TIMEOUT_S)
    except ray.exceptions.RayError:
        return ""
    return f"{dump.reason}; its threads then:\n{stacks.strip()}" if stacks.strip() else ""


class _TimeLimit:
    """Stops this worker process when the work inside runs past `seconds`.

    faulthandler's watchdog is a C thread: it fires even while native code holds the GIL (a
    Python timer would wait for it for good), writes every thread's stack to the dump file and
    exits the process. The ledger, told the file beforehand, reads it into the reason afterwards.
    """

    def __init__(self, seconds: float, settings: str):
        self.seconds = seconds
        path = os.path.join(tempfile.gettempdir(), f"clipforge-time-limit-{secrets.token_hex(8)}.txt")
        self.dump = TimeLimitDump(ray.get_runtime_context().get_node_id(), path,
                                  f"{TIME_LIMIT_REASON} of {seconds:g} s ({settings})")

    def __enter__(self) -> None:
        self._file = open(self.dump.path, "w")  # noqa: SIM115 - open while the limit is armed
        faulthandler.dump_traceback_later(self.seconds, exit=True, file=self._file)

    def __exit__(self, *exc: object) -> None:
        faulthandler.cancel_dump_traceback_later()
        self._file.close()
        os.unlink(self.dump.path)


def _end_process() -> None:
    """Ends this worker's process at once, without the interpreter's and its libraries' teardown.

    Ray runs this when it is done with the worker: its core worker has shut down and told the
    raylet so. That shutdown starts a thread (Ray 2.60: StatsExporter::ExportNow in its
    disconnect constructs opencensus's DeltaProducer, whose harvester thread nothing stops
    while metrics go by OpenTelemetry, Ray's default; disabling Ray's metrics still starts it)
    that wakes 5 s later and runs opencensus code; a teardown still going then can end in
    SIGSEGV in DeltaProducer::RunHarvesterLoop and "Fatal Python error" in the worker's log,
    its work long done. That teardown lasts seconds (over 5 s on a busy machine); this, well
    under one.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class _StageWorker:
    def __init__(self, stage_cls: type[Stage], pipeline: tuple[type[Stage], ...], spec: VideoCurationJobSpec,
                 attempts: ActorHandle, meter: ActorHandle | None):
        # Exit handlers run last-registered first: this one before Ray's own, whose work in a
        # worker (Python-side bookkeeping) is moot once its core worker has shut down.
        atexit.register(_end_process)
        logs.configure_worker()
        self.attempts = attempts
        self.meter = meter  # the throughput allocator's StageMeter, told how long each task took
        self.failures = spec.execution.failures
        self.stage = stage_cls(spec, pipeline)
        # Keyed by the actor, which keeps its id across restarts, and cleared by each successful
        # start: the deaths counted are consecutive ones while starting, not its workers starting
        # side by side. No time limit: loading a model may take longer than any one task.
        key = f"{stage_cls.name} worker setup ({ray.get_runtime_context().get_actor_id()})"
        gave_up = self._attempt(key, self.stage.setup, limit=None)
        if gave_up:
            raise WorkerSetupError(f"{stage_cls.name} workers cannot start: {_gave_up(gave_up)}")

    def __call__(self, row: dict) -> list[dict]:
        started = time.perf_counter()
        rows = self._process(row)
        if self.meter is not None:
            self.meter.record.remote(self.stage.name, time.perf_counter() - started, len(rows))
        return rows

    def _process(self, row: dict) -> list[dict]:
        task = pickle.loads(row["task"])
        if task.failed:  # passed on untouched (Stage.run); nothing that could crash
            return [row]
        rows: list[dict] = []
        key = f"{self.stage.name} of {task.relative_path} chunk {task.chunk_index}"
        # The rows are built inside the attempt: running out of memory pickling them is its death too.
        # Environment failures are retried inside (run_attempts); deaths and time limits here.
        gave_up = self._attempt(
            key, lambda: rows.extend(task_row(t) for t in run_attempts(self.stage, task, self.failures.task_retries,
                                                                   lambda: pickle.loads(row["task"]))),
            _TimeLimit(*self.stage.time_limit(task)),
        )
        if gave_up:
            log.info("%s: %s", key, _gave_up(gave_up))  # the summary's FAILED line says it to the user
            task.errors[self.stage.name] = _gave_up(gave_up)
            # A worker that died (out of memory, killed) is the environment's; a task that keeps
            # running past its time limit is its input's (a decoder that hangs on it).
            task.retryable = any(not reason.startswith(TIME_LIMIT_REASON) for reason in gave_up)
            return [task_row(task)]
        return rows

    def _attempt(self, key: str, work: Callable[[], object], limit: _TimeLimit | None) -> list[str] | None:
        """Runs `work` within `limit` unless `key` has used up its retries; returns the reasons its
        attempts ended when it gives up, or None."""
        earlier = ray.get(self.attempts.begin.remote(key, limit.dump if limit else None))
        if len(earlier) > self.failures.task_retries:
            return [reason or WORKER_DIED for reason in earlier]
        with limit or contextlib.nullcontext():
            work()
        self.attempts.finish.remote(key)
        return None


def _gave_up(reasons: list[str]) -> str:
    return f"gave up after {len(reasons)} attempts: {'; '.join(dict.fromkeys(reasons))}"


def ray_task_retries(spec: VideoCurationJobSpec) -> int:
    """How often Ray may resubmit one task to a restarted worker before the run fails as a whole.

    Ray resubmits every task a dead worker held, also those only queued behind the one that
    killed it. The ledger bounds the attempts that ran (one more lets the last record the
    failure); the factor leaves room for queued tasks, and still ends a run that would loop.
    """
    return (spec.execution.failures.task_retries + 1) * QUEUED_RETRY_FACTOR


def local_cpus_needed(spec: VideoCurationJobSpec) -> int:
    """Logical CPUs a local Ray needs so that every stage's minimum workers can start at once."""
    minimum = sum(stage.execution(spec).cpus * stage.execution(spec).min_workers for stage in pipeline_stages(spec))
    return max(os.cpu_count() or 1, math.ceil(minimum))


@contextlib.contextmanager
def ray_session(spec: VideoCurationJobSpec, address: str | None) -> Iterator[None]:
    """Ray for one run or command: a Ray this process has joined, else `address`, else a
    private local Ray started here and stopped when the block ends."""
    started = start_ray(spec, address)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def start_ray(spec: VideoCurationJobSpec, address: str | None) -> bool:
    """Joins `address` or starts a private local Ray; returns True when it started one."""
    if ray.is_initialized():
        return False
    # Ray colours the `(pid=...)` prefix of every worker line it passes on; in a file or a pipe
    # those are escape codes. An explicit RAY_COLOR_PREFIX is the user's.
    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    # Workers configure their logging before any spec reaches them: the level goes with them, in
    # the environment a private Ray's processes inherit, or in a joined cluster's runtime env
    # (a runtime env costs a local run 4-6 s: its actors cannot take Ray's prestarted workers).
    options = {"log_to_driver": True,
               "logging_level": max(logging.WARNING, logging.getLogger("clipforge").getEffectiveLevel())}
    if address:
        ray.init(address=address, runtime_env={"env_vars": logs.worker_env()}, **options)
        return False
    os.environ.update(logs.worker_env())
    _token_auth()
    num_cpus = local_cpus_needed(spec)
    if num_cpus > (os.cpu_count() or 1):
        log.info("local Ray: %d logical CPUs so each stage gets its minimum workers (%d cores)", num_cpus, os.cpu_count())
    ray.init(num_cpus=num_cpus, include_dashboard=False, **options)
    return True


def _token_auth() -> None:
    """Token auth for a private local Ray, chosen here rather than left to Ray's default (which
    says so in a warning on every run), unless the user chose a mode.

    Its GCS and workers listen on the machine's address while the run lasts. The token is this
    process's own, in its environment, which Ray's processes inherit, rather than the token file
    Ray would write under ~/.ray to outlive the run. A joined cluster brings its own.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return
    from ray._raylet import Config

    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    Config.initialize("")  # Ray read its settings at import; this process must see token mode too


def run_ray(spec: VideoCurationJobSpec, tasks: Iterable[VideoTask], stages: list[type[Stage]]) -> Iterator[VideoTask]:
    """Streams `tasks` (consumed as they come, from a thread) through the stages (the spec's:
    clipforge.stages.pipeline_stages; stand-ins with the same names and resources in the scaling
    benchmark) on the Ray this process joined. A failure raised by `tasks` is raised here once
    the videos before it are through."""
    import ray.data  # here: the executor's own actors (the ledger, the meter) never load Ray Data

    from clipforge.executors.feed import FEED_AHEAD, Feed, Feeder

    ctx = ray.data.DataContext.get_current()
    # The CLI draws its own progress, per video; Ray Data's own logs stay in its log files.
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.verbose_stats_logs = False
    # One row per block: a block is the unit an actor takes, and Ray Data would otherwise pack
    # all the chunks split makes of a video into one block (up to 128 MiB), one worker's work.
    ctx.target_max_block_size = 1
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    attempts = _on_driver_node(TaskAttempts)  # the ledger must outlive any worker node
    meter = _on_driver_node(StageMeter) if spec.execution.allocator == "throughput" else None
    feeder = Feeder(tasks, FEED_AHEAD, _driver_node())
    # No CPU for the read task: it only waits on the queue, for as long as the listing lasts.
    ds = ray.data.read_datasource(Feed(feeder.queue), num_cpus=0)
    for stage_cls in stages:
        ds = _stage_operator(ds, stage_cls, tuple(stages), spec, attempts, meter)
    allocation = throughput_allocation(_autoscaler_args(spec, stages, meter)) if meter else contextlib.nullcontext()
    feeder.thread.start()
    try:
        with allocation:
            for row in ds.iter_rows():
                yield pickle.loads(row["task"])
        if feeder.error is not None:
            raise feeder.error
    finally:
        feeder.stop.set()
        feeder.thread.join()
        # Killed, like the ledger and the meter: a graceful end would wait on the queue actor's
        # teardown, in which Ray's metrics thread can crash it (_end_process).
        feeder.queue.shutdown(force=True)
        ray.kill(attempts)
        if meter:
            ray.kill(meter)


def _driver_node() -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


def _on_driver_node(cls: type) -> ActorHandle:
    return ray.remote(cls).options(num_cpus=0, scheduling_strategy=_driver_node()).remote()


def _autoscaler_args(spec: VideoCurationJobSpec, stages: list[type[Stage]], meter: ActorHandle) -> dict:
    """What ThroughputAutoscaler needs to know of the stages: resources, bounds, pinning, order."""
    settings, resource_names = {}, {}
    for stage_cls in stages:
        execution = stage_cls.execution(spec)
        settings[stage_cls.name] = StageDemand(stage_cls.name, execution.cpus, execution.gpus, execution.min_workers,
                                               execution.max_workers, execution.min_workers, None, None)
        resource_names[stage_cls.name] = stage_resource_name(stage_cls.name) if execution.pinned else None
    return {"stages": settings, "resource_names": resource_names, "order": [s.name for s in stages],
            "op_stage": {_worker_name(s): s.name for s in stages}, "meter": meter}


def _worker_name(stage_cls: type[Stage]) -> str:
    # Named per stage, so Ray's operator names, logs and process titles say which stage it is.
    return f"{stage_cls.__name__}Worker"


def _stage_operator(ds: ray.data.Dataset, stage_cls: type[Stage], pipeline: tuple[type[Stage], ...],
                    spec: VideoCurationJobSpec, attempts: ActorHandle, meter: ActorHandle | None) -> ray.data.Dataset:
    """`ds` followed by the stage's actor pool (`pipeline`: every stage of the run, in order)."""
    execution = stage_cls.execution(spec)
    worker = type(_worker_name(stage_cls), (_StageWorker,), {})
    with warnings.catch_warnings():
        # Ray 2.60 takes actor restarts and retries only as the generic (deprecated) remote args.
        warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated", DeprecationWarning)
        return ds.flat_map(
            worker,
            fn_constructor_args=(stage_cls, pipeline, spec, attempts, meter),
            compute=ray.data.ActorPoolStrategy(min_size=execution.min_workers, max_size=execution.max_workers),
            num_cpus=execution.cpus,
            num_gpus=execution.gpus or None,
            resources={stage_resource_name(stage_cls.name): PINNED_RESOURCE_AMOUNT} if execution.pinned else None,
            # Restarts are bounded by the ledger: each task ends a bounded number of workers, and
            # a stage whose workers die while starting fails the run. With restarts (Ray Data's
            # default too) Ray logs, once per run, an E-level core_worker.cc line on "constructor
            # arguments in the object store": Ray Data's own arguments (every pool's code and
            # context go by reference; ray-project/ray#57733), put by this process, which holds
            # them while the run lasts. Only Ray Data could pass them otherwise.
            max_restarts=-1,
            max_task_retries=ray_task_retries(spec),
        )
