"""Ray Data streaming executor: each stage is a streaming operator backed by an actor pool.

Actor pools autoscale between the stage's min and max workers; actors are restarted and
their tasks retried when a worker dies (Ray Data's defaults for actor pools), and since the
writer is idempotent a retried chunk rewrites the same objects.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from collections.abc import Iterator

import ray

from clipforge.spec import VideoCurationJobSpec, stage_resource_name
from clipforge.stages import Stage, pipeline_stages
from clipforge.tasks import VideoTask

log = logging.getLogger(__name__)

# What a pinned stage's actor asks of its node's custom resource; groups advertise plenty.
PINNED_RESOURCE_AMOUNT = 0.01


class _StageWorker:
    def __init__(self, stage_cls: type[Stage], spec: VideoCurationJobSpec):
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        self.stage = stage_cls(spec)
        self.stage.setup()

    def __call__(self, row: dict) -> list[dict]:
        return [_row(task) for task in self.stage.run(pickle.loads(row["task"]))]


def _row(task: VideoTask) -> dict:
    # Tasks travel pickled in a binary column: Arrow cannot type nested dataclasses, and an
    # explicit pickle spares Ray Data a failed conversion attempt on every block.
    return {"task": pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)}


def local_cpus_needed(spec: VideoCurationJobSpec) -> int:
    """Logical CPUs a local Ray needs so that every stage's minimum workers can start at once."""
    minimum = sum(stage.execution(spec).cpus * stage.execution(spec).min_workers for stage in pipeline_stages(spec))
    return max(os.cpu_count() or 1, math.ceil(minimum))


def start_ray(spec: VideoCurationJobSpec, address: str | None) -> bool:
    """Joins `address` or starts a private local Ray; returns True when we started it."""
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=True)
        return False
    # Ray 2.60 turns token auth on for a new local cluster and writes a token under ~/.ray.
    # This private cluster has no dashboard or job server and lives only for this run, so
    # auth is off unless the user chose a mode. Joined clusters keep whatever they use.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    num_cpus = local_cpus_needed(spec)
    if num_cpus > (os.cpu_count() or 1):
        log.info("local Ray: %d logical CPUs so each stage gets its minimum workers (%d cores)", num_cpus, os.cpu_count())
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True, logging_level=logging.WARNING)
    return True


def run_ray(spec: VideoCurationJobSpec, tasks: list[VideoTask]) -> Iterator[VideoTask]:
    ctx = ray.data.DataContext.get_current()
    # The CLI draws its own progress, per video; Ray Data's own logs stay in its log files.
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.verbose_stats_logs = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    # One block per video so videos stream through independently.
    ds = ray.data.from_items([_row(t) for t in tasks], override_num_blocks=max(1, len(tasks)))
    for stage_cls in pipeline_stages(spec):
        execution = stage_cls.execution(spec)
        ds = ds.flat_map(
            _StageWorker,
            fn_constructor_args=(stage_cls, spec),
            compute=ray.data.ActorPoolStrategy(min_size=execution.min_workers, max_size=execution.max_workers),
            num_cpus=execution.cpus,
            num_gpus=execution.gpus or None,
            resources={stage_resource_name(stage_cls.name): PINNED_RESOURCE_AMOUNT} if execution.pinned else None,
        )
    for row in ds.iter_rows():
        yield pickle.loads(row["task"])
