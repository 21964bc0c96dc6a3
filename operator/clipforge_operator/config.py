"""The operator's settings: one `OperatorConfig`, parsed once at start from its arguments and environment.

The chart's Deployment (charts/clipforge-operator/templates/deployment.yaml) passes the watch scope,
liveness endpoint, metrics port, log format and secret reading as arguments, and four values as
environment variables: CLIPFORGE_PROGRESS_INTERVAL (seconds between progress reads, 0.5 to 30,
default 15), CLIPFORGE_JOB_POLICY (JSON, see policy.py; unset: no restriction),
CLIPFORGE_KUBERAY_PODS (JSON, see KubeRayPods; unset: KubeRay's chart's labels in any namespace) and
CLIPFORGE_PIPELINE_IMAGE (the image of jobs that name none; unset: clipforge/pipeline:<version>).
A setting that does not parse stops the operator here, before it connects. `__main__` hands the
result to kopf's memo, where the handlers find it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from clipforge.spec import DEFAULT_IMAGE
from clipforge_operator.policy import POLICY_ENV, JobPolicy, parse_policy

PROGRESS_INTERVAL_ENV = "CLIPFORGE_PROGRESS_INTERVAL"
KUBERAY_PODS_ENV = "CLIPFORGE_KUBERAY_PODS"
PIPELINE_IMAGE_ENV = "CLIPFORGE_PIPELINE_IMAGE"
PROGRESS_INTERVAL_RANGE = (0.5, 30.0)  # below: needless load on storage; above: a stale status.progress
DEFAULT_PROGRESS_INTERVAL = 15.0


@dataclass(frozen=True)
class KubeRayPods:
    """Where the KubeRay operator runs, which polls a job's dashboard (through the gate) for its status."""

    namespace: str = ""  # empty: any namespace
    labels: tuple[tuple[str, str], ...] = (("app.kubernetes.io/name", "kuberay-operator"),)

    @classmethod
    def from_json(cls, text: str | None) -> KubeRayPods:
        """From {"namespace": "...", "podLabels": {...}} (the chart's `kuberay` values); None: the defaults."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
            namespace, pod_labels = data.get("namespace") or "", data.get("podLabels") or {}
            if not (isinstance(namespace, str) and isinstance(pod_labels, dict) and pod_labels
                    and all(isinstance(k, str) and isinstance(v, str) for k, v in pod_labels.items())):
                raise ValueError
        except (ValueError, AttributeError):
            raise ValueError(f"the KubeRay operator's pods: want {{\"namespace\": str, \"podLabels\":"
                             f" {{str: str, ...}}}} with at least one label, got {text!r}") from None
        return cls(namespace, tuple(sorted(pod_labels.items())))


@dataclass(frozen=True)
class OperatorConfig:
    """Everything the operator is told at start; the handlers get it from kopf's memo."""

    namespaces: tuple[str, ...] = ()  # watched namespaces (globs allowed); empty with all_namespaces
    all_namespaces: bool = False
    liveness: str = "http://0.0.0.0:8080/healthz"  # kopf's liveness endpoint; empty: none
    metrics_port: int = 9090  # 0: no metrics endpoint
    json_logs: bool = True
    verbose: bool = False
    read_secrets: bool = True  # read storage.credentialsSecret to fetch a job's S3 progress (false: none fetched)
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL
    policy: JobPolicy = JobPolicy()  # the images, service accounts and Secrets jobs may use
    kuberay: KubeRayPods = KubeRayPods()  # admitted to the jobs' dashboards by their NetworkPolicy
    pipeline_image: str = DEFAULT_IMAGE  # of the Ray pods of jobs that set no spec.cluster.image


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m clipforge_operator", description="ClipForge operator.")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[],
                       help="watch this namespace (repeatable; globs allowed)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    parser.add_argument("--liveness", default=OperatorConfig.liveness, help="kopf liveness endpoint URL")
    parser.add_argument("--metrics-port", type=int, default=OperatorConfig.metrics_port,
                        help="Prometheus metrics port; 0 disables")
    parser.add_argument("--log-format", choices=("json", "text"), default="json")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--no-read-secrets", action="store_true",
                        help="never read storage.credentialsSecret, and so no job's reports from S3 (the operator's own"
                             " identity never reads a tenant's bucket)")
    return parser


def _progress_interval(text: str | None) -> float:
    if text is None:
        return DEFAULT_PROGRESS_INTERVAL
    low, high = PROGRESS_INTERVAL_RANGE
    try:
        return min(high, max(low, float(text)))
    except ValueError:
        raise ValueError(f"${PROGRESS_INTERVAL_ENV}: not a number of seconds: {text!r}") from None


def parse_config(argv: Sequence[str] | None, environ: Mapping[str, str]) -> OperatorConfig:
    """The operator's settings from its command line and environment; exits with a usage error naming
    what does not parse (a bad policy, a bad KubeRay selector, no watch scope)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.namespace and not args.all_namespaces:
        parser.error("give --namespace NAME (repeatable) or --all-namespaces")
    try:
        policy = parse_policy(environ.get(POLICY_ENV))
        interval = _progress_interval(environ.get(PROGRESS_INTERVAL_ENV))
    except ValueError as exc:  # a PolicyError too; each message names its variable
        parser.error(str(exc))
    try:
        kuberay = KubeRayPods.from_json(environ.get(KUBERAY_PODS_ENV))
    except ValueError as exc:
        parser.error(f"${KUBERAY_PODS_ENV}: {exc}")
    return OperatorConfig(
        namespaces=tuple(args.namespace), all_namespaces=args.all_namespaces, liveness=args.liveness,
        metrics_port=args.metrics_port, json_logs=args.log_format == "json", verbose=args.verbose,
        read_secrets=not args.no_read_secrets, progress_interval=interval, policy=policy, kuberay=kuberay,
        pipeline_image=environ.get(PIPELINE_IMAGE_ENV) or DEFAULT_IMAGE,
    )

