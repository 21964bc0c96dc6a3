"""The throughput allocator applied to Ray Data's actor pools on a real local Ray.

The decision is fixed here (allocate() returns the counts the test wants); what is tested is that
Ray Data's pools follow it, in particular that a stage with a backlog shrinks while its actors
are busy.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import ray
from clipforge.executors import allocation
from clipforge.executors.ray_data import run_ray
from clipforge.spec import parse_job
from clipforge.stages.base import Stage
from clipforge.tasks import VideoTask
from ray.data.context import DEFAULT_ACTOR_MAX_TASKS_IN_FLIGHT_TO_MAX_CONCURRENCY_FACTOR

TASKS = 80
TASK_SECONDS = 0.25
# Ray Data's tasks in flight per actor of max_concurrency 1 (its default)
IN_FLIGHT_PER_ACTOR = DEFAULT_ACTOR_MAX_TASKS_IN_FLIGHT_TO_MAX_CONCURRENCY_FACTOR


class RecordingTranscode(Stage):
    """Stands in for transcode: sleeps, and records which process ran each task and when."""

    name = "transcode"
    records: Path

    def process(self, task: VideoTask) -> list[VideoTask]:
        (self.records / f"{task.relative_path}.{os.getpid()}").write_text(str(time.time()))
        time.sleep(TASK_SECONDS)
        return [task]


def started_by_pid(records: Path) -> list[tuple[float, int]]:
    return sorted((float(p.read_text() or "inf"), int(p.suffix[1:])) for p in records.iterdir())


@pytest.fixture
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.ray
def test_a_stage_told_to_shrink_stops_feeding_its_busy_actors_and_releases_one(tmp_path, monkeypatch, local_ray):
    records = tmp_path / "records"
    records.mkdir()
    switched: list[float] = []

    def allocate(stages, capacity):  # two workers until both have run tasks, then one
        if not switched and len({pid for _, pid in started_by_pid(records)}) == 2:
            switched.append(time.time())
        return {"transcode": 1 if switched else 2}

    monkeypatch.setattr(allocation, "allocate", allocate)
    monkeypatch.setattr(allocation, "DECISION_INTERVAL_S", 0.2)
    spec = parse_job({"apiVersion": "clipforge.dev/v1alpha1", "kind": "VideoCurationJob", "metadata": {"name": "shrink"},
                      "spec": {"input": {"uri": str(tmp_path)}, "output": {"uri": str(tmp_path / "out")},
                               "execution": {"allocator": "throughput",
                                             "stages": {"transcode": {"cpus": 1, "minWorkers": 1, "maxWorkers": 2}}}}}).spec
    stage = type("RecordingTranscode", (RecordingTranscode,), {"records": records})
    tasks = [VideoTask(source=f"sim://{n}", relative_path=f"task-{n:03d}") for n in range(TASKS)]

    done = list(run_ray(spec, tasks, [stage]))

    assert sorted(t.relative_path for t in done) == sorted(t.relative_path for t in tasks)
    assert switched, "the second worker never ran a task"
    # When the count drops, the actor that goes may still hold the tasks already sent to it (up
    # to Ray Data's tasks in flight per actor); after those it gets none, while the backlog is
    # still long, and the other process takes every remaining task.
    after = [pid for started, pid in started_by_pid(records) if started > switched[0]]
    # Enough left that two fed processes would each have started several (a slow machine
    # starts the second worker late).
    assert len(after) >= TASKS // 5, "the backlog ran out before the count dropped"
    per_pid = sorted(after.count(pid) for pid in set(after))
    assert len(per_pid) <= 2 and (len(per_pid) == 1 or per_pid[0] <= IN_FLIGHT_PER_ACTOR), (
        f"tasks started per process after the pool was told to shrink: {per_pid}")
