"""Operator settings: how the Ray cluster for a job is shaped, retried and cleaned up, and the
Kubernetes object types (quantities, tolerations, volumes) its pods are described with.
The pipeline ignores these; `clipforge run job.yaml` on a laptop never reads them."""

from __future__ import annotations

from enum import Enum
from importlib import metadata as _metadata
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, WithJsonSchema, create_model, model_validator

from clipforge.spec.base import SpecModel, _f
from clipforge.spec.stages import STAGES


def _package_version() -> str:
    try:
        return _metadata.version("clipforge")
    except _metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0.0.0"


# The pipeline image of this version: what the operator runs a job that names no cluster.image with,
# unless it is told another (the chart's pipelineImage).
DEFAULT_IMAGE = f"clipforge/pipeline:{_package_version()}"
DEFAULT_RAY_VERSION = "2.60.0"
# A Kubernetes resource quantity as written in manifests: 2, 500m, 1.5, 4Gi, 512M.
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"


def _quantity_to_str(value: Any) -> Any:
    # YAML turns `cpu: 2` into an int; Kubernetes accepts both, so do we.
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return format(value, "g")
    return value


Quantity = Annotated[
    str,
    BeforeValidator(_quantity_to_str),
    Field(pattern=QUANTITY_PATTERN),
    # What the CRD (and kubectl) accept: an integer or a string, like Kubernetes' own quantities.
    WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True}),
]


class ImagePullPolicy(str, Enum):
    always = "Always"
    if_not_present = "IfNotPresent"
    never = "Never"


class TolerationOperator(str, Enum):
    exists = "Exists"
    equal = "Equal"


class TaintEffect(str, Enum):
    no_schedule = "NoSchedule"
    prefer_no_schedule = "PreferNoSchedule"
    no_execute = "NoExecute"


class Toleration(SpecModel):
    key: str | None = _f(None, "Taint key to tolerate; unset with operator Exists tolerates every taint.")
    operator: TolerationOperator = _f(TolerationOperator.equal, "Exists: any value; Equal: the value must match.")
    value: str | None = _f(None, "Taint value to match when the operator is Equal.")
    effect: TaintEffect | None = _f(None, "Taint effect to tolerate; unset tolerates every effect.")
    toleration_seconds: int | None = _f(
        None, "For NoExecute taints: how long the pod stays bound after the taint appears; unset is forever.", ge=0
    )


class ResourceAmounts(SpecModel):
    cpu: Quantity | None = _f(None, "CPU cores, such as 2 or 500m.")
    memory: Quantity | None = _f(None, "Memory, such as 8Gi.")
    ephemeral_storage: Quantity | None = _f(
        None,
        "Node-local disk (the pod's ephemeral-storage), such as 40Gi: size it for the models the group's"
        " stages copy into models.cacheDir plus scratch space. Unset: no request or limit.",
    )


class PodResources(SpecModel):
    requests: ResourceAmounts = _f(
        default_factory=ResourceAmounts, description="What the scheduler reserves for the Ray container."
    )
    limits: ResourceAmounts = _f(
        default_factory=ResourceAmounts,
        description="The Ray container's ceiling; Ray sizes its CPU count and object store from these.",
    )


def _resources(cpu: str, memory: str) -> Any:
    return lambda: PodResources(
        requests=ResourceAmounts(cpu=cpu, memory=memory), limits=ResourceAmounts(cpu=cpu, memory=memory)
    )


def _node_selector() -> Any:
    return Field(default_factory=dict, description="Node labels the group's pods must match (pod nodeSelector).")


def _tolerations() -> Any:
    return Field(default_factory=list, description="Taints the group's pods tolerate.")


class HeadGroupSpec(SpecModel):
    resources: PodResources = _f(
        default_factory=_resources("1", "4Gi"),
        description="Head pod resources. The head runs the driver and no stage workers (Ray num-cpus 0).",
    )
    node_selector: dict[str, str] = _node_selector()
    tolerations: list[Toleration] = _tolerations()


class WorkerGroupSpec(SpecModel):
    min_replicas: int | None = _f(
        None,
        "Fewest pods in the group. Unset: enough pods for the minWorkers of the stages this group runs.",
        ge=0,
    )
    max_replicas: int | None = _f(
        None,
        "Most pods the Ray autoscaler may start. Unset: enough pods for the maxWorkers of the stages this group runs.",
        ge=1,
    )
    resources: PodResources = _f(default_factory=_resources("4", "8Gi"), description="Resources of each pod.")
    node_selector: dict[str, str] = _node_selector()
    tolerations: list[Toleration] = _tolerations()

    @model_validator(mode="after")
    def _replica_bounds(self) -> WorkerGroupSpec:
        if self.min_replicas is not None and self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ValueError("maxReplicas must be >= minReplicas")
        return self


class GpuWorkerGroupSpec(WorkerGroupSpec):
    gpus: int = _f(1, "NVIDIA GPUs per pod (the nvidia.com/gpu limit).", ge=1)
    resources: PodResources = _f(default_factory=_resources("8", "32Gi"), description="Resources of each pod.")


def _gpu_group(stage: str) -> Any:
    return Field(
        None,
        description=f"GPU worker group for the {stage} stage, used when execution.stages.{stage}.gpus > 0;"
        " unset uses the defaults.",
    )


# One optional entry per stage, so the CRD itself rejects a misspelt stage name.
GpuWorkerGroups = create_model(
    "GpuWorkerGroups", __base__=SpecModel, __module__=__name__,
    **{stage: (GpuWorkerGroupSpec | None, _gpu_group(stage)) for stage in STAGES},
)


# Names of Kubernetes objects (volumes, ConfigMaps, claims, Secrets) and environment variables.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"


class LocalObjectReference(SpecModel):
    name: str = _f(description="Name of the object in the job's namespace.", min_length=1, max_length=253,
                   pattern=DNS_SUBDOMAIN)


class EnvVar(SpecModel):
    name: str = _f(description="Variable name.", min_length=1, pattern=ENV_NAME)
    value: str = _f("", "Its value, literally. Credentials reach the pods through storage.credentialsSecret only.")


class EmptyDirSource(SpecModel):
    medium: Literal["", "Memory"] = _f("", "Empty: the node's disk (counts as ephemeral storage); Memory: a tmpfs.")
    size_limit: Quantity | None = _f(None, "Most the volume may hold, such as 20Gi.")


class ConfigMapSource(SpecModel):
    name: str = _f(description="ConfigMap in the job's namespace; its keys become files.", min_length=1,
                   max_length=253, pattern=DNS_SUBDOMAIN)


class PersistentVolumeClaimSource(SpecModel):
    claim_name: str = _f(description="PersistentVolumeClaim in the job's namespace, such as a claim holding the"
                         " models.", min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    read_only: bool = _f(False, "Mount the claim read-only.")


class Volume(SpecModel):
    """A volume of the head and worker pods, of a kind the restricted Pod Security Standard allows, holding no Secret."""

    name: str = _f(description="Volume name, referenced by volumeMounts.", min_length=1, max_length=63,
                   pattern=DNS_LABEL)
    empty_dir: EmptyDirSource | None = _f(None, "Scratch space that lives as long as the pod.")
    config_map: ConfigMapSource | None = _f(None, "A ConfigMap's keys as files.")
    persistent_volume_claim: PersistentVolumeClaimSource | None = _f(None, "A PersistentVolumeClaim.")

    @model_validator(mode="after")
    def _one_source(self) -> Volume:
        sources = [s for s in (self.empty_dir, self.config_map, self.persistent_volume_claim) if s is not None]
        if len(sources) != 1:
            raise ValueError("give exactly one of emptyDir, configMap, persistentVolumeClaim")
        return self


class VolumeMount(SpecModel):
    name: str = _f(description="The volume (cluster.volumes) to mount.", min_length=1, pattern=DNS_LABEL)
    mount_path: str = _f(description="Absolute path in the Ray containers.", pattern=r"^/")
    read_only: bool = _f(False, "Mount read-only.")


class ClusterSpec(SpecModel):
    image: str | None = _f(
        None,
        "Container image of every Ray pod; it must contain clipforge and Ray. Unset: the operator's pipeline"
        " image (the chart's pipelineImage).",
        min_length=1,
    )
    image_pull_policy: ImagePullPolicy = _f(ImagePullPolicy.if_not_present, "Image pull policy of every Ray pod.")
    ray_version: str = _f(DEFAULT_RAY_VERSION, "Ray version inside the image (KubeRay uses it to pick features).")
    service_account_name: str | None = _f(
        None, "Service account of the Ray pods (for example one bound to cloud storage); unset: the namespace default."
    )
    image_pull_secrets: list[LocalObjectReference] = _f(
        default_factory=list, description="Secrets the kubelet pulls the image with, in every Ray pod."
    )
    env: list[EnvVar] = _f(
        default_factory=list,
        description="Extra environment variables of every Ray container (head, workers, job submitter);"
        " the variables the operator sets itself (such as RAY_AUTH_MODE and the AWS credentials) cannot be given.",
    )
    volumes: list[Volume] = _f(default_factory=list, description="Extra volumes of the head and worker pods.")
    volume_mounts: list[VolumeMount] = _f(
        default_factory=list, description="Where the head and worker containers mount cluster.volumes."
    )
    head: HeadGroupSpec = _f(default_factory=HeadGroupSpec, description="The Ray head pod.")
    cpu_workers: WorkerGroupSpec = _f(
        default_factory=WorkerGroupSpec,
        description="The CPU worker group: runs every stage that asks for no GPU.",
    )
    gpu_workers: GpuWorkerGroups = _f(
        default_factory=GpuWorkerGroups,
        description="One GPU worker group per stage that asks for GPUs (execution.stages.<stage>.gpus > 0).",
    )
    worker_idle_timeout_seconds: int = _f(
        60,
        "Seconds a worker pod runs no Ray task or actor before the Ray autoscaler removes it (never below"
        " its group's minReplicas).",
        ge=1,
    )

    @model_validator(mode="after")
    def _pod_extras(self) -> ClusterSpec:
        for field, names in (("env", [e.name for e in self.env]), ("volumes", [v.name for v in self.volumes]),
                             ("volumeMounts", [m.mount_path for m in self.volume_mounts])):
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"{field}: {', '.join(twice)} given more than once")
        volumes = {v.name for v in self.volumes}
        unknown = sorted({m.name for m in self.volume_mounts} - volumes)
        if unknown:
            raise ValueError(f"volumeMounts: no volume named {', '.join(unknown)} in cluster.volumes")
        return self


class RetryBackoffSpec(SpecModel):
    initial_seconds: int = _f(
        30, "Wait before the first retry; each later retry waits twice as long. At most maxSeconds.", ge=0
    )
    max_seconds: int = _f(600, "Longest wait between retries.", ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> RetryBackoffSpec:
        if self.initial_seconds > self.max_seconds:
            raise ValueError(f"initialSeconds ({self.initial_seconds}) is more than maxSeconds ({self.max_seconds})")
        return self

    def delay(self, retry: int) -> int:
        """Seconds to wait before retry number `retry` (1-based)."""
        return min(self.max_seconds, self.initial_seconds * 2 ** max(0, retry - 1))

