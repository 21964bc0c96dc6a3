"""How the pipeline runs: the executor, chunking, per-stage execution hints and failure tolerance."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, create_model, model_validator

from clipforge.spec.base import SpecModel, _f
from clipforge.spec.stages import STAGE_DEFAULTS, STAGE_TABLE, StageDeclaration, StageResources

if TYPE_CHECKING:
    from clipforge.spec.job import VideoCurationJobSpec


class StageExecution(SpecModel):
    """Hints for one stage; what is unset takes the stage's default (STAGE_DEFAULTS)."""

    cpus: float | None = _f(None, "CPUs each worker of this stage reserves.", ge=0)
    gpus: float | None = _f(None, "GPUs each worker of this stage reserves (fractions share a GPU).", ge=0)
    min_workers: int | None = _f(None, "Workers kept alive for this stage.", ge=1)
    max_workers: int | None = _f(None, "Workers this stage may scale up to (at least minWorkers).", ge=1)
    pinned: bool = _f(
        False,
        "Run only on Ray nodes advertising the custom resource clipforge_<stage> (the operator's worker group for it).",
    )
    timeout_seconds: int | None = _f(
        None,
        "Longest one worker of this stage may work on one task (a video for probe and split, a chunk"
        " after), before timeoutSecondsPerMinute; unset: execution.failures.taskTimeoutSeconds.",
        ge=1,
    )
    timeout_seconds_per_minute: float | None = _f(
        None,
        "Seconds added to this stage's time limit for each minute of video in the task (the video's"
        " duration for probe and split, its clips' after); unset: 60 for split, whose detectors read"
        " the whole video, 0 for the others.",
        ge=0,
    )

    @model_validator(mode="after")
    def _bounds(self) -> StageExecution:
        if self.min_workers is not None and self.max_workers is not None and self.max_workers < self.min_workers:
            raise ValueError("maxWorkers must be >= minWorkers")
        return self


def _stage_field(stage: StageDeclaration) -> Any:
    d = stage.defaults
    return Field(
        default_factory=StageExecution,
        description=f"Execution hints for the {stage.name} stage (defaults: {d.cpus:g} CPU, {d.gpus:g} GPU,"
        f" {d.min_workers}-{d.max_workers} workers).",
    )


# One entry per stage, so the CRD itself rejects a misspelt stage name.
StagesExecution = create_model(
    "StagesExecution", __base__=SpecModel, __module__=__name__,
    **{s.name: (StageExecution, _stage_field(s)) for s in STAGE_TABLE},
)


class FailuresSpec(SpecModel):
    """How broken inputs are contained: retried a bounded number of times, then recorded as failed."""

    task_retries: int = _f(
        2,
        "Times a video (probe, split) or chunk (later stages) is retried after its worker process died"
        " (a decoder crash, out of memory, a lost node) or it ran past its time limit; then it is"
        " recorded as failed with the reason and the run goes on. Errors a stage reports itself (an"
        " unreadable file) are recorded at once, not retried. Ray executor only.",
        ge=0, le=10,
    )
    task_timeout_seconds: int = _f(
        3600,
        "Longest one stage may work on one video or chunk, unless the stage sets its own"
        " (execution.stages.<stage>.timeoutSeconds; split's limit also grows with the video's length,"
        " timeoutSecondsPerMinute). Past it the worker process is stopped from outside the interpreter"
        " (the only way to stop a decoder stuck in native code), its threads' stacks become the reason,"
        " and the task is retried. Ray executor only.",
        ge=1,
    )
    max_failed_videos: int | None = _f(
        None,
        "The run fails as a whole (exit status 1, phase Failed without retries) when more videos than"
        " this fail; unset: no count limit. Otherwise a run with failed videos completes with failures.",
        ge=0,
    )
    max_failed_fraction: float = _f(
        0.5,
        "The run fails as a whole when more than this fraction of the input videos fail, or of the clips"
        " made (a clip a stage could not make); 1 never fails the run for failed videos or clips.",
        ge=0, le=1,
    )


class InputLimits(SpecModel):
    """Videos too large to curate safely: probe records them as failed with the limit they exceed."""

    max_pixels: int = _f(
        7680 * 4320,
        "Most pixels in one frame (width x height, as coded); larger videos are rejected. Default: 8K UHD.",
        ge=1,
    )
    max_duration_seconds: float = _f(
        86400.0, "Longest video accepted, in seconds; longer videos are rejected. Default: one day.", gt=0
    )


class ExecutionSpec(SpecModel):
    executor: Literal["ray", "local"] = _f(
        "ray", "ray: Ray Data streaming executor; local: one process, stages run in sequence (debugging)."
    )
    clips_per_chunk: int = _f(
        16,
        "Clips per unit of work after splitting: a video's chunks run on different workers at once,"
        " and a chunk bounds what one task holds in memory.",
        ge=1, le=1024,
    )
    chunk_decoded_megabytes: int = _f(
        12288,
        "Most decoded source video in one chunk after splitting, in MiB (width x height x 1.5 bytes of"
        " 8-bit 4:2:0 per frame, times the clips' frames): with clipsPerChunk it bounds what one task"
        " holds, so 4K and long clips make smaller chunks (a clip over it is a chunk of its own). The"
        " default keeps 16 ten-second 1080p clips at 24 fps in one chunk.",
        ge=1,
    )
    limits: InputLimits = _f(
        default_factory=InputLimits, description="Inputs probe rejects (recorded as failed, final)."
    )
    stages: StagesExecution = _f(default_factory=StagesExecution, description="Per-stage execution hints.")
    allocator: Literal["rayData", "throughput"] = _f(
        "rayData",
        "How the Ray executor sizes each stage between its minWorkers and maxWorkers. rayData: Ray Data's"
        " actor-pool autoscaling (each stage on its own, by how many tasks wait for its workers);"
        " throughput: every few seconds all stages at once, from each stage's measured seconds per task,"
        " so that the slowest stage gets what the cluster's CPUs and GPUs allow and the others keep up"
        " (docs/scaling.md).",
    )
    failures: FailuresSpec = _f(
        default_factory=FailuresSpec, description="Retries, time limit and failure tolerance for broken inputs."
    )


def stage_resources(spec: VideoCurationJobSpec, stage: str) -> StageResources:
    """What `stage` runs with under `spec`: each unset hint falls back to the stage default."""
    hints: StageExecution = getattr(spec.execution.stages, stage)
    default = STAGE_DEFAULTS[stage]
    min_workers = default.min_workers if hints.min_workers is None else hints.min_workers
    max_workers = hints.max_workers if hints.max_workers is not None else max(default.max_workers, min_workers)
    return StageResources(
        cpus=default.cpus if hints.cpus is None else hints.cpus,
        gpus=default.gpus if hints.gpus is None else hints.gpus,
        min_workers=min_workers,
        max_workers=max_workers,
        pinned=hints.pinned,
        timeout_seconds=spec.execution.failures.task_timeout_seconds
        if hints.timeout_seconds is None else hints.timeout_seconds,
        timeout_seconds_per_minute=default.timeout_seconds_per_minute
        if hints.timeout_seconds_per_minute is None else hints.timeout_seconds_per_minute,
    )
