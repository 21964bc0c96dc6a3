"""Who may reach a job's Ray cluster: its token Secret and the NetworkPolicy around its pods.

Pure builders and readers, as builders.py's (which puts the token into every Ray container by
reference, builders.ray_auth_env): the Secret's generated name and how to tell this job's from any
other's, the Secret the RayJob reads, and the ingress rules of the job's pods.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from clipforge_operator.builders import DASHBOARD_PORT, LABEL_JOB_UID, RAY_TOKEN_KEY, base_name, child_meta
from clipforge_operator.config import KubeRayPods


def ray_token_secret_prefix(job_name: str) -> str:
    """The token Secret's generateName: the API server appends a suffix nobody can claim beforehand."""
    return f"{base_name(job_name)}-ray-token-"


# What the API server appends to a generateName: 5 characters of this alphabet
# (k8s.io/apimachinery/pkg/util/rand), whatever the prefix.
GENERATED_SUFFIX = "[bcdfghjklmnpqrstvwxz2456789]{5}"


def is_ray_token_secret_name(job_name: str, secret_name: str) -> bool:
    """Whether `secret_name` is a name the API server gives this job's token Secret, and no other job's
    (a job's prefix ends where its generated suffix starts, so no other job's names match it)."""
    return re.fullmatch(re.escape(ray_token_secret_prefix(job_name)) + GENERATED_SUFFIX, secret_name) is not None


def network_policy_name(job_name: str) -> str:
    return f"{base_name(job_name)}-ray"


def build_ray_token_secret(job_name: str, namespace: str, uid: str, token: str) -> dict:
    """The job's Ray token (made once, by the caller, with `secrets`); immutable, owned by the job.

    Its name is generated: no Secret someone made beforehand can pass for it, and the operator,
    which learns the name from the create, never needs to read a Secret back to check whose it is.
    """
    metadata = child_meta("", namespace, job_name, uid)
    del metadata["name"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"generateName": ray_token_secret_prefix(job_name), **metadata},
        "type": "Opaque",
        "immutable": True,
        "stringData": {RAY_TOKEN_KEY: token},
    }


def token_secret_of(rayjob: Mapping) -> str | None:
    """The Secret the RayJob's head container reads the job's token from (None: it reads none)."""
    head = ((((rayjob.get("spec") or {}).get("rayClusterSpec") or {}).get("headGroupSpec") or {})
            .get("template") or {}).get("spec") or {}
    for container in head.get("containers") or []:
        for env in container.get("env") or []:
            ref = (env.get("valueFrom") or {}).get("secretKeyRef") or {}
            if env.get("name") == RAY_TOKEN_KEY and ref.get("name"):
                return ref["name"]
    return None


def build_network_policy(job_name: str, namespace: str, uid: str, kuberay: KubeRayPods) -> dict:
    """Ingress to the job's pods (every attempt's) from its own pods only, and to the dashboard port
    from KubeRay's operator. The ClipForge operator never connects to a Ray cluster: no rule for it."""
    job_pods = {"matchLabels": {LABEL_JOB_UID: uid}}
    operator_namespace = ({"matchLabels": {"kubernetes.io/metadata.name": kuberay.namespace}}
                          if kuberay.namespace else {})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": child_meta(network_policy_name(job_name), namespace, job_name, uid),
        "spec": {
            "podSelector": job_pods,
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": job_pods}]},
                {"from": [{"namespaceSelector": operator_namespace,
                           "podSelector": {"matchLabels": dict(kuberay.labels)}}],
                 "ports": [{"protocol": "TCP", "port": DASHBOARD_PORT}]},
            ],
        },
    }
