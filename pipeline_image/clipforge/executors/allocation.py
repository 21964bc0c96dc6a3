"""Workers per stage from measured stage throughput (execution.allocator: throughput).

Ray Data's own actor-pool autoscaling decides for each stage alone: a pool grows when its
actors each have about two tasks waiting and shrinks one idle actor at a time, and the stage
that asks first gets the CPUs. This allocator decides for all stages at once, as NeMo
Curator's Xenna does: every few seconds it reads how long each stage's workers take per task
and how many tasks each stage hands on per task it gets (split fans a video out into chunks),
and picks the worker counts that let the pipeline as a whole go fastest within the cluster's
CPUs and GPUs: the stages that need the most of a resource as fast as it allows, every other
stage fast enough to keep up with them and 20 % over. As the work
changes (long static videos, then short busy ones) the measurements change and so do the counts.

`allocate()` is the decision, a pure function of measurements; `StageMeter` collects the
measurements from the workers; `ThroughputAutoscaler` applies the decision to Ray Data's
actor pools from inside its scheduling loop.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

log = logging.getLogger(__name__)

# Seconds between decisions, and the window of measurements each one reads.
DECISION_INTERVAL_S = 5.0
MEASUREMENT_WINDOW_S = 30.0
# What the stages that do not set the rate get on top of what keeps up with it: task times
# vary, and Ray's own cost between tasks is not in the measurement.
HEADROOM = 0.2


@dataclass(frozen=True)
class StageDemand:
    """One stage as the allocator sees it."""

    name: str
    cpus: float  # per worker
    gpus: float
    min_workers: int
    max_workers: int
    current: int  # workers it has now (kept while it has no measurement)
    # Busy seconds of one worker per task, and tasks it sees per task entering the pipeline
    # (the product of the earlier stages' outputs per task). None: nothing measured yet.
    seconds_per_task: float | None
    tasks_per_input: float | None
    pool: str = "cluster"  # the resources it may use (its worker group's nodes when pinned)

    @property
    def measured(self) -> bool:
        return self.seconds_per_task is not None and self.tasks_per_input is not None

    @property
    def seconds_per_input(self) -> float:
        """Worker-seconds this stage spends per input of the pipeline."""
        return self.seconds_per_task * self.tasks_per_input

    def reserved(self, resource: str) -> float:
        return self.gpus if resource == "GPU" else self.cpus


def _needed(stage: StageDemand, rate: float, margin: float = 1.0) -> int:
    """Workers `stage` needs to keep up with `rate` pipeline inputs per second, `margin` times over."""
    if not stage.measured:
        return max(stage.current, stage.min_workers)
    return max(stage.min_workers, math.ceil(rate * stage.seconds_per_input * margin - 1e-9))


def _largest(stages: Sequence[StageDemand], capacity: Mapping[str, Mapping[str, float]]) -> set[str]:
    """Per pool and resource, the stage that needs the most of it per input: what sets the rate."""
    out = set()
    for pool, resources in capacity.items():
        for resource, amount in resources.items():
            users = [s for s in stages if s.pool == pool and s.reserved(resource) > 0]
            if amount > 0 and users:
                out.add(max(users, key=lambda s: (s.seconds_per_input * s.reserved(resource), s.name)).name)
    return out


def _fits(stages: Sequence[StageDemand], workers: Mapping[str, int], capacity: Mapping[str, Mapping[str, float]]) -> bool:
    for pool, resources in capacity.items():
        for resource, amount in resources.items():
            used = sum(workers[s.name] * s.reserved(resource) for s in stages if s.pool == pool)
            if used > amount + 1e-6:
                return False
    return all(workers[s.name] <= s.max_workers for s in stages)


def allocate(stages: Sequence[StageDemand], capacity: Mapping[str, Mapping[str, float]]) -> dict[str, int]:
    """Worker counts for `stages` that maximise the pipeline's input rate within `capacity`
    (pool -> resource -> amount), then spend what is left on headroom for the other stages.

    Deterministic: the same measurements give the same counts.
    """
    measured = [s for s in stages if s.measured and s.seconds_per_input > 0]
    if not measured:
        return {s.name: _needed(s, 0.0) for s in stages}
    # The stages that use most of a resource run at the rate; the others, small next to them,
    # keep HEADROOM in hand: a stage at exactly its need would become the bottleneck at the first
    # slow task.
    largest = _largest(measured, capacity)

    margins = {s.name: 1.0 if s.name in largest or not s.measured else 1 + HEADROOM for s in stages}

    def workers_at(rate: float) -> dict[str, int]:
        return {s.name: _needed(s, rate, margins[s.name]) for s in stages}

    # The most inputs per second any stage's maxWorkers allows bounds the search; feasibility
    # only gets harder as the rate grows, so bisection finds the largest rate that fits.
    low, high = 0.0, min(s.max_workers / s.seconds_per_input for s in measured)
    if _fits(stages, workers_at(high), capacity):
        low = high
    else:
        for _ in range(100):
            mid = (low + high) / 2
            low, high = (mid, high) if _fits(stages, workers_at(mid), capacity) else (low, mid)
    # The largest rate that fits is where some stage's count is about to grow (a rate of n workers
    # over its worker-seconds per input): snapped to it, every count is exact, not a hair off.
    per_worker = [s.seconds_per_input * margins[s.name] for s in measured]
    low = max((b for b in (math.floor(low * a * (1 + 1e-9)) / a for a in per_worker)
               if b > 0 and _fits(stages, workers_at(b), capacity)), default=low)
    workers = workers_at(low)
    if not _fits(stages, workers, capacity):  # even the minimums do not fit: keep them, Ray queues the rest
        return workers
    # What is left: one worker at a time to the stage with the least capacity over what the
    # rate needs, while it fits, up to HEADROOM over that need (the largest stages too, where
    # another resource set the rate).
    while True:
        best, best_ratio = None, math.inf
        for s in measured:
            ratio = workers[s.name] / (low * s.seconds_per_input) if low else math.inf
            if workers[s.name] < _needed(s, low, 1 + HEADROOM) and ratio < best_ratio:
                if _fits(stages, {**workers, s.name: workers[s.name] + 1}, capacity):
                    best, best_ratio = s.name, ratio
        if best is None:
            return workers
        workers[best] += 1


class StageMeter:
    """Busy seconds and outputs of each task, per stage, as the workers report them.

    One small actor on the driver's node; the workers report after each task without waiting.
    """

    def __init__(self) -> None:
        self._events: dict[str, deque[tuple[float, float, int]]] = {}

    def record(self, stage: str, seconds: float, outputs: int) -> None:
        self._events.setdefault(stage, deque()).append((time.monotonic(), seconds, outputs))

    def snapshot(self, window_s: float) -> dict[str, tuple[int, float, int]]:
        """stage -> (tasks, busy seconds, outputs) over the last `window_s` seconds."""
        horizon = time.monotonic() - window_s
        out = {}
        for stage, events in self._events.items():
            while len(events) > 1 and events[0][0] < horizon:  # the latest always stays: a last known rate
                events.popleft()
            out[stage] = (len(events), sum(e[1] for e in events), sum(e[2] for e in events))
        return out


def demands_from(snapshot: Mapping[str, tuple[int, float, int]], order: Sequence[str],
                 settings: Mapping[str, StageDemand]) -> list[StageDemand]:
    """StageDemands for the stages in pipeline `order` from a StageMeter snapshot: seconds per
    task, and tasks per pipeline input as the product of the earlier stages' outputs per task.
    `settings` holds each stage's resources, bounds, pool and current workers."""
    out, tasks_per_input = [], 1.0
    for name in order:
        tasks, seconds, outputs = snapshot.get(name, (0, 0.0, 0))
        stage = settings[name]
        measured = tasks > 0 and tasks_per_input is not None
        out.append(StageDemand(stage.name, stage.cpus, stage.gpus, stage.min_workers, stage.max_workers, stage.current,
                               seconds / tasks if measured else None, tasks_per_input if measured else None, stage.pool))
        tasks_per_input = tasks_per_input * outputs / tasks if measured else None
    return out


def pool_capacity(stages: Sequence[StageDemand], resource_names: Mapping[str, str | None]) -> tuple[list[StageDemand], dict]:
    """The stages with their pools set, and each pool's CPUs and GPUs, from the live Ray nodes.

    A pinned stage (`resource_names[stage]`: its custom resource) may use the nodes advertising
    that resource, others every node; stages that may use the same nodes share them.
    """
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    capacity: dict[str, dict[str, float]] = {}
    out = []
    for stage in stages:
        resource = resource_names.get(stage.name)
        members = sorted(n["NodeID"] for n in nodes if resource is None or n["Resources"].get(resource, 0) > 0)
        pool = ",".join(members)
        if pool not in capacity:
            chosen = [n for n in nodes if n["NodeID"] in members]
            capacity[pool] = {r: sum(n["Resources"].get(r, 0.0) for n in chosen) for r in ("CPU", "GPU")}
        out.append(replace(stage, pool=pool))
    return out, capacity


class ThroughputAutoscaler:
    """Drives Ray Data's actor pools to `allocate()`'s counts; Ray Data calls it on every
    scheduling step (its ActorAutoscaler interface), it decides every DECISION_INTERVAL_S."""

    def __init__(self, topology, stages: Mapping[str, StageDemand], resource_names: Mapping[str, str | None],  # noqa: ANN001
                 order: Sequence[str], op_stage: Mapping[str, str], meter) -> None:  # noqa: ANN001
        self._topology = topology
        self._stages, self._resource_names, self._order, self._meter = stages, resource_names, order, meter
        # Ray Data's operator -> our stage name, by the worker class each operator runs ("FlatMap(<class>)").
        self._op_stage = {op: stage for op in topology for key, stage in op_stage.items() if f"({key})" in op.name}
        self._next_decision = 0.0
        self._snapshot = None  # the meter's answer being awaited: Ray Data's loop never blocks on it
        self._targets: dict[str, int] = {}
        self._drains: dict[object, _Drain] = {}  # per actor pool

    def _pools(self) -> Iterator[tuple]:
        """(operator, its state, stage name, actor pool) for each of our stages' pools."""
        for op, state in self._topology.items():
            stage = self._op_stage.get(op)
            for pool in op.get_autoscaling_actor_pools() if stage else ():
                yield op, state, stage, pool

    def try_trigger_scaling(self) -> None:
        import ray
        from ray.data._internal.actor_autoscaler import ActorPoolScalingRequest

        now = time.monotonic()
        if self._snapshot is None and now >= self._next_decision:
            self._snapshot = self._meter.snapshot.remote(MEASUREMENT_WINDOW_S)
        if self._snapshot is not None and ray.wait([self._snapshot], timeout=0)[0]:
            snapshot, self._snapshot = self._snapshot, None
            self._next_decision = now + DECISION_INTERVAL_S
            self._decide(snapshot)
        for op, state, stage, pool in self._pools():
            done = op.has_completed() or (op._inputs_complete and state.total_enqueued_input_blocks() == 0)
            target = 0 if done else self._targets.get(stage, pool.current_size())
            delta = target - pool.current_size()
            if delta > 0:
                pool.scale(ActorPoolScalingRequest.upscale(delta=delta, reason=f"throughput allocation: {target}"))
            elif delta < 0:  # releases pending or idle actors
                pool.scale(ActorPoolScalingRequest.downscale(delta=delta, force=True,
                                                             reason=f"throughput allocation: {target}"))
            if pool not in self._drains:
                self._drains[pool] = _Drain(pool)
            self._drains[pool].drain(max(0, pool.current_size() - target))

    def _decide(self, answer) -> None:  # noqa: ANN001
        import ray

        try:
            snapshot = ray.get(answer)
        except ray.exceptions.RayActorError as exc:
            log.warning("throughput allocation: no measurements this time (%s)", exc)
            return
        current = {stage: pool.current_size() for _, _, stage, pool in self._pools()}
        settings = {name: replace(s, current=current.get(name, s.current)) for name, s in self._stages.items()}
        demands = demands_from(snapshot, self._order, settings)
        if not all(d.measured for d in demands):
            return  # until every stage has finished a task, each keeps what it has
        demands, capacity = pool_capacity(demands, self._resource_names)
        targets = allocate(demands, capacity)
        if targets != self._targets:
            log.info("throughput allocation: %s", ", ".join(f"{s} {n}" for s, n in targets.items()))
        self._targets = targets


class _Drain:
    """Gives some of a pool's busy actors no new tasks, so that they become idle and the next
    downscale releases them. Ray Data (2.60) releases only idle actors and dispatches before it
    scales, so no actor of a stage with a backlog is ever idle: without this, a stage that should
    shrink keeps its CPUs until its whole backlog is done while the stage that needs them waits.
    """

    def __init__(self, pool) -> None:  # noqa: ANN001 - Ray Data's _ActorPool
        self._pool, self._actors = pool, set()
        self._select_actors = pool.select_actors
        pool.select_actors = self._select  # Ray Data asks its pool through this attribute

    def drain(self, surplus: int) -> None:
        """`surplus` actors get no new tasks: those that have the fewest in flight (soonest idle)."""
        running = self._pool._running_actors
        self._actors.intersection_update(running)
        while len(self._actors) > surplus:
            self._actors.pop()
        least_busy = sorted((a for a in running if a not in self._actors), key=lambda a: running[a].num_tasks_in_flight)
        self._actors.update(least_busy[: surplus - len(self._actors)])

    def _select(self, bundle=None, actor_locality_enabled=False):  # noqa: ANN001, ANN202
        # While Ray Data looks, each draining actor ranks as full (the most tasks in flight an
        # actor takes) in the heaps it chooses from.
        pool, full, saved = self._pool, self._pool.max_tasks_in_flight_per_actor(), []
        for actor in self._actors:
            state = pool._running_actors.get(actor)
            heaps = (pool._alive_actors_to_in_flight_tasks_heap,
                     pool._alive_node_to_actor_heap.get(state.actor_location, {}) if state else {})
            for heap in heaps:
                if actor in heap:
                    saved.append((heap, actor, heap[actor]))
                    heap[actor] = full
        try:
            return self._select_actors(bundle, actor_locality_enabled)
        finally:
            for heap, actor, rank in saved:
                heap[actor] = rank


@contextlib.contextmanager
def throughput_allocation(autoscaler_args: dict) -> Iterator[None]:
    """Ray Data executions started inside use ThroughputAutoscaler instead of their own.

    Ray Data (2.60, pinned) builds its actor autoscaler inside the streaming executor with no
    public way to pass another; its factory is swapped for the duration.
    """
    from ray.data._internal.execution import streaming_executor

    original = streaming_executor.create_actor_autoscaler
    streaming_executor.create_actor_autoscaler = (
        lambda topology, resource_manager, config: ThroughputAutoscaler(topology, **autoscaler_args))
    try:
        yield
    finally:
        streaming_executor.create_actor_autoscaler = original
