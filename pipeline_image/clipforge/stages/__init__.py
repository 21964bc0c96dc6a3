"""The pipeline's stages, in execution order: stage `<name>` of the spec's stage table
(clipforge.spec.STAGES) is the Stage subclass with that name in clipforge/stages/<name>.py."""

from __future__ import annotations

import functools
import importlib

from clipforge.spec import STAGES, VideoCurationJobSpec
from clipforge.stages.base import Stage


def pipeline_stages(spec: VideoCurationJobSpec) -> list[type[Stage]]:
    """The stages this job runs, in order: a stage the spec switches off is not started at all."""
    return [stage for stage in all_stages() if stage.enabled(spec)]


def all_stages() -> list[type[Stage]]:
    return [_stage_class(name) for name in STAGES]


@functools.cache
def _stage_class(name: str) -> type[Stage]:
    # Imported on first use, so that importing clipforge.stages stays cheap for tools that only
    # need the stage contract.
    module = importlib.import_module(f"{__name__}.{name}")
    found = [
        value for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, Stage) and value.__module__ == module.__name__
        and getattr(value, "name", None) == name
    ]
    if len(found) != 1:
        raise LookupError(f"{module.__name__} must define exactly one Stage subclass with name = {name!r}")
    return found[0]
