"""Prometheus metrics of the operator, on their own registry (served by handlers' startup)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from clipforge.spec import JobPhase

REGISTRY = CollectorRegistry(auto_describe=True)

JOBS = Gauge("clipforge_jobs", "VideoCurationJobs this operator watches, by phase.", ["phase"], registry=REGISTRY)
# Per job, from its status.progress (the pipeline's last report): a dashboard's videos and clips.
JOB_VIDEOS = Gauge("clipforge_job_videos", "A job's videos by state: total, done, failed, skipped.",
                   ["namespace", "job", "state"], registry=REGISTRY)
JOB_CLIPS = Gauge("clipforge_job_clips", "A job's clips by state: passed, filtered.",
                  ["namespace", "job", "state"], registry=REGISTRY)
# status.progress field -> (gauge, state)
PROGRESS_GAUGES = {
    "videosTotal": (JOB_VIDEOS, "total"), "videosDone": (JOB_VIDEOS, "done"), "videosFailed": (JOB_VIDEOS, "failed"),
    "videosSkipped": (JOB_VIDEOS, "skipped"), "clipsPassed": (JOB_CLIPS, "passed"),
    "clipsFiltered": (JOB_CLIPS, "filtered"),
}
RECONCILE_ERRORS = Counter(
    "clipforge_reconcile_errors_total", "Reconciliations that raised, by handler.", ["handler"], registry=REGISTRY
)
RECONCILE_SECONDS = Histogram(
    "clipforge_reconcile_duration_seconds", "Time spent reconciling one job, by handler.", ["handler"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=REGISTRY,
)

T = TypeVar("T")


class PhaseTracker:
    """Last known phase of every job, exported as the clipforge_jobs gauge."""

    def __init__(self) -> None:
        self._phases: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        for phase in JobPhase:
            JOBS.labels(phase=phase.value).set(0)

    def _publish(self) -> None:
        counts = {phase.value: 0 for phase in JobPhase}
        for phase in self._phases.values():
            counts[phase] = counts.get(phase, 0) + 1
        for phase, count in counts.items():
            JOBS.labels(phase=phase).set(count)

    def track(self, namespace: str, name: str, phase: str | None) -> None:
        with self._lock:
            if phase is None:
                self._phases.pop((namespace, name), None)
            else:
                self._phases[(namespace, name)] = phase
            self._publish()

    def progress(self, namespace: str, name: str, progress: Mapping | None) -> None:
        """The job's videos and clips from its status.progress (nothing until the pipeline reported)."""
        for field, (gauge, state) in PROGRESS_GAUGES.items():
            if progress and isinstance(progress.get(field), int):
                gauge.labels(namespace=namespace, job=name, state=state).set(progress[field])

    def forget(self, namespace: str, name: str) -> None:
        self.track(namespace, name, None)
        for gauge, state in PROGRESS_GAUGES.values():
            try:
                gauge.remove(namespace, name, state)
            except KeyError:  # never reported
                pass

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            out: dict[str, int] = {}
            for phase in self._phases.values():
                out[phase] = out.get(phase, 0) + 1
            return out


@contextmanager
def measured(handler: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    except Exception:
        RECONCILE_ERRORS.labels(handler=handler).inc()
        raise
    finally:
        RECONCILE_SECONDS.labels(handler=handler).observe(time.perf_counter() - started)


def timed(handler: str, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    with measured(handler):
        return fn(*args, **kwargs)
