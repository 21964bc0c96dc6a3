"""
An in-process Kubernetes API server that speaks real HTTP, for operator tests and a local playground.

No cluster can run where ClipForge is tested, so the operator is exercised against this emulator:
kopf, the ``kubernetes`` python client and the real ``kubectl`` binary all talk to it over plain
HTTP on ``127.0.0.1:<free port>``. It is built on kmock's ``KubernetesEmulator`` (what kopf's own
test-suite uses): kmock supplies the request model, the request log, the object store with
per-object history (``api.objects[...]``), the ``<<``/``>>`` DSL for injecting faults, and the
error rendering. This module replaces kmock's deliberately naive object semantics with the ones
the operator relies on.

Quick start (sync, for pytest)::

    with KubeAPIEmulator(crds=['crds/videocurationjobs.yaml']) as k8s:
        kubeconfig = k8s.write_kubeconfig(tmp_path / 'kubeconfig')   # for kubectl / kopf / helm
        api = kubernetes.client.CustomObjectsApi(k8s.api_client())   # for the python client
        k8s.create({'apiVersion': 'v1', 'kind': 'ConfigMap', 'metadata': {...}})  # direct access
        k8s.get('videocurationjobs', 'job1', namespace='default')

What is emulated (see also the tests in tests/operator/test_emulator.py):

* Discovery: ``/api``, ``/apis``, ``/api/v1``, ``/apis/<group>[/<version>]``, ``/version``,
  ``/healthz``; OpenAPI v3 (``/openapi/v3`` and per group-version documents with the CRD schemas),
  which is what ``kubectl apply`` (field validation), ``kubectl explain`` and client-side
  strategic patches look up. OpenAPI v2 is not served (kubectl only needs it as a fallback).
* Built-in kinds: Namespace, ConfigMap, Secret (``stringData`` folded into ``data``),
  ServiceAccount, Event (core/v1 and events.k8s.io/v1, stored separately), Pod, Service,
  PersistentVolumeClaim, Deployment, Job, Lease, CustomResourceDefinition. They are stored and
  served, but no controller runs them (pods never start).
* CRDs: creating one registers every served version (kind, plural, singular, short names,
  categories, scope, ``status`` subresource, printer columns). Objects are stored once per CRD and
  served under every served version (conversion strategy ``None``). CRD deletion deletes the
  custom objects first (finalizer ``customresourcecleanup.apiextensions.k8s.io``).
* Object metadata: ``uid``, ``creationTimestamp``, ``resourceVersion`` (one global counter, bumped
  on every write, never on no-op writes), ``generation`` (custom objects, CRDs, Deployments, Jobs;
  bumped on changes outside ``metadata`` and ``status``), ``generateName``, name/label/annotation
  syntax checks, namespaces must exist (and not be terminating) for namespaced creates.
* Verbs: create (201), get, list (label & field selectors, ``limit``/``continue``, list
  ``resourceVersion``), update/PUT (409 Conflict on a stale ``resourceVersion``; custom objects
  require it), patch (JSON merge patch, JSON patch incl. ``test`` ops -> 422, an approximation of
  strategic merge patch for built-ins, an approximation of server-side apply), delete,
  deletecollection, ``dryRun=All``; the ``status`` subresource is separated from the main
  resource where declared. Tables (``kubectl get`` columns incl. ``additionalPrinterColumns``) and
  PartialObjectMetadata are served when asked for via ``Accept``.
* Deletion: finalizers (``deletionTimestamp`` is set, the object stays until the finalizers are
  removed; no new finalizers can be added meanwhile), owner references (background cascade,
  ``Foreground`` and ``Orphan`` propagation), namespace termination deletes the namespace content.
* Watches: ``?watch=true`` with ADDED/MODIFIED/DELETED newline-delimited JSON events, resuming from
  a ``resourceVersion`` (410 Gone after :meth:`KubernetesAPI.compact`), selectors (objects leaving a
  selector are reported as DELETED), ``sendInitialEvents`` with the initial-events-end BOOKMARK,
  ``timeoutSeconds``.
* Validation of custom objects against the CRD's ``openAPIV3Schema``: structural pruning of
  unknown fields (kept under ``x-kubernetes-preserve-unknown-fields``, reported as 400 with
  ``fieldValidation=Strict`` like kubectl sends, as ``Warning`` headers by default), dropping of
  non-nullable nulls, defaulting, ``x-kubernetes-int-or-string``, ``x-kubernetes-embedded-resource``,
  ``x-kubernetes-list-type`` set/map uniqueness, and JSON-schema validation (``jsonschema``)
  reported as 422 Invalid with Kubernetes-style causes naming the field paths.

Not emulated: authorization/RBAC (an optional bearer token is all), admission webhooks, CEL rules
(``x-kubernetes-validations`` are ignored), conversion webhooks, the ``scale`` subresource, field
managers (server-side apply is a merge without conflict detection), protobuf, OpenAPI v2, real
controllers (nothing schedules pods or runs Jobs/RayJobs), garbage collection of objects whose
owners never existed, resourceVersion-consistent pagination snapshots, watch bookmarks other than
the initial-events-end one.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import concurrent.futures
import copy
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import pathlib
import random
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import aiohttp.web
import attrs
import kmock
import multidict
import yaml

__all__ = [
    "KubeAPIEmulator",
    "KubeAPIError",
    "KubernetesAPI",
    "ResourceDef",
    "kube_tool",
    "kuberay_crds",
]

logger = logging.getLogger(__name__)

EMULATED_KUBERNETES_VERSION = (1, 33, 0)
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
CRD_CLEANUP_FINALIZER = "customresourcecleanup.apiextensions.k8s.io"
FOREGROUND_FINALIZER = "foregroundDeletion"
ORPHAN_FINALIZER = "orphan"
OBJECT_META_SCHEMA_NAME = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
CUSTOM_PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, APPLY_PATCH)
BUILTIN_PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_PATCH, APPLY_PATCH)

_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*"
_QUALIFIED_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE = r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?"
_GENERATE_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------

class KubeAPIError(Exception):
    """
    An API failure, rendered as a Kubernetes ``Status`` (and raised by the direct helpers).

    Like ``kubernetes.client.ApiException``: ``.status`` is the HTTP code, ``.reason`` the
    Kubernetes reason (``NotFound``, ``Conflict``, ``Invalid``...), ``.body`` the Status object.
    """

    def __init__(
            self,
            code: int,
            reason: str,
            message: str,
            details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.status = self.code = code
        self.reason = reason
        self.message = message
        self.details = dict(details or {})

    @property
    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def _bad_request(message: str) -> KubeAPIError:
    return KubeAPIError(400, "BadRequest", message)


def _resource_not_found() -> KubeAPIError:
    return KubeAPIError(404, "NotFound", "the server could not find the requested resource")


def _method_not_allowed(message: str = "") -> KubeAPIError:
    message = message or "the server does not allow this method on the requested resource"
    return KubeAPIError(405, "MethodNotAllowed", message)


def _cause(field: str, reason: str, message: str) -> dict[str, str]:
    return {"reason": reason, "message": message, "field": field}


# ----------------------------------------------------------------------------------------------
# Resource definitions
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class ResourceDef:
    """What the emulator knows about one served group/version/plural."""
    group: str
    version: str
    plural: str
    kind: str
    singular: str = ""
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: frozenset[str] = frozenset()
    generation: bool = False  # whether metadata.generation is maintained
    delete_returns_status: bool = False  # core kinds answer DELETE with a Status, others with the object
    printer_columns: tuple[Mapping[str, Any], ...] = ()
    schema: Mapping[str, Any] | None = None  # openAPIV3Schema of custom resources
    crd: str | None = None  # the name of the CRD that serves this resource
    storage_version: str | None = None  # the version objects are stored under (CRDs: storage version)

    def __post_init__(self) -> None:
        self.singular = self.singular or self.kind.lower()
        self.subresources = frozenset(self.subresources)
        if not self.printer_columns:
            self.printer_columns = (
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            )

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified_resource(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def store_key(self) -> kmock.resource:
        return kmock.resource(self.group, self.storage_version or self.version, self.plural)

    @property
    def is_custom(self) -> bool:
        return self.crd is not None

    @property
    def patch_types(self) -> tuple[str, ...]:
        return CUSTOM_PATCH_TYPES if self.is_custom else BUILTIN_PATCH_TYPES


_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
_BUILTIN_RESOURCES: tuple[dict[str, Any], ...] = (
    dict(group="", version="v1", plural="namespaces", kind="Namespace", namespaced=False,
         short_names=("ns",), subresources=("status",),
         printer_columns=({"name": "Status", "type": "string", "jsonPath": ".status.phase"}, _AGE)),
    dict(group="", version="v1", plural="configmaps", kind="ConfigMap", short_names=("cm",),
         delete_returns_status=True),
    dict(group="", version="v1", plural="secrets", kind="Secret", delete_returns_status=True,
         printer_columns=({"name": "Type", "type": "string", "jsonPath": ".type"}, _AGE)),
    dict(group="", version="v1", plural="serviceaccounts", kind="ServiceAccount", short_names=("sa",),
         delete_returns_status=True),
    dict(group="", version="v1", plural="events", kind="Event", short_names=("ev",),
         delete_returns_status=True,
         printer_columns=({"name": "Type", "type": "string", "jsonPath": ".type"},
                          {"name": "Reason", "type": "string", "jsonPath": ".reason"},
                          {"name": "Message", "type": "string", "jsonPath": ".message"}, _AGE)),
    dict(group="", version="v1", plural="pods", kind="Pod", short_names=("po",), categories=("all",),
         subresources=("status",),
         printer_columns=({"name": "Status", "type": "string", "jsonPath": ".status.phase"}, _AGE)),
    dict(group="", version="v1", plural="services", kind="Service", short_names=("svc",),
         categories=("all",), subresources=("status",)),
    dict(group="", version="v1", plural="persistentvolumeclaims", kind="PersistentVolumeClaim",
         short_names=("pvc",), subresources=("status",)),
    dict(group="apps", version="v1", plural="deployments", kind="Deployment", short_names=("deploy",),
         categories=("all",), subresources=("status",), generation=True),
    dict(group="batch", version="v1", plural="jobs", kind="Job", categories=("all",),
         subresources=("status",), generation=True),
    dict(group="coordination.k8s.io", version="v1", plural="leases", kind="Lease",
         delete_returns_status=True),
    dict(group="events.k8s.io", version="v1", plural="events", kind="Event", short_names=("ev",),
         delete_returns_status=True),
    dict(group="apiextensions.k8s.io", version="v1", plural="customresourcedefinitions",
         kind="CustomResourceDefinition", namespaced=False, short_names=("crd", "crds"),
         subresources=("status",), generation=True,
         # Like the real one, this table shows the timestamp itself, not an age.
         printer_columns=({"name": "Created At", "type": "string", "jsonPath": ".metadata.creationTimestamp"},)),
)

NAMESPACES = kmock.resource("", "v1", "namespaces")
CRDS = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
SECRETS = kmock.resource("", "v1", "secrets")
PODS = kmock.resource("", "v1", "pods")


def _version_priority(version: str) -> tuple[int, int, int, int, str]:
    """Kubernetes version ordering: GA > beta > alpha, then higher numbers; others last by name."""
    match = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if not match:
        return (0, 0, 0, 0, version)
    stability = {None: 3, "beta": 2, "alpha": 1}[match.group(2)]
    return (1, stability, int(match.group(1)), int(match.group(3) or 0), "")


# ----------------------------------------------------------------------------------------------
# Small pure helpers: time, selectors, patches, JSONPath
# ----------------------------------------------------------------------------------------------

def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: str) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None


def _human_duration(seconds: float) -> str:
    """Like Kubernetes' ``duration.HumanDuration`` (the AGE column)."""
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = m // 60
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    if h < 24 * 8:
        return f"{h // 24}d{h % 24}h" if h % 24 else f"{h // 24}d"
    if h < 24 * 365 * 2:
        return f"{h // 24}d"
    return f"{h // (24 * 365)}y"


@dataclasses.dataclass(frozen=True)
class _Requirement:
    key: str
    op: str  # exists, !, =, !=, in, notin, gt, lt
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        match self.op:
            case "exists":
                return self.key in labels
            case "!":
                return self.key not in labels
            case "=" | "in":
                return self.key in labels and labels[self.key] in self.values
            case "!=" | "notin":
                return labels.get(self.key) not in self.values
            case "gt" | "lt":
                try:
                    actual, limit = int(labels[self.key]), int(self.values[0])
                except (KeyError, ValueError):
                    return False
                return actual > limit if self.op == "gt" else actual < limit
        return False  # pragma: no cover


def _split_selector(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part.strip() for part in parts if part.strip()]


def parse_label_selector(text: str | None) -> list[_Requirement]:
    """Parse ``a=b,c!=d,e,!f,g in (x,y),h notin (z)`` into requirements (400 on garbage)."""
    requirements: list[_Requirement] = []
    for part in _split_selector(text or ""):
        if m := re.fullmatch(r"([^\s!=<>(),]+)\s+(in|notin)\s+\(([^)]*)\)", part):
            values = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
            requirements.append(_Requirement(m.group(1), m.group(2), values))
        elif m := re.fullmatch(r"([^\s!=<>(),]+)\s*(==|=|!=)\s*([^\s!=<>(),]*)", part):
            op = "!=" if m.group(2) == "!=" else "="
            requirements.append(_Requirement(m.group(1), op, (m.group(3),)))
        elif m := re.fullmatch(r"([^\s!=<>(),]+)\s*([<>])\s*(\d+)", part):
            requirements.append(_Requirement(m.group(1), "gt" if m.group(2) == ">" else "lt", (m.group(3),)))
        elif m := re.fullmatch(r"!\s*([^\s!=<>(),]+)", part):
            requirements.append(_Requirement(m.group(1), "!"))
        elif m := re.fullmatch(r"([^\s!=<>(),]+)", part):
            requirements.append(_Requirement(m.group(1), "exists"))
        else:
            raise _bad_request(f"unable to parse requirement: {part!r}")
    return requirements


def parse_field_selector(text: str | None) -> list[tuple[str, str, str]]:
    """Parse ``metadata.name=x,status.phase!=Failed`` into (path, op, value) triples."""
    result = []
    for part in _split_selector(text or ""):
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(==|=|!=)\s*(.*)", part)
        if not m:
            raise _bad_request(f"invalid field selector: {part!r}")
        result.append((m.group(1), "!=" if m.group(2) == "!=" else "=", m.group(3)))
    return result


def _field_value(obj: Mapping[str, Any], path: str) -> str:
    value: Any = obj
    for key in path.split("."):
        value = value.get(key) if isinstance(value, Mapping) else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (returns a new value, never mutates)."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _strategic_list(current: list[Any], patch: list[Any], path: tuple[str, ...]) -> list[Any]:
    if path == ("metadata", "finalizers"):
        return list(current) + [item for item in patch if item not in current]
    key = "uid" if path == ("metadata", "ownerReferences") else "name"
    items = [item for item in list(current) + list(patch) if not (isinstance(item, Mapping) and item.get("$patch"))]
    if not patch or not all(isinstance(item, Mapping) and key in item for item in items):
        return [copy.deepcopy(item) for item in patch if not (isinstance(item, Mapping) and "$patch" in item)]
    result = [copy.deepcopy(item) for item in current]
    for item in patch:
        if not isinstance(item, Mapping):
            continue
        index = next((i for i, old in enumerate(result) if old.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
        elif index is not None:
            result[index] = strategic_merge_patch(result[index], item, path)
        else:
            result.append(strategic_merge_patch({}, item, path))
    return result


def strategic_merge_patch(target: Any, patch: Any, path: tuple[str, ...] = ()) -> Any:
    """
    An approximation of Kubernetes' strategic merge patch without the Go type information.

    Maps merge like a merge patch; lists of maps that all carry a ``name`` merge by name (``uid``
    for ownerReferences), ``metadata.finalizers`` merge as a set, other lists are replaced.
    The ``$patch: delete|replace``, ``$retainKeys`` and ``$deleteFromPrimitiveList/`` directives
    are honoured, ``$setElementOrder/`` ones are ignored.
    """
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            result[field] = [item for item in result.get(field, []) if item not in value]
            continue
        if value is None or (isinstance(value, Mapping) and value.get("$patch") == "delete"):
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _strategic_list(result[key], value, path + (key,))
        else:
            result[key] = strategic_merge_patch(result.get(key), value, path + (key,))
    if isinstance(patch.get("$retainKeys"), list):
        result = {k: v for k, v in result.items() if k in patch["$retainKeys"]}
    return result


class _JSONPatchError(Exception):
    pass


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise _JSONPatchError(f"invalid JSON pointer: {path!r}")
    return [token.replace("~1", "/").replace("~0", "~") for token in path.split("/")[1:]] if path else []


def _list_index(container: list[Any], token: str, *, for_add: bool = False) -> int:
    if for_add and token == "-":
        return len(container)
    if not re.fullmatch(r"0|[1-9][0-9]*", token):
        raise _JSONPatchError(f"invalid array index: {token!r}")
    index = int(token)
    if index > len(container) or (index == len(container) and not for_add):
        raise _JSONPatchError(f"array index out of bounds: {index}")
    return index


def _resolve(doc: Any, tokens: list[str]) -> Any:
    for token in tokens:
        if isinstance(doc, dict):
            if token not in doc:
                raise _JSONPatchError(f'missing value at /{"/".join(tokens)}')
            doc = doc[token]
        elif isinstance(doc, list):
            doc = doc[_list_index(doc, token)]
        else:
            raise _JSONPatchError(f'missing value at /{"/".join(tokens)}')
    return doc


def json_patch(document: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch (returns a new document); raises on failed ``test`` ops."""
    if not isinstance(operations, list):
        raise _bad_request("a JSON patch must be a list of operations")
    doc = copy.deepcopy(document)
    for op in operations:
        if not isinstance(op, Mapping) or op.get("op") not in ("add", "remove", "replace", "move", "copy", "test"):
            raise _bad_request(f"invalid JSON patch operation: {op!r}")
        name = op["op"]
        tokens = _pointer(op.get("path"))
        if name == "test":
            if not _json_equal(_resolve(doc, tokens), op.get("value")):
                raise _JSONPatchError(f'testing value {op.get("path")} failed: test operation failed')
            continue
        if name in ("move", "copy"):
            source = _pointer(op.get("from"))
            value = copy.deepcopy(_resolve(doc, source))
            if name == "move":
                doc = _remove_at(doc, source)
        elif name in ("add", "replace"):
            if "value" not in op:
                raise _bad_request(f"missing value in the JSON patch operation: {op!r}")
            value = copy.deepcopy(op["value"])
        if name == "remove":
            doc = _remove_at(doc, tokens)
        elif name == "replace":
            _resolve(doc, tokens)  # must exist
            doc = _remove_at(doc, tokens) if tokens else doc
            doc = _add_at(doc, tokens, value)
        else:  # add, move, copy
            doc = _add_at(doc, tokens, value)
    return doc


def _json_equal(a: Any, b: Any) -> bool:
    """JSON equality: booleans are not numbers, 1 == 1.0, containers compare deeply."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _add_at(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent = _resolve(doc, tokens[:-1])
    if isinstance(parent, dict):
        parent[tokens[-1]] = value
    elif isinstance(parent, list):
        parent.insert(_list_index(parent, tokens[-1], for_add=True), value)
    else:
        raise _JSONPatchError(f'cannot add at /{"/".join(tokens)}')
    return doc


def _remove_at(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        return None
    parent = _resolve(doc, tokens[:-1])
    if isinstance(parent, dict):
        if tokens[-1] not in parent:
            raise _JSONPatchError(f'missing value at /{"/".join(tokens)}')
        del parent[tokens[-1]]
    elif isinstance(parent, list):
        del parent[_list_index(parent, tokens[-1])]
    else:
        raise _JSONPatchError(f'missing value at /{"/".join(tokens)}')
    return doc


def jsonpath(obj: Any, expression: str) -> list[Any]:
    """A JSONPath subset used by printer columns: ``.a.b``, ``[0]``, ``[*]``, ``['k']``, ``[?(@.k=="v")]``."""
    expr = expression.strip()
    if expr.startswith("{") and expr.endswith("}"):
        expr = expr[1:-1]
    expr = expr.lstrip("$")
    tokens = re.findall(r"\.\.?([^.\[]+)|\[([^\]]*)\]", expr)
    values = [obj]
    for name, bracket in tokens:
        found: list[Any] = []
        for value in values:
            if name:
                if name == "*":
                    found.extend(value.values() if isinstance(value, Mapping) else
                                 value if isinstance(value, list) else [])
                elif isinstance(value, Mapping) and name in value:
                    found.append(value[name])
            elif bracket == "*":
                found.extend(value if isinstance(value, list) else value.values() if isinstance(value, Mapping) else [])
            elif m := re.fullmatch(r"-?\d+", bracket):
                if isinstance(value, list) and -len(value) <= int(m.group(0)) < len(value):
                    found.append(value[int(m.group(0))])
            elif m := re.fullmatch(r"""['"](.*)['"]""", bracket):
                if isinstance(value, Mapping) and m.group(1) in value:
                    found.append(value[m.group(1)])
            elif m := re.fullmatch(r"""\?\(@\.([\w.\-]+)\s*(==|!=)\s*['"]?([^'"]*)['"]?\)""", bracket):
                for item in value if isinstance(value, list) else []:
                    actual = _field_value(item, m.group(1)) if isinstance(item, Mapping) else ""
                    if (actual == m.group(3)) == (m.group(2) == "=="):
                        found.append(item)
        values = found
    return values


# ----------------------------------------------------------------------------------------------
# Protobuf request bodies (kubectl's typed clients: `kubectl create namespace|configmap|secret`)
# ----------------------------------------------------------------------------------------------

PROTOBUF = "application/vnd.kubernetes.protobuf"
_PB_OWNER_REFERENCE = {1: ("kind", "s"), 3: ("name", "s"), 4: ("uid", "s"), 5: ("apiVersion", "s"),
                       6: ("controller", "b"), 7: ("blockOwnerDeletion", "b")}
_PB_OBJECT_META = {1: ("name", "s"), 2: ("generateName", "s"), 3: ("namespace", "s"), 6: ("resourceVersion", "s"),
                   11: ("labels", "map"), 12: ("annotations", "map"), 13: ("ownerReferences", [_PB_OWNER_REFERENCE]),
                   14: ("finalizers", ["s"])}
_PB_KINDS: dict[str, dict[int, Any]] = {
    "Namespace": {1: ("metadata", _PB_OBJECT_META), 2: ("spec", {1: ("finalizers", ["s"])})},
    "ConfigMap": {1: ("metadata", _PB_OBJECT_META), 2: ("data", "map"), 3: ("binaryData", "map_bytes"),
                  4: ("immutable", "b")},
    "Secret": {1: ("metadata", _PB_OBJECT_META), 2: ("data", "map_bytes"), 3: ("type", "s"),
               4: ("stringData", "map"), 5: ("immutable", "b")},
    "ServiceAccount": {1: ("metadata", _PB_OBJECT_META), 4: ("automountServiceAccountToken", "b")},
    "DeleteOptions": {1: ("gracePeriodSeconds", "i"),
                      2: ("preconditions", {1: ("uid", "s"), 2: ("resourceVersion", "s")}),
                      3: ("orphanDependents", "b"), 4: ("propagationPolicy", "s"), 5: ("dryRun", ["s"])},
}


def _pb_fields(data: bytes) -> Iterable[tuple[int, int | bytes]]:
    """Iterate over (field number, varint or bytes) of a protobuf message."""
    pos = 0

    def varint() -> int:
        nonlocal pos
        result = shift = 0
        while True:
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    while pos < len(data):
        tag = varint()
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            yield number, varint()
        elif wire == 2:
            length = varint()
            yield number, data[pos:pos + length]
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4  # fixed64/fixed32: unused by the supported kinds
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def _pb_decode(data: bytes, schema: Mapping[int, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for number, value in _pb_fields(data):
        if number not in schema:
            continue
        name, kind = schema[number]
        repeated = isinstance(kind, list)
        item_kind = kind[0] if repeated else kind
        if item_kind == "s":
            item: Any = bytes(value).decode() if isinstance(value, bytes) else value
        elif item_kind in ("i", "b"):
            item = bool(value) if item_kind == "b" else value
        elif item_kind in ("map", "map_bytes"):
            entry = {n: v for n, v in _pb_fields(bytes(value))} if isinstance(value, bytes) else {}
            key = bytes(entry.get(1, b"")).decode()
            raw_value = bytes(entry.get(2, b""))
            mapped = base64.b64encode(raw_value).decode() if item_kind == "map_bytes" else raw_value.decode()
            result.setdefault(name, {})[key] = mapped
            continue
        else:
            item = _pb_decode(bytes(value), item_kind) if isinstance(value, bytes) else {}
        if repeated:
            result.setdefault(name, []).append(item)
        elif item not in ("", 0, {}) or item_kind == "b":
            result[name] = item
    return result


def decode_protobuf(body: bytes) -> dict[str, Any]:
    """Decode a ``k8s\\x00``-enveloped protobuf body of the few kinds kubectl's typed clients send."""
    if not body.startswith(b"k8s\x00"):
        raise ValueError("not a Kubernetes protobuf envelope")
    type_meta: dict[str, Any] = {}
    raw = b""
    for number, value in _pb_fields(body[4:]):  # runtime.Unknown: typeMeta=1, raw=2
        if number == 1 and isinstance(value, bytes):
            type_meta = _pb_decode(value, {1: ("apiVersion", "s"), 2: ("kind", "s")})
        elif number == 2 and isinstance(value, bytes):
            raw = value
    kind = type_meta.get("kind", "")
    if kind not in _PB_KINDS:
        raise ValueError(f'protobuf bodies of kind {kind or "<unknown>"} are not supported')
    obj = _pb_decode(raw, _PB_KINDS[kind])
    if kind != "DeleteOptions":
        obj = {"apiVersion": type_meta.get("apiVersion") or "v1", "kind": kind, **obj}
    return obj


# ----------------------------------------------------------------------------------------------
# Schema processing of custom objects: pruning, nulls, defaults, list types, JSON-schema validation
# ----------------------------------------------------------------------------------------------

def _child_path(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _structural_pass(
        value: Any,
        schema: Mapping[str, Any],
        path: str,
        unknown: list[str],
        causes: list[dict[str, str]],
        *,
        root: bool = False,
) -> None:
    """Prune unknown fields & non-nullable nulls, apply defaults, check list types (in place)."""
    if not isinstance(schema, Mapping):
        return
    if isinstance(value, dict):
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        embedded = bool(schema.get("x-kubernetes-embedded-resource"))
        for key in list(value):
            if root and key in ("apiVersion", "kind", "metadata"):
                continue
            if isinstance(properties, Mapping) and key in properties:
                sub = properties[key]
            elif isinstance(additional, Mapping):
                sub = additional
            elif additional is True or preserve or (embedded and key in ("apiVersion", "kind", "metadata")):
                continue
            else:
                unknown.append(_child_path(path, key))
                del value[key]
                continue
            if value[key] is None and not (isinstance(sub, Mapping) and sub.get("nullable")):
                del value[key]
                continue
            _structural_pass(value[key], sub, _child_path(path, key), unknown, causes)
        for key, sub in (properties or {}).items() if isinstance(properties, Mapping) else ():
            if key not in value and isinstance(sub, Mapping) and "default" in sub and not (root and key == "metadata"):
                value[key] = copy.deepcopy(sub["default"])
                _structural_pass(value[key], sub, _child_path(path, key), unknown, causes)
    elif isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, Mapping):
            for index, item in enumerate(value):
                _structural_pass(item, items, _child_path(path, index), unknown, causes)
        list_type = schema.get("x-kubernetes-list-type")
        if list_type == "set":
            seen: list[Any] = []
            for index, item in enumerate(value):
                if item in seen:
                    causes.append(_cause(_child_path(path, index), "FieldValueDuplicate",
                                         f"Duplicate value: {_go_repr(item)}"))
                seen.append(item)
        elif list_type == "map":
            keys = schema.get("x-kubernetes-list-map-keys") or []
            seen_keys: list[tuple[Any, ...]] = []
            for index, item in enumerate(value):
                if isinstance(item, Mapping):
                    ident = tuple(item.get(k) for k in keys)
                    if ident in seen_keys:
                        desc = ", ".join(f'"{k}":{json.dumps(v)}' for k, v in zip(keys, ident, strict=True))
                        causes.append(_cause(_child_path(path, index), "FieldValueDuplicate",
                                             f"Duplicate value: map[string]interface {{}}{{{desc}}}"))
                    seen_keys.append(ident)


def _to_jsonschema(schema: Any) -> Any:
    """Convert a Kubernetes structural schema into a draft-4 JSON schema for ``jsonschema``."""
    if not isinstance(schema, Mapping):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "properties" and isinstance(value, Mapping):
            out[key] = {name: _to_jsonschema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, Mapping):
            out[key] = _to_jsonschema(value)
        elif key in ("allOf", "anyOf", "oneOf") and isinstance(value, list):
            out[key] = [_to_jsonschema(sub) for sub in value]
        elif key.startswith("x-kubernetes-") or key in (
                "nullable", "default", "description", "example", "externalDocs", "format", "title", "$schema", "id"):
            continue
        else:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if schema.get("nullable"):
        if "type" in out:
            out["type"] = list(out["type"]) + ["null"] if isinstance(out["type"], list) else [out["type"], "null"]
        if "enum" in out:
            out["enum"] = list(out["enum"]) + [None]
    return out


def _go_type(value: Any) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "boolean"
        case int():
            return "integer"
        case float():
            return "number"
        case str():
            return "string"
        case list():
            return "array"
        case _:
            return "object"


def _go_repr(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return f'"{_go_type(value)}"'
    return json.dumps(value)


def _jsonschema_causes(error: Any, root: str = "") -> list[dict[str, str]]:
    """Translate one ``jsonschema.ValidationError`` into Kubernetes-style causes."""
    path = root
    for item in error.absolute_path:
        path = _child_path(path, item)
    field = path or "<root>"
    value, expected = error.instance, error.validator_value
    match error.validator:
        case "required":
            missing = [name for name in expected if isinstance(value, Mapping) and name not in value]
            return [_cause(_child_path(path, name), "FieldValueRequired", "Required value") for name in missing[:1]]
        case "type":
            types = expected if isinstance(expected, list) else [expected]
            types = [t for t in types if t != "null"]
            return [_cause(field, "FieldValueTypeInvalid",
                           f'Invalid value: "{_go_type(value)}": {field} in body must be of type '
                           f'{"/".join(types)}: {_go_repr(value)}')]
        case "enum":
            supported = ", ".join(json.dumps(v) for v in expected)
            return [_cause(field, "FieldValueNotSupported",
                           f"Unsupported value: {_go_repr(value)}: supported values: {supported}")]
        case "minimum" | "maximum":
            exclusive = error.schema.get("exclusiveMinimum" if error.validator == "minimum" else "exclusiveMaximum")
            relation = "greater than" if error.validator == "minimum" else "less than"
            relation += "" if exclusive else " or equal to"
            return [_cause(field, "FieldValueInvalid",
                           f"Invalid value: {_go_repr(value)}: {field} in body should be {relation} {expected}")]
        case "minLength":
            return [_cause(field, "FieldValueInvalid",
                           f"Invalid value: {_go_repr(value)}: {field} in body should be at least {expected} "
                           f"chars long")]
        case "maxLength":
            return [_cause(field, "FieldValueTooLong", f"Too long: may not be more than {expected} bytes")]
        case "pattern":
            return [_cause(field, "FieldValueInvalid",
                           f"Invalid value: {_go_repr(value)}: {field} in body should match '{expected}'")]
        case "minItems":
            return [_cause(field, "FieldValueInvalid",
                           f"Invalid value: {len(value)}: {field} in body should have at least {expected} items")]
        case "maxItems":
            return [_cause(field, "FieldValueTooMany", f"Too many: {len(value)}: must have at most {expected} items")]
        case "minProperties":
            return [_cause(field, "FieldValueInvalid",
                           f"Invalid value: {len(value)}: {field} in body should have at least {expected} properties")]
        case "maxProperties":
            return [_cause(field, "FieldValueTooMany",
                           f"Too many: {len(value)}: must have at most {expected} properties")]
        case "uniqueItems":
            return [_cause(field, "FieldValueDuplicate", f"Duplicate value: {_go_repr(value)}")]
        case "multipleOf":
            return [_cause(field, "FieldValueInvalid",
                           f"Invalid value: {_go_repr(value)}: {field} in body should be a multiple of {expected}")]
        case "additionalProperties":
            return [_cause(field, "FieldValueForbidden", f"Forbidden: {error.message}")]
        case _:
            return [_cause(field, "FieldValueInvalid", f"Invalid value: {_go_repr(value)}: {error.message}")]


@dataclasses.dataclass
class _CompiledSchema:
    structural: Mapping[str, Any]
    validator: Any  # jsonschema.Draft4Validator


def _compile_schema(schema: Mapping[str, Any]) -> _CompiledSchema:
    import jsonschema  # lazily: only custom resources need it

    converted = _to_jsonschema(schema)
    if isinstance(converted, dict) and isinstance(converted.get("properties"), dict):
        # The API server validates metadata itself; the CRD may only restrict name/generateName.
        converted["properties"] = dict(converted["properties"])
        converted["properties"].pop("metadata", None)
        converted["properties"].pop("apiVersion", None)
        converted["properties"].pop("kind", None)
    jsonschema.Draft4Validator.check_schema(converted)
    return _CompiledSchema(structural=schema, validator=jsonschema.Draft4Validator(converted))


# ----------------------------------------------------------------------------------------------
# Metadata validation (a subset of the apimachinery rules)
# ----------------------------------------------------------------------------------------------

def _validate_name(name: Any, *, label: bool, field: str = "metadata.name") -> list[dict[str, str]]:
    if not isinstance(name, str):
        return [_cause(field, "FieldValueInvalid", f"Invalid value: {_go_repr(name)}: must be a string")]
    if label:
        if len(name) > 63 or not re.fullmatch(_DNS1123_LABEL, name):
            return [_cause(field, "FieldValueInvalid",
                           f'Invalid value: "{name}": a lowercase RFC 1123 label must consist of lower case '
                           f"alphanumeric characters or '-', and must start and end with an alphanumeric "
                           f"character (e.g. 'my-name',  or '123-abc', regex used for validation is "
                           f"'{_DNS1123_LABEL}')")]
    elif len(name) > 253 or not re.fullmatch(_DNS1123_SUBDOMAIN, name):
        return [_cause(field, "FieldValueInvalid",
                       f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower case '
                       f"alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
                       f"character (e.g. 'example.com', regex used for validation is '{_DNS1123_SUBDOMAIN}')")]
    return []


def _validate_qualified_key(key: Any, field: str) -> list[dict[str, str]]:
    if not isinstance(key, str):
        return [_cause(field, "FieldValueInvalid", f"Invalid value: {_go_repr(key)}: must be a string")]
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not re.fullmatch(_DNS1123_SUBDOMAIN, prefix)):
        return [_cause(field, "FieldValueInvalid",
                       f'Invalid value: "{key}": prefix part a lowercase RFC 1123 subdomain must consist of '
                       f"lower case alphanumeric characters, '-' or '.'")]
    if not name or len(name) > 63 or not re.fullmatch(_QUALIFIED_NAME, name):
        return [_cause(field, "FieldValueInvalid",
                       f'Invalid value: "{key}": name part must consist of alphanumeric characters, '
                       f"'-', '_' or '.', and must start and end with an alphanumeric character "
                       f"(e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
                       f"'{_QUALIFIED_NAME}') and be no more than 63 characters")]
    return []


def _validate_metadata(rdef: ResourceDef, body: Mapping[str, Any]) -> list[dict[str, str]]:
    meta = body.get("metadata") or {}
    causes = _validate_name(meta.get("name"), label=rdef.store_key == NAMESPACES)
    labels = meta.get("labels")
    if labels is not None and not isinstance(labels, Mapping):
        causes.append(_cause("metadata.labels", "FieldValueTypeInvalid", "Invalid value: must be a map"))
    for key, value in (labels or {}).items() if isinstance(labels, Mapping) else ():
        causes += _validate_qualified_key(key, "metadata.labels")
        if not isinstance(value, str):
            causes.append(_cause("metadata.labels", "FieldValueTypeInvalid",
                                 f"Invalid value: {_go_repr(value)}: label values must be strings"))
        elif len(value) > 63:
            causes.append(_cause("metadata.labels", "FieldValueInvalid",
                                 f'Invalid value: "{value}": must be no more than 63 characters'))
        elif not re.fullmatch(_LABEL_VALUE, value):
            causes.append(_cause("metadata.labels", "FieldValueInvalid",
                                 f'Invalid value: "{value}": a valid label must be an empty string or consist '
                                 f"of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                                 f"alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex "
                                 f"used for validation is '{_LABEL_VALUE}')"))
    annotations = meta.get("annotations")
    if annotations is not None and not isinstance(annotations, Mapping):
        causes.append(_cause("metadata.annotations", "FieldValueTypeInvalid", "Invalid value: must be a map"))
    elif annotations:
        size = 0
        for key, value in annotations.items():
            causes += _validate_qualified_key(key, "metadata.annotations")
            if not isinstance(value, str):
                causes.append(_cause("metadata.annotations", "FieldValueTypeInvalid",
                                     f"Invalid value: {_go_repr(value)}: annotation values must be strings"))
            else:
                size += len(key) + len(value.encode())
        if size > 256 * 1024:
            causes.append(_cause("metadata.annotations", "FieldValueTooLong",
                                 "Too long: must have at most 262144 bytes"))
    finalizers = meta.get("finalizers")
    if finalizers is not None and (not isinstance(finalizers, list) or not all(isinstance(f, str) for f in finalizers)):
        causes.append(_cause("metadata.finalizers", "FieldValueTypeInvalid",
                             "Invalid value: must be a list of strings"))
    refs = meta.get("ownerReferences")
    if refs is not None:
        if not isinstance(refs, list) or not all(isinstance(ref, Mapping) for ref in refs):
            causes.append(_cause("metadata.ownerReferences", "FieldValueTypeInvalid", "Invalid value: must be a list"))
        else:
            for index, ref in enumerate(refs):
                for key in ("apiVersion", "kind", "name", "uid"):
                    if not ref.get(key):
                        causes.append(_cause(f"metadata.ownerReferences[{index}].{key}", "FieldValueRequired",
                                             "Required value"))
            if sum(1 for ref in refs if ref.get("controller")) > 1:
                causes.append(_cause("metadata.ownerReferences", "FieldValueInvalid",
                                     "Invalid value: only one reference can have Controller set to true"))
    return causes


# ----------------------------------------------------------------------------------------------
# The API server (an aiohttp handler; extends kmock's KubernetesEmulator)
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Change:
    rv: int
    key: kmock.resource
    type: str  # ADDED, MODIFIED, DELETED
    obj: Mapping[str, Any]
    old: Mapping[str, Any] | None


@dataclasses.dataclass(eq=False)
class _Watcher:
    key: kmock.resource
    queue: asyncio.Queue[_Change | None]


@dataclasses.dataclass(frozen=True)
class _Route:
    group: str
    version: str | None = None
    plural: str | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None


def _parse_route(path: str) -> _Route | None:
    parts = [part for part in path.split("/") if part]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) == 2 and parts[0] == "apis":
        return _Route(group=parts[1])
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    namespace_subresource = group == "" and len(rest) == 3 and rest[2] in ("status", "finalize")
    if len(rest) >= 3 and rest[0] == "namespaces" and not namespace_subresource:
        namespace, rest = rest[1], rest[2:]
    return _Route(
        group=group,
        version=version,
        plural=rest[0] if rest else None,
        namespace=namespace,
        name=rest[1] if len(rest) > 1 else None,
        subresource="/".join(rest[2:]) or None,
    )


@attrs.define(kw_only=True)
class KubernetesAPI(kmock.KubernetesEmulator):
    """
    The emulated API server as an aiohttp low-level handler (runs in one asyncio loop).

    User-defined kmock reactions (``api['patch', kmock.resource(...)] << 500``) take precedence
    over the emulation, so faults can be injected; all requests are recorded (``list(api)``).
    The object store is kmock's ``api.objects`` (keyed by the storage resource, e.g.
    ``api.objects['clipforge.dev/v1alpha1/videocurationjobs', 'ns', 'name']``), with history.
    """

    token: str | None = None  # if set, requests must carry "Authorization: Bearer <token>"
    namespaces: tuple[str, ...] = DEFAULT_NAMESPACES
    history_limit: int = 100_000  # watch-event log length before old resourceVersions expire (410)
    server_version: tuple[int, int, int] = EMULATED_KUBERNETES_VERSION

    _defs: dict[tuple[str, str, str], ResourceDef] = attrs.field(factory=dict, init=False)
    _crd_storage: dict[tuple[str, str], str] = attrs.field(factory=dict, init=False)
    _schemas: dict[tuple[str, str, str], _CompiledSchema] = attrs.field(factory=dict, init=False)
    _rv: int = attrs.field(default=0, init=False)
    _log: collections.deque[_Change] = attrs.field(factory=collections.deque, init=False)
    _compacted_rv: int = attrs.field(default=0, init=False)
    _watchers: set[_Watcher] = attrs.field(factory=set, init=False)
    _uids: dict[str, tuple[kmock.resource, str | None, str]] = attrs.field(factory=dict, init=False)
    _closing: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        # Deliberately NOT calling kmock's post-init: its fallback reactions implement naive
        # semantics; this class serves every request itself when no user reaction matches.
        for spec in _BUILTIN_RESOURCES:
            self._register(ResourceDef(**spec))
        for namespace in self.namespaces:
            self.create_object(self._def(NAMESPACES), None, {"metadata": {"name": namespace}})

    # -- the registry ---------------------------------------------------------------------------

    def _register(self, rdef: ResourceDef) -> None:
        self._defs[rdef.group, rdef.version, rdef.plural] = rdef
        self.resources[kmock.resource(rdef.group, rdef.version, rdef.plural)] = kmock.ResourceInfo(
            kind=rdef.kind, singular=rdef.singular, namespaced=rdef.namespaced,
            verbs={"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"},
            shortnames=set(rdef.short_names), categories=set(rdef.categories),
            subresources=set(rdef.subresources),
        )
        if rdef.schema is not None:
            self._schemas[rdef.group, rdef.version, rdef.plural] = _compile_schema(rdef.schema)

    def _unregister(self, rdef: ResourceDef) -> None:
        self._defs.pop((rdef.group, rdef.version, rdef.plural), None)
        self._schemas.pop((rdef.group, rdef.version, rdef.plural), None)
        resource = kmock.resource(rdef.group, rdef.version, rdef.plural)
        if resource in self.resources:
            del self.resources[resource]

    def _def(self, store_key: kmock.resource) -> ResourceDef:
        """The definition serving a store key (the storage version, else any served version)."""
        found = self._defs.get((store_key.group, store_key.version, store_key.plural))
        if found is None:
            found = next(d for d in self._defs.values() if d.store_key == store_key)
        return found

    def resolve(self, spec: str | kmock.resource | ResourceDef) -> ResourceDef:
        """
        Find a served resource by ``plural``, ``plural.group``, ``group/version/plural``,
        ``kind``, ``Kind.group``, ``apiVersion/Kind``, or a short name (preferred version wins).
        """
        if isinstance(spec, ResourceDef):
            return spec
        if isinstance(spec, kmock.resource):
            found = self._defs.get((spec.group or "", spec.version or "", spec.plural or ""))
            if found is None:
                raise KeyError(f"unknown resource: {spec!r}")
            return found
        candidates: list[ResourceDef] = []
        for rdef in self._defs.values():
            names = {rdef.plural, rdef.singular, rdef.kind, rdef.kind.lower(), *rdef.short_names}
            qualified = {f"{n}.{rdef.group}" for n in names} | {f"{rdef.api_version}/{n}" for n in names}
            versioned = {f"{n}.{rdef.version}.{rdef.group}" for n in names}
            if spec in names or spec in qualified | versioned:
                candidates.append(rdef)
        if not candidates:
            raise KeyError(f"unknown resource: {spec!r}")
        # Prefer the core group, then the preferred (highest) version.
        candidates.sort(key=lambda d: _version_priority(d.version), reverse=True)
        candidates.sort(key=lambda d: d.group != "")
        return candidates[0]

    def _crd_defs(self, crd_name: str) -> list[ResourceDef]:
        return [rdef for rdef in self._defs.values() if rdef.crd == crd_name]

    # -- the store --------------------------------------------------------------------------------

    def _key(self, rdef: ResourceDef, namespace: str | None, name: str) -> tuple[kmock.resource, str | None, str]:
        return (rdef.store_key, namespace if rdef.namespaced else None, name)

    def _read(self, key: tuple[kmock.resource, str | None, str]) -> dict[str, Any] | None:
        if key not in self.objects:
            return None
        obj = self.objects[key]
        return None if obj.deleted else copy.deepcopy(obj.last.raw)

    def _iter(self, store_key: kmock.resource, namespace: str | None = None) -> Iterable[dict[str, Any]]:
        for (resource, ns, _), obj in list(self.objects.items()):
            if resource == store_key and not obj.deleted and (namespace is None or ns == namespace):
                yield obj.last.raw

    def _commit(self, rdef: ResourceDef, key: tuple[kmock.resource, str | None, str],
                new: dict[str, Any], old: dict[str, Any] | None, change: str) -> dict[str, Any]:
        self._rv += 1
        new = copy.deepcopy(new)
        new.setdefault("metadata", {})["resourceVersion"] = str(self._rv)
        uid = new["metadata"].get("uid")
        if change == "DELETED":
            self.objects[key].delete()
            self._uids.pop(uid, None)
        else:
            if key in self.objects:
                self.objects[key].history.append(new)
            else:
                self.objects[key] = new
            if uid:
                self._uids[uid] = key
        record = _Change(rv=self._rv, key=key[0], type=change, obj=new, old=old)
        self._log.append(record)
        while len(self._log) > self.history_limit:
            self._compacted_rv = self._log.popleft().rv
        for watcher in list(self._watchers):
            if watcher.key == key[0]:
                watcher.queue.put_nowait(record)
        return copy.deepcopy(new)

    def compact(self) -> None:
        """Forget the watch-event history: resuming from any older resourceVersion gets 410 Gone."""
        self._log.clear()
        self._compacted_rv = self._rv

    @property
    def resource_version(self) -> int:
        return self._rv

    def _present(self, rdef: ResourceDef, obj: Mapping[str, Any]) -> dict[str, Any]:
        result = dict(obj)
        result["apiVersion"] = rdef.api_version
        result["kind"] = rdef.kind
        return result

    @staticmethod
    def _schedule(fn: Callable[..., Any], *args: Any) -> None:
        """Run "controller" work soon (in the background, after the current request)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            fn(*args)
        else:
            loop.call_soon(fn, *args)

    # -- admission: kind-specific defaults and validation ---------------------------------------

    def _check_type_meta(self, rdef: ResourceDef, body: dict[str, Any]) -> None:
        api_version, kind = body.get("apiVersion"), body.get("kind")
        served = {d.api_version for d in self._defs.values()
                  if d.group == rdef.group and d.plural == rdef.plural}
        if api_version and api_version not in served:
            raise _bad_request(f"the API version in the data ({api_version}) does not match the expected "
                               f"API version ({rdef.api_version})")
        if kind and kind != rdef.kind:
            raise _bad_request(f"the kind in the data ({kind}) does not match the expected kind ({rdef.kind})")
        storage = self._storage_def(rdef)
        body["apiVersion"], body["kind"] = storage.api_version, storage.kind

    def _storage_def(self, rdef: ResourceDef) -> ResourceDef:
        if rdef.storage_version and rdef.storage_version != rdef.version:
            found = self._defs.get((rdef.group, rdef.storage_version, rdef.plural))
            if found is not None:
                return found
            return dataclasses.replace(rdef, version=rdef.storage_version)
        return rdef

    def _prepare(self, rdef: ResourceDef, body: dict[str, Any], old: dict[str, Any] | None) -> None:
        key = rdef.store_key
        if key == NAMESPACES:
            labels = body["metadata"].setdefault("labels", {})
            if isinstance(labels, dict):
                labels["kubernetes.io/metadata.name"] = body["metadata"].get("name")
            body.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            phase = "Terminating" if body["metadata"].get("deletionTimestamp") else "Active"
            body["status"] = dict(body.get("status") or {}, phase=phase)
        elif key == SECRETS:
            string_data = body.pop("stringData", None) or {}
            if isinstance(string_data, Mapping):
                data = body.setdefault("data", {}) or {}
                body["data"] = data
                for name, value in string_data.items():
                    data[name] = base64.b64encode(str(value).encode()).decode()
            body.setdefault("type", "Opaque")
        elif key == PODS and old is None:
            body["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        elif key == CRDS:
            finalizers = body["metadata"].setdefault("finalizers", [])
            if old is None and isinstance(finalizers, list) and CRD_CLEANUP_FINALIZER not in finalizers:
                finalizers.append(CRD_CLEANUP_FINALIZER)
            self._crd_status(body, old)

    def _crd_status(self, crd: dict[str, Any], old: dict[str, Any] | None) -> None:
        spec = crd.get("spec") if isinstance(crd.get("spec"), Mapping) else {}
        names = dict(spec["names"]) if isinstance(spec.get("names"), Mapping) else {}
        if names.get("kind"):
            names.setdefault("singular", str(names["kind"]).lower())
            names.setdefault("listKind", f"{names['kind']}List")
        versions = spec.get("versions") if isinstance(spec.get("versions"), list) else []
        storage = [v.get("name") for v in versions if isinstance(v, Mapping) and v.get("storage")]
        stored = list((old or {}).get("status", {}).get("storedVersions") or [])
        stored += [v for v in storage if v not in stored]
        now = _now()
        terminating = bool(crd["metadata"].get("deletionTimestamp"))
        conditions = [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": now},
        ]
        if terminating:
            conditions.append({"type": "Terminating", "status": "True", "reason": "InstanceDeletionInProgress",
                               "message": "CustomResource deletion is in progress", "lastTransitionTime": now})
        old_conditions = {c.get("type"): c for c in (old or {}).get("status", {}).get("conditions") or []}
        for condition in conditions:  # keep the transition times stable across no-op updates
            previous = old_conditions.get(condition["type"])
            if previous and previous.get("status") == condition["status"]:
                condition["lastTransitionTime"] = previous.get("lastTransitionTime", now)
        crd["status"] = {"acceptedNames": names, "conditions": conditions, "storedVersions": stored}

    def _validate_crd(self, crd: Mapping[str, Any]) -> list[dict[str, str]]:
        causes: list[dict[str, str]] = []
        spec = crd.get("spec")
        if not isinstance(spec, Mapping):
            return [_cause("spec", "FieldValueRequired", "Required value")]
        group, names = spec.get("group"), spec.get("names")
        if not isinstance(group, str) or not group:
            causes.append(_cause("spec.group", "FieldValueRequired", "Required value"))
        elif "." not in group or not re.fullmatch(_DNS1123_SUBDOMAIN, group):
            causes.append(_cause("spec.group", "FieldValueInvalid",
                                 f'Invalid value: "{group}": should be a domain with at least one dot'))
        if not isinstance(names, Mapping):
            causes.append(_cause("spec.names", "FieldValueRequired", "Required value"))
            names = {}
        plural, kind = names.get("plural"), names.get("kind")
        if not plural:
            causes.append(_cause("spec.names.plural", "FieldValueRequired", "Required value"))
        elif not isinstance(plural, str) or not re.fullmatch(_DNS1123_LABEL, plural):
            causes.append(_cause("spec.names.plural", "FieldValueInvalid",
                                 f"Invalid value: {_go_repr(plural)}: a lowercase RFC 1123 label is required"))
        if not kind:
            causes.append(_cause("spec.names.kind", "FieldValueRequired", "Required value"))
        if plural and group and crd.get("metadata", {}).get("name") != f"{plural}.{group}":
            causes.append(_cause("metadata.name", "FieldValueInvalid",
                                 f'Invalid value: "{crd.get("metadata", {}).get("name")}": '
                                 f'must be spec.names.plural+"."+spec.group'))
        if spec.get("scope") not in ("Namespaced", "Cluster"):
            causes.append(_cause("spec.scope", "FieldValueNotSupported",
                                 f'Unsupported value: {_go_repr(spec.get("scope"))}: '
                                 f'supported values: "Cluster", "Namespaced"'))
        versions = spec.get("versions")
        if not isinstance(versions, list) or not versions:
            causes.append(_cause("spec.versions", "FieldValueInvalid", "Invalid value: must have at least one version"))
            return causes
        if sum(1 for v in versions if isinstance(v, Mapping) and v.get("storage")) != 1:
            causes.append(_cause("spec.versions", "FieldValueInvalid",
                                 "Invalid value: must have exactly one version marked as storage version"))
        for index, version in enumerate(versions):
            field = f"spec.versions[{index}]"
            if not isinstance(version, Mapping) or not version.get("name"):
                causes.append(_cause(f"{field}.name", "FieldValueRequired", "Required value"))
                continue
            schema = (version.get("schema") or {}).get("openAPIV3Schema")
            if not isinstance(schema, Mapping):
                causes.append(_cause(f"{field}.schema.openAPIV3Schema", "FieldValueRequired",
                                     "Required value: schemas are required"))
                continue
            try:
                _compile_schema(schema)
            except Exception as e:  # jsonschema.SchemaError and friends
                causes.append(_cause(f"{field}.schema.openAPIV3Schema", "FieldValueInvalid",
                                     f'Invalid value: "object": {getattr(e, "message", e)}'))
        return causes

    def _admit(self, rdef: ResourceDef, body: dict[str, Any], old: dict[str, Any] | None,
               field_validation: str | None) -> list[str]:
        """Validate (and prune/default) an object about to be stored; returns warnings."""
        causes = _validate_metadata(rdef, body)
        warnings: list[str] = []
        if old is not None and old["metadata"].get("deletionTimestamp"):
            added = set(body["metadata"].get("finalizers") or []) - set(old["metadata"].get("finalizers") or [])
            if added:
                causes.append(_cause("metadata.finalizers", "FieldValueForbidden",
                                     f'Forbidden: no new finalizers can be added if the object is being deleted, '
                                     f'found new finalizers '
                                     f'[]string{{{", ".join(json.dumps(f) for f in sorted(added))}}}'))
        if rdef.store_key == CRDS:
            causes += self._validate_crd(body)
        compiled = self._schemas.get((rdef.group, rdef.version, rdef.plural))
        if compiled is None and rdef.is_custom:
            compiled = self._schemas.get((rdef.group, rdef.storage_version or rdef.version, rdef.plural))
        if compiled is not None:
            unknown: list[str] = []
            _structural_pass(body, compiled.structural, "", unknown, causes, root=True)
            if unknown and (field_validation or "").lower() == "strict":
                details = ", ".join(f'unknown field "{path}"' for path in unknown)
                raise _bad_request(f'{rdef.kind} in version "{rdef.version}" cannot be handled as a {rdef.kind}: '
                                   f'strict decoding error: {details}')
            if unknown and (field_validation or "warn").lower() == "warn":
                warnings += [f'unknown field "{path}"' for path in unknown]
            instance = {k: v for k, v in body.items() if k not in ("apiVersion", "kind", "metadata")}
            errors = compiled.validator.iter_errors(instance)
            for error in sorted(errors, key=lambda e: list(map(str, e.absolute_path))):
                causes += _jsonschema_causes(error)
        if causes:
            name = body.get("metadata", {}).get("name", "")
            rendered = [f'{c["field"]}: {c["message"]}' for c in causes]
            summary = rendered[0] if len(rendered) == 1 else f'[{", ".join(rendered)}]'
            raise KubeAPIError(422, "Invalid", f'{rdef.qualified_kind} "{name}" is invalid: {summary}',
                               {"name": name, "group": rdef.group, "kind": rdef.kind, "causes": causes})
        return warnings

    # -- verbs (synchronous; they run in the server's loop) --------------------------------------

    def get_object(self, rdef: ResourceDef, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self._read(self._key(rdef, namespace, name))
        if obj is None:
            raise self._not_found(rdef, name)
        return self._present(rdef, obj)

    def list_objects(self, rdef: ResourceDef, namespace: str | None = None, *,
                     label_selector: str | None = None, field_selector: str | None = None) -> list[dict[str, Any]]:
        matcher = self._matcher(rdef, namespace, None, label_selector, field_selector)
        objs = [obj for obj in self._iter(rdef.store_key, namespace if rdef.namespaced else None) if matcher(obj)]
        objs.sort(key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))
        return [self._present(rdef, copy.deepcopy(obj)) for obj in objs]

    def create_object(self, rdef: ResourceDef, namespace: str | None, body: Any, *,
                      dry_run: bool = False, field_validation: str | None = None) -> tuple[dict[str, Any], list[str]]:
        if not isinstance(body, Mapping):
            raise _bad_request("the body of the request must be a JSON object")
        body = copy.deepcopy(dict(body))
        self._check_type_meta(rdef, body)
        meta = body.get("metadata")
        if meta is None:
            meta = body["metadata"] = {}
        if not isinstance(meta, dict):
            raise _bad_request("metadata must be an object")
        if rdef.namespaced:
            if namespace is None:
                namespace = meta.get("namespace") or None
            if namespace is None:
                raise _resource_not_found()
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise _bad_request("the namespace of the provided object does not match the namespace sent "
                                   "on the request")
            meta["namespace"] = namespace
            ns_obj = self._read((NAMESPACES, None, namespace))
            if ns_obj is None:
                raise KubeAPIError(404, "NotFound", f'namespaces "{namespace}" not found',
                                   {"name": namespace, "kind": "namespaces"})
            if ns_obj["metadata"].get("deletionTimestamp"):
                raise KubeAPIError(403, "Forbidden",
                                   f'{rdef.qualified_resource} "{meta.get("name") or meta.get("generateName", "")}" '
                                   f'is forbidden: unable to create new content in namespace {namespace} '
                                   f'because it is being terminated',
                                   {"name": meta.get("name", ""), "group": rdef.group, "kind": rdef.plural})
        else:
            meta.pop("namespace", None)
        if rdef.is_custom:
            crd = self._read((CRDS, None, rdef.crd or ""))
            if crd is not None and crd["metadata"].get("deletionTimestamp"):
                raise _method_not_allowed("create not allowed while custom resource definition is terminating")
        if not meta.get("name"):
            prefix = meta.get("generateName")
            if not prefix:
                raise KubeAPIError(422, "Invalid",
                                   f'{rdef.qualified_kind} "" is invalid: metadata.name: Required value: '
                                   f'name or generateName is required',
                                   {"group": rdef.group, "kind": rdef.kind, "causes": [_cause(
                                       "metadata.name", "FieldValueRequired",
                                       "Required value: name or generateName is required")]})
            for _ in range(1000):
                meta["name"] = f'{prefix}{"".join(random.choices(_GENERATE_NAME_ALPHABET, k=5))}'
                if self._read(self._key(rdef, namespace, meta["name"])) is None:
                    break
        name = meta["name"]
        key = self._key(rdef, namespace, name) if isinstance(name, str) else None
        if key is not None and self._read(key) is not None:
            raise KubeAPIError(409, "AlreadyExists", f'{rdef.qualified_resource} "{name}" already exists',
                               {"name": name, "group": rdef.group, "kind": rdef.plural})
        for field in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp",
                      "deletionGracePeriodSeconds", "selfLink", "managedFields", "generation"):
            meta.pop(field, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        if rdef.generation:
            meta["generation"] = 1
        if "status" in rdef.subresources:
            body.pop("status", None)
        self._prepare(rdef, body, None)
        warnings = self._admit(rdef, body, None, field_validation)
        assert key is not None  # the name was validated by _admit()
        if dry_run:
            return self._present(rdef, body), warnings
        obj = self._commit(rdef, key, body, None, "ADDED")
        self._after_write(rdef, obj, None)
        return self._present(rdef, obj), warnings

    def update_object(self, rdef: ResourceDef, namespace: str | None, name: str, body: Any, *,
                      subresource: str | None = None, dry_run: bool = False,
                      field_validation: str | None = None) -> tuple[dict[str, Any], list[str]]:
        key = self._key(rdef, namespace, name)
        old = self._read(key)
        if old is None:
            raise self._not_found(rdef, name)
        if not isinstance(body, Mapping):
            raise _bad_request("the body of the request must be a JSON object")
        body = copy.deepcopy(dict(body))
        self._check_type_meta(rdef, body)
        meta = body.get("metadata") or {}
        if not isinstance(meta, dict):
            raise _bad_request("metadata must be an object")
        self._check_identity(rdef, meta, namespace, name)
        resource_version = meta.get("resourceVersion")
        if resource_version:
            if str(resource_version) != old["metadata"]["resourceVersion"]:
                raise self._conflict(rdef, name)
        elif rdef.is_custom or rdef.store_key == CRDS:
            raise KubeAPIError(422, "Invalid",
                               f'{rdef.qualified_kind} "{name}" is invalid: metadata.resourceVersion: '
                               f'Invalid value: 0x0: must be specified for an update',
                               {"name": name, "group": rdef.group, "kind": rdef.kind, "causes": [_cause(
                                   "metadata.resourceVersion", "FieldValueInvalid",
                                   "Invalid value: 0x0: must be specified for an update")]})
        new = self._merge_server_fields(rdef, old, body, subresource)
        return self._write(rdef, key, old, new, dry_run=dry_run, field_validation=field_validation)

    def patch_object(self, rdef: ResourceDef, namespace: str | None, name: str, patch: Any, *,
                     content_type: str = MERGE_PATCH, subresource: str | None = None, dry_run: bool = False,
                     field_validation: str | None = None, field_manager: str | None = None,
                     ) -> tuple[dict[str, Any], list[str], bool]:
        """Returns the patched object, warnings, and whether it was created (server-side apply)."""
        content_type = content_type.split(";")[0].strip().lower()
        if content_type not in rdef.patch_types:
            accepted = ", ".join(rdef.patch_types)
            raise KubeAPIError(415, "UnsupportedMediaType",
                               f"the body of the request was in an unknown format - "
                               f"accepted media types include: {accepted}")
        key = self._key(rdef, namespace, name)
        old = self._read(key)
        if content_type == APPLY_PATCH and not field_manager:
            raise _bad_request("PATCH requests of type apply require fieldManager to be set")
        if old is None:
            if content_type == APPLY_PATCH and subresource is None:
                if not isinstance(patch, Mapping):
                    raise _bad_request("the applied configuration must be an object")
                body = copy.deepcopy(dict(patch))
                body.setdefault("metadata", {}).setdefault("name", name)
                obj, warnings = self.create_object(rdef, namespace, body, dry_run=dry_run,
                                                   field_validation=field_validation)
                return obj, warnings, True
            raise self._not_found(rdef, name)
        try:
            match content_type:
                case "application/json-patch+json":
                    patched = json_patch(old, patch)
                case "application/strategic-merge-patch+json":
                    patched = strategic_merge_patch(old, patch)
                case _:  # merge patch; server-side apply is approximated as a merge (no field ownership)
                    patched = merge_patch(old, patch)
        except _JSONPatchError as e:
            raise KubeAPIError(422, "Invalid", f"the server rejected our request due to an error in our request: {e}",
                               {"name": name, "group": rdef.group, "kind": rdef.plural}) from e
        if not isinstance(patched, dict):
            raise _bad_request("the patched object must be a JSON object")
        meta = patched.get("metadata")
        if not isinstance(meta, dict):
            raise _bad_request("metadata must be an object")
        self._check_identity(rdef, meta, namespace, name)
        if str(meta.get("resourceVersion")) != old["metadata"]["resourceVersion"]:
            raise self._conflict(rdef, name)  # a resourceVersion in a patch is a precondition
        if meta.get("uid") != old["metadata"].get("uid"):
            raise KubeAPIError(409, "Conflict", f'Precondition failed: UID in precondition: {meta.get("uid")}, '
                                                f'UID in object meta: {old["metadata"].get("uid")}',
                               {"name": name, "group": rdef.group, "kind": rdef.plural})
        patched["apiVersion"], patched["kind"] = old.get("apiVersion"), old.get("kind")
        new = self._merge_server_fields(rdef, old, patched, subresource)
        obj, warnings = self._write(rdef, key, old, new, dry_run=dry_run, field_validation=field_validation)
        return obj, warnings, False

    def delete_object(self, rdef: ResourceDef, namespace: str | None, name: str,
                      options: Mapping[str, Any] | None = None, *, dry_run: bool = False) -> dict[str, Any]:
        options = dict(options or {})
        key = self._key(rdef, namespace, name)
        old = self._read(key)
        if old is None:
            raise self._not_found(rdef, name)
        preconditions = options.get("preconditions") or {}
        if preconditions.get("uid") and preconditions["uid"] != old["metadata"].get("uid"):
            raise KubeAPIError(409, "Conflict", f'Precondition failed: UID in precondition: {preconditions["uid"]}, '
                                                f'UID in object meta: {old["metadata"].get("uid")}',
                               {"name": name, "group": rdef.group, "kind": rdef.plural})
        expected_rv = preconditions.get("resourceVersion")
        if expected_rv and expected_rv != old["metadata"]["resourceVersion"]:
            raise KubeAPIError(409, "Conflict", f'Precondition failed: ResourceVersion in precondition: '
                                                f'{preconditions["resourceVersion"]}, ResourceVersion in object meta: '
                                                f'{old["metadata"]["resourceVersion"]}',
                               {"name": name, "group": rdef.group, "kind": rdef.plural})
        policy = options.get("propagationPolicy") or ("Orphan" if options.get("orphanDependents") else "Background")
        if dry_run:
            return self._present(rdef, old)
        meta = old["metadata"]
        if meta.get("deletionTimestamp"):
            return self._present(rdef, old)
        finalizers = list(meta.get("finalizers") or [])
        uid = meta.get("uid")
        if policy in ("Foreground", "Orphan") and self._dependents(uid):
            system = FOREGROUND_FINALIZER if policy == "Foreground" else ORPHAN_FINALIZER
            if system not in finalizers:
                finalizers.append(system)
        if finalizers or rdef.store_key == NAMESPACES:
            new = copy.deepcopy(old)
            new["metadata"]["deletionTimestamp"] = _now()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            if finalizers:
                new["metadata"]["finalizers"] = finalizers
            if rdef.generation:
                new["metadata"]["generation"] = int(meta.get("generation") or 0) + 1
            self._prepare(rdef, new, old)
            obj = self._commit(rdef, key, new, old, "MODIFIED")
            self._schedule(self._run_system_finalizers, key)
            return self._present(rdef, obj)
        return self._present(rdef, self._remove(rdef, key, old))

    def delete_collection(self, rdef: ResourceDef, namespace: str | None, *, label_selector: str | None = None,
                          field_selector: str | None = None, options: Mapping[str, Any] | None = None,
                          dry_run: bool = False) -> list[dict[str, Any]]:
        deleted = []
        for obj in self.list_objects(rdef, namespace, label_selector=label_selector, field_selector=field_selector):
            meta = obj["metadata"]
            deleted.append(self.delete_object(rdef, meta.get("namespace"), meta["name"], options, dry_run=dry_run))
        return deleted

    # -- verb internals --------------------------------------------------------------------------

    def _not_found(self, rdef: ResourceDef, name: str) -> KubeAPIError:
        return KubeAPIError(404, "NotFound", f'{rdef.qualified_resource} "{name}" not found',
                            {"name": name, "group": rdef.group, "kind": rdef.plural})

    def _conflict(self, rdef: ResourceDef, name: str) -> KubeAPIError:
        return KubeAPIError(409, "Conflict",
                            f'Operation cannot be fulfilled on {rdef.qualified_resource} "{name}": the object has '
                            f'been modified; please apply your changes to the latest version and try again',
                            {"name": name, "group": rdef.group, "kind": rdef.plural})

    @staticmethod
    def _check_identity(rdef: ResourceDef, meta: Mapping[str, Any], namespace: str | None, name: str) -> None:
        if meta.get("name") and meta["name"] != name:
            raise _bad_request(f'the name of the object ({meta["name"]}) does not match the name on the URL ({name})')
        if rdef.namespaced and meta.get("namespace") and meta["namespace"] != namespace:
            raise _bad_request("the namespace of the provided object does not match the namespace sent on the request")

    @staticmethod
    def _merge_server_fields(rdef: ResourceDef, old: dict[str, Any], body: dict[str, Any],
                             subresource: str | None) -> dict[str, Any]:
        if subresource == "status":
            new = copy.deepcopy(old)
            if body.get("status") is not None:
                new["status"] = copy.deepcopy(body["status"])
            else:
                new.pop("status", None)
            return new
        new = copy.deepcopy(body)
        meta = new.setdefault("metadata", {})
        for field in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                      "namespace", "name", "generation", "resourceVersion", "selfLink"):
            if field in old["metadata"]:
                meta[field] = old["metadata"][field]
            else:
                meta.pop(field, None)
        meta.pop("managedFields", None)
        if "status" in rdef.subresources:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        new["apiVersion"], new["kind"] = old.get("apiVersion"), old.get("kind")
        return new

    def _write(self, rdef: ResourceDef, key: tuple[kmock.resource, str | None, str], old: dict[str, Any],
               new: dict[str, Any], *, dry_run: bool, field_validation: str | None,
               admit: bool = True) -> tuple[dict[str, Any], list[str]]:
        self._prepare(rdef, new, old)
        warnings = self._admit(rdef, new, old, field_validation) if admit else []
        if rdef.generation:
            ignored = {"metadata", "status"} if "status" in rdef.subresources else {"metadata"}
            strip = lambda o: {k: v for k, v in o.items() if k not in ignored}  # noqa: E731
            generation = int(old["metadata"].get("generation") or 1)
            new["metadata"]["generation"] = generation + 1 if strip(old) != strip(new) else generation
        if new == old:
            return self._present(rdef, old), warnings  # no-op: no new resourceVersion, no event
        if dry_run:
            return self._present(rdef, new), warnings
        obj = self._commit(rdef, key, new, old, "MODIFIED")
        self._after_write(rdef, obj, old)
        if obj["metadata"].get("deletionTimestamp"):
            if not obj["metadata"].get("finalizers"):
                self._remove(rdef, key, obj)
            else:
                self._schedule(self._run_system_finalizers, key)
        return self._present(rdef, obj), warnings

    def _internal_update(self, key: tuple[kmock.resource, str | None, str],
                         mutate: Callable[[dict[str, Any]], None]) -> None:
        """A "controller" write: bypasses admission (e.g. removing system finalizers)."""
        old = self._read(key)
        if old is None:
            return
        rdef = self._def(key[0])
        new = copy.deepcopy(old)
        mutate(new)
        self._write(rdef, key, old, new, dry_run=False, field_validation=None, admit=False)

    def _remove(self, rdef: ResourceDef, key: tuple[kmock.resource, str | None, str],
                old: dict[str, Any]) -> dict[str, Any]:
        obj = self._commit(rdef, key, old, old, "DELETED")
        meta = obj["metadata"]
        uid = meta.get("uid")
        self._schedule(self._collect_garbage, uid)
        for ref in meta.get("ownerReferences") or []:  # a foreground-deleting owner may be done now
            owner_key = self._uids.get(ref.get("uid"))
            if owner_key is not None:
                self._schedule(self._run_system_finalizers, owner_key)
        if rdef.namespaced and meta.get("namespace"):
            self._schedule(self._run_system_finalizers, (NAMESPACES, None, meta["namespace"]))
        if rdef.is_custom and rdef.crd:
            self._schedule(self._run_system_finalizers, (CRDS, None, rdef.crd))
        if key[0] == CRDS:
            self._sync_crd(obj, removed=True)
        return obj

    def _dependents(self, uid: str | None) -> list[tuple[kmock.resource, str | None, str]]:
        if not uid:
            return []
        result = []
        for key, obj in list(self.objects.items()):
            if not obj.deleted:
                refs = obj.last.raw.get("metadata", {}).get("ownerReferences") or []
                if any(isinstance(ref, Mapping) and ref.get("uid") == uid for ref in refs):
                    result.append(key)
        return result

    def _collect_garbage(self, uid: str) -> None:
        """Background cascading deletion: dependents of a removed owner are deleted."""
        if uid in self._uids:
            return
        for key in self._dependents(uid):
            obj = self._read(key)
            if obj is None:
                continue
            refs = obj["metadata"].get("ownerReferences") or []
            alive = [ref for ref in refs if ref.get("uid") != uid and ref.get("uid") in self._uids]
            if alive:
                self._internal_update(key, lambda o, refs=alive: o["metadata"].__setitem__("ownerReferences", refs))
            elif not obj["metadata"].get("deletionTimestamp"):
                try:
                    self.delete_object(self._def(key[0]), key[1], key[2], {"propagationPolicy": "Background"})
                except KubeAPIError:
                    pass

    def _run_system_finalizers(self, key: tuple[kmock.resource, str | None, str]) -> None:
        """The controllers behind namespace termination, CRD cleanup, foreground & orphan deletion."""
        obj = self._read(key)
        if obj is None or not obj["metadata"].get("deletionTimestamp"):
            return
        meta = obj["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        uid = meta.get("uid")

        def drop(finalizer: str) -> None:
            self._internal_update(key, lambda o: o["metadata"].__setitem__(
                "finalizers", [f for f in o["metadata"].get("finalizers") or [] if f != finalizer]))

        if key[0] == NAMESPACES:
            content = [(k, o) for k, o in list(self.objects.items()) if k[1] == key[2] and not o.deleted]
            for content_key, content_obj in content:
                if not content_obj.last.raw.get("metadata", {}).get("deletionTimestamp"):
                    try:
                        self.delete_object(self._def(content_key[0]), content_key[1], content_key[2])
                    except KubeAPIError:
                        pass
            remaining = [k for k, o in self.objects.items() if k[1] == key[2] and not o.deleted]
            if not remaining and not finalizers:
                self._remove(self._def(NAMESPACES), key, obj)
            return
        if key[0] == CRDS and CRD_CLEANUP_FINALIZER in finalizers:
            rdefs = self._crd_defs(key[2])
            for rdef in rdefs[:1]:
                for item in list(self._iter(rdef.store_key)):
                    if not item["metadata"].get("deletionTimestamp"):
                        try:
                            self.delete_object(rdef, item["metadata"].get("namespace"), item["metadata"]["name"])
                        except KubeAPIError:
                            pass
            if not rdefs or not any(True for _ in self._iter(rdefs[0].store_key)):
                drop(CRD_CLEANUP_FINALIZER)
            return
        if ORPHAN_FINALIZER in finalizers:
            for dependent in self._dependents(uid):
                self._internal_update(dependent, lambda o: o["metadata"].__setitem__(
                    "ownerReferences", [r for r in o["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]))
            drop(ORPHAN_FINALIZER)
            return
        if FOREGROUND_FINALIZER in finalizers:
            dependents = self._dependents(uid)
            for dependent in dependents:
                dependent_obj = self._read(dependent)
                if dependent_obj is not None and not dependent_obj["metadata"].get("deletionTimestamp"):
                    try:
                        self.delete_object(self._def(dependent[0]), dependent[1], dependent[2],
                                           {"propagationPolicy": "Foreground"})
                    except KubeAPIError:
                        pass
            if not self._dependents(uid):
                drop(FOREGROUND_FINALIZER)

    def _after_write(self, rdef: ResourceDef, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        if rdef.store_key == CRDS:
            self._sync_crd(obj, removed=False)

    def _sync_crd(self, crd: Mapping[str, Any], *, removed: bool) -> None:
        """(Un)register the resources served by a CRD."""
        name = crd["metadata"]["name"]
        existing = {(d.group, d.version, d.plural): d for d in self._crd_defs(name)}
        wanted: dict[tuple[str, str, str], ResourceDef] = {}
        if not removed:
            spec = crd["spec"]
            names = spec["names"]
            group, plural = spec["group"], names["plural"]
            storage = next(v["name"] for v in spec["versions"] if v.get("storage"))
            storage = self._crd_storage.setdefault((group, plural), storage)
            for version in spec["versions"]:
                if not version.get("served", True):
                    continue
                columns = tuple(
                    {"name": c.get("name"), "type": c.get("type", "string"), "jsonPath": c.get("jsonPath"),
                     "format": c.get("format", ""), "description": c.get("description", ""),
                     "priority": c.get("priority", 0)}
                    for c in version.get("additionalPrinterColumns") or [])
                rdef = ResourceDef(
                    group=group, version=version["name"], plural=plural, kind=names["kind"],
                    singular=names.get("singular") or names["kind"].lower(),
                    namespaced=spec.get("scope") == "Namespaced",
                    short_names=tuple(names.get("shortNames") or ()),
                    categories=tuple(names.get("categories") or ()),
                    subresources=frozenset(k for k in (version.get("subresources") or {}) if k == "status"),
                    generation=True, printer_columns=columns,
                    schema=copy.deepcopy(version["schema"]["openAPIV3Schema"]),
                    crd=name, storage_version=storage,
                )
                wanted[group, version["name"], plural] = rdef
        for ident, rdef in existing.items():
            if ident not in wanted:
                self._unregister(rdef)
        for rdef in wanted.values():
            self._register(rdef)
        if removed:
            for ident in existing:
                self._crd_storage.pop((ident[0], ident[2]), None)
            for key, obj in list(self.objects.items()):  # leftovers, if any, vanish with the CRD
                if any(key[0] == rdef.store_key for rdef in existing.values()) and not obj.deleted:
                    obj.delete()

    def _matcher(self, rdef: ResourceDef, namespace: str | None, name: str | None,
                 label_selector: str | None, field_selector: str | None) -> Callable[[Mapping[str, Any] | None], bool]:
        labels = parse_label_selector(label_selector)
        fields = parse_field_selector(field_selector)
        if name is not None:
            fields.append(("metadata.name", "=", name))

        def matches(obj: Mapping[str, Any] | None) -> bool:
            if obj is None:
                return False
            meta = obj.get("metadata") or {}
            if rdef.namespaced and namespace is not None and meta.get("namespace") != namespace:
                return False
            obj_labels = meta.get("labels") or {}
            if not all(req.matches(obj_labels) for req in labels):
                return False
            return all((_field_value(obj, path) == value) == (op == "=") for path, op, value in fields)

        return matches

    # -- HTTP ------------------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # Same as kmock's RawHandler.__call__, but with a URL parser that understands namespaces.
        body = await raw_request.read()
        request = self._parse_request(raw_request, body)
        self._requests.append(request)
        try:
            return await self._handle(request)
        except Exception as e:
            logger.exception("The Kubernetes API emulator failed on %s %s", raw_request.method, raw_request.path_qs)
            if self._errors:
                self._errors[-1].append(e)
            return await self._render_error(e)

    def _parse_request(self, raw_request: aiohttp.web.BaseRequest, body: bytes) -> kmock.Request:
        text = body.decode("utf-8", errors="replace")
        data: Any = None
        if body and raw_request.content_type == PROTOBUF:
            try:
                data = decode_protobuf(body)
            except (ValueError, IndexError, UnicodeDecodeError):
                data = None
        elif body:
            try:
                data = json.loads(text)
            except ValueError:
                if "yaml" in (raw_request.content_type or ""):
                    try:
                        data = yaml.safe_load(text)
                    except yaml.YAMLError:
                        data = None
        route = _parse_route(raw_request.path)
        method, params = raw_request.method.upper(), dict(raw_request.query)
        action: kmock.action | None = None
        resource = None
        if route is not None:
            resource = kmock.resource(route.group, route.version, route.plural)
            if method == "GET" and params.get("watch") in ("true", "1"):
                action = kmock.action.WATCH
            elif route.name is None and route.plural is not None:
                action = {"GET": kmock.action.LIST, "POST": kmock.action.CREATE}.get(method)
            elif route.name is not None:
                action = {"GET": kmock.action.FETCH, "PATCH": kmock.action.UPDATE, "PUT": kmock.action.UPDATE,
                          "DELETE": kmock.action.DELETE}.get(method)
        return kmock.Request(
            id=len(self._requests), raw_request=raw_request, url=raw_request.url, method=raw_request.method,
            params=params, headers=dict(raw_request.headers), cookies=dict(raw_request.cookies),
            body=body, text=text, data=data, action=action, resource=resource,
            namespace=route.namespace if route else None, name=route.name if route else None,
            subresource=route.subresource if route else None,
        )

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if self._payloads:  # user-defined reactions (fault injection) win over the emulation
            try:
                return await kmock.RawHandler._handle(self, request)
            except NotImplementedError:
                pass
        raw = request._raw_request
        assert raw is not None
        try:
            if self.token is not None and raw.headers.get("Authorization") != f"Bearer {self.token}":
                raise KubeAPIError(401, "Unauthorized", "Unauthorized")
            return await self._serve(request, raw)
        except KubeAPIError as e:
            return self._json(e.body, status=e.code)

    @staticmethod
    def _json(payload: Any, *, status: int = 200, warnings: Iterable[str] = ()) -> aiohttp.web.Response:
        headers = multidict.CIMultiDict()
        for warning in warnings:
            headers.add("Warning", f"299 - {json.dumps(warning)}")
        return aiohttp.web.Response(body=json.dumps(payload).encode(), status=status,
                                    content_type="application/json", headers=headers)

    async def _serve(self, request: kmock.Request, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        path, method = raw.path.rstrip("/") or "/", raw.method.upper()
        if path in ("/healthz", "/livez", "/readyz") or path.startswith(("/healthz/", "/livez/", "/readyz/")):
            return aiohttp.web.Response(text="ok")
        if method == "GET":
            match path:
                case "/":
                    return self._json({"paths": sorted(self._root_paths())})
                case "/version":
                    return self._json(self._version())
                case "/api":
                    return self._json({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": raw.host}]})
                case "/apis":
                    return self._json({"kind": "APIGroupList", "apiVersion": "v1", "groups": self._api_groups()})
                case "/openapi/v3":
                    return self._json(self._openapi_root())
            if path.startswith("/openapi/v3/"):
                doc = self._openapi_group_version(path[len("/openapi/v3/"):])
                if doc is None:
                    raise _resource_not_found()
                return self._json(doc)
        route = _parse_route(path)
        if route is None:
            raise _resource_not_found()
        if route.version is None:
            if method != "GET":
                raise _method_not_allowed()
            group = next((g for g in self._api_groups() if g["name"] == route.group), None)
            if group is None:
                raise _resource_not_found()
            return self._json(dict(group, kind="APIGroup", apiVersion="v1"))
        if route.plural is None:
            if method != "GET":
                raise _method_not_allowed()
            return self._json(self._api_resource_list(route.group, route.version))
        rdef = self._defs.get((route.group, route.version, route.plural))
        if rdef is None or (route.namespace is not None and not rdef.namespaced):
            raise _resource_not_found()
        if route.subresource is not None and (route.name is None or route.subresource not in rdef.subresources):
            raise _resource_not_found()
        if route.namespace is None and rdef.namespaced and (route.name is not None or method not in ("GET",)):
            raise _resource_not_found()
        return await self._serve_resource(request, raw, rdef, route)

    async def _serve_resource(self, request: kmock.Request, raw: aiohttp.web.BaseRequest,
                              rdef: ResourceDef, route: _Route) -> aiohttp.web.StreamResponse:
        method, params = raw.method.upper(), dict(raw.query)
        dry_run = params.get("dryRun") == "All"
        field_validation = params.get("fieldValidation")
        accept = raw.headers.get("Accept", "")
        body = request.data
        if request.body and body is None and method in ("POST", "PUT", "PATCH", "DELETE"):
            if raw.content_type == PROTOBUF:
                raise KubeAPIError(415, "UnsupportedMediaType",
                                   f'the emulated API server decodes protobuf only for {", ".join(sorted(_PB_KINDS))};'
                                   f' send JSON (e.g. kubectl apply) for {rdef.kind}')
            raise _bad_request("the request body could not be decoded")
        if method == "GET":
            if params.get("watch") in ("true", "1"):
                return await self._serve_watch(raw, rdef, route, params, accept)
            if route.name is not None:
                obj = self.get_object(rdef, route.namespace, route.name)
                return self._json(self._render_one(rdef, obj, accept, params))
            return self._json(self._serve_list(rdef, route.namespace, params, accept))
        if method == "POST":
            if route.name is not None:
                raise _method_not_allowed()
            obj, warnings = self.create_object(rdef, route.namespace, body, dry_run=dry_run,
                                               field_validation=field_validation)
            return self._json(obj, status=201, warnings=warnings)
        if method == "PUT" and route.name is not None:
            obj, warnings = self.update_object(rdef, route.namespace, route.name, body, subresource=route.subresource,
                                        dry_run=dry_run, field_validation=field_validation)
            return self._json(obj, warnings=warnings)
        if method == "PATCH" and route.name is not None:
            obj, warnings, created = self.patch_object(
                rdef, route.namespace, route.name, body, content_type=raw.headers.get("Content-Type", MERGE_PATCH),
                subresource=route.subresource, dry_run=dry_run, field_validation=field_validation,
                field_manager=params.get("fieldManager"))
            return self._json(obj, status=201 if created else 200, warnings=warnings)
        if method == "DELETE":
            options = dict(body) if isinstance(body, Mapping) else {}
            for param in ("propagationPolicy", "gracePeriodSeconds"):
                if param in params:
                    options[param] = params[param]
            dry_run = dry_run or "All" in (options.get("dryRun") or [])
            if route.name is None:
                items = self.delete_collection(rdef, route.namespace, label_selector=params.get("labelSelector"),
                                               field_selector=params.get("fieldSelector"), options=options,
                                               dry_run=dry_run)
                return self._json({"apiVersion": rdef.api_version, "kind": f"{rdef.kind}List",
                                   "metadata": {"resourceVersion": str(self._rv)}, "items": items})
            obj = self.delete_object(rdef, route.namespace, route.name, options, dry_run=dry_run)
            if rdef.delete_returns_status and not obj["metadata"].get("deletionTimestamp"):
                return self._json({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                   "details": {"name": route.name, "group": rdef.group, "kind": rdef.plural,
                                               "uid": obj["metadata"].get("uid")}})
            return self._json(obj, status=200)
        raise _method_not_allowed()

    def _serve_list(self, rdef: ResourceDef, namespace: str | None, params: Mapping[str, str],
                    accept: str) -> dict[str, Any]:
        items = self.list_objects(rdef, namespace, label_selector=params.get("labelSelector"),
                          field_selector=params.get("fieldSelector"))
        meta: dict[str, Any] = {"resourceVersion": str(self._rv)}
        if params.get("continue"):
            try:
                token = json.loads(base64.urlsafe_b64decode(params["continue"].encode()))
                start = tuple(token["after"])
            except (ValueError, KeyError, TypeError):
                raise KubeAPIError(410, "Expired", "The provided continue parameter is too old or invalid") from None
            items = [o for o in items if (o["metadata"].get("namespace") or "", o["metadata"]["name"]) > start]
        limit = int(params["limit"]) if params.get("limit", "").isdigit() and int(params["limit"]) > 0 else None
        if limit is not None and len(items) > limit:
            last = items[limit - 1]["metadata"]
            after = [last.get("namespace") or "", last["name"]]
            meta["continue"] = base64.urlsafe_b64encode(json.dumps({"after": after}).encode()).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        if "as=Table" in accept:
            return self._table(rdef, items, meta, params)
        if "as=PartialObjectMetadataList" in accept:
            return {"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta,
                    "items": [self._partial(o) for o in items]}
        return {"apiVersion": rdef.api_version, "kind": f"{rdef.kind}List", "metadata": meta, "items": items}

    def _render_one(self, rdef: ResourceDef, obj: dict[str, Any], accept: str,
                    params: Mapping[str, str]) -> dict[str, Any]:
        if "as=Table" in accept:
            return self._table(rdef, [obj], {"resourceVersion": obj["metadata"].get("resourceVersion", "")}, params)
        if "as=PartialObjectMetadata" in accept:
            return self._partial(obj)
        return obj

    @staticmethod
    def _partial(obj: Mapping[str, Any]) -> dict[str, Any]:
        return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata", {})}

    def _table(self, rdef: ResourceDef, objs: list[dict[str, Any]], meta: dict[str, Any],
               params: Mapping[str, str]) -> dict[str, Any]:
        columns = [{"name": "Name", "type": "string", "format": "name", "priority": 0,
                    "description": "Name must be unique within a namespace."}]
        for column in rdef.printer_columns:
            columns.append({"name": column.get("name"), "type": column.get("type", "string"),
                            "format": column.get("format", ""), "description": column.get("description", ""),
                            "priority": column.get("priority", 0)})
        include = params.get("includeObject", "Metadata")
        rows = []
        for obj in objs:
            cells: list[Any] = [obj["metadata"]["name"]]
            for column in rdef.printer_columns:
                values = jsonpath(obj, column.get("jsonPath") or "")
                value = values[0] if len(values) == 1 else ",".join(map(str, values)) if values else None
                if column.get("type") == "date" and isinstance(value, str) and (moment := _parse_time(value)):
                    value = _human_duration((datetime.datetime.now(datetime.UTC) - moment).total_seconds())
                elif isinstance(value, (dict, list)):
                    value = json.dumps(value)
                cells.append(value)
            row: dict[str, Any] = {"cells": cells}
            if include == "Object":
                row["object"] = obj
            elif include != "None":
                row["object"] = self._partial(obj)
            rows.append(row)
        return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta,
                "columnDefinitions": columns, "rows": rows}

    async def _serve_watch(self, raw: aiohttp.web.BaseRequest, rdef: ResourceDef, route: _Route,
                           params: Mapping[str, str], accept: str) -> aiohttp.web.StreamResponse:
        matches = self._matcher(rdef, route.namespace, route.name, params.get("labelSelector"),
                                params.get("fieldSelector"))
        since = params.get("resourceVersion") or ""
        initial_events = params.get("sendInitialEvents") == "true"
        timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        as_table = "as=Table" in accept

        backlog: list[tuple[str, Mapping[str, Any]]] = []
        if since in ("", "0") or initial_events:
            items = [o for o in self._iter(rdef.store_key, route.namespace if rdef.namespaced else None) if matches(o)]
            items.sort(key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))
            backlog += [("ADDED", o) for o in items]
            if initial_events:
                backlog.append(("BOOKMARK", {"kind": rdef.kind, "apiVersion": rdef.api_version, "metadata": {
                    "resourceVersion": str(self._rv), "annotations": {"k8s.io/initial-events-end": "true"}}}))
        else:
            try:
                since_rv = int(since)
            except ValueError:
                raise _bad_request(f"invalid resource version: {since!r}") from None
            if since_rv < self._compacted_rv:
                gone = KubeAPIError(410, "Expired", f"too old resource version: {since_rv} ({self._compacted_rv})")
                backlog.append(("ERROR", gone.body))
            else:
                for change in self._log:
                    if change.rv > since_rv and change.key == rdef.store_key:
                        event = self._watch_event(change, matches)
                        if event is not None:
                            backlog.append(event)

        watcher = _Watcher(key=rdef.store_key, queue=asyncio.Queue())
        gone_already = any(kind == "ERROR" for kind, _ in backlog)
        if not gone_already:
            self._watchers.add(watcher)
        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            await response.prepare(raw)
            for kind, obj in backlog:
                await response.write(self._event_line(rdef, kind, obj, as_table, params))
            while not gone_already and not self._closing:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    change = await asyncio.wait_for(watcher.queue.get(), remaining)
                except TimeoutError:
                    break
                if change is None:
                    break
                event = self._watch_event(change, matches)
                if event is not None:
                    await response.write(self._event_line(rdef, event[0], event[1], as_table, params))
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away
        finally:
            self._watchers.discard(watcher)
        return response

    @staticmethod
    def _watch_event(change: _Change, matches: Callable[[Mapping[str, Any] | None], bool]
                     ) -> tuple[str, Mapping[str, Any]] | None:
        now, before = matches(change.obj), matches(change.old)
        if change.type == "ADDED":
            return ("ADDED", change.obj) if now else None
        if change.type == "DELETED":
            return ("DELETED", change.obj) if now else None
        if now and before:
            return ("MODIFIED", change.obj)
        if now:
            return ("ADDED", change.obj)
        if before:
            return ("DELETED", change.obj)
        return None

    def _event_line(self, rdef: ResourceDef, kind: str, obj: Mapping[str, Any], as_table: bool,
                    params: Mapping[str, str]) -> bytes:
        if kind not in ("ERROR", "BOOKMARK"):
            obj = self._present(rdef, obj)
            if as_table:
                meta = {"resourceVersion": obj["metadata"].get("resourceVersion", "")}
                obj = self._table(rdef, [dict(obj)], meta, params)
        return json.dumps({"type": kind, "object": obj}).encode() + b"\n"

    def close_watches(self) -> None:
        """End all watch streams (as an API server does on shutdown)."""
        self._closing = True
        for watcher in list(self._watchers):
            watcher.queue.put_nowait(None)

    # -- discovery & OpenAPI --------------------------------------------------------------------

    def _version(self) -> dict[str, str]:
        major, minor, patch = self.server_version
        return {"major": str(major), "minor": str(minor), "gitVersion": f"v{major}.{minor}.{patch}",
                "gitCommit": "0" * 40, "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z",
                "goVersion": "go1.24.0", "compiler": "gc", "platform": "linux/amd64",
                "emulator": "clipforge_operator.emulator"}

    def _group_versions(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for rdef in self._defs.values():
            versions = groups.setdefault(rdef.group, [])
            if rdef.version not in versions:
                versions.append(rdef.version)
        for versions in groups.values():
            versions.sort(key=_version_priority, reverse=True)
        return groups

    def _root_paths(self) -> list[str]:
        paths = {"/api", "/apis", "/version", "/healthz", "/livez", "/readyz", "/openapi/v3"}
        for group, versions in self._group_versions().items():
            for version in versions:
                paths.add("/api/v1" if not group else f"/apis/{group}/{version}")
            if group:
                paths.add(f"/apis/{group}")
        return list(paths)

    def _api_groups(self) -> list[dict[str, Any]]:
        builtin_order = [spec["group"] for spec in _BUILTIN_RESOURCES]
        groups = self._group_versions()
        names = sorted((g for g in groups if g), key=lambda g: (g not in builtin_order,
                                                                builtin_order.index(g) if g in builtin_order else 0, g))
        result = []
        for group in names:
            versions = [{"groupVersion": f"{group}/{v}", "version": v} for v in groups[group]]
            result.append({"name": group, "versions": versions, "preferredVersion": versions[0]})
        return result

    def _api_resource_list(self, group: str, version: str) -> dict[str, Any]:
        rdefs = [d for d in self._defs.values() if d.group == group and d.version == version]
        if not rdefs:
            raise _resource_not_found()
        resources = []
        for rdef in sorted(rdefs, key=lambda d: d.plural):
            resources.append({
                "name": rdef.plural, "singularName": rdef.singular, "namespaced": rdef.namespaced,
                "kind": rdef.kind, "verbs": ["create", "delete", "deletecollection", "get", "list", "patch",
                                             "update", "watch"],
                "shortNames": list(rdef.short_names), "categories": list(rdef.categories),
                "storageVersionHash": hashlib.sha256(rdef.qualified_resource.encode()).hexdigest()[:12],
            })
            for sub in sorted(rdef.subresources):
                resources.append({"name": f"{rdef.plural}/{sub}", "singularName": "", "namespaced": rdef.namespaced,
                                  "kind": rdef.kind, "verbs": ["get", "patch", "update"]})
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": rdefs[0].api_version,
                "resources": resources}

    @staticmethod
    def _schema_name(rdef: ResourceDef) -> str:
        if rdef.is_custom:
            return ".".join(reversed(rdef.group.split("."))) + f".{rdef.version}.{rdef.kind}"
        if rdef.group == "apiextensions.k8s.io":
            return f"io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.{rdef.version}.{rdef.kind}"
        short = rdef.group.split(".")[0] if rdef.group else "core"
        return f"io.k8s.api.{short}.{rdef.version}.{rdef.kind}"

    def _openapi_schema(self, rdef: ResourceDef) -> dict[str, Any]:
        gvk = [{"group": rdef.group, "version": rdef.version, "kind": rdef.kind}]
        common = {
            "apiVersion": {"type": "string", "description": "APIVersion defines the versioned schema of this "
                                                            "representation of an object."},
            "kind": {"type": "string", "description": "Kind is a string value representing the REST resource "
                                                      "this object represents."},
            "metadata": {"description": "Standard object's metadata.",
                         "allOf": [{"$ref": f"#/components/schemas/{OBJECT_META_SCHEMA_NAME}"}]},
        }
        if rdef.schema is not None:
            schema = copy.deepcopy(dict(rdef.schema))
            schema.setdefault("type", "object")
            schema["properties"] = dict(schema.get("properties") or {}, **common)
        else:
            schema = {"type": "object", "description": f"{rdef.kind} (served by the ClipForge API emulator, "
                                                       f"which does not publish built-in schemas).",
                      "properties": common, "x-kubernetes-preserve-unknown-fields": True}
        schema["x-kubernetes-group-version-kind"] = gvk
        return schema

    def _openapi_group_version(self, key: str) -> dict[str, Any] | None:
        parts = key.strip("/").split("/")
        if parts[:1] == ["api"] and len(parts) == 2:
            group, version = "", parts[1]
        elif parts[:1] == ["apis"] and len(parts) == 3:
            group, version = parts[1], parts[2]
        else:
            return None
        rdefs = [d for d in self._defs.values() if d.group == group and d.version == version]
        if not rdefs:
            return None
        schemas: dict[str, Any] = {OBJECT_META_SCHEMA_NAME: _OBJECT_META_OPENAPI}
        paths: dict[str, Any] = {}
        base = "/api/v1" if not group else f"/apis/{group}/{version}"
        query = lambda name: {"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": True}}  # noqa: E731
        write_params = [query("dryRun"), query("fieldManager"), query("fieldValidation")]
        for rdef in rdefs:
            name = self._schema_name(rdef)
            schemas[name] = self._openapi_schema(rdef)
            ref = {"$ref": f"#/components/schemas/{name}"}
            gvk = {"group": rdef.group, "version": rdef.version, "kind": rdef.kind}

            def op(action: str, *, params: list[dict[str, Any]] | None = None,
                   content: Iterable[str] = (), rdef: ResourceDef = rdef, ref: dict[str, Any] = ref,
                   gvk: dict[str, str] = gvk) -> dict[str, Any]:
                operation: dict[str, Any] = {
                    "operationId": f"{action}{rdef.kind}", "x-kubernetes-action": action,
                    "x-kubernetes-group-version-kind": gvk,
                    "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": ref}}}},
                }
                if params:
                    operation["parameters"] = params
                if content:
                    operation["requestBody"] = {"required": True, "content": {
                        ct: {"schema": ref if ct == "application/json" else {"type": "object"}} for ct in content}}
                return operation

            prefix = f"{base}/namespaces/{{namespace}}" if rdef.namespaced else base
            collection, item = f"{prefix}/{rdef.plural}", f"{prefix}/{rdef.plural}/{{name}}"
            patch_params = write_params + [query("force")]
            # Strategic merge patches are accepted but not advertised: kubectl would compute them from
            # these (field-less) built-in schemas; unadvertised, it uses its compiled-in types instead.
            patch_types = [t for t in rdef.patch_types if t != STRATEGIC_PATCH]
            paths[collection] = {
                "get": op("list", params=[query("labelSelector"), query("fieldSelector"), query("watch")]),
                "post": op("post", params=write_params, content=["application/json"]),
                "delete": op("deletecollection"),
            }
            paths[item] = {
                "get": op("get"),
                "put": op("put", params=write_params, content=["application/json"]),
                "patch": op("patch", params=patch_params, content=patch_types),
                "delete": op("delete", params=[query("dryRun"), query("propagationPolicy")]),
            }
            for sub in sorted(rdef.subresources):
                paths[f"{item}/{sub}"] = {
                    "get": op("get"),
                    "put": op("put", params=write_params, content=["application/json"]),
                    "patch": op("patch", params=patch_params, content=patch_types),
                }
        return {"openapi": "3.0.0",
                "info": {"title": "Kubernetes (ClipForge API emulator)", "version": self._version()["gitVersion"]},
                "paths": paths, "components": {"schemas": schemas}}

    def _openapi_root(self) -> dict[str, Any]:
        paths = {}
        for group, versions in self._group_versions().items():
            for version in versions:
                key = "api/v1" if not group else f"apis/{group}/{version}"
                doc = self._openapi_group_version(key)
                digest = hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest().upper()
                paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest}"}
        return {"paths": paths}


def _field_doc(type_: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"type": type_, "description": description, **extra}


_OBJECT_META_OPENAPI: dict[str, Any] = {
    "type": "object",
    "description": "ObjectMeta is metadata that all persisted resources must have.",
    "properties": {
        "name": _field_doc("string", "Name must be unique within a namespace."),
        "generateName": _field_doc("string", "An optional prefix to generate a unique name."),
        "namespace": _field_doc("string", "The space within which each name must be unique."),
        "uid": _field_doc("string", "The unique in time and space value for this object."),
        "resourceVersion": _field_doc("string", "An opaque value that represents the version of this object."),
        "generation": _field_doc("integer", "A sequence number of the desired state.", format="int64"),
        "creationTimestamp": _field_doc("string", "When this object was created.", format="date-time"),
        "deletionTimestamp": _field_doc("string", "When this resource will be deleted.", format="date-time"),
        "labels": _field_doc("object", "Map of string keys and values.", additionalProperties={"type": "string"}),
        "annotations": _field_doc("object", "Unstructured key value map.", additionalProperties={"type": "string"}),
        "finalizers": _field_doc("array", "Must be empty before the object is deleted.", items={"type": "string"}),
        "ownerReferences": _field_doc("array", "Objects depended by this object.", items={"type": "object"}),
    },
}


# ----------------------------------------------------------------------------------------------
# The threaded, synchronous entry point
# ----------------------------------------------------------------------------------------------

class KubeAPIEmulator:
    """
    Run :class:`KubernetesAPI` on ``http://127.0.0.1:<free port>`` in a background thread.

    Usable as a context manager (``with KubeAPIEmulator() as k8s: ...``) or via start()/stop().
    The direct helpers (create/get/list/patch/delete/apply_crd/wait_for) run inside the server's
    loop, with the same semantics as HTTP requests, and raise :class:`KubeAPIError`.
    """

    def __init__(
            self,
            *,
            host: str = "127.0.0.1",
            port: int = 0,
            token: str | None = None,
            namespaces: Iterable[str] = DEFAULT_NAMESPACES,
            crds: Iterable[str | os.PathLike[str] | Mapping[str, Any]] = (),
    ) -> None:
        self.host = host
        self._requested_port = port
        self.token = token
        self.api = KubernetesAPI(token=token, namespaces=tuple(namespaces))
        self._initial_crds = list(crds)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: aiohttp.web.BaseRunner | None = None
        self._port: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> KubeAPIEmulator:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> KubeAPIEmulator:
        if self._thread is not None:
            raise RuntimeError("The emulator is already started.")
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, args=(started,), name="kube-api-emulator", daemon=True)
        self._thread.start()
        try:
            started.result(timeout=30)
        except BaseException:
            self._thread.join(timeout=5)
            self._thread = self._loop = None
            raise
        for crd in self._initial_crds:
            self.apply_crd(crd)
        return self

    def _main(self, started: concurrent.futures.Future[None]) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._astart())
        except BaseException as e:
            started.set_exception(e)
            loop.close()
            return
        started.set_result(None)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._astop())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _astart(self) -> None:
        await self.api.__aenter__()
        server = aiohttp.web.Server(self.api, handler_cancellation=True, access_log=None)
        self._runner = aiohttp.web.ServerRunner(server, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        self._port = sock.getsockname()[1]
        site = aiohttp.web.SockSite(self._runner, sock)
        await site.start()

    async def _astop(self) -> None:
        self.api.close_watches()
        await asyncio.sleep(0)
        if self._runner is not None:
            await self._runner.cleanup()
        await self.api.__aexit__(None, None, None)

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._thread = self._loop = None

    # -- connection details ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("The emulator is not started.")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def objects(self) -> Any:
        """
        kmock's object store with histories: ``k8s.objects['v1/configmaps', 'ns', 'name']``.

        The server thread writes it concurrently: for consistent reads while requests are being
        served, prefer get()/list(), or read inside ``k8s.call(lambda: ...)``.
        """
        return self.api.objects

    @property
    def requests(self) -> list[kmock.Request]:
        return list(self.api)

    def kubeconfig(self, *, namespace: str = "default", context: str = "clipforge-emulator") -> dict[str, Any]:
        user = {"token": self.token or "clipforge-emulator"}
        return {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": context, "user": user}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context, "namespace": namespace}}],
            "current-context": context,
        }

    def write_kubeconfig(self, path: str | os.PathLike[str], *, namespace: str = "default",
                         context: str = "clipforge-emulator") -> pathlib.Path:
        """Write a kubeconfig (plain http, bearer token) usable by kubectl, helm, kopf, the python client."""
        target = pathlib.Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(self.kubeconfig(namespace=namespace, context=context), sort_keys=False))
        return target

    def api_client(self, *, namespace: str = "default") -> Any:
        """A ``kubernetes.client.ApiClient`` configured for this emulator (does not touch the globals)."""
        import kubernetes.config

        return kubernetes.config.new_client_from_config_dict(self.kubeconfig(namespace=namespace),
                                                             persist_config=False)

    def connection_info(self, *, namespace: str = "default") -> Any:
        """A ``kopf.ConnectionInfo`` for a ``@kopf.on.login()`` handler."""
        import kopf

        return kopf.ConnectionInfo(server=self.url, token=self.token or "clipforge-emulator", scheme="Bearer",
                                   insecure=True, default_namespace=namespace)

    # -- direct access (runs in the server loop) ---------------------------------------------------

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` inside the server's loop and return its result."""
        if self._loop is None:
            raise RuntimeError("The emulator is not started.")
        result: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                result.set_result(fn(*args, **kwargs))
            except BaseException as e:
                result.set_exception(e)

        self._loop.call_soon_threadsafe(run)
        return result.result(timeout=30)

    def resolve(self, resource: str | kmock.resource | ResourceDef) -> ResourceDef:
        return self.call(self.api.resolve, resource)

    def create(self, body: Mapping[str, Any], *, namespace: str | None = None,
               keep_status: bool = False) -> dict[str, Any]:
        """
        Create an object (namespace: the argument, else the body's, else "default").

        Like the API, a ``status`` subresource drops the body's status on create; with
        ``keep_status=True`` it is written right after (e.g. to seed a RayJob as KubeRay would).
        """
        def run() -> dict[str, Any]:
            rdef = self.api.resolve(f"{body.get('apiVersion', 'v1')}/{body['kind']}")
            ns = namespace or body.get("metadata", {}).get("namespace") or ("default" if rdef.namespaced else None)
            obj = self.api.create_object(rdef, ns, body)[0]
            if keep_status and body.get("status") is not None and "status" in rdef.subresources:
                obj = self.api.patch_object(rdef, ns, obj["metadata"]["name"], {"status": body["status"]},
                                            subresource="status")[0]
            return obj
        return self.call(run)

    def get(self, resource: str | kmock.resource, name: str, *, namespace: str | None = None) -> dict[str, Any]:
        return self.call(lambda: self.api.get_object(self.api.resolve(resource), namespace, name))

    def get_or_none(self, resource: str | kmock.resource, name: str, *,
                    namespace: str | None = None) -> dict[str, Any] | None:
        try:
            return self.get(resource, name, namespace=namespace)
        except KubeAPIError as e:
            if e.code == 404:
                return None
            raise

    def list(self, resource: str | kmock.resource, *, namespace: str | None = None,
             label_selector: str | None = None, field_selector: str | None = None) -> list[dict[str, Any]]:
        return self.call(lambda: self.api.list_objects(self.api.resolve(resource), namespace,
                                               label_selector=label_selector, field_selector=field_selector))

    def patch(self, resource: str | kmock.resource, name: str, patch: Any, *, namespace: str | None = None,
              subresource: str | None = None, content_type: str = MERGE_PATCH) -> dict[str, Any]:
        return self.call(lambda: self.api.patch_object(self.api.resolve(resource), namespace, name, patch,
                                                content_type=content_type, subresource=subresource)[0])

    def delete(self, resource: str | kmock.resource, name: str, *, namespace: str | None = None,
               propagation_policy: str | None = None) -> dict[str, Any]:
        options = {"propagationPolicy": propagation_policy} if propagation_policy else None
        return self.call(lambda: self.api.delete_object(self.api.resolve(resource), namespace, name, options))

    def set_status(self, resource: str | kmock.resource, name: str, status: Mapping[str, Any] | None, *,
                   namespace: str | None = None) -> dict[str, Any]:
        """Merge-patch the status (via the status subresource where there is one), as a controller would."""
        def run() -> dict[str, Any]:
            rdef = self.api.resolve(resource)
            sub = "status" if "status" in rdef.subresources else None
            return self.api.patch_object(rdef, namespace, name, {"status": status}, subresource=sub)[0]
        return self.call(run)

    def compact(self) -> None:
        """Expire the watch history: watches resuming from older resourceVersions get 410 Gone."""
        self.call(self.api.compact)

    def create_namespace(self, name: str) -> dict[str, Any]:
        return self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    def apply_crd(self, crd: str | os.PathLike[str] | Mapping[str, Any]) -> list[dict[str, Any]]:
        """Create or replace CRDs from a dict, or a YAML file/text (multi-document); returns them."""
        if isinstance(crd, Mapping):
            docs = [crd]
        else:
            text = str(crd)
            if "\n" not in text and pathlib.Path(text).exists():
                text = pathlib.Path(text).read_text()
            docs = [doc for doc in yaml.safe_load_all(text) if doc]

        def run() -> list[dict[str, Any]]:
            rdef = self.api._def(CRDS)
            results = []
            for doc in docs:
                name = doc.get("metadata", {}).get("name", "")
                existing = self.api._read((CRDS, None, name))
                if existing is None:
                    results.append(self.api.create_object(rdef, None, doc)[0])
                else:
                    body = dict(copy.deepcopy(doc))
                    body.setdefault("metadata", {})["resourceVersion"] = existing["metadata"]["resourceVersion"]
                    results.append(self.api.update_object(rdef, None, name, body)[0])
            return results
        return self.call(run)

    def wait_for(self, resource: str | kmock.resource, name: str,
                 predicate: Callable[[dict[str, Any] | None], Any], *, namespace: str | None = None,
                 timeout: float = 10.0, interval: float = 0.05) -> dict[str, Any] | None:
        """Poll until ``predicate(obj_or_None)`` is truthy; return the object (TimeoutError if never)."""
        deadline = time.monotonic() + timeout
        while True:
            obj = self.get_or_none(resource, name, namespace=namespace)
            if predicate(obj):
                return obj
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{resource} {namespace}/{name} did not satisfy the condition in {timeout}s; "
                                   f"last seen: {obj!r}")
            time.sleep(interval)

    def wait_for_list(self, resource: str | kmock.resource, predicate: Callable[[list[dict[str, Any]]], Any] = bool,
                      *, namespace: str | None = None, label_selector: str | None = None,
                      field_selector: str | None = None, timeout: float = 10.0,
                      interval: float = 0.05) -> list[dict[str, Any]]:
        """Poll a list until ``predicate(items)`` is truthy (by default: until it is not empty)."""
        deadline = time.monotonic() + timeout
        while True:
            items = self.list(resource, namespace=namespace, label_selector=label_selector,
                              field_selector=field_selector)
            if predicate(items):
                return items
            if time.monotonic() >= deadline:
                raise TimeoutError(f'{resource} in {namespace or "all namespaces"} did not satisfy the condition '
                                   f'in {timeout}s; last seen: {items!r}')
            time.sleep(interval)


def kuberay_crds() -> list[dict[str, Any]]:
    """
    Permissive stand-ins for KubeRay's ``rayjobs.ray.io`` and ``rayclusters.ray.io`` (v1) CRDs.

    Same names, scope, status subresource and printer columns as KubeRay's, but the schemas
    preserve unknown fields instead of KubeRay's full (huge) schemas. Nothing runs the RayJobs:
    tests play KubeRay by writing their status (:meth:`KubeAPIEmulator.set_status`).
    """
    def crd(kind: str, plural: str, columns: list[dict[str, Any]], categories: list[str]) -> dict[str, Any]:
        preserve = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        return {
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.ray.io"},
            "spec": {
                "group": "ray.io", "scope": "Namespaced",
                "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List",
                          "categories": categories},
                "versions": [{
                    "name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                    "additionalPrinterColumns": columns + [
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}],
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                        "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                        "metadata": {"type": "object"}, "spec": preserve, "status": preserve}}},
                }],
            },
        }

    return [
        crd("RayJob", "rayjobs", [
            {"name": "job status", "type": "string", "jsonPath": ".status.jobStatus", "priority": 0},
            {"name": "deployment status", "type": "string", "jsonPath": ".status.jobDeploymentStatus"},
            {"name": "ray cluster name", "type": "string", "jsonPath": ".status.rayClusterName"},
            {"name": "start time", "type": "string", "format": "date-time", "jsonPath": ".status.startTime"},
            {"name": "end time", "type": "string", "format": "date-time", "jsonPath": ".status.endTime"},
        ], ["all"]),
        crd("RayCluster", "rayclusters", [
            {"name": "desired workers", "type": "integer", "jsonPath": ".status.desiredWorkerReplicas"},
            {"name": "available workers", "type": "integer", "jsonPath": ".status.availableWorkerReplicas"},
            {"name": "status", "type": "string", "jsonPath": ".status.state"},
        ], ["all"]),
    ]


def kube_tool(name: str) -> pathlib.Path | None:
    """
    Locate a real ``kubectl``/``helm`` binary: ``$CLIPFORGE_KUBE_TOOLS/<name>``, then
    ``<repo>/.tools/bin/<name>`` (installed by scripts/install-kube-tools.sh), then ``$PATH``.
    """
    candidates = []
    if os.environ.get("CLIPFORGE_KUBE_TOOLS"):
        candidates.append(pathlib.Path(os.environ["CLIPFORGE_KUBE_TOOLS"]) / name)
    candidates.append(pathlib.Path(__file__).resolve().parents[2] / ".tools" / "bin" / name)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    return pathlib.Path(found) if found else None


def main(argv: list[str] | None = None) -> None:
    """``python -m clipforge_operator.emulator``: serve until interrupted (a local playground)."""
    parser = argparse.ArgumentParser(description="Run the ClipForge Kubernetes API emulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default=None, help="require this bearer token")
    parser.add_argument("--kubeconfig", default="emulator.kubeconfig", help="where to write the kubeconfig")
    parser.add_argument("--crd", action="append", default=[], help="CRD YAML files to install (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    with KubeAPIEmulator(host=args.host, port=args.port, token=args.token, crds=args.crd) as emulator:
        path = emulator.write_kubeconfig(args.kubeconfig)
        print(f"Serving the Kubernetes API on {emulator.url}; KUBECONFIG={path.resolve()}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
