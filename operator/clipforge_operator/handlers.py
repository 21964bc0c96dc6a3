"""kopf handlers: thin wrappers that hand each event to clipforge_operator.reconcile.

- create/resume of a VideoCurationJob: make its ConfigMap and RayJob, set its status;
- any change of an owned RayJob: recompute the job's phase, conditions and names;
- a timer (every OperatorConfig.progress_interval seconds) while the job is not finished:
  progress from the pipeline's progress.json, the pending deadline, due retries;
- spec updates: scaling fields patch the live RayCluster, pipeline fields are refused;
- deletion: delete the RayJobs (stopping the Ray cluster) and the ConfigMap.

`registry(config)` registers them for `kopf.run`, which `python -m clipforge_operator` (__main__.py)
calls with the parsed OperatorConfig in kopf's memo (`memo.config`); at startup the handlers make
the one reconcile `Context` they share (`memo.context`) from it.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from clipforge.spec import API_GROUP, API_VERSION, PLURAL, TERMINAL_PHASES
from clipforge_operator import builders as b
from clipforge_operator import metrics
from clipforge_operator import reconcile as r
from clipforge_operator import spec_updates
from clipforge_operator.config import OperatorConfig
from clipforge_operator.kube import Kube, load_config, status_message
from clipforge_operator.status import EventRecord

log = logging.getLogger(__name__)

MAX_EVENT_MESSAGE = 1000
HANDLER_THREADS = 8  # kopf's pool for the synchronous handlers: jobs reconciled at once
TRACKER = metrics.PhaseTracker()


def _emit(body: Mapping, event: EventRecord) -> None:
    kopf.event(dict(body), type=event.type, reason=event.reason, message=event.message[:MAX_EVENT_MESSAGE])


def connect(config: OperatorConfig) -> r.Context:
    """The reconcile context every handler shares: one API client, one lock per job."""
    load_config()
    return r.Context(kube=Kube(), emit=_emit, read_secrets=config.read_secrets, policy=config.policy,
                     kuberay=config.kuberay, pipeline_image=config.pipeline_image)


def _run(handler: str, memo: kopf.Memo, fn: Any, namespace: str, name: str, **kwargs: Any) -> Any:
    try:
        result = metrics.timed(handler, fn, memo.context, namespace, name, **kwargs)
    except ApiException as exc:
        # Transient API trouble (conflicts, throttling, 5xx): kopf retries the handler. The body of
        # an API error is a Status object; it never carries Secret data. Its message says what was
        # refused (for a 403: the user, verb, resource and namespace), which the operator's log needs.
        message = status_message(exc)
        raise kopf.TemporaryError(f"Kubernetes API error {exc.status} {exc.reason}{': ' + message if message else ''}",
                                  delay=10) from None
    if fn is r.reconcile:
        TRACKER.track(namespace, name, result)
    return result


def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config: OperatorConfig = memo.config
    # Keep kopf's bookkeeping in annotations under our group: the CRD's structural schema
    # prunes unknown status fields, and status belongs to the job's users.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    # Events name the operator and its pod (`kubectl describe`'s "From"), not kopf's "kopf"/"dev".
    settings.posting.reporting_component = b.OPERATOR_NAME
    settings.posting.reporting_instance = socket.gethostname()  # the pod's name
    settings.execution.max_workers = HANDLER_THREADS
    settings.networking.request_timeout = 60
    # A job deleted while its timer tick runs keeps its finalizer until kopf looks at the timer
    # again: every 60 s by default, which `kubectl delete` sat out. A tick is one short reconcile.
    settings.background.cancellation_polling = 1
    # Namespace mode has no cluster-scoped RBAC: watch the given namespaces and the resources
    # present at startup, without observing namespaces and CRDs (which would only log warnings).
    settings.scanning.disabled = not config.all_namespaces
    memo.context = connect(config)  # now, so a bad kubeconfig stops the operator at start-up
    if config.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(config.metrics_port, registry=metrics.REGISTRY)


def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    """kopf and our client share one configuration: in-cluster, else $KUBECONFIG read at login time.

    (kopf's built-in login would use the kubeconfig path the client fixed when it was imported.)
    kopf calls this again when the API answers 401, which picks up rotated service-account tokens.
    """
    from kubernetes import client

    load_config()
    cfg = client.Configuration.get_default_copy()
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization") or ""
    scheme, _, token = header.partition(" ") if " " in header else ("", "", header)
    return kopf.ConnectionInfo(
        server=cfg.host, ca_path=cfg.ssl_ca_cert, insecure=not cfg.verify_ssl,
        username=cfg.username or None, password=cfg.password or None,
        scheme=scheme or None, token=token or None,
        certificate_path=cfg.cert_file, private_key_path=cfg.key_file,
        trust_env=settings.networking.trust_env,
    )


def jobs_probe(**_: Any) -> dict[str, int]:
    return TRACKER.snapshot()


def _active(status: Mapping, **_: Any) -> bool:
    return (status or {}).get("phase") not in TERMINAL_PHASES


def job_created(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    _run("create", memo, r.reconcile, namespace, name)


def job_spec_updated(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    _run("update", memo, spec_updates.update_spec, namespace, name)
    _run("update", memo, r.reconcile, namespace, name)


def job_tick(namespace: str, name: str, memo: kopf.Memo, status: Mapping, **_: Any) -> None:
    _run("timer", memo, r.reconcile, namespace, name, poll_progress=True)
    TRACKER.progress(namespace, name, (status or {}).get("progress"))  # as of this tick's start


def job_deleted(namespace: str, name: str, uid: str, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    deleted = _run("delete", memo, r.delete_children, namespace, name, uid=uid)
    TRACKER.forget(namespace, name)
    if deleted:
        logger.info("deleted %s", ", ".join(deleted))


def rayjob_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    owner = r.owner_of(body)
    if owner is not None:
        _run("rayjob", memo, r.reconcile, *owner)


def registry(config: OperatorConfig) -> kopf.OperatorRegistry:
    """The handlers above, registered for kopf.run; the timer ticks every config.progress_interval seconds."""
    reg = kopf.OperatorRegistry()
    job = (API_GROUP, API_VERSION, PLURAL)
    kopf.on.startup(registry=reg)(startup)
    kopf.on.login(registry=reg)(login)
    kopf.on.probe(id="jobs", registry=reg)(jobs_probe)
    kopf.on.resume(*job, registry=reg)(job_created)
    kopf.on.create(*job, registry=reg)(job_created)
    kopf.on.update(*job, field="spec", registry=reg)(job_spec_updated)
    kopf.timer(*job, interval=config.progress_interval, when=_active, registry=reg)(job_tick)
    kopf.on.delete(*job, registry=reg)(job_deleted)
    kopf.on.event(b.RAY_GROUP, b.RAY_VERSION, b.RAYJOB_PLURAL, labels={b.LABEL_MANAGED_BY: b.OPERATOR_NAME},
                  registry=reg)(rayjob_changed)
    return reg
