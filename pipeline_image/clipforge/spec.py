"""The VideoCurationJob manifest: the one source of truth for the CRD, the operator and the pipeline.

Field names are camelCase in manifests (Kubernetes convention) and snake_case in Python.
Every field carries a description: the CRD generator copies them so `kubectl explain` is useful.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

API_GROUP = "clipforge.dev"
API_VERSION = "v1alpha1"
KIND = "VideoCurationJob"
PLURAL = "videocurationjobs"

# Pipeline stages in execution order. Each can be pinned to Ray nodes that advertise
# the custom resource `stage_resource_name(stage)`; the operator gives each worker group one.
STAGES = ("probe", "split", "transcode", "motion", "preview", "write")


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
    cpus: float = _f(1.0, "CPUs each worker of this stage reserves.", ge=0)
    gpus: float = _f(0.0, "GPUs each worker of this stage reserves (fractions share a GPU).", ge=0)
    min_workers: int = _f(1, "Workers kept alive for this stage.", ge=1)
    max_workers: int = _f(4, "Workers this stage may scale up to.", ge=1)
    pinned: bool = _f(
        False,
        "Run only on Ray nodes advertising the custom resource clipforge_<stage> (the operator's worker group for it).",
    )

    @model_validator(mode="after")
    def _bounds(self) -> StageExecution:
        if self.max_workers < self.min_workers:
            raise ValueError("maxWorkers must be >= minWorkers")
        return self


def _stage(cpus: float, max_workers: int = 4, gpus: float = 0.0) -> Any:
    return Field(
        default_factory=lambda: StageExecution(cpus=cpus, gpus=gpus, max_workers=max_workers),
        description="Execution hints for this stage.",
    )


class StagesExecution(SpecModel):
    # Light stages reserve fractions of a CPU so that one of each fits a 2-core laptop.
    probe: StageExecution = _stage(0.25, 2)
    split: StageExecution = _stage(1.0)
    transcode: StageExecution = _stage(1.0, 8)
    motion: StageExecution = _stage(0.5)
    preview: StageExecution = _stage(0.5)
    write: StageExecution = _stage(0.25, 2)


class ExecutionSpec(SpecModel):
    executor: Literal["ray", "local"] = _f(
        "ray", "ray: Ray Data streaming executor; local: one process, stages run in sequence (debugging)."
    )
    clips_per_chunk: int = _f(
        16, "Clips per unit of work after splitting; bounds memory per task for long videos.", ge=1, le=1024
    )
    stages: StagesExecution = _f(default_factory=StagesExecution, description="Per-stage execution hints.")


class VideoCurationJobSpec(SpecModel):
    input: InputSpec = _f(description="The raw videos.")
    output: OutputSpec = _f(description="The curated dataset's location.")
    storage: StorageSpec = _f(default_factory=StorageSpec, description="Object-storage connection.")
    splitting: SplittingSpec = _f(default_factory=SplittingSpec, description="Clip splitting.")
    transcoding: TranscodingSpec = _f(default_factory=TranscodingSpec, description="Clip encoding.")
    motion_filter: MotionFilterSpec = _f(default_factory=MotionFilterSpec, description="Motion filter.")
    previews: PreviewSpec = _f(default_factory=PreviewSpec, description="Animated WebP previews.")
    execution: ExecutionSpec = _f(default_factory=ExecutionSpec, description="How the pipeline runs.")


class ObjectMeta(BaseModel):
    # Kubernetes owns metadata; keep whatever it holds and require only a name.
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
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
