"""Runs every stage in this process, one video at a time: for debugging and fast tests."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from clipforge.spec import VideoCurationJobSpec
from clipforge.stages import Stage
from clipforge.tasks import VideoTask


def _drive(stages: list[Stage], task: VideoTask) -> Iterator[VideoTask]:
    # Depth first: each chunk goes all the way to the writer before the next is transcoded,
    # so memory holds one chunk, as with the streaming executor.
    if not stages:
        yield task
        return
    for produced in stages[0].run(task):
        yield from _drive(stages[1:], produced)


def run_local(spec: VideoCurationJobSpec, tasks: Iterable[VideoTask], stage_classes: list[type[Stage]]
              ) -> Iterator[VideoTask]:
    """Streams `tasks` through the stages (the spec's: clipforge.stages.pipeline_stages)."""
    stages = [stage_cls(spec, stage_classes) for stage_cls in stage_classes]
    for stage in stages:
        stage.setup()
    for task in tasks:
        yield from _drive(stages, task)
