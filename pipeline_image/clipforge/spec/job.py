"""The VideoCurationJob manifest: the one source of truth for the CRD, the operator and the pipeline.
This module holds the manifest itself and its loading; its sections live beside it."""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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

    @model_validator(mode="after")
    def _dedup_has_embeddings(self) -> VideoCurationJobSpec:
        # A run without embeddings deletes its output's embedding parquets (embedding_files.py):
        # dedup of that output would find none, after the whole run.
        if self.dedup.enabled and not self.dedup.input_uri and not self.embeddings.enabled:
            raise ValueError("dedup.enabled needs embeddings.enabled (or dedup.inputUri, an output that has"
                             " embeddings)")
        return self


class ObjectMeta(BaseModel):
    # Kubernetes owns metadata; keep whatever it holds and require only a name.
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    namespace: str | None = None

    @property
    def key(self) -> str:
        """namespace/name, as the job is known in reports and leases ('-' for no namespace)."""
        return f"{self.namespace or '-'}/{self.name}"


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
    if error["type"] == "extra_forbidden":
        return f"{path}: {_unknown_field(error['loc'])}"
    found = error.get("input")
    # A scalar the user wrote is shown back; a mapping (a missing field's parent) would only be noise.
    shown = f" (found {found!r})" if isinstance(found, (str, int, float, bool)) else ""
    return f"{path}: {error['msg']}{shown}"


def _unknown_field(loc: tuple) -> str:
    """What to say of an unknown field: the closest known name at its place, else the known names."""
    known = _fields_at(VideoCurationJob, loc[:-1])
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    return f"unknown field; did you mean {close[0]}?" if close else f"unknown field (known here: {', '.join(known)})"


def _fields_at(annotation: Any, loc: tuple) -> list[str]:
    """The manifest names of the model's fields that `loc` leads to from `annotation`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        fields = annotation.model_fields
        if not loc:
            return [field.alias or name for name, field in fields.items()]
        field = next((f for n, f in fields.items() if loc[0] in (n, f.alias)), None)
        return _fields_at(field.annotation, loc[1:]) if field else []
    # Optional, lists and mappings: the error's path steps over the index or key (a list's 0,
    # a mapping's key) to the model inside.
    for inner in typing.get_args(annotation):
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
            return _fields_at(inner, loc if union else loc[1:])
    return []


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
        with path.open() as stream:  # a stream, not its text: PyYAML's marks then name the file
            documents = [d for d in yaml.safe_load_all(stream) if d is not None]
    except FileNotFoundError:
        raise InvalidJobError(str(path), ["file not found"]) from None
    except yaml.YAMLError as exc:
        raise InvalidJobError(str(path), [_yaml_problem(exc)]) from None
    jobs = [d for d in documents if isinstance(d, dict) and d.get("kind") == KIND]
    if len(jobs) != 1:
        expected = f"expected exactly one {KIND} document (apiVersion {API_GROUP}/{API_VERSION})"
        raise InvalidJobError(str(path), [f"{expected}, found {_kinds(documents)}"])
    return parse_job(jobs[0], str(path))


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return f"not valid YAML: {exc}"
    context = f"{exc.context}: " if getattr(exc, "context", None) else ""
    return f"line {mark.line + 1}, column {mark.column + 1}: not valid YAML: {context}{exc.problem}"


def _kinds(documents: list) -> str:
    """What the documents are: none, or each one's kind and apiVersion."""
    if not documents:
        return "no documents"
    described = [f"kind {d.get('kind')!r} (apiVersion {d.get('apiVersion')!r})" if isinstance(d, dict)
                 else f"a {type(d).__name__}" for d in documents]
    return f"{len(documents)} document{'s' if len(documents) > 1 else ''}: " + ", ".join(described)
