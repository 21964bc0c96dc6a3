"""The operator's reconciliation against an in-memory API with a controllable clock (the unit tests' world).

`FakeKube` stands in for clipforge_operator.kube.Kube: same methods, objects as dicts, 409 on
duplicate creates, JSON patches applied with `jsonpatch` (a failed `test` op fails the patch).
`Harness` is one job in it; tests/operator/test_handlers.py and test_job_lifetime.py drive it.
"""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonpatch
from kubernetes.client.exceptions import ApiException

from clipforge_operator import builders as b
from clipforge_operator import reconcile as r
from clipforge_operator.kube import AlreadyExists
from clipforge_operator.status import EventRecord, get_condition, rfc3339

T0 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
NS = "videos"
UID = "uid-1234"
SECRET_VALUE = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
GENERATED_ALPHABET = "bcdfghjklm"  # ten of the API server's generateName characters, one per digit


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.calls: list[tuple[str, ...]] = []
        self.status_patches: list[dict] = []

    def _put(self, kind: str, body: dict) -> dict:
        key = (kind, body["metadata"]["namespace"], body["metadata"]["name"])
        if key in self.objects:
            raise AlreadyExists(key[2])
        body = copy.deepcopy(body)
        body["metadata"].setdefault("creationTimestamp", rfc3339(self.clock()))
        body["metadata"].setdefault("uid", f"uid-{kind}-{key[2]}")
        self.objects[key] = body
        return copy.deepcopy(body)

    def _get(self, kind: str, ns: str, name: str) -> dict | None:
        obj = self.objects.get((kind, ns, name))
        return copy.deepcopy(obj) if obj is not None else None

    def clock(self) -> datetime:
        return T0

    # VideoCurationJob
    def get_job(self, ns: str, name: str) -> dict | None:
        return self._get("vcj", ns, name)

    def patch_job_status(self, ns: str, name: str, status: dict, resource_version: str | None) -> dict:
        self.calls.append(("patch_status", name))
        obj = self.objects[("vcj", ns, name)]
        if resource_version is not None and resource_version != obj["metadata"].get("resourceVersion"):
            raise ApiException(status=409, reason="Conflict")  # as the API server: the object changed since
        self.status_patches.append(copy.deepcopy(status))
        bump_resource_version(obj)
        current = obj.setdefault("status", {})
        for key, value in status.items():
            if value is None:
                current.pop(key, None)
            else:
                current[key] = copy.deepcopy(value)
        return copy.deepcopy(obj)

    # RayJob / RayCluster
    def get_rayjob(self, ns: str, name: str) -> dict | None:
        return self._get("rayjob", ns, name)

    def create_rayjob(self, body: dict) -> dict:
        self.calls.append(("create_rayjob", body["metadata"]["name"]))
        return self._put("rayjob", body)

    def delete_rayjob(self, ns: str, name: str) -> bool:
        self.calls.append(("delete_rayjob", name))
        return self.objects.pop(("rayjob", ns, name), None) is not None

    def list_rayjobs(self, ns: str, uid: str) -> list[dict]:
        return [copy.deepcopy(o) for (k, n, _), o in self.objects.items()
                if k == "rayjob" and n == ns and o["metadata"]["labels"].get(b.LABEL_JOB_UID) == uid]

    def json_patch_rayjob(self, ns: str, name: str, ops: list[dict]) -> dict:
        return self._json_patch("rayjob", ns, name, ops)

    def get_raycluster(self, ns: str, name: str) -> dict | None:
        return self._get("raycluster", ns, name)

    def json_patch_raycluster(self, ns: str, name: str, ops: list[dict]) -> dict:
        return self._json_patch("raycluster", ns, name, ops)

    def _json_patch(self, kind: str, ns: str, name: str, ops: list[dict]) -> dict:
        self.calls.append((f"patch_{kind}", name))
        self.objects[(kind, ns, name)] = jsonpatch.apply_patch(self.objects[(kind, ns, name)], ops)
        return self.objects[(kind, ns, name)]

    # ConfigMap / Secret
    def get_configmap(self, ns: str, name: str) -> dict | None:
        return self._get("configmap", ns, name)

    def create_configmap(self, body: dict) -> dict:
        self.calls.append(("create_configmap", body["metadata"]["name"]))
        return self._put("configmap", body)

    def patch_configmap_data(self, ns: str, name: str, data: dict) -> dict:
        self.calls.append(("patch_configmap", name))
        self.objects[("configmap", ns, name)]["data"].update(data)
        return self.objects[("configmap", ns, name)]

    def delete_configmap(self, ns: str, name: str) -> bool:
        self.calls.append(("delete_configmap", name))
        return self.objects.pop(("configmap", ns, name), None) is not None

    def get_secret(self, ns: str, name: str) -> dict | None:
        self.calls.append(("get_secret", name))
        return self._get("secret", ns, name)

    def create_secret(self, body: dict) -> dict:
        body = copy.deepcopy(body)
        if "generateName" in body["metadata"]:  # as the API server does: a counter spelt in its suffix alphabet
            suffix = "".join(GENERATED_ALPHABET[int(d)] for d in f"{self.count('create_secret'):05d}")
            body["metadata"]["name"] = f"{body['metadata'].pop('generateName')}{suffix}"
        self.calls.append(("create_secret", body["metadata"]["name"]))
        return self._put("secret", body)

    # NetworkPolicy
    def get_network_policy(self, ns: str, name: str) -> dict | None:
        return self._get("networkpolicy", ns, name)

    def create_network_policy(self, body: dict) -> dict:
        self.calls.append(("create_network_policy", body["metadata"]["name"]))
        return self._put("networkpolicy", body)

    # test helpers
    def count(self, call: str) -> int:
        return sum(1 for c in self.calls if c[0] == call)

    def set_rayjob_status(self, name: str, **status: Any) -> None:
        obj = self.objects[("rayjob", NS, name)]
        obj["status"] = {k: v for k, v in status.items() if v is not None}


def bump_resource_version(obj: dict) -> None:
    """What every write does to an object on the API server."""
    obj["metadata"]["resourceVersion"] = str(int(obj["metadata"].get("resourceVersion") or 0) + 1)


class Harness:
    """One job, a fake API, a controllable clock, and the events the operator posts."""

    def __init__(self, tmp_path: Path, name: str = "demo", namespace: str = NS, **spec: Any):
        self.kube = FakeKube()
        self.now = T0
        self.kube.clock = lambda: self.now
        self.events: list[EventRecord] = []
        self.name, self.namespace = name, namespace
        self.output = tmp_path / "out"
        self.output.mkdir(exist_ok=True)
        # The local input and output on a claim the Ray pods mount there, as the operator requires.
        data = {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
                "volumeMounts": [{"name": "data", "mountPath": str(tmp_path)}]}
        body = {
            "apiVersion": "clipforge.dev/v1alpha1", "kind": "VideoCurationJob",
            "metadata": {"name": name, "namespace": namespace, "uid": UID, "generation": 1, "resourceVersion": "1"},
            "spec": {"input": {"uri": str(tmp_path / "in")}, "output": {"uri": str(self.output)},
                     "retryBackoff": {"initialSeconds": 30, "maxSeconds": 600}, **spec,
                     "cluster": {**data, **spec.get("cluster", {})}},
        }
        self.kube.objects[("vcj", namespace, name)] = body
        self.ctx = self.new_context()

    def new_context(self) -> r.Context:
        return r.Context(kube=self.kube, emit=lambda body, ev: self.events.append(ev), now=lambda: self.now)

    def reconcile(self, **kw: Any) -> str | None:
        return r.reconcile(self.ctx, self.namespace, self.name, **kw)

    @property
    def status(self) -> dict:
        return self.kube.objects[("vcj", self.namespace, self.name)].get("status", {})

    def condition(self, type_: str) -> dict | None:
        return get_condition(self.status.get("conditions") or [], type_)

    def rayjobs(self) -> list[str]:
        return sorted(n for (k, _, n) in self.kube.objects if k == "rayjob")

    def reasons(self) -> list[str]:
        return [e.reason for e in self.events]

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def report(self, file: str = "progress.json", done: int = 3, total: int = 10, **extra: Any) -> None:
        body = {"state": "running", "updatedAt": rfc3339(self.now), "elapsedSeconds": 5.0,
                "videos": {"total": total, "done": done, "failed": 0, "skipped": 0},
                "clips": {"passed": 7 * done, "filtered": done}, "videoSecondsProcessed": 30.0 * done,
                "throughputVideoSecondsPerSecond": 6.0, "clipsPerSecond": 1.0, **extra}
        (self.output / file).write_text(json.dumps(body))

    def edit_spec(self, **changes: Any) -> None:
        body = self.kube.objects[("vcj", self.namespace, self.name)]
        for path, value in changes.items():
            node = body["spec"]
            *parents, leaf = path.split("__")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        body["metadata"]["generation"] += 1
        bump_resource_version(body)


def drive_to_running(h: Harness, name: str = "demo") -> None:
    h.reconcile()
    h.kube.set_rayjob_status(name, jobDeploymentStatus="Initializing", startTime=rfc3339(h.now))
    h.reconcile()
    h.advance(60)
    h.kube.set_rayjob_status(name, jobDeploymentStatus="Running", jobStatus="RUNNING", startTime=rfc3339(h.now),
                             rayClusterName=f"{name}-raycluster-x7k2p", dashboardURL=f"{name}-head-svc.videos.svc:8265")
    h.reconcile()


def fail(h: Harness, name: str, **status: Any) -> None:
    h.kube.set_rayjob_status(name, **status)
    h.advance(5)
    h.reconcile()


def token_refs(rayjob: dict) -> set[str]:
    """The Secrets every RAY_AUTH_TOKEN of the RayJob's containers (autoscaler included) refers to."""
    found = re.findall(r'"name": "RAY_AUTH_TOKEN", "valueFrom": \{"secretKeyRef": \{"name": "([^"]+)"', json.dumps(rayjob))
    assert len(found) >= 4, found  # head, dashboard gate, autoscaler, submitter at least
    return set(found)
