"""Pure functions from a VideoCurationJob to the objects and patches the operator applies.

Nothing here talks to Kubernetes: the handlers read, call these, compare and patch.

- names: deterministic, DNS-1035, short enough for KubeRay (a RayJob name is at most 47 characters);
- the ConfigMap with the job manifest the pipeline runs (every stage pinned to its worker group);
- the environment that gives every Ray container the job's token (the Secret itself and the
  NetworkPolicy around the job's pods are cluster_access.py);
- the RayJob (KubeRay ray.io/v1) with a head group, one CPU worker group for the CPU stages and
  one GPU worker group per GPU stage, each advertising the custom Ray resources of its stages;
- the JSON patch that rescales a live RayCluster.

What KubeRay's objects mean for the job's status is status.py; which spec changes a started job
takes is update_rules.py.
"""

from __future__ import annotations

import hashlib
import math
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from clipforge.spec import (
    API_GROUP,
    API_VERSION,
    KIND,
    STAGES,
    stage_enabled,
    stage_resources,
    GpuWorkerGroupSpec,
    PodResources,
    Toleration,
    VideoCurationJob,
    VideoCurationJobSpec,
    WorkerGroupSpec,
    stage_resource_name,
)
from clipforge_operator.pipeline_pods import (
    api_access_mount, api_access_volume, container_security, is_under, pod_security, scratch_mounts,
    scratch_volumes,
)

RAY_GROUP, RAY_VERSION = "ray.io", "v1"
RAYJOB_PLURAL, RAYCLUSTER_PLURAL = "rayjobs", "rayclusters"

OPERATOR_NAME = "clipforge-operator"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_JOB = f"{API_GROUP}/job"
LABEL_JOB_UID = f"{API_GROUP}/job-uid"
LABEL_ATTEMPT = f"{API_GROUP}/attempt"
ANNOTATION_JOB_NAME = f"{API_GROUP}/job-name"

JOB_MOUNT_DIR = "/etc/clipforge"
JOB_FILE = "job.yaml"
JOB_PATH = f"{JOB_MOUNT_DIR}/{JOB_FILE}"
ENTRYPOINT = f"clipforge run {JOB_PATH}"

# Every Ray container runs with Ray's token authentication: without the job's token nobody submits
# to its dashboard or talks to its GCS, raylets or workers, whatever the network lets through (a
# ClusterIP Service is reachable from every pod of the cluster). The token is the job's own, made by
# the operator into a Secret the job owns (cluster_access.py), and reaches every container by
# secretKeyRef only. KubeRay 1.5.0 knows nothing of Ray's token: its operator polls the dashboard for
# the job's status without one. So the head's dashboard listens on the pod's loopback, behind
# clipforge.dashboard_gate on the dashboard's usual port, which answers that one poll itself and
# relays everything else for Ray to judge (see there).
RAY_AUTH_MODE = "token"
RAY_TOKEN_KEY = "RAY_AUTH_TOKEN"  # the Secret's key, and the variable Ray reads the token from
DASHBOARD_PORT = 8265  # KubeRay's: the head Service's `dashboard` port, its probes and its submitter
DASHBOARD_LOOPBACK_PORT = 8266  # Ray's dashboard itself, reachable only inside the head pod
GATE_CONTAINER = "dashboard-gate"
# KubeRay runs `ulimit -n 65536; ray start ... --block` under bash, which stays the container's
# PID 1 and, as PID 1, ignores SIGTERM: every Ray pod then took its whole 30 s grace period to
# stop (a job's clean-up, a scale-down). With this annotation KubeRay keeps our command and passes
# its generated `ray start` line in $KUBERAY_GEN_RAY_START_CMD; `exec` makes Ray PID 1, and Ray
# drains and exits on SIGTERM. `eval` reads the line's quoting as KubeRay's own bash line does.
OVERWRITE_RAY_COMMAND_ANNOTATION = "ray.io/overwrite-container-cmd"
RAY_START_ARGS = 'ulimit -n 65536; eval "exec $KUBERAY_GEN_RAY_START_CMD"'

# Each pinned stage's actor asks for 0.01 of its stage resource (see clipforge.executors.ray_data);
# a group advertises far more than its pods could ever run actors, so the resource never limits.
ADVERTISED_STAGE_RESOURCE = 1000

MAX_RAYJOB_NAME = 47  # KubeRay: RayCluster name (RayJob name + 6) must fit in 53 characters
MAX_RETRY_SUFFIX = len("-retry-99")
CPU_GROUP = "cpu"

CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
OPTIONAL_CREDENTIAL_KEYS = ("AWS_SESSION_TOKEN",)


class BuildError(ValueError):
    """The spec cannot be turned into a RayJob (for example a stage wants more GPUs than a pod has)."""


# ---------------------------------------------------------------------------------------------- names


def _hash(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def base_name(job_name: str) -> str:
    """A DNS-1035 label derived from the job name, leaving room for a retry suffix.

    Names that had to change (dots, a leading digit, too long) get a hash of the original so
    that two jobs never map to the same children.
    """
    budget = MAX_RAYJOB_NAME - MAX_RETRY_SUFFIX
    clean = re.sub(r"[^a-z0-9-]+", "-", job_name.lower()).strip("-")
    clean = re.sub(r"-{2,}", "-", clean)
    if not clean or not clean[0].isalpha():
        clean = f"vcj-{clean}".rstrip("-")
    if clean == job_name and len(clean) <= budget:
        return clean
    return f"{clean[: budget - 9].rstrip('-')}-{_hash(job_name)}"


def rayjob_name(job_name: str, attempt: int = 0) -> str:
    """The RayJob of attempt `attempt` (0 is the first run, n the n-th retry)."""
    if not 0 <= attempt <= 99:
        raise ValueError(f"attempt out of range: {attempt}")
    base = base_name(job_name)
    return base if attempt == 0 else f"{base}-retry-{attempt}"


def configmap_name(job_name: str) -> str:
    return f"{base_name(job_name)}-config"


def labels(job_name: str, job_uid: str, attempt: int | None = None) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "clipforge",
        "app.kubernetes.io/component": "pipeline",
        LABEL_MANAGED_BY: OPERATOR_NAME,
        LABEL_JOB: base_name(job_name),
        LABEL_JOB_UID: job_uid,
    }
    if attempt is not None:
        out[LABEL_ATTEMPT] = str(attempt)
    return out


def owner_reference(name: str, uid: str) -> dict:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_meta(name: str, namespace: str, job_name: str, job_uid: str, attempt: int | None = None) -> dict:
    return {
        "name": name,
        "namespace": namespace,
        "labels": labels(job_name, job_uid, attempt),
        "annotations": {ANNOTATION_JOB_NAME: job_name},
        "ownerReferences": [owner_reference(job_name, job_uid)],
    }


# ------------------------------------------------------------------------------------- job manifest


def pinned_spec(spec: VideoCurationJobSpec) -> VideoCurationJobSpec:
    """The spec with every stage pinned, so each stage's actors land on its worker group."""
    data = spec.model_dump(by_alias=True, mode="json")
    for stage in STAGES:
        data["execution"]["stages"][stage]["pinned"] = True
    return VideoCurationJobSpec.model_validate(data)


def job_document(job: VideoCurationJob, namespace: str, uid: str) -> dict:
    """The manifest the pipeline runs in the cluster: pinned stages, defaults spelled out; the uid
    lets a retry take over its earlier attempt's claim on the output (clipforge.lease)."""
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {"name": job.metadata.name, "namespace": namespace, "uid": uid},
        # Nothing excluded: a null that overrides a default (crf: null) must stay null.
        "spec": pinned_spec(job.spec).model_dump(by_alias=True, mode="json"),
    }


def build_configmap(job: VideoCurationJob, namespace: str, uid: str) -> dict:
    text = yaml.safe_dump(job_document(job, namespace, uid), sort_keys=False)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_meta(configmap_name(job.metadata.name), namespace, job.metadata.name, uid),
        "data": {JOB_FILE: text},
    }


# ---------------------------------------------------------------------------------- Ray's token


def ray_token_env(token_secret: str) -> dict:
    """The job's token, by reference to its Secret."""
    return {"name": RAY_TOKEN_KEY, "valueFrom": {"secretKeyRef": {"name": token_secret, "key": RAY_TOKEN_KEY}}}


def ray_auth_env(token_secret: str) -> list[dict]:
    """RAY_AUTH_MODE and the job's token: what every Ray process of the job needs."""
    return [{"name": "RAY_AUTH_MODE", "value": RAY_AUTH_MODE}, ray_token_env(token_secret)]


# ---------------------------------------------------------------------------------- worker groups


_SI = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
       "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def parse_quantity(value: str | float | None) -> float | None:
    if value is None:
        return None
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)", str(value))
    if not match or match.group(2) not in _SI:
        raise BuildError(f"not a resource quantity: {value!r}")
    return float(match.group(1)) * _SI[match.group(2)]


def _pod_cpus(resources: PodResources) -> float:
    cpus = parse_quantity(resources.limits.cpu) or parse_quantity(resources.requests.cpu)
    return cpus or 1.0


@dataclass(frozen=True)
class GroupPlan:
    """One Ray worker group: which stages it runs and how far it may scale."""

    name: str
    stages: tuple[str, ...]
    settings: WorkerGroupSpec
    gpus: int
    min_replicas: int
    max_replicas: int

    @property
    def ray_resources(self) -> dict[str, int]:
        return {stage_resource_name(s): ADVERTISED_STAGE_RESOURCE for s in self.stages}


def _bounds(settings: WorkerGroupSpec, derived_min: int, derived_max: int) -> tuple[int, int]:
    low = settings.min_replicas if settings.min_replicas is not None else derived_min
    high = settings.max_replicas if settings.max_replicas is not None else max(derived_max, low, 1)
    if settings.max_replicas is not None and settings.min_replicas is None:
        low = min(low, high)
    return low, high


def gpu_group_settings(spec: VideoCurationJobSpec, stage: str) -> GpuWorkerGroupSpec:
    return getattr(spec.cluster.gpu_workers, stage) or GpuWorkerGroupSpec()


def worker_groups(spec: VideoCurationJobSpec) -> list[GroupPlan]:
    """The CPU group (every stage without GPUs) first, then one GPU group per GPU stage.

    Unset replica bounds are derived from the stages' minWorkers/maxWorkers and what one pod fits.
    """
    stages = {s: stage_resources(spec, s) for s in STAGES if stage_enabled(spec, s)}
    cpu_stages = tuple(s for s in stages if stages[s].gpus == 0)
    gpu_stages = tuple(s for s in stages if stages[s].gpus > 0)
    plans: list[GroupPlan] = []
    if cpu_stages:
        settings = spec.cluster.cpu_workers
        pod_cpus = _pod_cpus(settings.resources)
        need_min = sum(stages[s].cpus * stages[s].min_workers for s in cpu_stages)
        need_max = sum(stages[s].cpus * stages[s].max_workers for s in cpu_stages)
        low, high = _bounds(settings, math.ceil(need_min / pod_cpus - 1e-9), math.ceil(need_max / pod_cpus - 1e-9))
        plans.append(GroupPlan(CPU_GROUP, cpu_stages, settings, 0, low, high))
    for stage in gpu_stages:
        hints = stages[stage]
        settings = gpu_group_settings(spec, stage)
        if hints.gpus > settings.gpus:
            raise BuildError(
                f"execution.stages.{stage}.gpus is {hints.gpus:g} but a pod of its GPU group has"
                f" {settings.gpus} (cluster.gpuWorkers.{stage}.gpus)"
            )
        per_pod = math.floor(settings.gpus / hints.gpus + 1e-9)
        if hints.cpus > 0:
            per_pod = min(per_pod, max(1, math.floor(_pod_cpus(settings.resources) / hints.cpus + 1e-9)))
        low, high = _bounds(settings, math.ceil(hints.min_workers / per_pod), math.ceil(hints.max_workers / per_pod))
        plans.append(GroupPlan(f"gpu-{stage}", (stage,), settings, settings.gpus, low, high))
    return plans


# ------------------------------------------------------------------------------------- pod specs


def _resource_list(amounts: Any) -> dict[str, str]:
    pairs = (("cpu", amounts.cpu), ("memory", amounts.memory), ("ephemeral-storage", amounts.ephemeral_storage))
    return {k: v for k, v in pairs if v is not None}


def container_resources(resources: PodResources, gpus: int = 0) -> dict:
    out: dict[str, dict[str, str]] = {}
    requests, limits = _resource_list(resources.requests), _resource_list(resources.limits)
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
        requests["nvidia.com/gpu"] = str(gpus)
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _tolerations(items: Iterable[Toleration]) -> list[dict]:
    return [t.model_dump(by_alias=True, mode="json", exclude_none=True) for t in items]


def ray_env(spec: VideoCurationJobSpec, token_secret: str) -> list[dict]:
    """Environment of every Ray container. The token and credentials are references to Secrets, never values."""
    env = ray_auth_env(token_secret)
    secret = spec.storage.credentials_secret
    if secret:
        for key in CREDENTIAL_KEYS:
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
        for key in OPTIONAL_CREDENTIAL_KEYS:
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}})
    return env


def _add_pod_extras(spec: VideoCurationJobSpec, pod: dict, volumes: bool) -> None:
    """cluster.imagePullSecrets and env (with `volumes`, cluster.volumes and volumeMounts too) added to
    a pod the operator built. Nothing the operator set may be replaced: a variable of the same name
    would win over the operator's, and credentials as literal values would land in the job's ConfigMap."""
    cluster = spec.cluster
    if cluster.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": ref.name} for ref in cluster.image_pull_secrets]
    (container,) = pod["containers"]
    taken = {e["name"] for e in container["env"]} | set(CREDENTIAL_KEYS) | set(OPTIONAL_CREDENTIAL_KEYS)
    clash = sorted(taken & {e.name for e in cluster.env})
    if clash:
        raise BuildError(f"cluster.env: {', '.join(clash)} is set by the operator (credentials come from"
                         " storage.credentialsSecret)")
    container["env"] = [*container["env"], *({"name": e.name, "value": e.value} for e in cluster.env)]
    if not volumes or not cluster.volumes:
        return
    own_volumes = {v["name"] for v in pod.get("volumes") or []}
    clash = sorted(own_volumes & {v.name for v in cluster.volumes})
    if clash:
        raise BuildError(f"cluster.volumes: the name {', '.join(clash)} is the operator's")
    # A volume may go below a scratch directory (a claim with the models at /tmp/clipforge-models),
    # not at one, nor anywhere in the job's manifest directory.
    own_mounts = [m["mountPath"] for m in container.get("volumeMounts") or []]
    clash = sorted(m.mount_path for m in cluster.volume_mounts if is_under(m.mount_path, JOB_MOUNT_DIR)
                   or posixpath.normpath(m.mount_path) in own_mounts)
    if clash:
        raise BuildError(f"cluster.volumeMounts: {', '.join(clash)} is where the operator mounts the job's manifest"
                         f" or the image's writable directories ({', '.join(own_mounts)})")
    pod["volumes"] = [*(pod.get("volumes") or []),
                      *(v.model_dump(by_alias=True, mode="json", exclude_none=True) for v in cluster.volumes)]
    container["volumeMounts"] = [*(container.get("volumeMounts") or []),
                                 *(m.model_dump(by_alias=True, mode="json") for m in cluster.volume_mounts)]


def _pod_template(
    spec: VideoCurationJobSpec, token_secret: str, pod_labels: dict, container: str, resources: dict,
    node_selector: dict, tolerations: list[dict], job_configmap: str | None = None, api_access: bool = False,
) -> dict:
    """A Ray pod; `api_access` adds the autoscaler's service account token volume (the head's)."""
    cluster = spec.cluster
    ray = {
        "name": container,
        "image": cluster.image,
        "imagePullPolicy": cluster.image_pull_policy,
        "command": ["/bin/bash", "-lc", "--"],
        "args": [RAY_START_ARGS],
        "env": ray_env(spec, token_secret),
        "resources": resources,
        "securityContext": container_security(),
        "volumeMounts": scratch_mounts(),
    }
    pod: dict[str, Any] = {"securityContext": pod_security(), "automountServiceAccountToken": False,
                           "containers": [ray], "volumes": scratch_volumes()}
    if api_access:
        pod["volumes"].append(api_access_volume())
    if job_configmap:
        ray["volumeMounts"].insert(0, {"name": "job", "mountPath": JOB_MOUNT_DIR, "readOnly": True})
        pod["volumes"].insert(0, {"name": "job", "configMap": {"name": job_configmap}})
    if cluster.service_account_name:
        pod["serviceAccountName"] = cluster.service_account_name
    if node_selector:
        pod["nodeSelector"] = dict(node_selector)
    if tolerations:
        pod["tolerations"] = tolerations
    _add_pod_extras(spec, pod, volumes=True)
    return {"metadata": {"labels": pod_labels, "annotations": {OVERWRITE_RAY_COMMAND_ANNOTATION: "true"}},
            "spec": pod}


def _worker_group(spec: VideoCurationJobSpec, token_secret: str, plan: GroupPlan, pod_labels: dict) -> dict:
    # The stage resources go in the group's `resources` field, not rayStartParams: KubeRay pastes
    # rayStartParams unquoted into a bash line (`ray start --resources={...}` would be split by the
    # shell), while `resources` it renders as quoted JSON itself, and Ray's autoscaler reads it too.
    # No resource may then be in rayStartParams (KubeRay rejects the RayJob): the GPU count comes
    # from the nvidia.com/gpu limit, which both KubeRay's `ray start` line and the autoscaler read.
    return {
        "groupName": plan.name,
        "replicas": plan.min_replicas,
        "minReplicas": plan.min_replicas,
        "maxReplicas": plan.max_replicas,
        "rayStartParams": {},
        "resources": {name: str(amount) for name, amount in sorted(plan.ray_resources.items())},
        "template": _pod_template(
            spec, token_secret, {**pod_labels, f"{API_GROUP}/group": plan.name}, "ray-worker",
            container_resources(plan.settings.resources, plan.gpus),
            plan.settings.node_selector, _tolerations(plan.settings.tolerations),
        ),
    }


def _head_template(spec: VideoCurationJobSpec, job_name: str, token_secret: str, pod_labels: dict,
                   job_id: str) -> dict:
    """The head pod: Ray (its container first, as KubeRay wants) and the dashboard gate beside it."""
    head = spec.cluster.head
    template = _pod_template(
        spec, token_secret, {**pod_labels, f"{API_GROUP}/group": "head"}, "ray-head",
        container_resources(head.resources), head.node_selector, _tolerations(head.tolerations),
        job_configmap=configmap_name(job_name), api_access=True,
    )
    template["spec"]["containers"].append({
        "name": GATE_CONTAINER,
        "image": spec.cluster.image,
        "imagePullPolicy": spec.cluster.image_pull_policy,
        "command": ["python", "-m", "clipforge.dashboard_gate", f"--listen=0.0.0.0:{DASHBOARD_PORT}",
                    f"--dashboard=127.0.0.1:{DASHBOARD_LOOPBACK_PORT}", f"--job-id={job_id}"],
        "env": [ray_token_env(token_secret)],
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
        "securityContext": container_security(),
        "volumeMounts": scratch_mounts(),
    })
    return template


def build_rayjob(job: VideoCurationJob, namespace: str, uid: str, token_secret: str, attempt: int = 0) -> dict:
    """The RayJob for one attempt, its Ray processes reading the token from `token_secret`.
    KubeRay retries nothing (backoffLimit 0): the operator does."""
    spec = job.spec
    name = job.metadata.name
    pod_labels = labels(name, uid, attempt)
    cluster_spec = {
        "rayVersion": spec.cluster.ray_version,
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {
            "upscalingMode": "Default",
            "idleTimeoutSeconds": spec.cluster.worker_idle_timeout_seconds,
            "env": ray_auth_env(token_secret),
            "securityContext": container_security(),
            "volumeMounts": [*scratch_mounts(), api_access_mount()],  # the head pod's
        },
        "headGroupSpec": {
            # The head schedules no stage work (num-cpus 0); it runs the driver and Ray's services.
            # Its dashboard answers on loopback only: the gate beside it is the door (see RAY_AUTH_MODE).
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "127.0.0.1",
                               "dashboard-port": str(DASHBOARD_LOOPBACK_PORT)},
            "template": _head_template(spec, name, token_secret, pod_labels, rayjob_name(name, attempt)),
        },
        "workerGroupSpecs": [_worker_group(spec, token_secret, plan, pod_labels) for plan in worker_groups(spec)],
    }
    submitter = {
        "metadata": {"labels": {**labels(name, uid, attempt), f"{API_GROUP}/group": "submitter"}},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": pod_security(),
            "automountServiceAccountToken": False,  # it only calls the Ray dashboard
            "volumes": scratch_volumes(),
            "containers": [{
                # No command: KubeRay fills in `ray job submit ... -- <entrypoint>`.
                "name": "ray-job-submitter",
                "image": spec.cluster.image,
                "imagePullPolicy": spec.cluster.image_pull_policy,
                "env": ray_auth_env(token_secret),
                "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                              "limits": {"cpu": "1", "memory": "1Gi"}},
                "securityContext": container_security(),
                "volumeMounts": scratch_mounts(),
            }],
        },
    }
    if spec.cluster.service_account_name:
        submitter["spec"]["serviceAccountName"] = spec.cluster.service_account_name
    # It pulls the same image and runs `ray job submit` only: none of cluster.volumes.
    _add_pod_extras(spec, submitter["spec"], volumes=False)
    return {
        "apiVersion": f"{RAY_GROUP}/{RAY_VERSION}",
        "kind": "RayJob",
        "metadata": child_meta(rayjob_name(name, attempt), namespace, name, uid, attempt),
        "spec": {
            # The manifest is mounted from the ConfigMap into the head pod, where the driver runs.
            "entrypoint": ENTRYPOINT,
            # Named, not generated by KubeRay: the gate answers the status poll of this job only.
            "jobId": rayjob_name(name, attempt),
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": spec.ttl_seconds_after_finished,
            "backoffLimit": 0,
            "rayClusterSpec": cluster_spec,
            "submitterPodTemplate": submitter,
        },
    }


# ------------------------------------------------------------------------------- scaling changes


def scaling_patch(live: Mapping, spec: VideoCurationJobSpec, prefix: str = "/spec") -> list[dict]:
    """JSON patch moving the live object's worker-group bounds to the spec's.

    `live` is a RayCluster (prefix /spec) or a RayJob (prefix /spec/rayClusterSpec). Groups are
    addressed by index, each guarded by a `test` of its groupName so a reordered list fails the
    whole patch instead of rescaling the wrong group. Replicas are clamped into the new bounds.
    """
    node: Any = live
    for part in prefix.strip("/").split("/"):
        node = (node or {}).get(part, {})
    desired = {plan.name: plan for plan in worker_groups(spec)}
    ops: list[dict] = []
    for index, group in enumerate((node or {}).get("workerGroupSpecs") or []):
        plan = desired.get(group.get("groupName"))
        if plan is None:
            continue
        path = f"{prefix}/workerGroupSpecs/{index}"
        changes = []
        if group.get("minReplicas") != plan.min_replicas:
            changes.append({"op": "replace", "path": f"{path}/minReplicas", "value": plan.min_replicas})
        if group.get("maxReplicas") != plan.max_replicas:
            changes.append({"op": "replace", "path": f"{path}/maxReplicas", "value": plan.max_replicas})
        replicas = group.get("replicas")
        clamped = min(max(replicas if replicas is not None else plan.min_replicas, plan.min_replicas), plan.max_replicas)
        if replicas != clamped:
            changes.append({"op": "replace" if replicas is not None else "add", "path": f"{path}/replicas",
                            "value": clamped})
        if changes:
            ops.append({"op": "test", "path": f"{path}/groupName", "value": plan.name})
            ops.extend(changes)
    return ops
