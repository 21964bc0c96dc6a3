"""`python -m clipforge_operator`: run the operator (kopf) with a liveness endpoint and metrics.

    python -m clipforge_operator --all-namespaces
    python -m clipforge_operator --namespace videos --namespace videos-dev

The liveness endpoint (default http://0.0.0.0:8080/healthz) answers 200 while kopf's watchers
are alive; metrics are served on --metrics-port (default 9090, 0 disables) at /metrics. The
settings the chart passes in the environment are in config.py.
"""

from __future__ import annotations

import os
import sys

from clipforge_operator.config import parse_config


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv, os.environ)

    import kopf

    from clipforge_operator import handlers
    from clipforge_operator.logs import configure

    configure(json_logs=config.json_logs, verbose=config.verbose)
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
