"""The administrator's policy for the Ray pods of jobs: which images, service accounts and Secrets.

Whoever may create a VideoCurationJob chooses its pods' image, service account and credentials
Secret; without a policy, creating a job is the right to run any image as any service account of
the namespace. The chart's `jobPolicy` values reach the operator as JSON in CLIPFORGE_JOB_POLICY;
a job that asks for anything else fails before the operator creates anything for it.

    allowedImages             image references by prefix: "registry.example.com/ml/" admits everything
                              under that path; "docker.io/clipforge/pipeline" that repository (any tag
                              or digest). References are compared in their full form (docker.io/...).
    allowedServiceAccounts    names of service accounts jobs may give; a job that gives none (the
                              namespace's default account) is always admitted.
    allowedCredentialsSecrets names of the Secrets jobs may give as storage.credentialsSecret.

"*" in a list admits anything for that field. With no CLIPFORGE_JOB_POLICY at all (an operator run
by hand), nothing is restricted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from clipforge.spec import VideoCurationJobSpec

ANY = "*"
DEFAULT_REGISTRY = "docker.io"
POLICY_ENV = "CLIPFORGE_JOB_POLICY"
_FIELDS = {"allowedImages": "images", "allowedServiceAccounts": "service_accounts",
           "allowedCredentialsSecrets": "credentials_secrets"}


class PolicyError(ValueError):
    """CLIPFORGE_JOB_POLICY is not a policy; the message says what is wrong with it."""


@dataclass(frozen=True)
class JobPolicy:
    images: tuple[str, ...] = (ANY,)
    service_accounts: tuple[str, ...] = (ANY,)
    credentials_secrets: tuple[str, ...] = (ANY,)


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
    return "." in part or ":" in part or part == "localhost"


def normalize_image(reference: str) -> str:
    """An image reference in full, as the container runtime resolves it: `clipforge/pipeline:1` is
    `docker.io/clipforge/pipeline:1`, `ubuntu` and `docker.io/ubuntu` are `docker.io/library/ubuntu`."""
    first, slash, rest = reference.partition("/")
    if slash and _is_registry(first):
        registry, path = first, rest
    else:
        registry, path = DEFAULT_REGISTRY, reference
    if registry == DEFAULT_REGISTRY and path and "/" not in path:
        path = f"library/{path}"
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


def violations(spec: VideoCurationJobSpec, policy: JobPolicy) -> list[str]:
    """What in `spec` (its image filled in: pipeline_pods.with_pipeline_image) the policy refuses, one problem
    per field, each naming the field (empty: admitted)."""
    problems = []
    cluster = spec.cluster
    if not image_allowed(cluster.image, policy.images):
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
    return problems
