"""What may change in the spec of a started job, declared field by field.

A started job keeps the pipeline and the cluster shape it started with (its ConfigMap holds the
spec as admitted). `UPDATE_RULES` names, by its path in the manifest, every field that may still
change and how the operator applies the change; a change to any field not in the table is refused,
and the job's SpecUpdateRefused condition names the field by that path.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from clipforge.spec import STAGES, GpuWorkerGroupSpec, VideoCurationJobSpec


class Update(str, Enum):
    """How the operator applies a change to a field of a started job."""

    rescale = "rescale"  # a worker group's bounds: patched onto the live RayJob and RayCluster
    operator = "operator"  # the operator's own retry, deadline and TTL settings: they apply from now on
    ignored = "ignored"  # set by the operator itself, whatever the spec says: never a change


WORKER_GROUPS = ("cluster.cpuWorkers", *(f"cluster.gpuWorkers.{stage}" for stage in STAGES))

UPDATE_RULES: dict[str, Update] = {
    **{f"{group}.{bound}": Update.rescale for group in WORKER_GROUPS for bound in ("minReplicas", "maxReplicas")},
    "maxRetries": Update.operator,
    "retryBackoff.initialSeconds": Update.operator,
    "retryBackoff.maxSeconds": Update.operator,
    "pendingDeadlineSeconds": Update.operator,
    "ttlSecondsAfterFinished": Update.operator,
    **{f"execution.stages.{stage}.pinned": Update.ignored for stage in STAGES},  # the operator pins every stage
}

MAX_NAMED_FIELDS = 10  # a refusal names this many fields, then counts the rest


def _normalized(spec: VideoCurationJobSpec) -> dict:
    data = spec.model_dump(by_alias=True, mode="json")
    for stage in STAGES:  # an absent GPU group means the default one
        if data["cluster"]["gpuWorkers"][stage] is None:
            data["cluster"]["gpuWorkers"][stage] = GpuWorkerGroupSpec().model_dump(by_alias=True, mode="json")
    return data


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
        return out
    return {prefix: data}


@dataclass(frozen=True)
class SpecChange:
    """A spec update sorted by what the operator may do with it on a started job (paths of changed fields)."""

    scaling: tuple[str, ...] = ()  # Update.rescale fields
    operator: tuple[str, ...] = ()  # Update.operator fields
    refused: tuple[str, ...] = ()  # fields not in UPDATE_RULES: the running pipeline or cluster shape

    def refusal(self) -> str:
        """The SpecUpdateRefused condition's message: the refused fields and what may change instead."""
        more = len(self.refused) - MAX_NAMED_FIELDS
        fields = ", ".join(self.refused[:MAX_NAMED_FIELDS]) + (f" and {more} more" if more > 0 else "")
        return (f"not applied: {fields}. A started job keeps the pipeline and cluster it started with; only"
                " worker-group replica bounds (cluster.*Workers.minReplicas/maxReplicas) and maxRetries,"
                " retryBackoff, pendingDeadlineSeconds, ttlSecondsAfterFinished can change."
                " Create a new VideoCurationJob for the rest.")


def field_values(spec: VideoCurationJobSpec) -> dict[str, Any]:
    """Every field of the spec by its path in the manifest (`cluster.cpuWorkers.maxReplicas`)."""
    return _flatten(_normalized(spec))


def classify_spec_change(old: VideoCurationJobSpec, new: VideoCurationJobSpec) -> SpecChange:
    before, after = field_values(old), field_values(new)
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    rules = {path: UPDATE_RULES.get(path) for path in changed}
    return SpecChange(
        scaling=tuple(p for p in changed if rules[p] is Update.rescale),
        operator=tuple(p for p in changed if rules[p] is Update.operator),
        refused=tuple(p for p in changed if rules[p] is None),
    )


def merge_allowed(accepted: VideoCurationJobSpec, requested: VideoCurationJobSpec) -> VideoCurationJobSpec:
    """`accepted` with the scaling and operator-only fields of `requested`; refused fields stay as accepted."""
    change = classify_spec_change(accepted, requested)
    data, source = _normalized(accepted), _normalized(requested)
    for path in change.scaling + change.operator:
        *parents, leaf = path.split(".")
        src, dst = source, data
        for part in parents:
            src, dst = src[part], dst[part]
        dst[leaf] = src[leaf]
    return VideoCurationJobSpec.model_validate(data)
