"""The pipeline's stages, declared once: one row per stage in STAGE_TABLE. The stage names, their
default resources, which stages a job runs, the settings that decide a video's clips and the
per-stage models of the CRD (execution.stages, cluster.gpuWorkers) all follow from it.

Import-light on purpose (no stage code, no codecs, no models): the operator imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clipforge.spec.sections import MotionMode

if TYPE_CHECKING:
    from clipforge.spec.job import VideoCurationJobSpec


@dataclass(frozen=True)
class StageResources:
    """A stage's effective execution settings: its defaults with the spec's hints applied."""

    cpus: float
    gpus: float
    min_workers: int
    max_workers: int
    pinned: bool = False
    # The time limit of one task: timeout_seconds (in the table None: the job's
    # execution.failures.taskTimeoutSeconds), plus timeout_seconds_per_minute for each minute of
    # video the task holds (clipforge.stages.base.Stage.time_limit).
    timeout_seconds: int | None = None
    timeout_seconds_per_minute: float = 0.0


def _always(spec: VideoCurationJobSpec) -> bool:
    return True


@dataclass(frozen=True)
class StageDeclaration:
    """One pipeline stage as the spec knows it."""

    name: str
    defaults: StageResources
    # The VideoCurationJobSpec field holding the stage's settings; they decide its clips' outputs,
    # so a video done under other settings is redone. None: the stage has no settings of its own.
    section: str | None = None
    # Whether a job runs the stage; the pipeline starts, and the operator provisions, only these.
    enabled: Callable[[VideoCurationJobSpec], bool] = _always


# In execution order. Light stages reserve fractions of a CPU so that one worker of each fits a
# 2-core laptop.
STAGE_TABLE = (
    StageDeclaration("probe", StageResources(cpus=0.25, gpus=0.0, min_workers=1, max_workers=2)),
    # Split's detectors read the whole video: its time limit grows with the video's length.
    StageDeclaration("split", StageResources(cpus=1.0, gpus=0.0, min_workers=1, max_workers=4,
                                             timeout_seconds_per_minute=60.0), "splitting"),
    # Two: its codecs run the threads it reserves, and one worker then keeps a laptop's two cores busy.
    StageDeclaration("transcode", StageResources(cpus=2.0, gpus=0.0, min_workers=1, max_workers=8), "transcoding"),
    StageDeclaration(
        "motion", StageResources(cpus=0.5, gpus=0.0, min_workers=1, max_workers=4), "motion_filter",
        lambda spec: spec.motion_filter.mode != MotionMode.disable.value,
    ),
    StageDeclaration(
        "sharpness", StageResources(cpus=0.25, gpus=0.0, min_workers=1, max_workers=2), "sharpness_filter",
        lambda spec: spec.sharpness_filter.enabled,
    ),
    # Model stages default to CPU so a laptop runs them; GPU clusters set gpus in the spec.
    StageDeclaration(
        "aesthetic", StageResources(cpus=1.0, gpus=0.0, min_workers=1, max_workers=2), "aesthetic_filter",
        lambda spec: spec.aesthetic_filter.enabled,
    ),
    StageDeclaration(
        "embed", StageResources(cpus=1.0, gpus=0.0, min_workers=1, max_workers=2), "embeddings",
        lambda spec: spec.embeddings.enabled,
    ),
    StageDeclaration(
        "caption", StageResources(cpus=1.0, gpus=0.0, min_workers=1, max_workers=2), "captions",
        lambda spec: spec.captions.enabled,
    ),
    StageDeclaration(
        "preview", StageResources(cpus=0.5, gpus=0.0, min_workers=1, max_workers=4), "previews",
        lambda spec: spec.previews.enabled,
    ),
    StageDeclaration("write", StageResources(cpus=0.25, gpus=0.0, min_workers=1, max_workers=2)),
)

# Stage names in execution order. Each can be pinned to Ray nodes that advertise the custom
# resource `stage_resource_name(stage)`; the operator gives each worker group one.
STAGES = tuple(s.name for s in STAGE_TABLE)
STAGE_DEFAULTS = {s.name: s.defaults for s in STAGE_TABLE}
_BY_NAME = {s.name: s for s in STAGE_TABLE}
# The sections whose settings decide a video's clips and everything written for them.
_CLIP_SETTINGS = {s.section for s in STAGE_TABLE if s.section is not None}


def stage_resource_name(stage: str) -> str:
    return f"clipforge_{stage}"


def stage_enabled(spec: VideoCurationJobSpec, stage: str) -> bool:
    """Whether the job runs `stage`; the pipeline starts, and the operator provisions, only these."""
    return _BY_NAME[stage].enabled(spec)


def clip_settings(spec: VideoCurationJobSpec) -> dict:
    """What decided a video's clips (splitting, chunk size, encoding, filters, model outputs), as its
    chunk and video records carry it: a rerun under other settings redoes the video."""
    settings = spec.model_dump(mode="json", by_alias=True, include=_CLIP_SETTINGS)
    return {**settings, "clipsPerChunk": spec.execution.clips_per_chunk}
