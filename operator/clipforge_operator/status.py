"""The VideoCurationJob's status: what KubeRay's objects say about a job, and its conditions.

Nothing here talks to Kubernetes: reconcile.py reads the RayJob and its RayCluster (never their
pods), and these functions say what they mean for the job (its phase, why it waits, each worker
group's size); the job's status is edited through `StatusEdit`, which keeps Kubernetes-style
conditions consistent with the phase and collects the Events the change should post.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum

from clipforge.dashboard_gate import message_without_logs
from clipforge.spec import TERMINAL_PHASES, JobPhase


class ConditionType(str, Enum):
    """The conditions the operator sets on a VideoCurationJob."""

    submitted = "Submitted"  # the attempt's RayJob exists (False: KubeRay is not installed, or too old)
    running = "Running"  # running..cancelled: the current phase's True, the others False (phase_conditions)
    succeeded = "Succeeded"
    failed = "Failed"
    cancelled = "Cancelled"
    retrying = "Retrying"  # an attempt failed and another is scheduled (False once it started)
    completed_with_failures = "CompletedWithFailures"  # succeeded, some videos failed within the spec's limits
    spec_update_refused = "SpecUpdateRefused"  # a spec change a started job cannot take (update_rules.py)


# ------------------------------------------------------------------------------ RayJob -> phase


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | datetime | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    try:
        parsed = datetime.fromisoformat(value)  # 3.11 reads the Z suffix too
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Observation:
    """What a RayJob's status means for the VideoCurationJob."""

    phase: str
    reason: str
    message: str
    terminal: bool = False
    ray_cluster_name: str | None = None
    dashboard_url: str | None = None
    retryable: bool = True  # False: another attempt with the same spec would fail the same way

    @property
    def failed(self) -> bool:
        return self.phase == JobPhase.failed.value


_STARTED_JOB_STATUSES = ("RUNNING", "SUCCEEDED", "FAILED", "STOPPED")
_PROVISIONING_REASONS = {
    "": "RayJobCreated", "Initializing": "ClusterStarting", "Suspending": "Suspended", "Suspended": "Suspended",
    "Retrying": "KubeRayRetrying", "Waiting": "WaitingForSubmission", "Scheduling": "Scheduling",
    "Scheduled": "Scheduling",
}


def cluster_problem(raycluster: Mapping | None) -> str:
    """Why KubeRay cannot make a RayCluster's pods, from its ReplicaFailure condition ('' if none).

    Pods refused at creation (Pod Security, a ResourceQuota, a bad template) show nowhere else
    but in KubeRay's Events; a job waiting on them should say so instead of "starting".
    """
    for cond in ((raycluster or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            reason = cond.get("reason") or "ReplicaFailure"
            # KubeRay's message is its error chain, "<reason>\n<API error>", one error a line.
            lines = [line for line in (cond.get("message") or "").splitlines() if line.strip() and line != reason]
            return f"RayCluster {(raycluster.get('metadata') or {}).get('name')}: {reason}: {'; '.join(lines)}"
    return ""


# KubeRay's labels on the pods of a RayCluster.
def worker_group_sizes(raycluster: Mapping) -> list[dict]:
    """status.workerGroups: each worker group's bounds, the pods wanted now and, where KubeRay says it, the
    pods Ready; all from the live RayCluster, so the operator reads no pod (it may not list them).

    Wanted is the RayCluster's `replicas`, which the Ray autoscaler moves between the bounds. KubeRay's
    status counts Ready workers for the whole cluster only (readyWorkerReplicas): a group's own count is
    that for a cluster of one worker group, and unknown with several (ready_workers has the total).
    """
    groups = (raycluster.get("spec") or {}).get("workerGroupSpecs") or []
    sizes = []
    for group in groups:
        low = group.get("minReplicas") or 0
        size = {"name": group.get("groupName", ""), "minReplicas": low, "maxReplicas": group.get("maxReplicas", low),
                "desiredReplicas": group.get("replicas", low)}
        if len(groups) == 1:
            size["readyReplicas"] = ready_workers(raycluster)
        sizes.append(size)
    return sizes


def ready_workers(raycluster: Mapping) -> int:
    """status.readyWorkers: the RayCluster's Ready worker pods, every group's together (KubeRay's count)."""
    return int((raycluster.get("status") or {}).get("readyWorkerReplicas") or 0)


def observe_rayjob(rayjob: Mapping, now: datetime, pending_deadline_seconds: int,
                   raycluster: Mapping | None = None) -> Observation:
    """The VideoCurationJob phase a RayJob status implies.

    KubeRay's jobDeploymentStatus tracks the cluster and the submission (Initializing -> Running
    -> Complete | Failed, with Suspended/Retrying/Waiting on the side, and ValidationFailed for a
    RayJob it refuses, which fails without retries); jobStatus is the Ray job's
    own (PENDING -> RUNNING -> SUCCEEDED | FAILED | STOPPED). Only Complete+SUCCEEDED is success;
    a STOPPED job was stopped on purpose (Cancelled); every other terminal state is a failure with
    KubeRay's reason and message carried over. A job not yet RUNNING after the pending deadline
    (counted from the RayJob's start) fails with PendingDeadlineExceeded. While it is not running,
    `raycluster` (the RayJob's, when there is one) adds why its pods cannot be made, if it says.
    """
    status = rayjob.get("status") or {}
    deployment = status.get("jobDeploymentStatus") or ""
    job_status = status.get("jobStatus") or ""
    # Whoever answered KubeRay's status poll, no driver log text reaches the job's status and Events.
    reason, message = status.get("reason") or "", message_without_logs(status.get("message") or "")
    common = {
        "ray_cluster_name": status.get("rayClusterName") or None,
        "dashboard_url": status.get("dashboardURL") or None,
    }
    name = (rayjob.get("metadata") or {}).get("name", "RayJob")
    if deployment == "Complete" and job_status == "SUCCEEDED":
        return Observation(JobPhase.succeeded.value, "JobSucceeded", message or "the pipeline finished", True, **common)
    if deployment == "Complete" and job_status == "STOPPED":
        return Observation(JobPhase.cancelled.value, reason or "JobStopped",
                           message or f"the Ray job of {name} was stopped", True, **common)
    if deployment == "ValidationFailed":
        # KubeRay refuses the RayJob we built and waits for an edit that never comes: a new
        # attempt would be refused the same way, so the job fails now with KubeRay's message.
        return Observation(JobPhase.failed.value, reason or "ValidationFailed",
                           message or f"KubeRay refused RayJob {name}", True, retryable=False, **common)
    if deployment in ("Complete", "Failed"):
        # Failed: SubmissionFailed, DeadlineExceeded, AppFailed, ...; Complete+FAILED from older KubeRay.
        default_reason = "AppFailed" if job_status == "FAILED" else "SubmissionFailed" if not job_status else "JobFailed"
        return Observation(JobPhase.failed.value, reason or default_reason,
                           message or f"RayJob {name}: {deployment}, Ray job {job_status or 'never started'}",
                           True, **common)
    if deployment == "Running" and job_status in _STARTED_JOB_STATUSES:
        # The Ray job has started. KubeRay writes its end (SUCCEEDED, FAILED, STOPPED) a moment
        # before it moves the deployment on: Running until then, never back to Provisioning, and
        # never subject to the pending deadline.
        return Observation(JobPhase.running.value, "JobRunning", message or "the pipeline is running", **common)

    problem = cluster_problem(raycluster)
    message = "; ".join(m for m in (message, problem) if m)
    since = parse_time(status.get("startTime")) or parse_time((rayjob.get("metadata") or {}).get("creationTimestamp"))
    if since is not None and (now - since).total_seconds() > pending_deadline_seconds:
        return Observation(
            JobPhase.failed.value, "PendingDeadlineExceeded",
            f"RayJob {name} was not running after {pending_deadline_seconds}s"
            f" (deployment {deployment or 'New'}, Ray job {job_status or 'not submitted'}){': ' + message if message else ''}",
            True, **common,
        )
    if deployment == "Running":  # cluster up, submitter created; the Ray job is PENDING or unknown yet
        return Observation(JobPhase.provisioning.value, "JobPending", message or "waiting for the Ray job to start",
                           **common)
    return Observation(JobPhase.provisioning.value, _PROVISIONING_REASONS.get(deployment, deployment or "RayJobCreated"),
                       message or f"Ray cluster {deployment.lower() or 'starting'}", **common)


# --------------------------------------------------------------------------------- conditions


def set_condition(
    conditions: list[dict], type_: ConditionType, status: bool | str, reason: str, message: str,
    now: datetime, generation: int | None = None,
) -> list[dict]:
    """Conditions with `type_` set; lastTransitionTime moves only when the status flips."""
    type_ = ConditionType(type_).value  # the name itself, as the API stores and compares it
    value = ("True" if status else "False") if isinstance(status, bool) else status
    out, found = [], False
    for cond in conditions:
        if cond.get("type") != type_:
            out.append(cond)
            continue
        found = True
        changed = cond.get("status") != value
        out.append({
            "type": type_, "status": value, "reason": reason, "message": message,
            "lastTransitionTime": rfc3339(now) if changed else cond.get("lastTransitionTime") or rfc3339(now),
            "observedGeneration": generation,
        })
    if not found:
        out.append({"type": type_, "status": value, "reason": reason, "message": message,
                    "lastTransitionTime": rfc3339(now), "observedGeneration": generation})
    return out


def get_condition(conditions: Iterable[Mapping], type_: ConditionType) -> Mapping | None:
    return next((c for c in conditions if c.get("type") == type_), None)


PHASE_CONDITIONS = {
    JobPhase.running.value: ConditionType.running,
    JobPhase.succeeded.value: ConditionType.succeeded,
    JobPhase.failed.value: ConditionType.failed,
    JobPhase.cancelled.value: ConditionType.cancelled,
}


def phase_conditions(
    conditions: list[dict], phase: str, reason: str, message: str, now: datetime, generation: int | None,
) -> list[dict]:
    """Running/Succeeded/Failed/Cancelled consistent with `phase`: the matching one True, any
    others already present False (a condition appears the first time it becomes True)."""
    for ptype in PHASE_CONDITIONS.values():
        on = PHASE_CONDITIONS.get(phase) == ptype
        if on:
            conditions = set_condition(conditions, ptype, True, reason, message, now, generation)
        elif get_condition(conditions, ptype) is not None:
            conditions = set_condition(conditions, ptype, False, reason, message, now, generation)
    return conditions


@dataclass
class EventRecord:
    """A Kubernetes Event to post on the VideoCurationJob."""

    type: str  # Normal | Warning
    reason: str
    message: str


class StatusEdit:
    """A job's status being edited (`new` against `old`, as read), with the Events the edit should post."""

    def __init__(self, body: Mapping, now: datetime):
        self.body = body
        self.old: dict = dict(body.get("status") or {})
        self.new: dict = dict(self.old)
        self.new.setdefault("phase", JobPhase.pending.value)
        self.new.setdefault("retries", 0)
        self.now = now
        self.generation = (body.get("metadata") or {}).get("generation")
        self.resource_version: str | None = (body.get("metadata") or {}).get("resourceVersion")  # of what was read
        self.events: list[EventRecord] = []

    @property
    def phase(self) -> str:
        return self.new["phase"]

    def has_condition(self, type_: ConditionType) -> bool:
        return get_condition(self.new.get("conditions") or [], type_) is not None

    def condition(self, type_: ConditionType, status: bool, reason: str, message: str) -> None:
        self.new["conditions"] = set_condition(
            list(self.new.get("conditions") or []), type_, status, reason, message, self.now, self.generation
        )

    def set_phase(self, phase: str, reason: str, message: str, event: bool = True) -> None:
        if phase != self.phase and event:
            kind = "Warning" if phase in (JobPhase.failed.value, JobPhase.cancelled.value) else "Normal"
            self.events.append(EventRecord(kind, phase, f"{reason}: {message}" if message else reason))
        self.new["phase"] = phase
        self.new["reason"] = reason
        self.new["message"] = message
        self.new["conditions"] = phase_conditions(
            list(self.new.get("conditions") or []), phase, reason, message, self.now, self.generation
        )
        if phase in TERMINAL_PHASES:
            self.new.setdefault("completionTime", rfc3339(self.now))
            self.new["nextRetryTime"] = None

    def changes(self) -> dict:
        """The status fields that differ from what was read: the merge patch to send."""
        return {k: v for k, v in self.new.items() if self.old.get(k) != v}

    def saved(self) -> dict:
        """The changes, from now on counted as written (the caller patches them)."""
        changes = self.changes()
        self.old.update(changes)
        return changes
