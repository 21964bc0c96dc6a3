"""The VideoCurationJob manifest: the one source of truth for the CRD, the operator and the pipeline.

Field names are camelCase in manifests (Kubernetes convention) and snake_case in Python.
Every field carries a description: the CRD generator copies them so `kubectl explain` is useful.
"""

from __future__ import annotations

from datetime import datetime
from dataclasses import dataclass
from enum import Enum
from importlib import metadata as _metadata
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema, model_validator
from pydantic.alias_generators import to_camel

API_GROUP = "clipforge.dev"
API_VERSION = "v1alpha1"
KIND = "VideoCurationJob"
PLURAL = "videocurationjobs"

# Pipeline stages in execution order. Each can be pinned to Ray nodes that advertise
# the custom resource `stage_resource_name(stage)`; the operator gives each worker group one.
STAGES = ("probe", "split", "transcode", "motion", "aesthetic", "embed", "caption", "preview", "write")


def stage_resource_name(stage: str) -> str:
    return f"clipforge_{stage}"


class SpecModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", use_enum_values=True,
        validate_default=True,
    )


def _f(default: Any = ..., description: str = "", **kw: Any) -> Any:
    if "default_factory" in kw:
        return Field(description=description, **kw)
    return Field(default, description=description, **kw)


PositiveSeconds = Annotated[float, Field(gt=0)]


class InputSpec(SpecModel):
    uri: str = _f(
        description="Where the raw videos are: a local directory or file, or an s3:// URI (bucket or prefix).",
        min_length=1,
    )
    patterns: list[str] = _f(
        ["*.mp4", "*.mov", "*.mkv", "*.webm", "*.avi", "*.m4v"],
        "Glob patterns (matched against the file name) of the files to curate.",
        min_length=1,
    )
    limit: int = _f(0, "Curate at most this many videos (in sorted path order); 0 means all.", ge=0)


class OutputSpec(SpecModel):
    uri: str = _f(
        description="Where the curated dataset is written: a local directory or an s3:// URI.",
        min_length=1,
    )


class StorageSpec(SpecModel):
    endpoint: str | None = _f(
        None, "S3 endpoint URL (for example http://rgw.storage:7480). Unset means AWS's default."
    )
    region: str = _f("us-east-1", "S3 region.")
    credentials_secret: str | None = _f(
        None,
        "Name of a Secret in the job's namespace with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
        " The operator passes them to the pods as environment variables; the local CLI reads the"
        " same variables from its environment.",
    )


class SplitAlgorithm(str, Enum):
    fixed_stride = "fixed-stride"
    transnetv2 = "transnetv2"
    scenedetect = "scenedetect"


class MaxLengthMode(str, Enum):
    stride = "stride"
    truncate = "truncate"


class FixedStrideSpec(SpecModel):
    clip_length_s: PositiveSeconds = _f(10.0, "Length of each clip in seconds.")
    stride_s: PositiveSeconds = _f(10.0, "Seconds between the starts of consecutive clips.")
    min_clip_length_s: float = _f(2.0, "A trailing clip shorter than this is dropped.", ge=0)


class SceneLengthSpec(SpecModel):
    min_length_s: float = _f(2.0, "Scenes shorter than this (after cropping) are dropped.", ge=0)
    max_length_s: PositiveSeconds = _f(10.0, "Scenes longer than this are cut according to maxLengthMode.")
    max_length_mode: MaxLengthMode = _f(
        MaxLengthMode.stride,
        "stride: cut a long scene into consecutive clips of maxLengthS; truncate: keep only its first maxLengthS.",
    )
    crop_s: float = _f(0.5, "Seconds cropped from both ends of each scene, away from the transition.", ge=0)


class TransNetV2Spec(SceneLengthSpec):
    threshold: float = _f(0.4, "Shot-boundary probability above which a frame is a transition.", gt=0, lt=1)


class SceneDetectorKind(str, Enum):
    content = "content"
    adaptive = "adaptive"
    histogram = "histogram"


class SceneDetectSpec(SceneLengthSpec):
    detector: SceneDetectorKind = _f(SceneDetectorKind.content, "PySceneDetect detector to run.")
    threshold: float | None = _f(None, "Detector threshold; unset uses PySceneDetect's default for the detector.")
    analysis_height: int = _f(
        144, "Frames are scaled to this height before detection (speed over a little precision).", ge=16
    )


class SplittingSpec(SpecModel):
    algorithm: SplitAlgorithm = _f(SplitAlgorithm.fixed_stride, "How videos are cut into clips.")
    fixed_stride: FixedStrideSpec = _f(default_factory=FixedStrideSpec, description="Fixed-stride settings.")
    transnetv2: TransNetV2Spec = _f(default_factory=TransNetV2Spec, description="TransNetV2 settings.")
    scenedetect: SceneDetectSpec = _f(default_factory=SceneDetectSpec, description="PySceneDetect settings.")


class TranscodeMode(str, Enum):
    encode = "encode"
    copy = "copy"


class Encoder(str, Enum):
    libx264 = "libx264"
    h264_nvenc = "h264_nvenc"
    libvpx_vp9 = "libvpx-vp9"
    libsvtav1 = "libsvtav1"


class TranscodingSpec(SpecModel):
    mode: TranscodeMode = _f(
        TranscodeMode.encode,
        "encode: frame-accurate re-encode; copy: stream copy, spans snapped to keyframes (recorded in the metadata).",
    )
    encoder: Encoder = _f(Encoder.libx264, "Video encoder; h264_nvenc needs an NVIDIA GPU with NVENC.")
    crf: int | None = _f(23, "Constant quality (lower is better). Ignored when bitrate is set.", ge=0, le=63)
    bitrate: str | None = _f(None, "Target bitrate such as 4M; overrides crf.", pattern=r"^[0-9]+[kKmM]?$")
    preset: str | None = _f(None, "Encoder preset (libx264: ultrafast..veryslow; nvenc: p1..p7). Unset: encoder default.")
    max_height: int | None = _f(
        None, "Downscale clips taller than this (keeping the aspect ratio); unset keeps the source size.", ge=16
    )
    keep_audio: bool = _f(
        True,
        "Keep the source's first audio track in each clip, cut to the clip's span (AAC and MP3 are copied,"
        " other codecs re-encoded to AAC); false writes video-only clips.",
    )


class MotionMode(str, Enum):
    enable = "enable"
    score_only = "score-only"
    disable = "disable"


class MotionFilterSpec(SpecModel):
    mode: MotionMode = _f(
        MotionMode.enable, "enable: score and move static clips to filtered_clips/; score-only: score only."
    )
    global_mean_threshold: float = _f(0.00098, "Clips whose mean motion is below this are static.", ge=0)
    per_patch_min_threshold: float = _f(
        1e-6, "Clips whose least-moving 256x256 patch moves less than this are static.", ge=0
    )


class PreviewSpec(SpecModel):
    enabled: bool = _f(True, "Write an animated WebP preview per clip.")
    fps: float = _f(1.0, "Preview frame rate.", gt=0, le=30)
    height: int = _f(240, "Preview height in pixels (width follows the aspect ratio).", ge=16, le=1080)
    quality: int = _f(50, "WebP quality, 0-100.", ge=0, le=100)


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

    @model_validator(mode="after")
    def _bounds(self) -> StageExecution:
        if self.min_workers is not None and self.max_workers is not None and self.max_workers < self.min_workers:
            raise ValueError("maxWorkers must be >= minWorkers")
        return self


@dataclass(frozen=True)
class StageResources:
    """A stage's effective execution settings: its defaults with the spec's hints applied."""

    cpus: float
    gpus: float
    min_workers: int
    max_workers: int
    pinned: bool = False


# Light stages reserve fractions of a CPU so that one worker of each fits a 2-core laptop.
STAGE_DEFAULTS = {
    "probe": StageResources(cpus=0.25, gpus=0.0, min_workers=1, max_workers=2),
    "split": StageResources(cpus=1.0, gpus=0.0, min_workers=1, max_workers=4),
    # Two: its codecs run the threads it reserves, and one worker then keeps a laptop's two cores busy.
    "transcode": StageResources(cpus=2.0, gpus=0.0, min_workers=1, max_workers=8),
    "motion": StageResources(cpus=0.5, gpus=0.0, min_workers=1, max_workers=4),
    # Model stages default to CPU so a laptop runs them; GPU clusters set gpus in the spec.
    "aesthetic": StageResources(cpus=1.0, gpus=0.0, min_workers=1, max_workers=2),
    "embed": StageResources(cpus=1.0, gpus=0.0, min_workers=1, max_workers=2),
    "caption": StageResources(cpus=1.0, gpus=0.0, min_workers=1, max_workers=2),
    "preview": StageResources(cpus=0.5, gpus=0.0, min_workers=1, max_workers=4),
    "write": StageResources(cpus=0.25, gpus=0.0, min_workers=1, max_workers=2),
}


def _stage(name: str) -> Any:
    d = STAGE_DEFAULTS[name]
    return Field(
        default_factory=StageExecution,
        description=f"Execution hints for the {name} stage (defaults: {d.cpus:g} CPU, {d.gpus:g} GPU,"
        f" {d.min_workers}-{d.max_workers} workers).",
    )


class StagesExecution(SpecModel):
    probe: StageExecution = _stage("probe")
    split: StageExecution = _stage("split")
    transcode: StageExecution = _stage("transcode")
    motion: StageExecution = _stage("motion")
    aesthetic: StageExecution = _stage("aesthetic")
    embed: StageExecution = _stage("embed")
    caption: StageExecution = _stage("caption")
    preview: StageExecution = _stage("preview")
    write: StageExecution = _stage("write")


class FailuresSpec(SpecModel):
    """How broken inputs are contained: retried a bounded number of times, then recorded as failed."""

    task_retries: int = _f(
        2,
        "Times a video (probe, split) or chunk (later stages) is retried after its worker process died"
        " (a decoder crash, out of memory, a lost node) or it ran past taskTimeoutSeconds; then it is"
        " recorded as failed with the reason and the run goes on. Errors a stage reports itself (an"
        " unreadable file) are recorded at once, not retried. Ray executor only.",
        ge=0, le=10,
    )
    task_timeout_seconds: int = _f(
        3600,
        "Longest one stage may work on one video or chunk; past it the worker process is stopped (the"
        " only way to stop a decoder stuck in native code) and the task retried. Ray executor only.",
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
        "The run fails as a whole when more than this fraction of the input videos fail; 1 never fails"
        " the run for failed videos.",
        ge=0, le=1,
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


# ---------------------------------------------------------------------------------------------
# Operator settings: how the Ray cluster for a job is shaped, retried and cleaned up.
# The pipeline ignores these; `clipforge run job.yaml` on a laptop never reads them.


def _package_version() -> str:
    try:
        return _metadata.version("clipforge")
    except _metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0.0.0"


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


class GpuWorkerGroups(SpecModel):
    # One optional entry per stage, so the CRD itself rejects a misspelt stage name.
    probe: GpuWorkerGroupSpec | None = _gpu_group("probe")
    split: GpuWorkerGroupSpec | None = _gpu_group("split")
    transcode: GpuWorkerGroupSpec | None = _gpu_group("transcode")
    motion: GpuWorkerGroupSpec | None = _gpu_group("motion")
    aesthetic: GpuWorkerGroupSpec | None = _gpu_group("aesthetic")
    embed: GpuWorkerGroupSpec | None = _gpu_group("embed")
    caption: GpuWorkerGroupSpec | None = _gpu_group("caption")
    preview: GpuWorkerGroupSpec | None = _gpu_group("preview")
    write: GpuWorkerGroupSpec | None = _gpu_group("write")


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
    image: str = _f(DEFAULT_IMAGE, "Container image of every Ray pod; it must contain clipforge and Ray.", min_length=1)
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
    initial_seconds: int = _f(30, "Wait before the first retry; each later retry waits twice as long.", ge=0)
    max_seconds: int = _f(600, "Longest wait between retries.", ge=0)

    def delay(self, retry: int) -> int:
        """Seconds to wait before retry number `retry` (1-based)."""
        return min(self.max_seconds, self.initial_seconds * 2 ** max(0, retry - 1))


class ModelsSpec(SpecModel):
    uri: str | None = _f(
        None,
        "Root of the model directory (local path or s3:// URI): one subdirectory per model, staged by"
        " the user. Models are never downloaded from a hub at run time.",
    )
    cache_dir: str = _f(
        "/tmp/clipforge-models", "Local directory where models under an s3:// root are copied once per node."
    )


class EmbeddingAlgorithm(str, Enum):
    efficientnet_lite0 = "efficientnet-lite0"
    clip = "clip"
    siglip = "siglip"
    cosmos_embed1_224p = "cosmos-embed1-224p"
    cosmos_embed1_336p = "cosmos-embed1-336p"
    cosmos_embed1_448p = "cosmos-embed1-448p"


class EmbeddingsSpec(SpecModel):
    enabled: bool = _f(True, "Compute a clip embedding for search and deduplication.")
    algorithm: EmbeddingAlgorithm = _f(
        EmbeddingAlgorithm.efficientnet_lite0,
        "Embedding model. efficientnet-lite0 ships with ClipForge and needs no model directory;"
        " the others load from models.uri.",
    )
    model: str | None = _f(None, "Subdirectory of models.uri holding the model; unset: the algorithm's name.")
    texts_to_verify: list[str] = _f(
        [], "Texts to match against each clip (embedders with a text tower): best match and scores go to the metadata."
    )


class Reduction(str, Enum):
    min = "min"
    mean = "mean"


class AestheticFilterSpec(SpecModel):
    enabled: bool = _f(False, "Score clips with CLIP ViT-L/14 and the LAION aesthetic MLP; filter low scores.")
    threshold: float = _f(3.5, "Clips scoring below this go to filtered_clips/.")
    reduction: Reduction = _f(Reduction.min, "How frame scores become the clip's score.")
    fps: float = _f(1.0, "Frames sampled per second of clip.", gt=0, le=30)
    clip_model: str = _f("clip-vit-large-patch14", "Subdirectory of models.uri with the CLIP model.")
    mlp_model: str = _f("laion-aesthetic-mlp", "Subdirectory of models.uri with the aesthetic MLP's state dict.")


class PromptVariant(str, Enum):
    default = "default"
    detailed = "detailed"
    av = "av"
    av_surveillance = "av-surveillance"


class CaptionsSpec(SpecModel):
    enabled: bool = _f(False, "Caption each clip's windows with a vision-language model.")
    model: str = _f("qwen2.5-vl-7b-instruct", "Subdirectory of models.uri with the vision-language model.")
    window_size: int = _f(256, "Frames per caption window.", ge=1)
    remainder_threshold: int = _f(128, "A trailing window shorter than this many frames is dropped.", ge=0)
    fps: float = _f(2.0, "Frames sampled per second of clip for the model.", gt=0, le=30)
    prompt_variant: PromptVariant = _f(
        PromptVariant.default,
        "Named prompt: default (the scene and what happens), detailed (everything visible),"
        " av (a car's dash camera: road users and safety), av-surveillance (a fixed traffic camera).",
    )
    prompt_text: str | None = _f(None, "A prompt of your own; overrides promptVariant.")
    max_new_tokens: int = _f(512, "Longest caption generated.", ge=1)
    refine: bool = _f(False, "A second pass that asks the model to refine its first caption.")
    enhance_model: str | None = _f(None, "Subdirectory of models.uri with a text LLM that rewrites captions; unset: off.")
    window_previews: bool = _f(False, "Write an animated WebP per caption window.")


class DedupSpec(SpecModel):
    enabled: bool = _f(False, "Find semantic duplicates among the clip embeddings after the pipeline.")
    eps: float = _f(
        0.01,
        "Clips whose cosine similarity is at least 1 - eps are duplicates. The best value depends on"
        " the embedder: for efficientnet-lite0 about 0.03 finds re-encoded and resized copies.",
        gt=0, lt=1,
    )
    n_clusters: int | None = _f(None, "k-means clusters; unset: about sqrt(number of clips).", ge=1)
    input_uri: str | None = _f(None, "Deduplicate an existing output's embeddings instead of this job's output.")


class VideoCurationJobSpec(SpecModel):
    input: InputSpec = _f(description="The raw videos.")
    output: OutputSpec = _f(description="The curated dataset's location.")
    storage: StorageSpec = _f(default_factory=StorageSpec, description="Object-storage connection.")
    splitting: SplittingSpec = _f(default_factory=SplittingSpec, description="Clip splitting.")
    transcoding: TranscodingSpec = _f(default_factory=TranscodingSpec, description="Clip encoding.")
    motion_filter: MotionFilterSpec = _f(default_factory=MotionFilterSpec, description="Motion filter.")
    previews: PreviewSpec = _f(default_factory=PreviewSpec, description="Animated WebP previews.")
    models: ModelsSpec = _f(default_factory=ModelsSpec, description="Where model weights are staged.")
    embeddings: EmbeddingsSpec = _f(default_factory=EmbeddingsSpec, description="Clip embeddings.")
    aesthetic_filter: AestheticFilterSpec = _f(default_factory=AestheticFilterSpec, description="Aesthetic filter.")
    captions: CaptionsSpec = _f(default_factory=CaptionsSpec, description="Clip captions.")
    dedup: DedupSpec = _f(default_factory=DedupSpec, description="Semantic deduplication.")
    execution: ExecutionSpec = _f(default_factory=ExecutionSpec, description="How the pipeline runs.")
    # Operator-only settings (ignored by `clipforge run`).
    cluster: ClusterSpec = _f(default_factory=ClusterSpec, description="The Ray cluster the operator provisions.")
    max_retries: int = _f(
        2, "Times the operator re-runs a failed job (a retry skips videos already done).", ge=0, le=20
    )
    retry_backoff: RetryBackoffSpec = _f(
        default_factory=RetryBackoffSpec, description="Waits between retries (exponential)."
    )
    pending_deadline_seconds: int = _f(
        900,
        "A job whose Ray cluster is not up and running the pipeline after this many seconds fails"
        " (for example: pods that cannot be scheduled, images that cannot be pulled).",
        ge=1,
    )
    ttl_seconds_after_finished: int = _f(
        300, "Seconds the finished Ray cluster is kept (for its logs) before KubeRay deletes it.", ge=0
    )


def stage_enabled(spec: VideoCurationJobSpec, stage: str) -> bool:
    """Whether the job runs `stage`; the pipeline starts, and the operator provisions, only these."""
    if stage == "motion":
        return spec.motion_filter.mode != MotionMode.disable.value
    if stage == "preview":
        return spec.previews.enabled
    if stage == "aesthetic":
        return spec.aesthetic_filter.enabled
    if stage == "embed":
        return spec.embeddings.enabled
    if stage == "caption":
        return spec.captions.enabled
    return True


# The sections whose settings decide a video's clips and everything written for them.
_CLIP_SETTINGS = {"splitting", "transcoding", "motion_filter", "previews", "embeddings", "aesthetic_filter", "captions"}


def clip_settings(spec: VideoCurationJobSpec) -> dict:
    """What decided a video's clips (splitting, chunk size, encoding, filters, model outputs), as its
    chunk and video records carry it: a rerun under other settings redoes the video."""
    settings = spec.model_dump(mode="json", by_alias=True, include=_CLIP_SETTINGS)
    return {**settings, "clipsPerChunk": spec.execution.clips_per_chunk}


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
    )


class ObjectMeta(BaseModel):
    # Kubernetes owns metadata; keep whatever it holds and require only a name.
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    namespace: str | None = None


class VideoCurationJob(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    api_version: Literal["clipforge.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["VideoCurationJob"]
    metadata: ObjectMeta
    spec: VideoCurationJobSpec


class InvalidJobError(ValueError):
    """A manifest that does not validate; the message lists every problem by field path."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid VideoCurationJob:\n" + "\n".join(f"  - {p}" for p in problems))


def _describe(error: Any) -> str:
    path = ".".join(str(p) for p in error["loc"]) or "(root)"
    return f"{path}: {error['msg']}"


def parse_job(document: Any, source: str = "<manifest>") -> VideoCurationJob:
    if not isinstance(document, dict):
        raise InvalidJobError(source, ["(root): expected a mapping (a Kubernetes manifest)"])
    try:
        return VideoCurationJob.model_validate(document)
    except ValidationError as exc:
        raise InvalidJobError(source, [_describe(e) for e in exc.errors()]) from None


def load_job(path: str | Path) -> VideoCurationJob:
    path = Path(path)
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except FileNotFoundError:
        raise InvalidJobError(str(path), ["file not found"]) from None
    except yaml.YAMLError as exc:
        raise InvalidJobError(str(path), [f"not valid YAML: {exc}"]) from None
    jobs = [d for d in documents if isinstance(d, dict) and d.get("kind") == KIND]
    if len(jobs) != 1:
        raise InvalidJobError(str(path), [f"expected exactly one {KIND} document, found {len(jobs)}"])
    return parse_job(jobs[0], str(path))


# ---------------------------------------------------------------------------------------------
# How a pipeline run ended, as `state` in the summary.json it writes at the output root. The CLI's
# exit status follows it, and the operator reads it to tell a run whose inputs failed from one
# whose infrastructure did. Completed with failures: every video was processed and the failed
# ones are within execution.failures' limits.

RUN_SUCCEEDED, RUN_COMPLETED_WITH_FAILURES, RUN_FAILED = "succeeded", "completed-with-failures", "failed"
# summary.json's `reason` when a run failed because of its inputs: a retry would fail the same way.
TOO_MANY_VIDEOS_FAILED = "TooManyVideosFailed"


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
# paths from these, and the operator points status.outputs at them.
SUMMARY_FILE = "summary.json"
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
    ready_replicas: int = _f(0, "Pods of the group that are Ready.", ge=0)


class VideoCurationJobStatus(SpecModel):
    phase: JobPhase = _f(JobPhase.pending, "Pending, Provisioning, Running, Succeeded, Failed or Cancelled.")
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
    start_time: datetime | None = _f(None, "When the operator started the job's first attempt (RFC 3339).")
    completion_time: datetime | None = _f(None, "When the job reached a terminal phase (RFC 3339).")
    retries: int = _f(0, "Attempts made after the first one failed.", ge=0)
    next_retry_time: datetime | None = _f(None, "When the next attempt starts, while waiting out a retry backoff.")
    progress: JobProgress | None = _f(None, "The pipeline's latest progress report.")
    worker_groups: list[WorkerGroupStatus] | None = _f(
        None, "The current attempt's worker groups while its Ray cluster runs: how many pods each has and wants."
    )
    outputs: JobOutputs | None = _f(None, "Where a finished run's summary, clip index and report are.")
