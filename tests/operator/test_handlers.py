"""The operator's handlers: reconciliation against an in-memory API, then the real operator
(kopf) against the Kubernetes API emulator.

`FakeKube` stands in for clipforge_operator.kube.Kube: same methods, objects as dicts, 409 on
duplicate creates, JSON patches applied with `jsonpatch` (a failed `test` op fails the patch).
The second half runs kopf with KopfRunner against clipforge_operator.emulator over HTTP.
The RayJob statuses driven in both follow KubeRay's real sequences (see test_builders.py).
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import os
import re
import subprocess
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml

from clipforge.spec import STAGES
from clipforge_operator import builders as b
from clipforge_operator import metrics
from clipforge_operator import reconcile as r
from clipforge_operator.kube import AlreadyExists

T0 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
NS = "videos"
UID = "uid-1234"
SECRET_VALUE = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


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
        body["metadata"].setdefault("creationTimestamp", b.rfc3339(self.clock()))
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

    def patch_job_status(self, ns: str, name: str, status: dict) -> dict:
        self.calls.append(("patch_status", name))
        self.status_patches.append(copy.deepcopy(status))
        obj = self.objects[("vcj", ns, name)]
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
        self.calls.append(("patch_rayjob", name))
        self.objects[("rayjob", ns, name)] = jsonpatch.apply_patch(self.objects[("rayjob", ns, name)], ops)
        return self.objects[("rayjob", ns, name)]

    def get_raycluster(self, ns: str, name: str) -> dict | None:
        return self._get("raycluster", ns, name)

    def json_patch_raycluster(self, ns: str, name: str, ops: list[dict]) -> dict:
        self.calls.append(("patch_raycluster", name))
        self.objects[("raycluster", ns, name)] = jsonpatch.apply_patch(self.objects[("raycluster", ns, name)], ops)
        return self.objects[("raycluster", ns, name)]

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

    # test helpers
    def count(self, call: str) -> int:
        return sum(1 for c in self.calls if c[0] == call)

    def set_rayjob_status(self, name: str, **status: Any) -> None:
        obj = self.objects[("rayjob", NS, name)]
        obj["status"] = {k: v for k, v in status.items() if v is not None}


class Harness:
    """One job, a fake API, a controllable clock, and the events the operator posts."""

    def __init__(self, tmp_path: Path, name: str = "demo", **spec: Any):
        self.kube = FakeKube()
        self.now = T0
        self.kube.clock = lambda: self.now
        self.events: list[b.EventRecord] = []
        self.name = name
        self.output = tmp_path / "out"
        self.output.mkdir(exist_ok=True)
        body = {
            "apiVersion": "clipforge.dev/v1alpha1", "kind": "VideoCurationJob",
            "metadata": {"name": name, "namespace": NS, "uid": UID, "generation": 1},
            "spec": {"input": {"uri": str(tmp_path / "in")}, "output": {"uri": str(self.output)},
                     "retryBackoff": {"initialSeconds": 30, "maxSeconds": 600}, **spec},
        }
        self.kube.objects[("vcj", NS, name)] = body
        self.ctx = self.new_context()

    def new_context(self) -> r.Context:
        return r.Context(kube=self.kube, emit=lambda body, ev: self.events.append(ev), now=lambda: self.now)

    def reconcile(self, **kw: Any) -> str | None:
        return r.reconcile(self.ctx, NS, self.name, **kw)

    @property
    def status(self) -> dict:
        return self.kube.objects[("vcj", NS, self.name)].get("status", {})

    def condition(self, type_: str) -> dict | None:
        return b.get_condition(self.status.get("conditions") or [], type_)

    def rayjobs(self) -> list[str]:
        return sorted(n for (k, _, n) in self.kube.objects if k == "rayjob")

    def reasons(self) -> list[str]:
        return [e.reason for e in self.events]

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def report(self, file: str = "progress.json", done: int = 3, total: int = 10, **extra: Any) -> None:
        body = {"state": "running", "updatedAt": b.rfc3339(self.now), "elapsedSeconds": 5.0,
                "videos": {"total": total, "done": done, "failed": 0, "skipped": 0},
                "clips": {"passed": 7 * done, "filtered": done}, "videoSecondsProcessed": 30.0 * done,
                "throughputVideoSecondsPerSecond": 6.0, "clipsPerSecond": 1.0, **extra}
        (self.output / file).write_text(json.dumps(body))

    def edit_spec(self, **changes: Any) -> None:
        body = self.kube.objects[("vcj", NS, self.name)]
        for path, value in changes.items():
            node = body["spec"]
            *parents, leaf = path.split("__")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        body["metadata"]["generation"] += 1


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def drive_to_running(h: Harness, name: str = "demo") -> None:
    h.reconcile()
    h.kube.set_rayjob_status(name, jobDeploymentStatus="Initializing", startTime=b.rfc3339(h.now))
    h.reconcile()
    h.advance(60)
    h.kube.set_rayjob_status(name, jobDeploymentStatus="Running", jobStatus="RUNNING", startTime=b.rfc3339(h.now),
                             rayClusterName=f"{name}-raycluster-x7k2p", dashboardURL=f"{name}-head-svc.videos.svc:8265")
    h.reconcile()


# --------------------------------------------------------------------------------- creation


def test_create_makes_configmap_and_rayjob_and_reports_provisioning(h: Harness):
    assert h.reconcile() == "Provisioning"
    cm = h.kube.get_configmap(NS, "demo-config")
    rj = h.kube.get_rayjob(NS, "demo")
    assert cm is not None and rj is not None
    assert rj["spec"]["entrypoint"] == "clipforge run /etc/clipforge/job.yaml"
    assert rj["metadata"]["ownerReferences"][0]["uid"] == UID
    assert cm["metadata"]["ownerReferences"][0]["uid"] == UID
    st = h.status
    assert st["phase"] == "Provisioning" and st["rayJobName"] == "demo" and st["retries"] == 0
    assert st["observedGeneration"] == 1 and st["startTime"] == "2025-06-01T12:00:00Z"
    submitted = h.condition("Submitted")
    assert submitted["status"] == "True" and submitted["reason"] == "RayJobCreated"
    assert submitted["lastTransitionTime"] == "2025-06-01T12:00:00Z" and submitted["observedGeneration"] == 1
    assert h.reasons() == ["Provisioning"]


def test_reconcile_is_idempotent(h: Harness):
    h.reconcile()
    patches = h.kube.count("patch_status")
    for _ in range(3):
        assert h.reconcile() == "Provisioning"
    assert h.kube.count("create_rayjob") == 1 and h.kube.count("create_configmap") == 1
    assert h.kube.count("patch_status") == patches  # nothing changed, nothing patched
    assert h.reasons() == ["Provisioning"]


def test_existing_children_of_this_job_are_adopted_not_duplicated(h: Harness):
    """A crash after creating the RayJob but before recording it: the 409 path reads it back."""
    from clipforge.spec import parse_job

    job = parse_job(h.kube.get_job(NS, "demo"))
    h.kube._put("configmap", b.build_configmap(job, NS, UID))
    h.kube._put("rayjob", b.build_rayjob(job, NS, UID))
    assert h.reconcile() == "Provisioning"
    assert h.rayjobs() == ["demo"] and h.status["rayJobName"] == "demo"


def test_a_foreign_object_with_our_name_fails_the_job(h: Harness):
    h.kube._put("rayjob", {"metadata": {"name": "demo", "namespace": NS, "labels": {},
                                        "ownerReferences": [{"uid": "someone-else"}]}})
    assert h.reconcile() == "Failed"
    assert h.condition("Failed")["reason"] == "NameConflict"
    assert "Failed" in h.reasons()


def test_invalid_spec_fails_without_children(tmp_path: Path):
    h = Harness(tmp_path, execution={"stages": {"split": {"gpus": 2}}})  # more than a 1-GPU pod
    assert h.reconcile() == "Failed"
    assert h.condition("Failed")["reason"] == "InvalidSpec"
    assert h.rayjobs() == [] and h.kube.get_configmap(NS, "demo-config") is None
    h2 = Harness(tmp_path, name="bad-quantity", cluster={"cpuWorkers": {"resources": {"limits": {"cpu": "lots"}}}})
    assert h2.reconcile() == "Failed" and h2.condition("Failed")["reason"] == "InvalidSpec"
    assert "cpu" in h2.condition("Failed")["message"]


# ------------------------------------------------------------------------------------ success


def test_success_path_with_progress(h: Harness):
    drive_to_running(h)
    st = h.status
    assert st["phase"] == "Running"
    assert st["rayClusterName"] == "demo-raycluster-x7k2p" and st["dashboardURL"].endswith(":8265")
    assert h.condition("Running")["status"] == "True"

    h.report(done=3)
    h.advance(15)
    assert h.reconcile(poll_progress=True) == "Running"
    assert h.status["progress"]["videosDone"] == 3 and h.status["progress"]["videosTotal"] == 10
    assert h.status["progress"]["clipsPassed"] == 21

    h.report("summary.json", done=10, state="succeeded", failures=[])
    h.kube.set_rayjob_status("demo", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED",
                             rayClusterName="demo-raycluster-x7k2p")
    h.advance(30)
    assert h.reconcile() == "Succeeded"
    st = h.status
    assert st["progress"]["videosDone"] == 10
    assert st["completionTime"] == b.rfc3339(h.now)
    assert h.condition("Succeeded")["status"] == "True" and h.condition("Running")["status"] == "False"
    assert h.reasons() == ["Provisioning", "Running", "Succeeded"]
    # Finished jobs are left alone.
    calls = len(h.kube.calls)
    assert h.reconcile(poll_progress=True) == "Succeeded" and len(h.kube.calls) == calls


# ------------------------------------------------------------------------------------ failure


def fail(h: Harness, name: str, **status: Any) -> None:
    h.kube.set_rayjob_status(name, **status)
    h.advance(5)
    h.reconcile()


def test_app_failure_retries_with_backoff_then_fails(h: Harness):
    drive_to_running(h)
    fail(h, "demo", jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed",
         message="Job entrypoint command failed with exit code 1")
    st = h.status
    assert st["phase"] == "Pending" and st["retries"] == 1
    assert st["nextRetryTime"] == b.rfc3339(h.now + timedelta(seconds=30))
    retrying = h.condition("Retrying")
    assert retrying["status"] == "True" and retrying["reason"] == "AppFailed"
    assert "exit code 1" in retrying["message"]
    assert h.rayjobs() == []  # the failed attempt is gone
    assert h.events[-1].type == "Warning" and h.events[-1].reason == "AttemptFailed"

    h.advance(10)
    h.reconcile()
    assert h.rayjobs() == []  # still backing off
    h.advance(25)
    assert h.reconcile() == "Provisioning"
    assert h.rayjobs() == ["demo-retry-1"] and h.status["rayJobName"] == "demo-retry-1"
    assert "nextRetryTime" not in h.status and h.condition("Retrying")["status"] == "False"
    assert "RetryStarted" in h.reasons()
    retry = h.kube.get_rayjob(NS, "demo-retry-1")
    assert retry["metadata"]["labels"][b.LABEL_ATTEMPT] == "1"

    fail(h, "demo-retry-1", jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed", message="again")
    assert h.status["retries"] == 2
    assert h.status["nextRetryTime"] == b.rfc3339(h.now + timedelta(seconds=60))  # doubled
    h.advance(61)
    h.reconcile()
    assert h.rayjobs() == ["demo-retry-2"]

    fail(h, "demo-retry-2", jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed",
         message="Job entrypoint command failed with exit code 1")
    st = h.status
    assert st["phase"] == "Failed" and st["retries"] == 2 and "completionTime" in st
    failed = h.condition("Failed")
    assert failed["status"] == "True" and failed["reason"] == "AppFailed"
    assert failed["message"] == "Job entrypoint command failed with exit code 1"
    assert h.events[-1].type == "Warning" and h.events[-1].reason == "Failed"
    assert h.rayjobs() == ["demo-retry-2"]  # kept for inspection; KubeRay tears its cluster down
    assert h.reasons().count("AttemptFailed") == 2


def test_submission_failure_is_retried_with_kuberays_reason(tmp_path: Path):
    h = Harness(tmp_path, maxRetries=0)
    h.reconcile()
    fail(h, "demo", jobDeploymentStatus="Failed", reason="SubmissionFailed",
         message="Job submission has failed. Reason: the submitter K8s Job has failed")
    assert h.status["phase"] == "Failed"
    assert h.condition("Failed")["reason"] == "SubmissionFailed"
    assert "submitter" in h.condition("Failed")["message"]


def test_stuck_initializing_fails_after_the_pending_deadline(tmp_path: Path):
    h = Harness(tmp_path, maxRetries=1, pendingDeadlineSeconds=600)
    h.reconcile()
    h.kube.set_rayjob_status("demo", jobDeploymentStatus="Initializing", startTime=b.rfc3339(h.now))
    h.advance(599)
    assert h.reconcile() == "Provisioning"
    h.advance(2)
    assert h.reconcile() == "Pending"
    assert h.condition("Retrying")["reason"] == "PendingDeadlineExceeded"
    assert h.rayjobs() == []
    h.advance(30)
    h.reconcile()
    h.kube.set_rayjob_status("demo-retry-1", jobDeploymentStatus="Initializing", startTime=b.rfc3339(h.now))
    h.advance(601)
    assert h.reconcile() == "Failed"
    assert h.condition("Failed")["reason"] == "PendingDeadlineExceeded"
    assert h.rayjobs() == []  # the stuck cluster is not left holding nodes


def test_stopped_ray_job_is_cancelled_without_retry(h: Harness):
    drive_to_running(h)
    fail(h, "demo", jobDeploymentStatus="Complete", jobStatus="STOPPED")
    assert h.status["phase"] == "Cancelled" and h.status["retries"] == 0
    assert h.condition("Cancelled")["status"] == "True"


# -------------------------------------------------------------------------- restart & deletion


def test_operator_restart_mid_job_neither_duplicates_nor_loses(h: Harness):
    drive_to_running(h)
    before = copy.deepcopy(h.status)
    creates = h.kube.count("create_rayjob")
    h.ctx = h.new_context()  # a fresh operator process: no memory but the API's
    assert h.reconcile() == "Running"
    assert h.kube.count("create_rayjob") == creates and h.status == before


def test_restart_during_backoff_keeps_the_schedule_and_cleans_up_a_leftover_attempt(h: Harness):
    drive_to_running(h)
    # A crash right after recording the retry but before deleting the failed RayJob.
    h.kube.delete_rayjob = lambda ns, name: False  # type: ignore[method-assign]
    fail(h, "demo", jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed", message="boom")
    assert h.rayjobs() == ["demo"]
    del h.kube.delete_rayjob  # the real method again
    h.ctx = h.new_context()
    h.advance(10)
    h.reconcile()
    assert h.rayjobs() == ["demo"] and h.status["retries"] == 1  # still waiting, nothing re-run
    h.advance(30)
    h.reconcile()
    assert h.rayjobs() == ["demo-retry-1"]


def test_deletion_removes_every_child(h: Harness):
    drive_to_running(h)
    h.kube._put("rayjob", {"metadata": {"name": "unrelated", "namespace": NS, "labels": {b.LABEL_JOB_UID: "x"}}})
    deleted = r.delete_children(h.ctx, NS, "demo", UID)
    assert sorted(deleted) == ["ConfigMap demo-config", "RayJob demo"]
    assert h.rayjobs() == ["unrelated"] and h.kube.get_configmap(NS, "demo-config") is None


def test_a_job_being_deleted_is_not_reconciled(h: Harness):
    h.kube.objects[("vcj", NS, "demo")]["metadata"]["deletionTimestamp"] = b.rfc3339(T0)
    assert h.reconcile() is None and h.rayjobs() == []


def test_owner_of_maps_a_rayjob_to_its_job(h: Harness):
    h.reconcile()
    assert r.owner_of(h.kube.get_rayjob(NS, "demo")) == (NS, "demo")
    assert r.owner_of({"metadata": {"namespace": NS, "ownerReferences": [{"kind": "Deployment"}]}}) is None


# ------------------------------------------------------------------------------- spec updates


def with_live_cluster(h: Harness) -> None:
    drive_to_running(h)
    rj = h.kube.get_rayjob(NS, "demo")
    h.kube._put("raycluster", {"metadata": {"name": "demo-raycluster-x7k2p", "namespace": NS},
                               "spec": copy.deepcopy(rj["spec"]["rayClusterSpec"])})


def test_scaling_change_patches_the_live_cluster(h: Harness):
    with_live_cluster(h)
    h.edit_spec(cluster__cpuWorkers__maxReplicas=12, cluster__cpuWorkers__minReplicas=2)
    r.update_spec(h.ctx, NS, "demo")
    cluster = h.kube.get_raycluster(NS, "demo-raycluster-x7k2p")["spec"]["workerGroupSpecs"][0]
    assert (cluster["minReplicas"], cluster["maxReplicas"], cluster["replicas"]) == (2, 12, 2)
    rj = h.kube.get_rayjob(NS, "demo")["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert (rj["minReplicas"], rj["maxReplicas"]) == (2, 12)
    assert b.spec_from_configmap(h.kube.get_configmap(NS, "demo-config")).cluster.cpu_workers.max_replicas == 12
    assert h.events[-1].reason == "Rescaled"
    assert h.condition("SpecUpdateRefused") is None and h.status["observedGeneration"] == 2


def test_pipeline_change_on_a_running_job_is_refused(h: Harness):
    with_live_cluster(h)
    h.edit_spec(splitting__algorithm="transnetv2", cluster__image="clipforge/pipeline:next",
                cluster__cpuWorkers__maxReplicas=3, maxRetries=1)
    r.update_spec(h.ctx, NS, "demo")
    refused = h.condition("SpecUpdateRefused")
    assert refused["status"] == "True" and refused["reason"] == "ImmutableField"
    assert "splitting.algorithm" in refused["message"] and "cluster.image" in refused["message"]
    assert h.events[-1].type == "Warning" and h.events[-1].reason == "SpecUpdateRefused"
    # The allowed part still applies; the running pipeline's spec does not change.
    accepted = b.spec_from_configmap(h.kube.get_configmap(NS, "demo-config"))
    assert accepted.splitting.algorithm == "fixed-stride" and accepted.cluster.cpu_workers.max_replicas == 3
    assert accepted.max_retries == 1
    assert h.kube.get_raycluster(NS, "demo-raycluster-x7k2p")["spec"]["workerGroupSpecs"][0]["maxReplicas"] == 3
    # A retry runs what the job started with (plus the allowed changes), not the refused spec.
    fail(h, "demo", jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed", message="x")
    h.advance(31)
    h.reconcile()
    retry = h.kube.get_rayjob(NS, "demo-retry-1")
    assert retry["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] != \
        "clipforge/pipeline:next"
    assert retry["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"] == 3
    # Reverting the refused fields clears the condition.
    h.edit_spec(splitting__algorithm="fixed-stride")
    body = h.kube.objects[("vcj", NS, "demo")]
    body["spec"]["cluster"].pop("image")
    r.update_spec(h.ctx, NS, "demo")
    assert h.condition("SpecUpdateRefused")["status"] == "False"


def test_spec_change_before_anything_started_needs_no_patch(h: Harness):
    h.edit_spec(splitting__algorithm="transnetv2")
    r.update_spec(h.ctx, NS, "demo")
    assert h.kube.calls == []


# ------------------------------------------------------------------------------------ secrets


def test_secrets_never_reach_status_events_or_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    h = Harness(tmp_path, output={"uri": "s3://bucket/out/"}, storage={"credentialsSecret": "s3-creds"})
    h.kube._put("secret", {"metadata": {"name": "s3-creds", "namespace": NS},
                           "data": {"AWS_ACCESS_KEY_ID": base64.b64encode(b"AKIDEXAMPLE").decode(),
                                    "AWS_SECRET_ACCESS_KEY": base64.b64encode(SECRET_VALUE.encode()).decode()}})
    seen: list[Any] = []

    def progress(uri: str, storage: Any, credentials: Any, final: bool = False) -> Any:
        from clipforge_operator.progress import progress_from_report

        seen.append(credentials)
        logging.getLogger("clipforge_operator.test").info("reading %s with %r", uri, credentials)
        return progress_from_report({"videos": {"total": 4, "done": 1}, "clips": {"passed": 2}})

    h.ctx.progress = progress
    caplog.set_level(logging.DEBUG)
    drive_to_running(h)
    h.reconcile(poll_progress=True)
    assert seen and seen[0].secret_access_key == SECRET_VALUE  # used for the read ...
    assert h.status["progress"]["videosDone"] == 1
    everything = json.dumps(h.kube.status_patches) + repr(h.events) + caplog.text
    everything += json.dumps([o for (k, _, _), o in h.kube.objects.items() if k != "secret"])
    assert SECRET_VALUE not in everything  # ... and nowhere else
    assert base64.b64encode(SECRET_VALUE.encode()).decode() not in everything


def test_progress_errors_never_fail_the_job(h: Harness):
    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("storage down")

    h.ctx.progress = broken
    drive_to_running(h)
    assert h.reconcile(poll_progress=True) == "Running"


# ------------------------------------------------------------------------------ kopf & metrics


def test_metrics_track_phases_and_errors():
    tracker = metrics.PhaseTracker()
    tracker.track("a", "j1", "Running")
    tracker.track("a", "j2", "Running")
    tracker.track("a", "j1", "Succeeded")
    assert tracker.snapshot() == {"Running": 1, "Succeeded": 1}
    assert metrics.REGISTRY.get_sample_value("clipforge_jobs", {"phase": "Running"}) == 1
    tracker.forget("a", "j2")
    assert metrics.REGISTRY.get_sample_value("clipforge_jobs", {"phase": "Running"}) == 0
    before = metrics.REGISTRY.get_sample_value("clipforge_reconcile_errors_total", {"handler": "t"}) or 0
    with pytest.raises(ValueError), metrics.measured("t"):
        raise ValueError
    assert metrics.REGISTRY.get_sample_value("clipforge_reconcile_errors_total", {"handler": "t"}) == before + 1
    assert metrics.REGISTRY.get_sample_value("clipforge_reconcile_duration_seconds_count", {"handler": "t"}) >= 1


def test_handlers_register_with_kopf():
    import kopf

    from clipforge_operator import handlers

    registry = kopf.get_default_registry()
    changing = {(x.selector.group, x.selector.any_name, x.fn.__name__) for x in registry._changing.get_all_handlers()}
    assert {("clipforge.dev", "videocurationjobs", fn) for fn in
            ("job_created", "job_spec_updated", "job_deleted")} <= changing
    spawning = {(x.selector.any_name, x.fn.__name__) for x in registry._spawning.get_all_handlers()}
    assert ("videocurationjobs", "job_tick") in spawning
    watching = {(x.selector.group, x.selector.any_name) for x in registry._watching.get_all_handlers()}
    assert ("ray.io", "rayjobs") in watching
    assert handlers.PROGRESS_INTERVAL <= 30


def test_main_requires_an_explicit_scope():
    from clipforge_operator.__main__ import parse_args

    with pytest.raises(SystemExit):
        parse_args([])
    assert parse_args(["-A"]).all_namespaces
    assert parse_args(["--namespace", "videos"]).namespace == ["videos"]


def test_missing_kuberay_is_reported_and_retried(h: Harness):
    from kubernetes.client.exceptions import ApiException

    real_create = h.kube.create_rayjob

    def no_crd(body: dict) -> dict:
        raise ApiException(status=404, reason="Not Found")

    h.kube.create_rayjob = no_crd  # type: ignore[method-assign]
    assert h.reconcile() == "Pending"
    submitted = h.condition("Submitted")
    assert submitted["status"] == "False" and submitted["reason"] == "KubeRayNotInstalled"
    h.reconcile()
    assert h.reasons() == ["KubeRayNotInstalled"]  # reported once, not on every tick
    h.kube.create_rayjob = real_create  # type: ignore[method-assign]
    assert h.reconcile() == "Provisioning"
    assert h.condition("Submitted")["status"] == "True" and h.rayjobs() == ["demo"]


# ------------------------------------------------------------------ the real operator, emulated API
#
# kopf (KopfRunner, in this process) against clipforge_operator.emulator over HTTP, with the
# real kubectl for applying manifests. Nothing runs KubeRay here: the tests play its part by
# writing RayJob statuses in KubeRay's real sequences. One emulator per module, one namespace
# and one operator (namespace mode) per test, a 1-second timer.

KUBERAY_CRDS = [
    {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.ray.io"},
        "spec": {
            "group": "ray.io",
            "scope": "Namespaced",
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower()},
            "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                          "schema": {"openAPIV3Schema": {"type": "object",
                                                         "x-kubernetes-preserve-unknown-fields": True}}}],
        },
    }
    for kind, plural in (("RayJob", "rayjobs"), ("RayCluster", "rayclusters"))
]
VCJ = "videocurationjobs.clipforge.dev"
RAYJOBS = "rayjobs.ray.io"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def k8s(tmp_path_factory: pytest.TempPathFactory):
    from clipforge_operator.emulator import KubeAPIEmulator

    with KubeAPIEmulator(crds=[REPO / "crds" / "videocurationjobs.yaml", *KUBERAY_CRDS]) as api:
        api.kubeconfig_path = api.write_kubeconfig(tmp_path_factory.mktemp("kube") / "config")
        yield api


@pytest.fixture(scope="module")
def operator_registry():
    """The handlers registered afresh with a 1-second timer (the interval is fixed at import)."""
    import importlib

    import kopf

    from clipforge_operator import handlers  # first import: registers into the default registry

    previous_registry = kopf.get_default_registry()
    previous = {k: os.environ.get(k) for k in ("CLIPFORGE_PROGRESS_INTERVAL", "CLIPFORGE_METRICS_PORT")}
    os.environ.update(CLIPFORGE_PROGRESS_INTERVAL="1", CLIPFORGE_METRICS_PORT="0")
    registry = kopf.OperatorRegistry()
    kopf.set_default_registry(registry)
    try:
        importlib.reload(handlers)
        assert handlers.PROGRESS_INTERVAL == 1
        yield registry
    finally:
        kopf.set_default_registry(previous_registry)
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class Cluster:
    """A namespace on the emulator, an operator serving it, and helpers to play KubeRay."""

    def __init__(self, k8s: Any, namespace: str, output: Path):
        self.k8s, self.ns, self.output = k8s, namespace, output

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        from clipforge_operator.emulator import kube_tool

        kubectl = kube_tool("kubectl")
        assert kubectl, "kubectl missing: bash scripts/install-kube-tools.sh"
        proc = subprocess.run([str(kubectl), "--kubeconfig", str(self.k8s.kubeconfig_path), "-n", self.ns, *args],
                              input=stdin, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def apply(self, name: str = "job", **spec: Any) -> str:
        doc = yaml.safe_load((REPO / "examples" / "cpu-job.yaml").read_text())
        doc["metadata"]["name"] = name
        doc["spec"]["output"]["uri"] = str(self.output)
        doc["spec"]["retryBackoff"] = {"initialSeconds": 1, "maxSeconds": 1}
        doc["spec"].update(spec)
        self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(doc))
        return name

    def job(self, name: str = "job") -> dict:
        return self.k8s.get(VCJ, name, namespace=self.ns)

    def status(self, name: str = "job") -> dict:
        return self.job(name).get("status") or {}

    def condition(self, type_: str, name: str = "job") -> dict | None:
        return b.get_condition(self.status(name).get("conditions") or [], type_)

    def rayjob(self, name: str) -> dict | None:
        return self.k8s.get_or_none(RAYJOBS, name, namespace=self.ns)

    def rayjobs(self) -> list[str]:
        return sorted(o["metadata"]["name"] for o in self.k8s.list(RAYJOBS, namespace=self.ns))

    def kuberay(self, rayjob: str, **status: Any) -> None:
        """Write a RayJob status the way KubeRay does (the status subresource)."""
        self.k8s.patch(RAYJOBS, rayjob, {"status": status}, namespace=self.ns, subresource="status")

    def events(self, name: str = "job") -> list[tuple[str, str, str]]:
        return [(e.get("type"), e.get("reason"), e.get("message"))
                for e in self.k8s.list("v1/events", namespace=self.ns)
                if (e.get("involvedObject") or {}).get("name") == name]

    def wait(self, check: Any, timeout: float = 20, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = check()
            except AssertionError:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                check()  # raise the assertion with its message, if it is one
                raise AssertionError(f"timed out waiting for {what or check}")
            time.sleep(0.1)

    def wait_phase(self, phase: str, name: str = "job", timeout: float = 20) -> dict:
        return self.wait(lambda: self.status(name).get("phase") == phase and self.status(name), timeout,
                         f"phase {phase} (now {self.status(name).get('phase')})")


@contextmanager
def operator(k8s: Any, namespace: str, registry: Any) -> Any:
    from kopf.testing import KopfRunner

    previous = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(k8s.kubeconfig_path)
    try:
        with KopfRunner(["run", "--standalone", "--namespace", namespace], registry=registry, timeout=60) as runner:
            yield runner
    finally:
        if previous is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = previous
    assert runner.exception is None, runner.output[-3000:]
    assert "Traceback" not in runner.output, runner.output[-5000:]


@pytest.fixture
def cluster(k8s: Any, operator_registry: Any, tmp_path: Path, request: pytest.FixtureRequest):
    namespace = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-")
    k8s.create_namespace(namespace)
    c = Cluster(k8s, namespace, tmp_path / "out")
    c.output.mkdir()
    with operator(k8s, namespace, operator_registry) as runner:
        c.runner = runner
        yield c


def test_operator_applies_a_job_as_configmap_and_rayjob(cluster: Cluster):
    cluster.apply()
    rj = cluster.wait(lambda: cluster.rayjob("job"), what="RayJob")
    assert rj["spec"]["entrypoint"] == "clipforge run /etc/clipforge/job.yaml"
    owner = rj["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "VideoCurationJob" and owner["uid"] == cluster.job()["metadata"]["uid"]
    cm = cluster.k8s.get("v1/configmaps", "job-config", namespace=cluster.ns)
    assert all(getattr(b.spec_from_configmap(cm).execution.stages, s).pinned for s in STAGES)
    status = cluster.wait_phase("Provisioning")
    assert status["rayJobName"] == "job" and cluster.condition("Submitted")["status"] == "True"
    table = cluster.kubectl("get", "vcj")
    assert "PHASE" in table and "Provisioning" in table


def test_success_sequence_reports_progress_and_events(cluster: Cluster):
    cluster.apply()
    cluster.wait(lambda: cluster.rayjob("job"))
    cluster.kuberay("job", jobDeploymentStatus="Initializing", startTime=b.rfc3339(datetime.now(UTC)))
    cluster.kuberay("job", jobDeploymentStatus="Running", jobStatus="PENDING", rayClusterName="job-raycluster-a1b2c")
    cluster.kuberay("job", jobDeploymentStatus="Running", jobStatus="RUNNING", rayClusterName="job-raycluster-a1b2c",
                    dashboardURL="job-raycluster-a1b2c-head-svc.ns.svc.cluster.local:8265")
    status = cluster.wait_phase("Running")
    assert status["rayClusterName"] == "job-raycluster-a1b2c" and status["dashboardURL"].endswith(":8265")
    report = {"state": "running", "updatedAt": "2025-06-01T12:00:00Z", "elapsedSeconds": 3.0,
              "videos": {"total": 4, "done": 1, "failed": 0, "skipped": 0}, "clips": {"passed": 6, "filtered": 1},
              "videoSecondsProcessed": 20.0, "throughputVideoSecondsPerSecond": 6.7, "clipsPerSecond": 2.0}
    (cluster.output / "progress.json").write_text(json.dumps(report))
    cluster.wait(lambda: (cluster.status().get("progress") or {}).get("videosDone") == 1, what="progress")
    (cluster.output / "summary.json").write_text(json.dumps({**report, "state": "succeeded", "failures": [],
                                                             "videos": {**report["videos"], "done": 4}}))
    cluster.kuberay("job", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    status = cluster.wait_phase("Succeeded")
    assert status["progress"]["videosDone"] == 4 and status["completionTime"]
    assert cluster.condition("Succeeded")["status"] == "True"
    assert "Succeeded 4" in re.sub(r"\s+", " ", cluster.kubectl("get", "vcj", "job"))
    reasons = cluster.wait(lambda: {r for _, r, _ in cluster.events()} >= {"Provisioning", "Running", "Succeeded"}
                           and {r for _, r, _ in cluster.events()})
    assert "AttemptFailed" not in reasons


def test_app_failure_is_retried_under_a_new_name(cluster: Cluster):
    cluster.apply(maxRetries=1)
    cluster.wait(lambda: cluster.rayjob("job"))
    cluster.kuberay("job", jobDeploymentStatus="Running", jobStatus="RUNNING")
    cluster.wait_phase("Running")
    cluster.kuberay("job", jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed",
                    message="Job entrypoint command failed with exit code 1")
    retry = cluster.wait(lambda: cluster.rayjob("job-retry-1"), what="retry RayJob")
    assert retry["metadata"]["labels"][b.LABEL_ATTEMPT] == "1"
    cluster.wait(lambda: cluster.rayjob("job") is None, what="failed attempt deleted")
    status = cluster.status()
    assert status["retries"] == 1 and status["rayJobName"] == "job-retry-1"
    warnings = [(r, m) for t, r, m in cluster.events() if t == "Warning"]
    assert any(r == "AttemptFailed" and "exit code 1" in m for r, m in warnings)
    cluster.kuberay("job-retry-1", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    cluster.wait_phase("Succeeded")


def test_submission_failure_without_retries_fails_the_job(cluster: Cluster):
    cluster.apply(maxRetries=0)
    cluster.wait(lambda: cluster.rayjob("job"))
    cluster.kuberay("job", jobDeploymentStatus="Failed", reason="SubmissionFailed",
                    message="Job submission has failed. Reason: the submitter K8s Job has failed")
    cluster.wait_phase("Failed")
    failed = cluster.condition("Failed")
    assert failed["status"] == "True" and failed["reason"] == "SubmissionFailed"
    assert "submitter" in failed["message"]
    cluster.wait(lambda: ("Warning", "Failed") in {(t, r) for t, r, _ in cluster.events()}, what="Failed event")
    assert cluster.rayjobs() == ["job"]


def test_stuck_initializing_fails_at_the_pending_deadline(cluster: Cluster):
    cluster.apply(maxRetries=0, pendingDeadlineSeconds=2)
    cluster.wait(lambda: cluster.rayjob("job"))
    cluster.kuberay("job", jobDeploymentStatus="Initializing", startTime=b.rfc3339(datetime.now(UTC)))
    cluster.wait_phase("Failed", timeout=15)
    assert cluster.condition("Failed")["reason"] == "PendingDeadlineExceeded"
    cluster.wait(lambda: cluster.rayjobs() == [], what="stuck RayJob deleted")


def test_real_operator_restart_mid_job_neither_duplicates_nor_loses(
        k8s: Any, operator_registry: Any, tmp_path: Path):
    k8s.create_namespace("restart")
    c = Cluster(k8s, "restart", tmp_path)
    with operator(k8s, "restart", operator_registry):
        c.apply()
        c.wait(lambda: c.rayjob("job"))
        c.kuberay("job", jobDeploymentStatus="Running", jobStatus="RUNNING")
        c.wait_phase("Running")
    before = c.job()
    uid = c.rayjob("job")["metadata"]["uid"]
    c.kuberay("job", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")  # finished while no operator ran
    with operator(k8s, "restart", operator_registry):
        c.wait_phase("Succeeded")
        time.sleep(1.5)  # a few timer ticks
    assert c.rayjobs() == ["job"] and c.rayjob("job")["metadata"]["uid"] == uid
    after = c.job()
    assert after["status"]["startTime"] == before["status"]["startTime"] and after["status"]["retries"] == 0


def test_spec_updates_rescale_or_are_refused(cluster: Cluster):
    cluster.apply()
    rj = cluster.wait(lambda: cluster.rayjob("job"))
    cluster.k8s.create({"apiVersion": "ray.io/v1", "kind": "RayCluster",
                        "metadata": {"name": "job-raycluster-a1b2c", "namespace": cluster.ns},
                        "spec": rj["spec"]["rayClusterSpec"]})
    cluster.kuberay("job", jobDeploymentStatus="Running", jobStatus="RUNNING", rayClusterName="job-raycluster-a1b2c")
    cluster.wait_phase("Running")
    cluster.kubectl("patch", "vcj", "job", "--type=merge", "-p", json.dumps(
        {"spec": {"cluster": {"cpuWorkers": {"maxReplicas": 7}}}}))

    def rescaled() -> bool:
        group = cluster.k8s.get("rayclusters.ray.io", "job-raycluster-a1b2c", namespace=cluster.ns)
        return group["spec"]["workerGroupSpecs"][0]["maxReplicas"] == 7

    cluster.wait(rescaled, what="RayCluster rescaled")
    cluster.kubectl("patch", "vcj", "job", "--type=merge", "-p", json.dumps(
        {"spec": {"splitting": {"algorithm": "transnetv2"}}}))
    refused = cluster.wait(lambda: cluster.condition("SpecUpdateRefused"), what="refusal condition")
    assert refused["status"] == "True" and "splitting.algorithm" in refused["message"]
    assert cluster.status()["phase"] == "Running"
    assert b.spec_from_configmap(cluster.k8s.get("v1/configmaps", "job-config", namespace=cluster.ns)
                                 ).splitting.algorithm == "fixed-stride"


def test_deletion_removes_children_and_the_job(cluster: Cluster):
    cluster.apply()
    cluster.wait(lambda: cluster.rayjob("job"))
    cluster.kubectl("delete", "vcj", "job", "--wait=false")
    cluster.wait(lambda: cluster.k8s.get_or_none(VCJ, "job", namespace=cluster.ns) is None, what="job deleted")
    assert cluster.rayjobs() == []
    assert cluster.k8s.get_or_none("v1/configmaps", "job-config", namespace=cluster.ns) is None


def test_kubectl_explains_validates_and_defaults_with_the_crd(k8s: Any, tmp_path: Path):
    k8s.create_namespace("kubectl-crd")
    c = Cluster(k8s, "kubectl-crd", tmp_path)
    explained = c.kubectl("explain", "vcj.spec.cluster.cpuWorkers")
    assert "The CPU worker group" in explained and "maxReplicas" in explained
    for example in ("cpu-job.yaml", "gpu-job.yaml", "s3-job.yaml"):
        c.kubectl("apply", "--dry-run=server", "-f", str(REPO / "examples" / example))
    c.kubectl("apply", "-f", str(REPO / "examples" / "gpu-job.yaml"))
    stored = k8s.get(VCJ, "gpu-demo", namespace="kubectl-crd")["spec"]
    assert stored["maxRetries"] == 2 and stored["transcoding"]["crf"] == 23  # defaults filled in by the API
    bad = (REPO / "examples" / "cpu-job.yaml").read_text().replace("fixed-stride", "magic")
    from clipforge_operator.emulator import kube_tool

    proc = subprocess.run([str(kube_tool("kubectl")), "--kubeconfig", str(k8s.kubeconfig_path), "-n", "kubectl-crd",
                           "apply", "-f", "-"], input=bad, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "spec.splitting.algorithm" in proc.stderr
