"""Compare-and-patch reconciliation of one VideoCurationJob, independent of kopf.

Every entry point re-reads the job, works out what its children and status should be, makes
the missing children, and patches only what differs. Running it twice, concurrently with
itself (a per-job lock) or after an operator restart neither duplicates nor loses work:
child names are deterministic, a 409 on create means "read it back", and the attempt number
lives in the job's status, as does the generated name of the job's Ray token Secret (written
the moment the Secret exists).

Every RayJob is built from the spec the job was admitted with (admission.py: the ConfigMap, checked
against the hash in status) and judged by the policy when it is built, first attempt and retry
alike. Status alone never grants anything: a RayJob is judged whatever status.startTime says, and
a token Secret named there is used only if its name is one the API server gave this job's.

The kopf handlers (handlers.py) call these functions; tests call them with a fake `Kube`.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from kubernetes.client.exceptions import ApiException

from clipforge.spec import (
    DEFAULT_IMAGE,
    FAILED_ON_INPUTS,
    TERMINAL_PHASES,
    InvalidJobError,
    JobOutputs,
    JobPhase,
    JobProgress,
    RunReport,
    RunState,
    VideoCurationJob,
    VideoCurationJobSpec,
    parse_job,
)
from clipforge_operator import builders as b
from clipforge_operator import cluster_access as access
from clipforge_operator.admission import PIN_STATUS_FIELD, SpecNotAdmitted, admitted_configmap, spec_hash
from clipforge_operator.config import KubeRayPods
from clipforge_operator.kube import AlreadyExists, status_message
from clipforge_operator.kuberay_schema import REFUSAL_REASON, REQUIRED_KUBERAY_VERSION
from clipforge_operator.pipeline_pods import unmounted_paths, with_pipeline_image
from clipforge_operator.policy import JobPolicy, namespace_refused, violations
from clipforge_operator.progress import (
    Credentials,
    ProgressUnavailable,
    credentials_from_secret,
    read_outcome,
    read_progress,
)
from clipforge_operator.status import (
    ConditionType,
    EventRecord,
    Observation,
    StatusEdit,
    get_condition,
    observe_rayjob,
    parse_time,
    rfc3339,
    ready_workers,
    worker_group_sizes,
)
from clipforge_operator.update_rules import merge_allowed

log = logging.getLogger(__name__)

EmitFn = Callable[[Mapping, EventRecord], None]
ProgressFn = Callable[..., JobProgress]
OutcomeFn = Callable[..., RunReport]
T = TypeVar("T")


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Context:
    """What reconciliation needs from the outside world (real or fake)."""

    kube: Any  # clipforge_operator.kube.Kube or a test double with the same methods
    emit: EmitFn = lambda body, event: None  # posts a Kubernetes Event on the job
    now: Callable[[], datetime] = _utcnow
    progress: ProgressFn = read_progress
    outcome: OutcomeFn = read_outcome  # the pipeline's summary.json, read when an attempt fails
    read_secrets: bool = True  # read storage.credentialsSecret to fetch progress from S3
    kuberay: KubeRayPods = KubeRayPods()  # admitted to the jobs' dashboards (their NetworkPolicy)
    policy: JobPolicy = JobPolicy()  # the images, service accounts and Secrets jobs may use
    pipeline_image: str = DEFAULT_IMAGE  # of jobs that set no spec.cluster.image
    locks: dict[tuple[str, str], threading.Lock] = field(default_factory=dict)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock)

    def lock(self, namespace: str, name: str) -> threading.Lock:
        with self._locks_guard:
            return self.locks.setdefault((namespace, name), threading.Lock())

    def forget(self, namespace: str, name: str) -> None:
        with self._locks_guard:
            self.locks.pop((namespace, name), None)


class NameConflict(Exception):
    """A child's deterministic name is taken by an object this job does not own."""


class KubeRayUnusable(Exception):
    """No RayJob can be created now, until an administrator acts: the API has no ray.io/v1 RayJob resource
    (reason KubeRayNotInstalled), or the installed RayJob CRD lacks a field the operator sends (KubeRayTooOld:
    the API server's strict field validation refused it)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class Refused(Exception):
    """The spec an attempt's RayJob would be built from is not admitted (reason: SystemNamespace,
    PolicyViolation or LocalPathNotMounted); the message names each problem's field."""

    def __init__(self, reason: str, problems: list[str]):
        super().__init__("; ".join(problems))
        self.reason = reason


class AttemptLost(Exception):
    """The attempt's RayJob, which the job's status records, is gone (deleted by someone, or by KubeRay's TTL)."""


def owned_by(obj: Mapping, uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


def meta_of(body: Mapping) -> Mapping:
    return body.get("metadata") or {}


# ------------------------------------------------------------------------------------ helpers


def _save(ctx: Context, namespace: str, name: str, st: StatusEdit) -> None:
    """Writes the status edited so far: what names a child just made is on record before anything can fail.
    Only onto the job as it was read: a write in between (a status writer, a second operator) makes the
    API server answer 409, and the reconcile runs again from what is there now (kopf retries it)."""
    changes = st.saved()
    if changes:
        written = ctx.kube.patch_job_status(namespace, name, changes, st.resource_version)
        st.resource_version = meta_of(written).get("resourceVersion")


def commit(ctx: Context, namespace: str, name: str, st: StatusEdit) -> str:
    _save(ctx, namespace, name, st)
    for event in st.events:
        ctx.emit(st.body, event)
    return st.phase


def _fail(st: StatusEdit, reason: str, message: str, attempt_ended: bool = False) -> None:
    """The job fails: an attempt's end with no retry to follow, or (not `attempt_ended`) a spec nothing is built from."""
    st.set_phase(JobPhase.failed.value, reason, message)
    if st.has_condition(ConditionType.retrying):
        st.condition(ConditionType.retrying, False, reason, "no retries left" if attempt_ended else message)


def _credentials(ctx: Context, namespace: str, spec: VideoCurationJobSpec) -> Credentials | None:
    """The job's own S3 credentials for reading its reports (None: a local output needs none). A tenant's
    bucket is never read with the operator's own identity (a confused deputy: the job picks the URI), so
    an S3 output without usable credentials from storage.credentialsSecret is not read at all."""
    if not spec.output.uri.startswith("s3://"):
        return None
    name = spec.storage.credentials_secret
    secret = ctx.kube.get_secret(namespace, name) if ctx.read_secrets and name else None
    credentials = credentials_from_secret(secret) if secret else None
    if credentials is None:
        raise ProgressUnavailable(f"{spec.output.uri}: read with the job's storage.credentialsSecret only, and"
                                  + (f" Secret {name} has no usable keys" if ctx.read_secrets and name else
                                     " the operator reads none" if name else " the job names none"))
    return credentials


def _read_progress(ctx: Context, namespace: str, spec: VideoCurationJobSpec, final: bool) -> dict | None:
    try:
        progress = ctx.progress(spec.output.uri, spec.storage, _credentials(ctx, namespace, spec), final=final)
    except ProgressUnavailable as exc:
        log.debug("no progress for %s yet: %s", spec.output.uri, exc)
        return None
    except Exception as exc:  # noqa: BLE001 - progress is best effort; never fail a job over it
        log.warning("could not read progress of %s: %s", spec.output.uri, type(exc).__name__)
        return None
    return progress.model_dump(by_alias=True, mode="json")


def _attempt_outcome(ctx: Context, namespace: str, spec: VideoCurationJobSpec, rayjob: Mapping) -> RunReport | None:
    """The summary.json this attempt's pipeline wrote, or None: none, unreadable, or an earlier run's."""
    try:
        outcome = ctx.outcome(spec.output.uri, spec.storage, _credentials(ctx, namespace, spec))
    except ProgressUnavailable as exc:
        log.debug("no summary for %s: %s", spec.output.uri, exc)
        return None
    except Exception as exc:  # noqa: BLE001 - without it the failure counts as the infrastructure's
        log.warning("could not read the summary of %s: %s", spec.output.uri, type(exc).__name__)
        return None
    started = parse_time((rayjob.get("status") or {}).get("startTime")) or parse_time(meta_of(rayjob).get("creationTimestamp"))
    if started is None or outcome.updated_at < started:
        return None
    return outcome


def _failures_text(outcome: RunReport) -> str:
    if not outcome.videos.failed:  # every video done, some of their clips failed
        clips = outcome.clips
        return (f"{clips.failed} of {clips.passed + clips.filtered + clips.failed} clips failed"
                " (the clip index in the output names each with its reason)")
    failed = [failure.video for failure in outcome.failures or []]
    names = ", ".join(failed[:3])
    more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
    return (f"{outcome.videos.failed} of {outcome.videos.total} videos failed: {names}{more}"
            " (summary.json in the output names each with its reason)")


def admitted_spec(ctx: Context, st: StatusEdit, namespace: str, job: VideoCurationJob, uid: str) -> VideoCurationJobSpec:
    """The spec the job runs with, its image filled in: its ConfigMap's, as admitted (admission.py), plus
    later scaling/operator changes; before there is a ConfigMap, the job's own."""
    own = job.model_copy(update={"spec": with_pipeline_image(job.spec, ctx.pipeline_image)})
    fresh = b.build_configmap(own, namespace, uid)
    configmap = ctx.kube.get_configmap(namespace, fresh["metadata"]["name"])
    if configmap is not None and not owned_by(configmap, uid):
        raise NameConflict(f"ConfigMap {fresh['metadata']['name']} exists and is not this job's")
    accepted, st.new[PIN_STATUS_FIELD] = admitted_configmap(configmap, st.new.get(PIN_STATUS_FIELD), fresh)
    return own.spec if accepted is None else merge_allowed(accepted, job.spec)


def _ensure_owned(create: Callable[[dict], Any], read: Callable[[str, str], dict | None], body: dict, uid: str) -> None:
    """Creates a child of the job; one of that name already there must be the job's (made by an earlier run)."""
    meta = body["metadata"]
    try:
        create(body)
    except AlreadyExists:
        existing = read(meta["namespace"], meta["name"])
        if existing is not None and not owned_by(existing, uid):
            raise NameConflict(f"{body['kind']} {meta['name']} exists and is not this job's") from None


def _recorded_token_secret(st: StatusEdit, name: str) -> str | None:
    """status.rayTokenSecret if it is a name the API server gave this job's token Secret. Any other (a
    status writer's, say another job's token) is dropped with a Warning: the job makes its own instead."""
    recorded = st.new.get("rayTokenSecret")
    if not recorded or access.is_ray_token_secret_name(name, recorded):
        return recorded or None
    st.events.append(EventRecord("Warning", "RayTokenSecretRefused",
                                 f"status.rayTokenSecret named {recorded}, which is not a token Secret of this job;"
                                 " the job's RayJobs use a token of its own"))
    st.new["rayTokenSecret"] = None
    return None


def _ensure_ray_token(ctx: Context, st: StatusEdit, namespace: str, name: str, uid: str) -> str:
    """The Secret with the job's Ray token, made once for all its attempts and named in its status the
    moment it exists (a RayJob create that fails next leaves nothing unrecorded to make again); if
    status lost the name, the job's RayJobs still give it."""
    recorded = _recorded_token_secret(st, name)
    if recorded is None:
        referenced = (access.token_secret_of(rayjob) for rayjob in ctx.kube.list_rayjobs(namespace, uid)
                      if owned_by(rayjob, uid))
        recorded = next((s for s in referenced if s and access.is_ray_token_secret_name(name, s)), None)
    if recorded is None:
        body = access.build_ray_token_secret(name, namespace, uid, secrets.token_hex(32))  # 256 bits, as Ray's own
        recorded = ctx.kube.create_secret(body)["metadata"]["name"]  # the answer's data unread
    st.new["rayTokenSecret"] = recorded
    _save(ctx, namespace, name, st)
    return recorded


def _refusal(ctx: Context, namespace: str, spec: VideoCurationJobSpec) -> Refused | None:
    """Why no RayJob may be built from `spec` now, if anything: judged at each build, never from status."""
    for reason, refused in (("SystemNamespace", namespace_refused(namespace)),
                            ("PolicyViolation", violations(spec, ctx.policy)),
                            ("LocalPathNotMounted", unmounted_paths(spec))):
        if refused:
            return Refused(reason, refused)
    return None


def _ensure_rayjob(ctx: Context, st: StatusEdit, namespace: str, job: VideoCurationJob, uid: str,
                   attempt: int) -> tuple[dict, bool]:
    """The attempt's RayJob, creating it (and the ConfigMap, token Secret and NetworkPolicy) if missing and
    the policy admits the spec now. True if created now."""
    name = b.rayjob_name(job.metadata.name, attempt)
    existing = ctx.kube.get_rayjob(namespace, name)
    if existing is not None:
        if not owned_by(existing, uid):
            raise NameConflict(f"RayJob {name} exists and is not this job's")
        return existing, False
    if st.new.get("rayJobName") == name:
        raise AttemptLost(f"RayJob {name} of attempt {attempt + 1} is gone (last seen: {st.phase},"
                          f" {st.new.get('reason') or 'no reason'}); it counts as a failed attempt")
    refused = _refusal(ctx, namespace, job.spec)
    if refused is not None:
        raise refused
    configmap = b.build_configmap(job, namespace, uid)
    _ensure_owned(ctx.kube.create_configmap, ctx.kube.get_configmap, configmap, uid)
    st.new[PIN_STATUS_FIELD] = spec_hash(configmap)
    token_secret = _ensure_ray_token(ctx, st, namespace, job.metadata.name, uid)
    _ensure_owned(ctx.kube.create_network_policy, ctx.kube.get_network_policy,
                  access.build_network_policy(job.metadata.name, namespace, uid, ctx.kuberay), uid)
    if attempt > 0:  # the failed attempt's RayJob, if a crash left it behind
        ctx.kube.delete_rayjob(namespace, b.rayjob_name(job.metadata.name, attempt - 1))
    try:
        return ctx.kube.create_rayjob(b.build_rayjob(job, namespace, uid, token_secret, attempt)), True
    except ApiException as exc:
        if exc.status == 404:
            raise KubeRayUnusable("KubeRayNotInstalled", f"cannot create RayJob {name}: the API has no"
                                  f" {b.RAY_GROUP}/{b.RAY_VERSION} RayJob resource; install the KubeRay"
                                  " operator") from None
        refusal = status_message(exc)
        if exc.status == 400 and "unknown field" in refusal:
            raise KubeRayUnusable(REFUSAL_REASON, f"cannot create RayJob {name}: {refusal}; install KubeRay"
                                  f" {REQUIRED_KUBERAY_VERSION} or later (its CRDs too)") from None
        raise
    except AlreadyExists:
        existing = ctx.kube.get_rayjob(namespace, name)
        if existing is None or not owned_by(existing, uid):
            raise NameConflict(f"RayJob {name} exists and is not this job's") from None
        return existing, False


# ---------------------------------------------------------------------------------- reconcile


STALE_READ_RETRIES = 3  # reads of a job whose status someone else writes as fast as the operator reads it


def on_fresh_read(ctx: Context, namespace: str, name: str, act: Callable[[dict], T]) -> T | None:
    """`act` on the job as read now, under its lock (None if it is gone or going); again from a new read
    when its status write found the job changed since (409: see _save), and its children made so far
    are found again by name."""
    with ctx.lock(namespace, name):
        for attempt in range(STALE_READ_RETRIES):
            body = ctx.kube.get_job(namespace, name)
            if body is None or meta_of(body).get("deletionTimestamp"):
                return None
            try:
                return act(body)
            except ApiException as exc:
                if exc.status != 409 or attempt == STALE_READ_RETRIES - 1:
                    raise
    return None


def reconcile(ctx: Context, namespace: str, name: str, *, poll_progress: bool = False) -> str | None:
    """Bring one job's children and status up to date; returns its phase (None if it is gone)."""
    return on_fresh_read(ctx, namespace, name, lambda body: _reconcile(ctx, namespace, name, body, poll_progress))


def _reconcile(ctx: Context, namespace: str, name: str, body: dict, poll_progress: bool) -> str:
    now = ctx.now()
    st = StatusEdit(body, now)
    if st.phase in TERMINAL_PHASES:
        return st.phase
    uid = meta_of(body).get("uid", "")
    st.new["observedGeneration"] = st.generation

    attempt = int(st.new.get("retries") or 0)
    try:
        job = parse_job({k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body},
                        f"{namespace}/{name}")
        job = job.model_copy(update={"spec": admitted_spec(ctx, st, namespace, job, uid)})
        # A spec that cannot become a cluster fails here, before any child (the Secret's name is not needed).
        b.build_rayjob(job, namespace, uid, token_secret="")
    except InvalidJobError as exc:
        _fail(st, "InvalidSpec", "; ".join(exc.problems))
        return commit(ctx, namespace, name, st)
    except b.BuildError as exc:
        _fail(st, "InvalidSpec", str(exc))
        return commit(ctx, namespace, name, st)
    except NameConflict as exc:
        _fail(st, "NameConflict", str(exc))
        return commit(ctx, namespace, name, st)
    except SpecNotAdmitted as exc:
        # Whatever the attempt runs was started from a spec nobody can vouch for any more: stop it too.
        _fail(st, exc.reason, str(exc))
        phase = commit(ctx, namespace, name, st)
        _delete_own_rayjob(ctx, namespace, b.rayjob_name(name, attempt), uid)
        return phase

    spec = job.spec
    next_retry = parse_time(st.new.get("nextRetryTime"))
    if next_retry is not None and now < next_retry:
        return commit(ctx, namespace, name, st)  # waiting out the backoff

    rayjob_name = b.rayjob_name(name, attempt)
    try:
        rayjob, created = _ensure_rayjob(ctx, st, namespace, job, uid, attempt)
    except (NameConflict, Refused) as exc:
        _fail(st, getattr(exc, "reason", "NameConflict"), str(exc))
        return commit(ctx, namespace, name, st)
    except AttemptLost as exc:
        return _attempt_ended(ctx, st, namespace, name, spec, attempt, {},
                              Observation(JobPhase.failed.value, "RayJobLost", str(exc), True))
    except KubeRayUnusable as exc:  # not fatal: the timer tries again, until KubeRay is there and fits
        submitted = get_condition(st.new.get("conditions") or [], ConditionType.submitted)
        if submitted is None or submitted.get("reason") != exc.reason:  # said once per cause, not every tick
            st.events.append(EventRecord("Warning", exc.reason, str(exc)))
        st.condition(ConditionType.submitted, False, exc.reason, str(exc))
        st.new["message"] = str(exc)
        return commit(ctx, namespace, name, st)

    if st.new.get("rayJobName") != rayjob_name:
        st.new.update(rayJobName=rayjob_name, rayClusterName=None, dashboardURL=None)
    if not st.new.get("startTime"):
        st.new["startTime"] = rfc3339(now)
    st.new["nextRetryTime"] = None
    if created:
        total = spec.max_retries + 1
        st.condition(ConditionType.submitted, True, "RayJobCreated",
                     f"RayJob {rayjob_name} created (attempt {attempt + 1} of {total})")
        if attempt > 0:
            st.condition(ConditionType.retrying, False, "RetryStarted", f"attempt {attempt + 1} of {total} started")
            st.events.append(EventRecord("Normal", "RetryStarted", f"RayJob {rayjob_name}: attempt {attempt + 1} of {total}"))

    # The live RayCluster: while KubeRay makes it, why pods cannot be created, if they cannot; while
    # it runs, how many pods each worker group has and wants.
    rayjob_status = rayjob.get("status") or {}
    cluster_name = rayjob_status.get("rayClusterName")
    deployment = rayjob_status.get("jobDeploymentStatus")
    starting = deployment in ("", "Initializing")
    live = cluster_name and (starting or deployment == "Running")
    raycluster = ctx.kube.get_raycluster(namespace, cluster_name) if live else None
    obs = observe_rayjob(rayjob, now, spec.pending_deadline_seconds, raycluster if starting else None)
    if obs.ray_cluster_name:
        st.new["rayClusterName"] = obs.ray_cluster_name
    if obs.dashboard_url:
        st.new["dashboardURL"] = obs.dashboard_url
    # The token Secret is the one the attempt's RayJob reads: status follows it (lost or preset, it is put right).
    referenced = access.token_secret_of(rayjob)
    if referenced and access.is_ray_token_secret_name(name, referenced):
        st.new["rayTokenSecret"] = referenced
    else:
        _recorded_token_secret(st, name)

    if not obs.terminal:
        st.set_phase(obs.phase, obs.reason, obs.message)
        st.new["workerGroups"] = worker_group_sizes(raycluster) if raycluster is not None else None
        st.new["readyWorkers"] = ready_workers(raycluster) if raycluster is not None else None
        if poll_progress and obs.phase == JobPhase.running.value:
            progress = _read_progress(ctx, namespace, spec, final=False)
            if progress is not None:
                st.new["progress"] = progress
        return commit(ctx, namespace, name, st)
    return _attempt_ended(ctx, st, namespace, name, spec, attempt, rayjob, obs)


def _delete_own_rayjob(ctx: Context, namespace: str, name: str, uid: str) -> None:
    existing = ctx.kube.get_rayjob(namespace, name)
    if existing is not None and owned_by(existing, uid):
        ctx.kube.delete_rayjob(namespace, name)


def _attempt_ended(ctx: Context, st: StatusEdit, namespace: str, name: str, spec: VideoCurationJobSpec,
                   attempt: int, rayjob: Mapping, obs: Observation) -> str:
    """The job after an attempt's end (`obs`, terminal): succeeded, cancelled, failed, or a retry scheduled."""
    rayjob_name = b.rayjob_name(name, attempt)
    st.new.update(workerGroups=None, readyWorkers=None)  # the attempt's cluster is going
    final = _read_progress(ctx, namespace, spec, final=True)
    if final is not None:
        st.new["progress"] = final
        # Every run ends by writing these (a failed one too): say where they are.
        st.new["outputs"] = JobOutputs.under(spec.output.uri).model_dump(by_alias=True)
    # A failed Ray job whose pipeline reports failed videos failed on its data, not its infrastructure:
    # within the spec's limits that is success with a condition, beyond them failure without retries.
    outcome = _attempt_outcome(ctx, namespace, spec, rayjob) if obs.failed else None
    with_failures = outcome is not None and outcome.state == RunState.completed_with_failures
    if obs.phase == JobPhase.succeeded.value or with_failures:
        if with_failures:
            text = _failures_text(outcome)
            st.set_phase(JobPhase.succeeded.value, "CompletedWithFailures", text)
            st.condition(ConditionType.completed_with_failures, True,
                         "VideosFailed" if outcome.videos.failed else "ClipsFailed", text)
        else:
            st.set_phase(obs.phase, obs.reason, obs.message)
        if st.has_condition(ConditionType.retrying):
            st.condition(ConditionType.retrying, False, "Succeeded", "the job succeeded")
        return commit(ctx, namespace, name, st)
    if obs.phase == JobPhase.cancelled.value:
        st.set_phase(obs.phase, obs.reason, obs.message)
        return commit(ctx, namespace, name, st)

    # Failed on its inputs: a retry would fail the same way.
    if outcome is not None and outcome.state in (RunState.failed, RunState.no_input) \
            and outcome.reason in FAILED_ON_INPUTS:
        _fail(st, outcome.reason, outcome.message, attempt_ended=True)
        return commit(ctx, namespace, name, st)

    # A failed attempt: retry after a backoff while retries are left, else the job fails.
    if attempt < spec.max_retries and obs.retryable:
        retry = attempt + 1
        delay = spec.retry_backoff.delay(retry)
        when = st.now + timedelta(seconds=delay)
        text = (f"attempt {attempt + 1} ({rayjob_name}) failed: {obs.reason}: {obs.message};"
                f" retry {retry} of {spec.max_retries} at {rfc3339(when)}")
        st.events.append(EventRecord("Warning", "AttemptFailed", text))
        st.set_phase(JobPhase.pending.value, "BackoffBeforeRetry", text, event=False)
        st.condition(ConditionType.retrying, True, obs.reason, text)
        st.new.update(retries=retry, nextRetryTime=rfc3339(when), rayClusterName=None, dashboardURL=None)
        phase = commit(ctx, namespace, name, st)  # record the retry before removing the attempt
        ctx.kube.delete_rayjob(namespace, rayjob_name)
        return phase
    _fail(st, obs.reason, obs.message, attempt_ended=True)
    phase = commit(ctx, namespace, name, st)
    if obs.reason == "PendingDeadlineExceeded":
        ctx.kube.delete_rayjob(namespace, rayjob_name)  # free whatever the stuck cluster holds
    return phase


# ----------------------------------------------------------------------------------- deletion


def delete_children(ctx: Context, namespace: str, name: str, uid: str) -> list[str]:
    """Delete every RayJob of the job (stopping its Ray cluster) and its ConfigMap.

    Owner references would let the garbage collector do this too; deleting explicitly stops the
    work now rather than whenever the collector gets to it.
    """
    with ctx.lock(namespace, name):
        deleted = []
        for rayjob in ctx.kube.list_rayjobs(namespace, uid):
            rj_name = meta_of(rayjob).get("name")
            if rj_name and owned_by(rayjob, uid) and ctx.kube.delete_rayjob(namespace, rj_name):
                deleted.append(f"RayJob {rj_name}")
        configmap = ctx.kube.get_configmap(namespace, b.configmap_name(name))
        if configmap is not None and owned_by(configmap, uid):
            ctx.kube.delete_configmap(namespace, b.configmap_name(name))
            deleted.append(f"ConfigMap {b.configmap_name(name)}")
    ctx.forget(namespace, name)
    return deleted


def owner_of(rayjob: Mapping) -> tuple[str, str] | None:
    """(namespace, name) of the VideoCurationJob that owns a RayJob, if any."""
    for ref in meta_of(rayjob).get("ownerReferences") or []:
        if ref.get("kind") == "VideoCurationJob" and ref.get("apiVersion", "").startswith(f"{b.API_GROUP}/"):
            return meta_of(rayjob).get("namespace", ""), ref.get("name", "")
    return None

