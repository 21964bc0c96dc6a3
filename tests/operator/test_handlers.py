"""The operator's reconciliation against an in-memory API with a controllable clock
(tests/support/operator_fakes.py). The RayJob statuses driven here follow KubeRay's real sequences
(see test_builders.py); the operator against the real API server and the real KubeRay is
tests/operator/test_operator_kube.py. How a job's spec, policy and token hold for its whole life
is test_job_lifetime.py.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from clipforge_operator import builders as b
from clipforge_operator import metrics
from clipforge_operator import reconcile as r
from clipforge_operator import spec_updates
from clipforge_operator.admission import spec_from_configmap
from clipforge_operator.pipeline_pods import with_pipeline_image
from clipforge_operator.policy import JobPolicy
from clipforge_operator.status import rfc3339
from support.operator_fakes import NS, SECRET_VALUE, T0, UID, FakeKube, Harness, drive_to_running, fail, token_refs


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
    job = job.model_copy(update={"spec": with_pipeline_image(job.spec, h.ctx.pipeline_image)})  # as the operator makes it
    h.kube._put("configmap", b.build_configmap(job, NS, UID))
    h.kube._put("rayjob", b.build_rayjob(job, NS, UID, "demo-ray-token-abcde"))
    assert h.reconcile() == "Provisioning"
    assert h.rayjobs() == ["demo"] and h.status["rayJobName"] == "demo"


def test_the_job_gets_one_ray_token_and_one_network_policy_for_all_its_attempts(h: Harness):
    drive_to_running(h)
    secrets = [o for (k, _, _), o in h.kube.objects.items() if k == "secret"]
    (secret,) = secrets
    name = secret["metadata"]["name"]
    assert name.startswith("demo-ray-token-") and h.status["rayTokenSecret"] == name
    assert re.fullmatch(r"[0-9a-f]{64}", secret["stringData"]["RAY_AUTH_TOKEN"]) and secret["immutable"] is True
    policy = h.kube.get_network_policy(NS, "demo-ray")
    for child in (secret, policy):
        assert [(o["kind"], o["uid"], o["controller"]) for o in child["metadata"]["ownerReferences"]] == \
            [("VideoCurationJob", UID, True)]
    assert token_refs(h.kube.get_rayjob(NS, "demo")) == {name}

    fail(h, "demo", jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed", message="exit code 1")
    h.advance(31)
    assert h.reconcile() == "Provisioning" and h.rayjobs() == ["demo-retry-1"]
    assert token_refs(h.kube.get_rayjob(NS, "demo-retry-1")) == {name}  # the retry keeps the token
    assert h.kube.count("create_secret") == 1
    assert [n for (k, _, n) in h.kube.objects if k in ("secret", "networkpolicy")] == [name, "demo-ray"]


def test_a_secret_made_by_someone_else_never_becomes_the_jobs_token(h: Harness):
    """Who could plant a Secret under the token's name would know the token: the name is generated."""
    h.kube._put("secret", {"metadata": {"name": "demo-ray-token-00000", "namespace": NS},
                           "stringData": {"RAY_AUTH_TOKEN": "known-to-the-planter"}})
    h.kube.calls.append(("create_secret", "planted"))  # the fake's next generated name is then another
    assert h.reconcile() == "Provisioning"
    ours = h.status["rayTokenSecret"]
    assert ours != "demo-ray-token-00000" and token_refs(h.kube.get_rayjob(NS, "demo")) == {ours}


def test_a_foreign_network_policy_with_our_name_fails_the_job(h: Harness):
    h.kube._put("networkpolicy", {"kind": "NetworkPolicy", "metadata": {"name": "demo-ray", "namespace": NS}})
    assert h.reconcile() == "Failed"
    failed = h.condition("Failed")
    assert failed["reason"] == "NameConflict" and "NetworkPolicy demo-ray exists" in failed["message"]
    assert h.rayjobs() == []


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
    assert st["completionTime"] == rfc3339(h.now)
    assert h.condition("Succeeded")["status"] == "True" and h.condition("Running")["status"] == "False"
    assert h.reasons() == ["Provisioning", "Running", "Succeeded"]
    # Finished jobs are left alone.
    calls = len(h.kube.calls)
    assert h.reconcile(poll_progress=True) == "Succeeded" and len(h.kube.calls) == calls


def test_the_status_follows_each_worker_groups_pods_as_the_autoscaler_moves_them(h: Harness):
    drive_to_running(h)
    cluster = "demo-raycluster-x7k2p"
    assert "workerGroups" not in h.status  # no RayCluster (yet): nothing to say
    spec = copy.deepcopy(h.kube.get_rayjob(NS, "demo")["spec"]["rayClusterSpec"])
    h.kube._put("raycluster", {"metadata": {"name": cluster, "namespace": NS}, "spec": spec,
                               "status": {"readyWorkerReplicas": 1}})
    cpu = spec["workerGroupSpecs"][0]
    assert cpu["groupName"] == "cpu" and cpu["maxReplicas"] > cpu["minReplicas"]
    assert len(spec["workerGroupSpecs"]) == 1  # KubeRay counts Ready workers per cluster: one group, its own count

    def sizes() -> dict:
        (group,) = [g for g in h.status["workerGroups"] if g["name"] == "cpu"]
        return {k: group[k] for k in ("minReplicas", "maxReplicas", "desiredReplicas", "readyReplicas")}

    h.advance(1)
    assert h.reconcile(poll_progress=True) == "Running"
    low, high = cpu["minReplicas"], cpu["maxReplicas"]
    assert sizes() == {"minReplicas": low, "maxReplicas": high, "desiredReplicas": low, "readyReplicas": 1}
    assert h.status["readyWorkers"] == 1
    assert not any(call[0] == "list_pods" for call in h.kube.calls)  # no pod is read: the RayCluster says it

    # The Ray autoscaler asks for another pod (it patches the live RayCluster), KubeRay makes it.
    live = h.kube.objects[("raycluster", NS, cluster)]
    live["spec"]["workerGroupSpecs"][0]["replicas"] = low + 1
    h.advance(1)
    h.reconcile(poll_progress=True)
    assert sizes()["desiredReplicas"] == low + 1 and sizes()["readyReplicas"] == 1
    live["status"]["readyWorkerReplicas"] = 2  # KubeRay saw the new pod Ready
    h.report(done=5)
    h.advance(1)
    assert h.reconcile(poll_progress=True) == "Running"
    assert sizes()["readyReplicas"] == 2 and h.status["readyWorkers"] == 2
    assert h.status["progress"]["videosDone"] == 5

    # The job ends: its cluster goes, and so do the sizes.
    h.kube.set_rayjob_status("demo", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", rayClusterName=cluster)
    h.advance(1)
    assert h.reconcile() == "Succeeded" and "workerGroups" not in h.status and "readyWorkers" not in h.status


def test_a_finished_job_points_at_its_summary_index_and_report(h: Harness):
    drive_to_running(h)
    h.report(done=3)
    assert h.reconcile(poll_progress=True) == "Running" and "outputs" not in h.status
    h.report("summary.json", done=10, state="succeeded", failures=[])
    h.kube.set_rayjob_status("demo", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    assert h.reconcile() == "Succeeded"
    assert h.status["outputs"] == {"summary": f"{h.output}/summary.json", "index": f"{h.output}/index/",
                                   "report": f"{h.output}/report/index.html"}


# ------------------------------------------------------------------------------------ failure


def test_app_failure_retries_with_backoff_then_fails(h: Harness):
    drive_to_running(h)
    fail(h, "demo", jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed",
         message="Job entrypoint command failed with exit code 1")
    st = h.status
    assert st["phase"] == "Pending" and st["retries"] == 1
    assert st["nextRetryTime"] == rfc3339(h.now + timedelta(seconds=30))
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
    assert h.status["nextRetryTime"] == rfc3339(h.now + timedelta(seconds=60))  # doubled
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


def test_a_rayjob_kuberay_refuses_fails_the_job_without_retries(tmp_path: Path):
    # KubeRay 1.5 parks a RayJob it cannot accept in ValidationFailed and waits for an edit;
    # the same spec would be refused again, so the job fails at once, retries left or not.
    h = Harness(tmp_path, maxRetries=2)
    h.reconcile()
    message = ("The RayJob spec is invalid: resource fields should not be set in both rayStartParams"
               " and Resources for gpu-motion group; please use only one")
    fail(h, "demo", jobDeploymentStatus="ValidationFailed", reason="ValidationFailed", message=message)
    assert h.status["phase"] == "Failed" and h.status["retries"] == 0
    assert h.condition("Failed")["reason"] == "ValidationFailed" and h.condition("Failed")["message"] == message
    assert h.rayjobs() == ["demo"]  # kept, with KubeRay's event, for inspection


def test_stuck_initializing_fails_after_the_pending_deadline(tmp_path: Path):
    h = Harness(tmp_path, maxRetries=1, pendingDeadlineSeconds=600)
    h.reconcile()
    h.kube.set_rayjob_status("demo", jobDeploymentStatus="Initializing", startTime=rfc3339(h.now))
    h.advance(599)
    assert h.reconcile() == "Provisioning"
    h.advance(2)
    assert h.reconcile() == "Pending"
    assert h.condition("Retrying")["reason"] == "PendingDeadlineExceeded"
    assert h.rayjobs() == []
    h.advance(30)
    h.reconcile()
    h.kube.set_rayjob_status("demo-retry-1", jobDeploymentStatus="Initializing", startTime=rfc3339(h.now))
    h.advance(601)
    assert h.reconcile() == "Failed"
    assert h.condition("Failed")["reason"] == "PendingDeadlineExceeded"
    assert h.rayjobs() == []  # the stuck cluster is not left holding nodes


def test_pods_kuberay_cannot_create_are_named_in_the_message_and_the_deadline(tmp_path: Path):
    h = Harness(tmp_path, maxRetries=0, pendingDeadlineSeconds=600)
    h.reconcile()
    h.kube.set_rayjob_status("demo", jobDeploymentStatus="Initializing", rayClusterName="demo-x7k2p",
                             startTime=rfc3339(h.now))
    refusal = ('pods "demo-x7k2p-head-abcde" is forbidden: exceeded quota: small, requested: limits.cpu=1,'
               ' used: limits.cpu=0, limited: limits.cpu=500m')
    h.kube.objects[("raycluster", NS, "demo-x7k2p")] = {
        "metadata": {"name": "demo-x7k2p"},
        "status": {"conditions": [{"type": "HeadPodReady", "status": "False", "reason": "HeadPodNotFound"},
                                  {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreateHeadPod",
                                   "message": f"FailedCreateHeadPod\n{refusal}"}]}}  # as KubeRay 1.5 writes it
    h.advance(5)
    assert h.reconcile() == "Provisioning"
    assert h.status["message"] == f"RayCluster demo-x7k2p: FailedCreateHeadPod: {refusal}"
    h.advance(600)
    assert h.reconcile() == "Failed"
    failed = h.condition("Failed")
    assert failed["reason"] == "PendingDeadlineExceeded" and failed["message"].endswith(f"FailedCreateHeadPod: {refusal}")


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
    h.kube.objects[("vcj", NS, "demo")]["metadata"]["deletionTimestamp"] = rfc3339(T0)
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
    spec_updates.update_spec(h.ctx, NS, "demo")
    cluster = h.kube.get_raycluster(NS, "demo-raycluster-x7k2p")["spec"]["workerGroupSpecs"][0]
    assert (cluster["minReplicas"], cluster["maxReplicas"], cluster["replicas"]) == (2, 12, 2)
    rj = h.kube.get_rayjob(NS, "demo")["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert (rj["minReplicas"], rj["maxReplicas"]) == (2, 12)
    assert spec_from_configmap(h.kube.get_configmap(NS, "demo-config")).cluster.cpu_workers.max_replicas == 12
    assert h.events[-1].reason == "Rescaled"
    assert h.condition("SpecUpdateRefused") is None and h.status["observedGeneration"] == 2


def test_pipeline_change_on_a_running_job_is_refused(h: Harness):
    with_live_cluster(h)
    h.edit_spec(splitting__algorithm="transnetv2", cluster__image="clipforge/pipeline:next",
                cluster__cpuWorkers__maxReplicas=3, maxRetries=1)
    spec_updates.update_spec(h.ctx, NS, "demo")
    refused = h.condition("SpecUpdateRefused")
    assert refused["status"] == "True" and refused["reason"] == "ImmutableField"
    assert "splitting.algorithm" in refused["message"] and "cluster.image" in refused["message"]
    assert h.events[-1].type == "Warning" and h.events[-1].reason == "SpecUpdateRefused"
    # The allowed part still applies; the running pipeline's spec does not change.
    accepted = spec_from_configmap(h.kube.get_configmap(NS, "demo-config"))
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
    spec_updates.update_spec(h.ctx, NS, "demo")
    assert h.condition("SpecUpdateRefused")["status"] == "False"


def test_spec_change_before_anything_started_needs_no_patch(h: Harness):
    h.edit_spec(splitting__algorithm="transnetv2")
    spec_updates.update_spec(h.ctx, NS, "demo")
    assert h.kube.calls == []


# ------------------------------------------------------------------------------------ secrets


def test_secrets_never_reach_status_events_or_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    h = Harness(tmp_path, output={"uri": "s3://bucket/out/"}, storage={"credentialsSecret": "s3-creds"})
    h.kube._put("secret", {"metadata": {"name": "s3-creds", "namespace": NS},
                           "data": {"AWS_ACCESS_KEY_ID": base64.b64encode(b"AKIDEXAMPLE").decode(),
                                    "AWS_SECRET_ACCESS_KEY": base64.b64encode(SECRET_VALUE.encode()).decode()}})
    seen: list[Any] = []

    def progress(uri: str, storage: Any, credentials: Any, final: bool = False) -> Any:
        from clipforge.spec import RunReport
        from clipforge_operator.progress import progress_from_report

        seen.append(credentials)
        logging.getLogger("clipforge_operator.test").info("reading %s with %r", uri, credentials)
        return progress_from_report(RunReport.model_validate({
            "state": "running", "updatedAt": "2025-06-01T12:00:00Z", "videos": {"total": 4, "done": 1},
            "clips": {"passed": 2}}))

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
    # Nor the job's Ray token, which only its own Secret holds.
    token = h.kube.objects[("secret", NS, h.status["rayTokenSecret"])]["stringData"]["RAY_AUTH_TOKEN"]
    assert token not in everything and base64.b64encode(token.encode()).decode() not in everything


@pytest.mark.parametrize("storage", [{}, {"credentialsSecret": "missing"}, {"credentialsSecret": "no-keys"}, "unread"],
                         ids=["no-secret", "secret-missing", "secret-without-keys", "secrets-not-read"])
def test_a_tenants_bucket_is_never_read_with_the_operators_own_identity(tmp_path: Path, storage: Any):
    """The job chooses the URI: without its own credentials the operator reads nothing there (its own
    identity, env or IRSA, would make it a confused deputy), and the job goes on without progress."""
    h = Harness(tmp_path, output={"uri": "s3://tenant-bucket/out/"},
                storage=storage if isinstance(storage, dict) else {"credentialsSecret": "s3-creds"})
    h.kube._put("secret", {"metadata": {"name": "no-keys", "namespace": NS}, "data": {}})
    h.kube._put("secret", {"metadata": {"name": "s3-creds", "namespace": NS},
                           "stringData": {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "v"}})
    if storage == "unread":
        h.ctx.read_secrets = False
    reads: list[Any] = []
    h.ctx.progress = lambda *args, **kwargs: reads.append(args) or pytest.fail("read without the job's credentials")
    h.ctx.outcome = lambda *args, **kwargs: reads.append(args) or pytest.fail("read without the job's credentials")
    drive_to_running(h)
    assert h.reconcile(poll_progress=True) == "Running" and "progress" not in h.status
    fail(h, "demo", jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed")
    assert reads == [] and h.status["phase"] in ("Pending", "Failed")


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


def test_metrics_carry_each_jobs_videos_and_clips_from_its_progress():
    from prometheus_client import generate_latest

    tracker = metrics.PhaseTracker()
    tracker.progress("videos", "street", None)  # nothing reported yet: no series
    assert b'job="street"' not in generate_latest(metrics.REGISTRY)
    tracker.progress("videos", "street", {"videosTotal": 7, "videosDone": 3, "videosFailed": 1, "videosSkipped": 0,
                                          "clipsPassed": 12, "clipsFiltered": 2, "updatedAt": "2026-12-07T10:00:00Z"})

    def sample(name: str, state: str) -> float | None:
        return metrics.REGISTRY.get_sample_value(name, {"namespace": "videos", "job": "street", "state": state})

    assert [sample("clipforge_job_videos", s) for s in ("total", "done", "failed", "skipped")] == [7, 3, 1, 0]
    assert [sample("clipforge_job_clips", s) for s in ("passed", "filtered")] == [12, 2]
    tracker.forget("videos", "street")  # a deleted job leaves no series behind
    assert b'job="street"' not in generate_latest(metrics.REGISTRY)


def test_handlers_register_with_kopf():
    import kopf

    from clipforge_operator import handlers
    from clipforge_operator.config import parse_config

    config = parse_config(["-A"], {"CLIPFORGE_PROGRESS_INTERVAL": "600"})
    registry = handlers.registry(config)
    changing = {(x.selector.group, x.selector.any_name, x.fn.__name__) for x in registry._changing.get_all_handlers()}
    assert {("clipforge.dev", "videocurationjobs", fn) for fn in
            ("job_created", "job_spec_updated", "job_deleted")} <= changing
    spawning = {(x.selector.any_name, x.fn.__name__) for x in registry._spawning.get_all_handlers()}
    assert ("videocurationjobs", "job_tick") in spawning
    watching = {(x.selector.group, x.selector.any_name) for x in registry._watching.get_all_handlers()}
    assert ("ray.io", "rayjobs") in watching
    (tick,) = [x for x in registry._spawning.get_all_handlers() if x.fn.__name__ == "job_tick"]
    assert tick.interval == config.progress_interval <= 30


def test_an_api_refusal_is_retried_and_says_what_was_refused():
    import kopf
    from kubernetes.client.exceptions import ApiException

    from clipforge_operator import handlers

    def refused(*_: Any, **__: Any) -> None:
        exc = ApiException(status=403, reason="Forbidden")
        exc.body = json.dumps({"kind": "Status", "message": 'configmaps is forbidden: User "system:serviceaccount:'
                               'ops:op" cannot create resource "configmaps" in API group "" in the namespace "v"'})
        raise exc

    memo = kopf.Memo(context=r.Context(kube=FakeKube()))
    with pytest.raises(kopf.TemporaryError) as err:
        handlers._run("create", memo, refused, NS, "demo")
    assert str(err.value) == ('Kubernetes API error 403 Forbidden: configmaps is forbidden: User "system:serviceaccount:'
                              'ops:op" cannot create resource "configmaps" in API group "" in the namespace "v"')


def test_startup_settings(monkeypatch: pytest.MonkeyPatch):
    import kopf

    from clipforge_operator import handlers
    from clipforge_operator.config import OperatorConfig

    monkeypatch.setattr(handlers, "connect", lambda config: None)  # no API to connect to here
    settings = kopf.OperatorSettings()
    handlers.startup(settings=settings, memo=kopf.Memo(config=OperatorConfig(namespaces=("videos",), metrics_port=0)))
    # Deleting a job whose timer tick is running waits for the tick, not for kopf's 60 s poll.
    assert settings.background.cancellation_polling <= 1
    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)


def test_main_requires_an_explicit_scope():
    from clipforge_operator.config import parse_config

    with pytest.raises(SystemExit):
        parse_config([], {})
    assert parse_config(["-A"], {}).all_namespaces
    assert parse_config(["--namespace", "videos"], {}).namespaces == ("videos",)


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


def test_a_rayjob_refused_by_strict_field_validation_says_kuberay_is_too_old(h: Harness):
    from kubernetes.client.exceptions import ApiException

    real_create = h.kube.create_rayjob
    refusal = ('RayJob in version "v1" cannot be handled as a RayJob: strict decoding error: unknown field'
               ' "spec.rayClusterSpec.workerGroupSpecs[0].resources"')

    def old_crd(body: dict) -> dict:
        exc = ApiException(status=400, reason="Bad Request")
        exc.body = json.dumps({"kind": "Status", "status": "Failure", "reason": "BadRequest", "code": 400,
                               "message": refusal})
        raise exc

    h.kube.create_rayjob = old_crd  # type: ignore[method-assign]
    assert h.reconcile() == "Pending"
    submitted = h.condition("Submitted")
    assert (submitted["status"], submitted["reason"]) == ("False", "KubeRayTooOld")
    assert refusal in submitted["message"] and "install KubeRay 1.5.0 or later" in submitted["message"]
    h.reconcile()
    assert h.reasons() == ["KubeRayTooOld"]  # reported once, not on every tick
    h.kube.create_rayjob = real_create  # type: ignore[method-assign]
    assert h.reconcile() == "Provisioning" and h.rayjobs() == ["demo"]


# ------------------------------------------------------------------------- failed videos


def report_failed_videos(h: Harness, state: str, failed: list[str], total: int = 10, **extra: Any) -> None:
    """summary.json as the pipeline writes it when some of its videos failed."""
    h.report("summary.json", done=total - len(failed), total=total, state=state,
             videos={"total": total, "done": total - len(failed), "failed": len(failed), "skipped": 0},
             failures=[{"video": f"s3://raw/{v}", "errors": {"probe": "ProbeError: no video stream"}} for v in failed],
             **extra)


def exit_status(h: Harness, code: int) -> None:
    """The driver exited with `code`: KubeRay reports every non-zero exit the same way."""
    fail(h, "demo", jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed",
         message=f"Job entrypoint command failed with exit code {code}")


def test_a_run_completed_with_failed_videos_succeeds_with_a_condition_and_no_retry(h: Harness):
    drive_to_running(h)
    report_failed_videos(h, "completed-with-failures", ["a.mp4", "b.mp4", "c.mp4", "d.mp4"])
    exit_status(h, 3)
    st = h.status
    assert st["phase"] == "Succeeded" and st["retries"] == 0 and "completionTime" in st
    assert st["progress"]["videosFailed"] == 4 and st["progress"]["videosDone"] == 6
    condition = h.condition("CompletedWithFailures")
    assert condition["status"] == "True" and condition["reason"] == "VideosFailed"
    assert condition["message"].startswith("4 of 10 videos failed: s3://raw/a.mp4, s3://raw/b.mp4, s3://raw/c.mp4 and 1 more")
    assert h.condition("Succeeded")["status"] == "True" and h.condition("Succeeded")["reason"] == "CompletedWithFailures"
    assert h.condition("Failed") is None or h.condition("Failed")["status"] == "False"
    # The Ray cluster is not rebuilt for data errors: no second attempt, the RayJob is left to KubeRay.
    assert h.kube.count("create_rayjob") == 1 and h.rayjobs() == ["demo"]
    assert "AttemptFailed" not in h.reasons() and h.reasons()[-1] == "Succeeded"


def test_more_failed_videos_than_the_spec_allows_fail_the_job_without_retries(h: Harness):
    drive_to_running(h)
    message = "7 of 10 videos failed, more than execution.failures.maxFailedFraction (0.5)"
    report_failed_videos(h, "failed", [f"{i}.mp4" for i in range(7)], reason="TooManyVideosFailed", message=message)
    exit_status(h, 1)
    st = h.status
    assert st["phase"] == "Failed" and st["retries"] == 0
    failed = h.condition("Failed")
    assert failed["reason"] == "TooManyVideosFailed" and failed["message"] == message
    assert st["progress"]["videosFailed"] == 7
    assert h.kube.count("create_rayjob") == 1 and "AttemptFailed" not in h.reasons()


@pytest.mark.parametrize(("state", "reason", "message", "code"), [
    ("failed", "TooManyClipsFailed", "40 of 60 clips failed, more than execution.failures.maxFailedFraction (0.5)", 1),
    ("no-input", "NoInputVideos", "input s3://raw/ holds 3 files, none matching input.patterns (*.mp4)", 4),
])
def test_runs_that_failed_on_their_inputs_fail_the_job_without_retries(h: Harness, state, reason, message, code):
    drive_to_running(h)
    report_failed_videos(h, state, [], reason=reason, message=message)
    exit_status(h, code)
    assert h.status["phase"] == "Failed" and h.status["retries"] == 0
    failed = h.condition("Failed")
    assert failed["reason"] == reason and failed["message"] == message
    assert h.kube.count("create_rayjob") == 1 and "AttemptFailed" not in h.reasons()


def test_a_run_completed_with_failed_clips_only_says_so(h: Harness):
    drive_to_running(h)
    report_failed_videos(h, "completed-with-failures", [], clips={"passed": 8, "filtered": 0, "failed": 2})
    exit_status(h, 3)
    condition = h.condition("CompletedWithFailures")
    assert h.status["phase"] == "Succeeded"
    assert condition["reason"] == "ClipsFailed" and condition["message"].startswith("2 of 10 clips failed")


def test_infrastructure_failures_keep_their_retries(h: Harness):
    # An earlier run's summary (written before this attempt started) says nothing about this one.
    report_failed_videos(h, "completed-with-failures", ["a.mp4"])
    h.advance(60)
    drive_to_running(h)
    exit_status(h, 1)
    assert h.status["phase"] == "Pending" and h.status["retries"] == 1
    assert h.condition("CompletedWithFailures") is None
    # A driver that crashed after some videos failed: summary state failed, but no data reason.
    h.advance(31)
    h.reconcile()
    assert h.rayjobs() == ["demo-retry-1"]
    h.kube.set_rayjob_status("demo-retry-1", jobDeploymentStatus="Running", jobStatus="RUNNING",
                             startTime=rfc3339(h.now))
    h.reconcile()
    h.advance(10)
    report_failed_videos(h, "failed", ["a.mp4"])
    fail(h, "demo-retry-1", jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed",
         message="Job entrypoint command failed with exit code 1", startTime=rfc3339(h.now - timedelta(seconds=15)))
    assert h.status["phase"] == "Pending" and h.status["retries"] == 2
    # A node lost mid-run: the Ray job fails before any summary of this attempt exists.
    h.advance(61)
    h.reconcile()
    fail(h, "demo-retry-2", jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed",
         message="the head node died", startTime=rfc3339(h.now))
    assert h.status["phase"] == "Failed" and h.condition("Failed")["reason"] == "AppFailed"


# ------------------------------------------------------------------------------ job policy


STRICT = JobPolicy(images=("docker.io/clipforge/pipeline",), service_accounts=("model-reader",),
                   credentials_secrets=("clipforge-s3",))


@pytest.mark.parametrize("spec, field", [
    ({"cluster": {"image": "evil.example.com/miner:1"}}, "spec.cluster.image: evil.example.com/miner:1"),
    ({"cluster": {"serviceAccountName": "cluster-admin-sa"}}, "spec.cluster.serviceAccountName: cluster-admin-sa"),
    ({"storage": {"credentialsSecret": "prod-db"}}, "spec.storage.credentialsSecret: prod-db"),
], ids=["image", "service-account", "credentials-secret"])
def test_a_job_the_policy_refuses_fails_naming_the_field_and_nothing_is_created(tmp_path: Path, spec: dict,
                                                                                field: str):
    h = Harness(tmp_path, **spec)
    h.ctx.policy = STRICT
    assert h.reconcile() == "Failed"
    failed = h.condition("Failed")
    assert failed["reason"] == "PolicyViolation" and failed["message"].startswith(field), failed
    assert h.status["message"] == failed["message"]
    (event,) = h.events
    assert (event.type, event.reason) == ("Warning", "Failed") and field in event.message
    assert event.message.startswith("PolicyViolation: ")
    assert h.kube.count("create_configmap") == 0 and h.kube.count("create_rayjob") == 0
    assert h.kube.count("get_secret") == 0
    assert h.reconcile() == "Failed" and len(h.events) == 1  # terminal: judged once


@pytest.mark.parametrize("namespace", ["kube-system", "kube-public", "kube-node-lease"])
def test_a_job_in_a_system_namespace_fails_and_nothing_is_created(tmp_path: Path, namespace: str):
    """The operator may create Secrets, RayJobs and NetworkPolicies where jobs are: not in the
    namespaces of the cluster itself."""
    h = Harness(tmp_path, namespace=namespace)
    assert h.reconcile() == "Failed"
    failed = h.condition("Failed")
    assert failed["reason"] == "SystemNamespace" and failed["message"].startswith(f"namespace {namespace}:"), failed
    assert h.kube.count("create_configmap") == 0 and h.kube.count("create_rayjob") == 0
    assert h.kube.count("create_secret") == 0 and h.kube.count("create_network_policy") == 0


def test_a_job_the_policy_admits_runs(tmp_path: Path):
    h = Harness(tmp_path, cluster={"serviceAccountName": "model-reader"}, storage={"credentialsSecret": "clipforge-s3"})
    h.ctx.policy = STRICT
    assert h.reconcile() == "Provisioning" and h.rayjobs() == ["demo"]


def test_a_started_job_keeps_running_under_a_stricter_policy(h: Harness):
    """The policy judges a job before anything is made for it; a running job is not failed mid-run."""
    drive_to_running(h)
    h.ctx.policy = JobPolicy(images=("registry.example.com/",))
    assert h.reconcile() == "Running"
    assert h.condition("Failed") is None


# ------------------------------------------------------------------------------ local paths


NO_VOLUMES = {"volumes": [], "volumeMounts": []}
S3_INPUT = {"uri": "s3://raw/"}


@pytest.mark.parametrize("spec, field, words", [
    ({"input": {"uri": "./samples"}}, "spec.input.uri: ./samples", "relative to nothing in a pod"),
    ({"input": S3_INPUT, "output": {"uri": "/data/out"}, "cluster": NO_VOLUMES}, "spec.output.uri: /data/out",
     "no volume in cluster.volumes mounts (cluster.volumeMounts: none)"),
    ({"input": S3_INPUT, "output": {"uri": "/scratch/out"},
      "cluster": {"volumes": [{"name": "s", "emptyDir": {}}], "volumeMounts": [{"name": "s", "mountPath": "/scratch"}]}},
     "spec.output.uri: /scratch/out", "on the emptyDir volume s"),
    ({"input": S3_INPUT, "output": {"uri": "/models/out"},
      "cluster": {"volumes": [{"name": "m", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}}],
                  "volumeMounts": [{"name": "m", "mountPath": "/models"}]}},
     "spec.output.uri: /models/out", "on the read-only volume m"),
], ids=["relative-input", "unmounted-output", "emptydir-output", "read-only-output"])
def test_a_local_path_the_pods_cannot_use_fails_the_job_at_once_naming_it(tmp_path: Path, spec: dict, field: str,
                                                                          words: str):
    h = Harness(tmp_path, **spec)
    assert h.reconcile() == "Failed"
    failed = h.condition("Failed")
    assert failed["reason"] == "LocalPathNotMounted" and failed["message"].startswith(field), failed
    assert words in failed["message"] and "s3://" in failed["message"]
    (event,) = h.events
    assert (event.type, event.reason) == ("Warning", "Failed") and field in event.message
    assert h.kube.count("create_configmap") == 0 and h.kube.count("create_rayjob") == 0
    h.advance(3600)
    assert h.reconcile() == "Failed" and len(h.events) == 1 and h.rayjobs() == []  # never retried


def test_local_paths_on_a_claim_and_s3_uris_are_admitted(tmp_path: Path):
    claim = {"volumes": [{"name": "m", "persistentVolumeClaim": {"claimName": "videos", "readOnly": True}},
                         {"name": "d", "persistentVolumeClaim": {"claimName": "datasets"}}],
             "volumeMounts": [{"name": "m", "mountPath": "/videos"}, {"name": "d", "mountPath": "/datasets/"}]}
    h = Harness(tmp_path, input={"uri": "/videos/2024"}, output={"uri": "/datasets/run-1"}, cluster=claim)
    assert h.reconcile() == "Provisioning"
    h2 = Harness(tmp_path, name="s3", input={"uri": "s3://raw/"}, output={"uri": "s3://sets/out/"}, cluster=NO_VOLUMES)
    assert h2.reconcile() == "Provisioning"


# ------------------------------------------------------------------------------ default image


def test_a_job_naming_no_image_runs_and_is_judged_with_the_operators_pipeline_image(tmp_path: Path):
    h = Harness(tmp_path)
    h.ctx.pipeline_image = "registry.example.com/ml/pipeline:1.2"
    h.ctx.policy = JobPolicy(images=("registry.example.com/ml/",))
    assert h.reconcile() == "Provisioning"
    rj = h.kube.get_rayjob(NS, "demo")
    assert {c["image"] for c in rj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]} \
        == {"registry.example.com/ml/pipeline:1.2"}
    assert spec_from_configmap(h.kube.get_configmap(NS, "demo-config")).cluster.image == \
        "registry.example.com/ml/pipeline:1.2"  # a retry runs what the job was admitted with
    refused = Harness(tmp_path, name="refused")
    refused.ctx.pipeline_image = "registry.example.com/ml/pipeline:1.2"
    refused.ctx.policy = STRICT
    assert refused.reconcile() == "Failed"
    assert refused.condition("Failed")["message"].startswith("spec.cluster.image: registry.example.com/ml/pipeline:1.2")


def test_pod_extras_that_would_replace_the_operators_fail_without_children(tmp_path: Path):
    h = Harness(tmp_path, cluster={"env": [{"name": "RAY_AUTH_MODE", "value": "disabled"}]})
    assert h.reconcile() == "Failed"
    failed = h.condition("Failed")
    assert failed["reason"] == "InvalidSpec" and "cluster.env: RAY_AUTH_MODE is set by the operator" in failed["message"]
    assert h.kube.count("create_configmap") == 0 and h.kube.count("create_rayjob") == 0
