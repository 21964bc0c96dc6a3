"""What the operator reports: the files a run leaves for people, and the CRD's status subresource
(written by the operator only). How a run ended is the run report's (clipforge.spec.report)."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

from pydantic import Field

from clipforge.spec.base import SpecModel, _f
from clipforge.spec.report import SUMMARY_FILE


# ---------------------------------------------------------------------------------------------
# Status: written by the operator only (the CRD's status subresource).


class JobPhase(str, Enum):
    pending = "Pending"
    provisioning = "Provisioning"
    running = "Running"
    succeeded = "Succeeded"
    failed = "Failed"
    cancelled = "Cancelled"


TERMINAL_PHASES = (JobPhase.succeeded.value, JobPhase.failed.value, JobPhase.cancelled.value)


class ConditionStatus(str, Enum):
    true = "True"
    false = "False"
    unknown = "Unknown"


class Condition(SpecModel):
    type: str = _f(description="Condition type, such as Submitted, Running, Succeeded or Failed.", min_length=1)
    status: ConditionStatus = _f(description="True, False or Unknown.")
    reason: str = _f("", "One CamelCase word saying why the condition last changed.")
    message: str = _f("", "Human-readable details.")
    last_transition_time: datetime | None = _f(None, "When the status last changed (RFC 3339).")
    observed_generation: int | None = _f(None, "metadata.generation the condition was set for.", ge=0)


class JobProgress(SpecModel):
    videos_done: int = _f(0, "Videos finished (including those a previous attempt had finished).", ge=0)
    videos_failed: int = _f(0, "Videos that failed in at least one stage.", ge=0)
    videos_skipped: int = _f(0, "Videos skipped because a previous attempt had finished them.", ge=0)
    videos_total: int = _f(0, "Videos the job curates.", ge=0)
    clips_passed: int = _f(0, "Clips written to the dataset.", ge=0)
    clips_filtered: int = _f(0, "Clips moved aside by the filters.", ge=0)
    throughput_video_seconds_per_second: float = _f(
        0.0, "Seconds of input video processed per second of wall time.", ge=0
    )
    updated_at: datetime | None = _f(None, "When the pipeline last wrote its progress (RFC 3339).")


# What a run leaves for people to open, relative to output.uri. clipforge.layout names the same
# paths from these (and the summary's, SUMMARY_FILE), and the operator points status.outputs at them.
INDEX_DIR = "index"
REPORT_DIR = "report"
REPORT_PAGE = "index.html"


class JobOutputs(SpecModel):
    summary: str = _f(description="The run's summary.json: counts, failures and timings.")
    index: str = _f(
        description="Prefix of the clip index: parquet tables clips/ (one row per clip) and videos/ (one row per"
        " video), read as they are by pandas, pyarrow, DuckDB, polars and Ray Data."
    )
    report: str = _f(description="The report page: counts, charts, failures and a gallery of the clips' previews.")

    @classmethod
    def under(cls, output_uri: str) -> JobOutputs:
        base = output_uri.rstrip("/")
        return cls(summary=f"{base}/{SUMMARY_FILE}", index=f"{base}/{INDEX_DIR}/",
                   report=f"{base}/{REPORT_DIR}/{REPORT_PAGE}")


class WorkerGroupStatus(SpecModel):
    name: str = _f(description="The worker group: cpu, or gpu-<stage>.")
    min_replicas: int = _f(0, "Fewest pods the group keeps.", ge=0)
    max_replicas: int = _f(0, "Most pods the Ray autoscaler may start.", ge=0)
    desired_replicas: int = _f(0, "Pods the Ray autoscaler wants now (the live RayCluster's replicas).", ge=0)
    ready_replicas: int | None = _f(
        None, "Pods of the group that are Ready, for a cluster of one worker group: KubeRay counts Ready"
        " workers for the whole cluster (status.readyWorkers), not per group.", ge=0,
    )


class VideoCurationJobStatus(SpecModel):
    phase: JobPhase = _f(JobPhase.pending, "Pending, Provisioning, Running, Succeeded, Failed or Cancelled.")
    reason: str | None = _f(None, "Why the job is in its phase, one CamelCase word (its phase condition's reason).")
    message: str = _f("", "Human-readable summary of the phase.")
    conditions: list[Condition] = _f(
        default_factory=list, description="Latest observations of the job's state (Kubernetes conventions)."
    )
    observed_generation: int | None = _f(None, "metadata.generation the operator last acted on.", ge=0)
    ray_job_name: str | None = _f(None, "Name of the current attempt's RayJob.")
    ray_cluster_name: str | None = _f(None, "Name of the RayCluster KubeRay created for the current attempt.")
    dashboard_url: str | None = Field(None, alias="dashboardURL", description="Ray dashboard of the current attempt.")
    ray_token_secret: str | None = _f(
        None, "Secret (key RAY_AUTH_TOKEN) with the Ray token of the job's clusters: their dashboard and GCS"
        " refuse every request without it. The job owns it; it goes with the job.",
    )
    admitted_spec_hash: str | None = _f(
        None, "SHA-256 of the spec the job was admitted with, as its <job>-config ConfigMap holds it (the fields"
        " a started job may change left out). A ConfigMap that no longer has it fails the job: AdmittedSpecChanged.",
    )
    start_time: datetime | None = _f(None, "When the operator started the job's first attempt (RFC 3339).")
    completion_time: datetime | None = _f(None, "When the job reached a terminal phase (RFC 3339).")
    retries: int = _f(0, "Attempts made after the first one failed.", ge=0)
    next_retry_time: datetime | None = _f(None, "When the next attempt starts, while waiting out a retry backoff.")
    progress: JobProgress | None = _f(None, "The pipeline's latest progress report.")
    worker_groups: list[WorkerGroupStatus] | None = _f(
        None, "The current attempt's worker groups while its Ray cluster runs: how many pods each has and wants."
    )
    ready_workers: int | None = _f(
        None, "Ready worker pods of the current attempt's Ray cluster, every group's together (KubeRay's count).", ge=0,
    )
    outputs: JobOutputs | None = _f(None, "Where a finished run's summary, clip index and report are.")
