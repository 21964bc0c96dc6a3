"""`python -m clipforge_operator`: run the operator (kopf) with a liveness endpoint and metrics.

    python -m clipforge_operator --all-namespaces
    python -m clipforge_operator --namespace videos --namespace videos-dev

The liveness endpoint (default http://0.0.0.0:8080/healthz) answers 200 while kopf's watchers
are alive; metrics are served on --metrics-port (default 9090, 0 disables) at /metrics.
"""

from __future__ import annotations

import argparse
import os
import sys

from clipforge_operator.builders import KUBERAY_PODS_ENV, KubeRayPods
from clipforge_operator.policy import POLICY_ENV, PolicyError, parse_policy


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m clipforge_operator", description="ClipForge operator.")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[],
                       help="watch this namespace (repeatable; globs allowed)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    parser.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="kopf liveness endpoint URL")
    parser.add_argument("--metrics-port", type=int, default=int(os.environ.get("CLIPFORGE_METRICS_PORT", "9090")),
                        help="Prometheus metrics port; 0 disables")
    parser.add_argument("--log-format", choices=("json", "text"), default="json")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--no-read-secrets", action="store_true",
                        help="never read storage.credentialsSecret; fetch S3 progress with the operator's own credentials")
    args = parser.parse_args(argv)
    if not args.namespace and not args.all_namespaces:
        parser.error("give --namespace NAME (repeatable) or --all-namespaces")
    try:  # a policy that does not parse stops the operator here, not in its first reconcile
        parse_policy(os.environ.get(POLICY_ENV))
    except PolicyError as exc:
        parser.error(str(exc))
    try:
        KubeRayPods.from_json(os.environ.get(KUBERAY_PODS_ENV))
    except ValueError as exc:
        parser.error(f"${KUBERAY_PODS_ENV}: {exc}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["CLIPFORGE_METRICS_PORT"] = str(args.metrics_port)
    if args.no_read_secrets:
        os.environ["CLIPFORGE_READ_SECRETS"] = "false"
    if not args.all_namespaces:
        os.environ["CLIPFORGE_SCANNING"] = "false"

    import kopf

    from clipforge_operator import handlers  # noqa: F401 - registers the handlers
    from clipforge_operator.logs import configure

    configure(json_logs=args.log_format == "json", verbose=args.verbose)
    kopf.run(
        clusterwide=args.all_namespaces,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness or None,
        standalone=True,  # one replica (Recreate): no peering objects needed
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
