"""The VideoCurationJob manifest: the one source of truth for the CRD, the operator and the pipeline.
This module holds the manifest itself and its loading; its sections live beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from clipforge.spec.base import SpecModel, _f
from clipforge.spec.cluster import DNS_SUBDOMAIN, ClusterSpec, RetryBackoffSpec
from clipforge.spec.execution import ExecutionSpec
from clipforge.spec.sections import (
    AestheticFilterSpec, CaptionsSpec, DedupSpec, EmbeddingsSpec, InputSpec, ModelsSpec, MotionFilterSpec,
    OutputSpec, PreviewSpec, SharpnessFilterSpec, SplittingSpec, StorageSpec, TranscodingSpec,
)

API_GROUP = "clipforge.dev"
API_VERSION = "v1alpha1"
KIND = "VideoCurationJob"
PLURAL = "videocurationjobs"


class VideoCurationJobSpec(SpecModel):
    input: InputSpec = _f(description="The raw videos.")
    output: OutputSpec = _f(description="The curated dataset's location.")
    storage: StorageSpec = _f(default_factory=StorageSpec, description="Object-storage connection.")
    splitting: SplittingSpec = _f(default_factory=SplittingSpec, description="Clip splitting.")
    transcoding: TranscodingSpec = _f(default_factory=TranscodingSpec, description="Clip encoding.")
    motion_filter: MotionFilterSpec = _f(default_factory=MotionFilterSpec, description="Motion filter.")
    sharpness_filter: SharpnessFilterSpec = _f(default_factory=SharpnessFilterSpec, description="Sharpness filter.")
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

