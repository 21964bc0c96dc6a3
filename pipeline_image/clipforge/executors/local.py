"""Runs every stage in this process, one video at a time: for debugging and fast tests."""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Iterator

from clipforge.spec import VideoCurationJobSpec
from clipforge.stages import Stage
from clipforge.stages.base import run_attempts
from clipforge.tasks import VideoTask


def _drive(stages: list[Stage], task: VideoTask, retries: int) -> Iterator[VideoTask]:
    # Depth first: each chunk goes all the way to the writer before the next is transcoded,
    # so memory holds one chunk, as with the streaming executor.
    if not stages:
        yield task
        return
    if task.failed:
        produced = [task]
    else:  # the untouched task a retry starts from, taken before the stage changes it
        pickled = pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)
        produced = run_attempts(stages[0], task, retries, lambda: pickle.loads(pickled))
    for one in produced:
        yield from _drive(stages[1:], one, retries)


def run_local(spec: VideoCurationJobSpec, tasks: Iterable[VideoTask], stage_classes: list[type[Stage]]
              ) -> Iterator[VideoTask]:
    """Streams `tasks` through the stages (the spec's: clipforge.stages.pipeline_stages)."""
    stages = [stage_cls(spec, stage_classes) for stage_cls in stage_classes]
    for stage in stages:
        stage.setup()
    for task in tasks:
        yield from _drive(stages, task, spec.execution.failures.task_retries)
