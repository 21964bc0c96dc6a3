"""The administrator's policy for the Ray pods of jobs: images, service accounts, Secrets, nodes.

Whoever may create a VideoCurationJob chooses its pods' image, service account, credentials Secret
and nodes; without a policy, creating a job is the right to run any image as any service account of
the namespace. The chart's `jobPolicy` values reach the operator as JSON in CLIPFORGE_JOB_POLICY.
The operator judges the spec each RayJob is built from, first attempt and every retry, when it
builds it: a job that asks for anything else fails with nothing built from that spec.

    allowedImages             image references by prefix: "registry.example.com/ml/" admits everything
                              under that path; "docker.io/clipforge/pipeline" that repository (any tag
                              or digest). References are compared in full, as the container runtime
                              reads them (`Evil/x` is on the host Evil; `ubuntu` is docker.io/library/ubuntu).
    allowedServiceAccounts    names of service accounts jobs may give; a job that gives none (the
                              namespace's default account) is always admitted.
    allowedCredentialsSecrets names of the Secrets jobs may give as storage.credentialsSecret.
    allowedTolerations        taint keys the pods' tolerations may name. Only "*" admits a toleration
                              without a key (operator Exists), which tolerates every taint of every node.
    allowedNodeSelectors      node label keys the pods' nodeSelectors may name: "pool" any value of
                              it, "pool=gpu" that value only.

"*" in a list admits anything for that field; a key not given is "*". With no CLIPFORGE_JOB_POLICY
at all (an operator run by hand), nothing is restricted. Whatever the policy, cluster.env may not set
what changes how Ray, Python or the dynamic loader start (FORBIDDEN_ENV_PREFIXES): job code runs in
the pods anyway, but these would run code in the containers' other processes, KubeRay's autoscaler
and the dashboard gate among them, before any of the job's own.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from clipforge.spec import Toleration, TolerationOperator, VideoCurationJobSpec

ANY = "*"
DEFAULT_REGISTRY = "docker.io"
LEGACY_DEFAULT_REGISTRY = "index.docker.io"  # the runtime reads it as docker.io
OFFICIAL_REPOSITORY_PREFIX = "library/"
POLICY_ENV = "CLIPFORGE_JOB_POLICY"
_FIELDS = {"allowedImages": "images", "allowedServiceAccounts": "service_accounts",
           "allowedCredentialsSecrets": "credentials_secrets", "allowedTolerations": "tolerations",
           "allowedNodeSelectors": "node_selectors"}
# cluster.env names no policy admits: Python's start-up (PYTHONPATH, PYTHONSTARTUP, ...), the dynamic
# loader's (LD_PRELOAD, ...), bash's start-up file, and Ray's and KubeRay's own settings.
FORBIDDEN_ENV_PREFIXES = ("PYTHON", "LD_", "RAY_", "KUBERAY_")
FORBIDDEN_ENV_NAMES = ("BASH_ENV",)

# An image reference as github.com/distribution/reference reads it (containerd and CRI-O use it):
# [domain/]path[:tag][@digest], every path component lowercase.
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REFERENCE = re.compile(rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
                        r"(?::[\w][\w.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]+)?")


class PolicyError(ValueError):
    """CLIPFORGE_JOB_POLICY is not a policy; the message says what is wrong with it."""


@dataclass(frozen=True)
class JobPolicy:
    images: tuple[str, ...] = (ANY,)
    service_accounts: tuple[str, ...] = (ANY,)
    credentials_secrets: tuple[str, ...] = (ANY,)
    tolerations: tuple[str, ...] = (ANY,)
    node_selectors: tuple[str, ...] = (ANY,)


def parse_policy(text: str | None) -> JobPolicy:
    """The policy CLIPFORGE_JOB_POLICY holds (JSON, the chart's jobPolicy); unrestricted when unset."""
    if text is None or not text.strip():
        return JobPolicy()
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise PolicyError(f"{POLICY_ENV} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PolicyError(f"{POLICY_ENV} must be a JSON object with {', '.join(_FIELDS)}")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise PolicyError(f"{POLICY_ENV}: unknown key {', '.join(unknown)} (known: {', '.join(_FIELDS)})")
    values = {}
    for key, field in _FIELDS.items():
        items = data.get(key, [ANY])
        if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
            raise PolicyError(f"{POLICY_ENV}: {key} must be a list of non-empty strings")
        values[field] = tuple(items)
    return JobPolicy(**values)


def _is_registry(part: str) -> bool:
    """Whether the first component of a reference names a host, as the runtime decides it: a dot, a
    port, localhost, or any uppercase letter (a Docker Hub path is lowercase; `Evil/x` is the host Evil)."""
    return "." in part or ":" in part or part == "localhost" or part.lower() != part


def is_image_reference(reference: str) -> bool:
    """Whether the container runtime would read `reference` as an image at all."""
    return _REFERENCE.fullmatch(reference) is not None


def normalize_image(reference: str) -> str:
    """An image reference in full, as the container runtime resolves it: `clipforge/pipeline:1` is
    `docker.io/clipforge/pipeline:1`; `ubuntu`, `docker.io/ubuntu` and `index.docker.io/ubuntu` are
    `docker.io/library/ubuntu`."""
    first, slash, rest = reference.partition("/")
    if slash and _is_registry(first):
        registry, path = first, rest
    else:
        registry, path = DEFAULT_REGISTRY, reference
    if registry == LEGACY_DEFAULT_REGISTRY:
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and path and "/" not in path:
        path = OFFICIAL_REPOSITORY_PREFIX + path
    return f"{registry}/{path}"


def _prefix(prefix: str) -> str:
    """An allowed-images entry in full: a bare registry (`registry.example.com`) means everything on it."""
    if "/" not in prefix and _is_registry(prefix):
        return prefix + "/"
    if prefix.endswith("/"):
        return normalize_image(prefix + "x")[:-1]  # a path prefix: normalized as an image below it would be
    return normalize_image(prefix)


def image_allowed(image: str, prefixes: tuple[str, ...]) -> bool:
    """Whether `image` is under one of `prefixes`. An entry ending in / admits any image below that path; any
    other admits itself, with any tag or digest, and the paths below it (so `ml/pipe` never admits `ml/pipeline`)."""
    if not is_image_reference(image):
        return False
    full = normalize_image(image)
    for entry in prefixes:
        if entry == ANY:
            return True
        wanted = _prefix(entry)
        if wanted.endswith("/") and full.startswith(wanted):
            return True
        if full == wanted or (full.startswith(wanted) and full[len(wanted)] in "/:@"):
            return True
    return False


def _listed(value: str, allowed: tuple[str, ...]) -> bool:
    return ANY in allowed or value in allowed


def _choices(allowed: tuple[str, ...]) -> str:
    return ", ".join(allowed) if allowed else "none"


# The cluster's own namespaces: no job runs there, whatever RBAC would allow.
SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")


def namespace_refused(namespace: str) -> list[str]:
    """Why no job may run in `namespace` (empty: it may)."""
    if namespace in SYSTEM_NAMESPACES:
        return [f"namespace {namespace}: a system namespace; jobs run in their teams' namespaces"]
    return []


def toleration_allowed(toleration: Toleration, keys: tuple[str, ...]) -> bool:
    """A toleration naming an allowed taint key; one without a key (operator Exists: every taint) only with "*"."""
    if ANY in keys:
        return True
    return bool(toleration.key) and toleration.key in keys


def node_selector_allowed(key: str, value: str, entries: tuple[str, ...]) -> bool:
    """`key: value` of a nodeSelector, admitted by an entry naming the key ("pool") or the pair ("pool=gpu")."""
    return ANY in entries or key in entries or f"{key}={value}" in entries


def forbidden_env(name: str) -> bool:
    return name in FORBIDDEN_ENV_NAMES or name.startswith(FORBIDDEN_ENV_PREFIXES)


def _pod_groups(spec: VideoCurationJobSpec) -> list[tuple[str, dict[str, str], list[Toleration]]]:
    """(field path, nodeSelector, tolerations) of the head and every worker group the spec gives."""
    cluster = spec.cluster
    groups = [("spec.cluster.head", cluster.head), ("spec.cluster.cpuWorkers", cluster.cpu_workers)]
    groups += [(f"spec.cluster.gpuWorkers.{stage}", group)
               for stage, group in cluster.gpu_workers if group is not None]
    return [(path, group.node_selector, group.tolerations) for path, group in groups]


def _placement_violations(spec: VideoCurationJobSpec, policy: JobPolicy) -> list[str]:
    problems = []
    for path, node_selector, tolerations in _pod_groups(spec):
        for key, value in sorted(node_selector.items()):
            if not node_selector_allowed(key, value, policy.node_selectors):
                problems.append(f"{path}.nodeSelector: {key}={value} is not a node label jobs may select"
                                f" (allowed: {_choices(policy.node_selectors)})")
        for index, toleration in enumerate(tolerations):
            if toleration_allowed(toleration, policy.tolerations):
                continue
            if toleration.key:
                problems.append(f"{path}.tolerations[{index}]: the taint key {toleration.key} is not one jobs may"
                                f" tolerate (allowed: {_choices(policy.tolerations)})")
            else:
                what = ("tolerates every taint" if toleration.operator == TolerationOperator.exists
                        else "names no taint key")
                problems.append(f"{path}.tolerations[{index}]: a toleration without a key {what}; name the taint"
                                f" key (allowed: {_choices(policy.tolerations)})")
    return problems


def violations(spec: VideoCurationJobSpec, policy: JobPolicy) -> list[str]:
    """What in `spec` (its image filled in: pipeline_pods.with_pipeline_image) the policy refuses, one problem
    per field, each naming the field (empty: admitted)."""
    problems = []
    cluster = spec.cluster
    if not is_image_reference(cluster.image):
        problems.append(f"spec.cluster.image: {cluster.image} is not an image reference the container runtime"
                        " reads ([registry/]path[:tag][@digest], the path in lowercase)")
    elif not image_allowed(cluster.image, policy.images):
        problems.append(f"spec.cluster.image: {cluster.image} is not an allowed image"
                        f" (allowed: {_choices(policy.images)})")
    account = cluster.service_account_name
    if account and account != "default" and not _listed(account, policy.service_accounts):
        allowed = (f"allowed: {', '.join(policy.service_accounts)}, or unset for the namespace's default"
                   if policy.service_accounts else "leave it unset: only the namespace's default is allowed")
        problems.append(f"spec.cluster.serviceAccountName: {account} is not an allowed service account ({allowed})")
    secret = spec.storage.credentials_secret
    if secret and not _listed(secret, policy.credentials_secrets):
        problems.append(f"spec.storage.credentialsSecret: {secret} is not a Secret jobs may use"
                        f" (allowed: {_choices(policy.credentials_secrets)})")
    problems += _placement_violations(spec, policy)
    refused_env = sorted({e.name for e in cluster.env if forbidden_env(e.name)})
    if refused_env:
        problems.append(f"spec.cluster.env: {', '.join(refused_env)} may not be set: no job sets PYTHON*, LD_*,"
                        " BASH_ENV, RAY_* or KUBERAY_* (they change how the pods' processes start)")
    return problems
