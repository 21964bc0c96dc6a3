"""The check before a run: every model directory the job's enabled stages load is in place.

Each stage declares its models (`Stage.models`); this asks the stages the job runs, so a missing
file fails `clipforge run` at submission instead of hours later in an actor.
"""

from __future__ import annotations

from clipforge.models import ModelRequirement, alternatives, missing_files
from clipforge.spec import VideoCurationJobSpec
from clipforge.stages import pipeline_stages


def requirements(spec: VideoCurationJobSpec) -> list[ModelRequirement]:
    """Every model of every enabled stage, in stage order, with its location filled in."""
    return [req.located(spec) for stage in pipeline_stages(spec) for req in stage.models(spec)]


def check(spec: VideoCurationJobSpec) -> list[str]:
    """Every problem with the models this job needs; empty when all are in place."""
    return [problem for req in requirements(spec) for problem in missing_files(spec, req)]


def format_requirements(spec: VideoCurationJobSpec) -> str:
    lines = []
    for req in requirements(spec):
        lines.append(req.describe())
        if req.description:
            lines.append(f"    {req.description}")
        for entry in req.files:
            lines.append(f"    needs {' or '.join(alternatives(entry))}")
    return "\n".join(lines) if lines else "no enabled stage needs a model"
