"""Prometheus metrics of the operator, on their own registry (served by handlers' startup)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from clipforge.spec import JobPhase

REGISTRY = CollectorRegistry(auto_describe=True)

JOBS = Gauge("clipforge_jobs", "VideoCurationJobs this operator watches, by phase.", ["phase"], registry=REGISTRY)
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

    def forget(self, namespace: str, name: str) -> None:
        self.track(namespace, name, None)

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
