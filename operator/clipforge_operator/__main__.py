"""`python -m clipforge_operator`: run the operator (kopf) with a liveness endpoint and metrics.

    python -m clipforge_operator --all-namespaces
    python -m clipforge_operator --namespace videos --namespace videos-dev

The liveness endpoint (default http://0.0.0.0:8080/healthz) answers 200 while kopf's watchers
are alive; metrics are served on --metrics-port (default 9090, 0 disables) at /metrics. The
settings the chart passes in the environment are in config.py.

Before it serves any job it checks that the installed KubeRay's RayJob schema has every field it
sends (kuberay_schema.py); if not, it says which and exits with status 1.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime

from clipforge_operator.config import parse_config


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv, os.environ)

    import kopf

    from clipforge_operator import handlers
    from clipforge_operator.kube import Kube, load_config
    from clipforge_operator.kuberay_schema import check_kuberay, own_pod
    from clipforge_operator.logs import configure

    configure(json_logs=config.json_logs, verbose=config.verbose)
    load_config()
    if not check_kuberay(Kube(), datetime.now(UTC), own_pod()):
        return 1
    kopf.run(
        registry=handlers.registry(config),
        memo=kopf.Memo(config=config),
        clusterwide=config.all_namespaces,
        namespaces=list(config.namespaces),
        liveness_endpoint=config.liveness or None,
        standalone=True,  # one replica (Recreate): no peering objects needed
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
