"""kopf handlers: thin wrappers that hand each event to clipforge_operator.reconcile.

- create/resume of a VideoCurationJob: make its ConfigMap and RayJob, set its status;
- any change of an owned RayJob: recompute the job's phase, conditions and names;
- a timer (every CLIPFORGE_PROGRESS_INTERVAL seconds, at most 30) while the job is not finished:
  progress from the pipeline's progress.json, the pending deadline, due retries;
- spec updates: scaling fields patch the live RayCluster, pipeline fields are refused;
- deletion: delete the RayJobs (stopping the Ray cluster) and the ConfigMap.

Run with `python -m clipforge_operator` (see __main__.py) or `kopf run -m clipforge_operator.handlers`.
Settings from the environment: CLIPFORGE_METRICS_PORT (default 9090, 0 disables),
CLIPFORGE_READ_SECRETS (default true: read storage.credentialsSecret to fetch S3 progress),
CLIPFORGE_PROGRESS_INTERVAL (seconds, default 15), CLIPFORGE_SCANNING (default true: follow
namespaces and CRDs appearing at runtime; __main__ turns it off in namespace mode),
CLIPFORGE_WORKERS (threads for the synchronous handlers, default 8), CLIPFORGE_JOB_POLICY (the images,
service accounts and Secrets jobs may use, JSON; see policy.py; unset: no restriction),
CLIPFORGE_KUBERAY_PODS (the KubeRay operator's namespace and pod labels, JSON, admitted to the jobs'
dashboards by their NetworkPolicy; unset: pods labelled app.kubernetes.io/name=kuberay-operator anywhere).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from clipforge.spec import API_GROUP, API_VERSION, PLURAL, TERMINAL_PHASES
from clipforge_operator import builders as b
from clipforge_operator import metrics
from clipforge_operator import reconcile as r
from clipforge_operator.kube import Kube, load_config
from clipforge_operator.policy import POLICY_ENV, parse_policy

log = logging.getLogger(__name__)


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in ("1", "true", "yes", "on")


PROGRESS_INTERVAL = min(30.0, max(0.5, float(os.environ.get("CLIPFORGE_PROGRESS_INTERVAL", "15"))))
MAX_EVENT_MESSAGE = 1000
TRACKER = metrics.PhaseTracker()
_metrics_started = False


def _emit(body: Mapping, event: b.EventRecord) -> None:
    kopf.event(dict(body), type=event.type, reason=event.reason, message=event.message[:MAX_EVENT_MESSAGE])


def _context(memo: kopf.Memo) -> r.Context:
    context = getattr(memo, "clipforge", None)
    if context is None:  # made at startup, or on first use by handlers registered elsewhere
        load_config()
        context = memo.clipforge = r.Context(kube=Kube(), emit=_emit,
                                              read_secrets=_env_bool("CLIPFORGE_READ_SECRETS", True),
                                              policy=parse_policy(os.environ.get(POLICY_ENV)),
                                              kuberay=b.KubeRayPods.from_json(os.environ.get(b.KUBERAY_PODS_ENV)))
    return context


def _status_message(exc: ApiException) -> str:
    try:
        message = json.loads(exc.body or "{}").get("message")
    except (ValueError, AttributeError):
        return ""
    return f": {message}" if isinstance(message, str) and message else ""


def _run(handler: str, memo: kopf.Memo, fn: Any, namespace: str, name: str, **kwargs: Any) -> Any:
    try:
        result = metrics.timed(handler, fn, _context(memo), namespace, name, **kwargs)
    except ApiException as exc:
        # Transient API trouble (conflicts, throttling, 5xx): kopf retries the handler. The body of
        # an API error is a Status object; it never carries Secret data. Its message says what was
        # refused (for a 403: the user, verb, resource and namespace), which the operator's log needs.
        raise kopf.TemporaryError(f"Kubernetes API error {exc.status} {exc.reason}{_status_message(exc)}",
                                  delay=10) from None
    if fn is r.reconcile:
        TRACKER.track(namespace, name, result)
    return result


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    global _metrics_started
    # Keep kopf's bookkeeping in annotations under our group: the CRD's structural schema
    # prunes unknown status fields, and status belongs to the job's users.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.execution.max_workers = int(os.environ.get("CLIPFORGE_WORKERS", "8"))
    settings.networking.request_timeout = 60
    # A job deleted while its timer tick runs keeps its finalizer until kopf looks at the timer
    # again: every 60 s by default, which `kubectl delete` sat out. A tick is one short reconcile.
    settings.background.cancellation_polling = 1
    # Namespace mode has no cluster-scoped RBAC: watch the given namespaces and the resources
    # present at startup, without observing namespaces and CRDs (which would only log warnings).
    settings.scanning.disabled = not _env_bool("CLIPFORGE_SCANNING", True)
    _context(memo)  # connect now, so a bad kubeconfig stops the operator at start-up
    port = int(os.environ.get("CLIPFORGE_METRICS_PORT", "9090"))
    if port and not _metrics_started:
        from prometheus_client import start_http_server

        start_http_server(port, registry=metrics.REGISTRY)
        _metrics_started = True


@kopf.on.login()
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


@kopf.on.probe(id="jobs")
def jobs_probe(**_: Any) -> dict[str, int]:
    return TRACKER.snapshot()


def _active(status: Mapping, **_: Any) -> bool:
    return (status or {}).get("phase") not in TERMINAL_PHASES


@kopf.on.resume(API_GROUP, API_VERSION, PLURAL)
@kopf.on.create(API_GROUP, API_VERSION, PLURAL)
def job_created(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    _run("create", memo, r.reconcile, namespace, name)


@kopf.on.update(API_GROUP, API_VERSION, PLURAL, field="spec")
def job_spec_updated(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    _run("update", memo, r.update_spec, namespace, name)
    _run("update", memo, r.reconcile, namespace, name)


@kopf.timer(API_GROUP, API_VERSION, PLURAL, interval=PROGRESS_INTERVAL, when=_active)
def job_tick(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    _run("timer", memo, r.reconcile, namespace, name, poll_progress=True)


@kopf.on.delete(API_GROUP, API_VERSION, PLURAL)
def job_deleted(namespace: str, name: str, uid: str, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    deleted = _run("delete", memo, r.delete_children, namespace, name, uid=uid)
    TRACKER.forget(namespace, name)
    if deleted:
        logger.info("deleted %s", ", ".join(deleted))


@kopf.on.event(b.RAY_GROUP, b.RAY_VERSION, b.RAYJOB_PLURAL, labels={b.LABEL_MANAGED_BY: b.OPERATOR_NAME})
def rayjob_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    owner = r.owner_of(body)
    if owner is not None:
        _run("rayjob", memo, r.reconcile, *owner)
