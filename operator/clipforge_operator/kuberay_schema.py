"""Whether the installed KubeRay's RayJob schema has every field the operator sends, checked at start.

The API server prunes a field its CRD's structural schema lacks, silently unless the write asks
for `fieldValidation=Strict` (kube.py asks on every create and patch). A field pruned from a RayJob
changes what KubeRay builds: without the worker groups' `resources` (KubeRay 1.5.0 and later) no
group advertises its stage's Ray resource, and the job waits forever on the GPU pods it holds. So
before it serves any job the operator walks a RayJob built by builders.py from a spec that sets
every option the RayJob depends on (PROBE_JOB) against the served ray.io/v1 RayJob schema, and
refuses to run if a field is missing: a log line and a Warning Event on its own pod name the
fields and the KubeRay version that has them, and it exits non-zero (the pod never becomes Ready).

The schema is the one the API server publishes for the served version (`/openapi/v3/apis/ray.io/v1`,
built from the CRD's openAPIV3Schema, the same structural schema it prunes by): every authenticated
client may read it, so the namespace-scoped chart needs no cluster-wide rule on CRDs.

`missing_fields` and `probe_rayjob` are pure; `check_kuberay` is the caller __main__ runs.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from clipforge.spec import VideoCurationJob
from clipforge_operator import builders as b
from clipforge_operator.status import rfc3339

log = logging.getLogger(__name__)

# The oldest KubeRay whose RayJob CRD has every field the operator sends (the chart says so too:
# Chart.yaml's clipforge.dev/requires). 1.4 lacks the worker groups' `resources`.
REQUIRED_KUBERAY_VERSION = "1.5.0"
RAY_OPENAPI_PATH = f"/openapi/v3/apis/{b.RAY_GROUP}/{b.RAY_VERSION}"
REFUSAL_REASON = "KubeRayTooOld"
# The chart mounts the operator pod's name, namespace and uid here (a downwardAPI volume): the Event's object.
POD_INFO_DIR = Path("/etc/clipforge-operator/pod")

# A job that sets every option the RayJob builder reads: each of the RayJob's fields, with a CPU and a
# GPU worker group, the head's, the submitter's and the autoscaler's, occurs in the RayJob built from it.
PROBE_JOB = {
    "apiVersion": f"{b.API_GROUP}/{b.API_VERSION}", "kind": "VideoCurationJob", "metadata": {"name": "probe"},
    "spec": {
        "input": {"uri": "s3://probe/in/"}, "output": {"uri": "s3://probe/out/"},
        "storage": {"credentialsSecret": "probe-s3"},
        "execution": {"stages": {"split": {"gpus": 1}}},
        "cluster": {
            "image": "registry.example/probe:1", "serviceAccountName": "probe",
            "imagePullSecrets": [{"name": "probe-pull"}], "env": [{"name": "PROBE", "value": "1"}],
            "volumes": [{"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
                        {"name": "conf", "configMap": {"name": "probe-conf"}},
                        {"name": "models", "persistentVolumeClaim": {"claimName": "probe-models", "readOnly": True}}],
            "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}],
            "head": {"resources": {"requests": {"cpu": "1", "memory": "1Gi", "ephemeralStorage": "1Gi"},
                                   "limits": {"cpu": "1", "memory": "1Gi", "ephemeralStorage": "1Gi"}},
                     "nodeSelector": {"pool": "head"},
                     "tolerations": [{"key": "pool", "operator": "Equal", "value": "head", "effect": "NoExecute",
                                      "tolerationSeconds": 60}]},
            "cpuWorkers": {"minReplicas": 1, "maxReplicas": 2, "nodeSelector": {"pool": "cpu"},
                           "tolerations": [{"key": "pool", "operator": "Exists"}]},
            "gpuWorkers": {"split": {"gpus": 1, "minReplicas": 1, "maxReplicas": 2, "nodeSelector": {"pool": "gpu"},
                                     "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                      "effect": "NoSchedule"}]}},
        },
    },
}


class KubeRaySchemaError(Exception):
    """The published ray.io/v1 API has no RayJob schema to check against."""


def probe_rayjob() -> dict:
    """The RayJob the operator would create for PROBE_JOB (a token Secret name stands in for the generated one)."""
    job = VideoCurationJob.model_validate(PROBE_JOB)
    return b.build_rayjob(job, "probe", "00000000-0000-0000-0000-000000000000", "probe-ray-token-xxxxx", attempt=1)


def rayjob_schema(openapi: Mapping) -> dict:
    """The RayJob's schema in an OpenAPI v3 document of ray.io/v1 (as /openapi/v3/apis/ray.io/v1 serves it)."""
    want = {"group": b.RAY_GROUP, "version": b.RAY_VERSION, "kind": "RayJob"}
    for schema in ((openapi.get("components") or {}).get("schemas") or {}).values():
        if want in (schema.get("x-kubernetes-group-version-kind") or []):
            return schema
    raise KubeRaySchemaError(f"{RAY_OPENAPI_PATH} has no {b.RAY_GROUP}/{b.RAY_VERSION} RayJob schema")


def _fields(value: Any, schema: Mapping, path: str) -> Iterator[tuple[str, bool]]:
    """(path, whether the schema has it) for every field `value` sets, the way the API server prunes:
    an object's keys are fields where it has `properties`, map keys where it has `additionalProperties`,
    and anything goes below `x-kubernetes-preserve-unknown-fields` or a node that describes no fields
    (such as a reference to ObjectMeta)."""
    if isinstance(value, list):
        for item in value:
            yield from _fields(item, schema.get("items") or {}, f"{path}[]")
        return
    if not isinstance(value, dict):
        return
    properties = schema.get("properties")
    additional = schema.get("additionalProperties")
    for key, item in value.items():
        if properties is not None and key in properties:
            field = f"{path}.{key}" if path else key
            yield field, True
            yield from _fields(item, properties[key], field)
        elif isinstance(additional, Mapping):
            yield from _fields(item, additional, f"{path}.*")
        elif properties is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
            yield (f"{path}.{key}" if path else key), False


def field_paths(obj: Mapping, schema: Mapping) -> dict[str, bool]:
    """Each field path `obj` sets (`[]` for list items, `*` for map values): whether `schema` has it."""
    return dict(_fields(obj, schema, ""))


def missing_fields(obj: Mapping, schema: Mapping) -> list[str]:
    """The field paths `obj` sets that `schema` does not have, sorted."""
    return sorted(path for path, known in field_paths(obj, schema).items() if not known)


def refusal_message(missing: list[str]) -> str:
    return (f"the installed KubeRay's {b.RAY_GROUP}/{b.RAY_VERSION} RayJob CRD lacks fields the operator sends:"
            f" {', '.join(missing)}; the API server would drop them (or refuse the RayJob) and jobs would not"
            f" run as specified. Install KubeRay {REQUIRED_KUBERAY_VERSION} or later (its CRDs too), then"
            " restart the operator")


def own_pod(info_dir: Path = POD_INFO_DIR) -> dict | None:
    """The operator's pod (name, namespace, uid) from its downwardAPI files; None outside a pod."""
    try:
        pod = {key: (info_dir / key).read_text().strip() for key in ("name", "namespace", "uid")}
    except OSError:
        return None
    return pod if all(pod.values()) else None


def refusal_event(pod: Mapping[str, str], message: str, now: datetime) -> dict:
    """A Warning Event on the operator's pod, from the operator (as kopf posts the jobs' Events)."""
    stamp = rfc3339(now)
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{pod['name']}.", "namespace": pod["namespace"]},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", **pod},
        "type": "Warning", "reason": REFUSAL_REASON, "message": message[:1024],
        "source": {"component": b.OPERATOR_NAME},
        "reportingComponent": b.OPERATOR_NAME, "reportingInstance": socket.gethostname(),
        "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
    }


def check_kuberay(kube: Any, now: datetime, pod: Mapping[str, str] | None) -> bool:
    """False (after a log line and, in a pod, an Event) if the served RayJob schema lacks a field the
    operator sends. KubeRay not installed yet passes: jobs wait for it (reason KubeRayNotInstalled) and
    the API server's strict field validation judges each RayJob then. API errors propagate: the
    process exits and its restart tries again."""
    openapi = kube.get_openapi(RAY_OPENAPI_PATH)
    if openapi is None:
        log.warning("%s is not served (KubeRay is not installed): the RayJob schema is not checked", RAY_OPENAPI_PATH)
        return True
    missing = missing_fields(probe_rayjob(), rayjob_schema(openapi))
    if not missing:
        return True
    message = refusal_message(missing)
    log.error("refusing to run: %s", message)
    if pod is not None:
        try:
            kube.create_event(refusal_event(pod, message, now))
        except Exception as exc:  # noqa: BLE001 - the refusal stands, the log says why; the Event is extra
            log.warning("could not post the %s Event on pod %s/%s: %s", REFUSAL_REASON, pod["namespace"], pod["name"],
                        getattr(exc, "status", type(exc).__name__))
    return False
