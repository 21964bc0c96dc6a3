"""What holds for a job's whole life, retries included, in the in-memory API (tests/support/operator_fakes.py):

- every RayJob is built from the spec the job was admitted with (its ConfigMap, pinned by the hash in
  status.admittedSpecHash) and judged by the policy of the moment it is built;
- status fields are no authority: a preset startTime skips no check, a preset token Secret name is
  not used unless the API server gave it to this job's Secret;
- a ConfigMap the operator cannot read fails the job with a condition instead of an endless retry;
- the token Secret's name is saved the moment it exists, so a refused RayJob create leaks none;
- a RayJob that disappears is a lost attempt, counted against the retries, never run again silently.

The pinned spec on the real API server is test_security_kube.py's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from clipforge_operator import builders as b
from clipforge_operator import cluster_access as access
from clipforge_operator import spec_updates
from clipforge_operator.policy import JobPolicy
from clipforge_operator.status import rfc3339
from support.operator_fakes import NS, Harness, drive_to_running, fail, token_refs

STRICT_IMAGES = JobPolicy(images=("registry.example.com/",))


def configmap(h: Harness) -> dict:
    return h.kube.objects[("configmap", NS, b.configmap_name(h.name))]


def edit_manifest(h: Harness, edit) -> None:  # noqa: ANN001 - a function of the manifest
    """Someone who may edit ConfigMaps changes the job's manifest in place."""
    document = yaml.safe_load(configmap(h)["data"]["job.yaml"])
    edit(document)
    configmap(h)["data"]["job.yaml"] = yaml.safe_dump(document)


def preset_status(h: Harness, **fields: object) -> None:
    """What a status writer (anyone with patch on videocurationjobs/status) leaves there."""
    h.kube.objects[("vcj", NS, h.name)].setdefault("status", {}).update(fields)


def failed(h: Harness) -> tuple[str, str]:
    condition = h.condition("Failed")
    return condition["reason"], condition["message"]


# ------------------------------------------------------------------------- the policy at every build


def test_a_retry_is_judged_by_the_policy_of_its_moment(h: Harness):
    drive_to_running(h)
    h.ctx.policy = STRICT_IMAGES
    assert h.reconcile() == "Running"  # the attempt it admitted runs on
    fail(h, "demo", jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed", message="exit code 1")
    assert h.status["phase"] == "Pending" and h.rayjobs() == []
    h.advance(31)
    assert h.reconcile() == "Failed"
    reason, message = failed(h)
    assert reason == "PolicyViolation" and message.startswith("spec.cluster.image: clipforge/pipeline:"), message
    assert h.rayjobs() == [] and h.kube.count("create_rayjob") == 1  # no retry built
    assert h.condition("Retrying")["status"] == "False" and h.condition("Retrying")["message"] == message


def test_a_preset_start_time_skips_no_check(tmp_path: Path):
    h = Harness(tmp_path, cluster={"image": "evil.example.com/miner:1"})
    h.ctx.policy = STRICT_IMAGES
    preset_status(h, startTime=rfc3339(h.now), phase="Provisioning")
    assert h.reconcile() == "Failed"
    assert failed(h)[0] == "PolicyViolation"
    assert h.kube.count("create_configmap") == 0 and h.kube.count("create_rayjob") == 0


# ------------------------------------------------------------------------------------ the pinned spec


@pytest.mark.parametrize("edit", [
    lambda d: d["spec"]["cluster"].update(image="evil.example.com/miner:1"),
    lambda d: d["spec"]["cluster"].update(serviceAccountName="cluster-admin-sa"),
    lambda d: d["spec"]["output"].update(uri="s3://someone-elses-bucket/"),
    lambda d: d["metadata"].update(uid="uid-of-another-job"),  # would take over another job's output claim
], ids=["image", "service-account", "output", "uid"])
def test_a_configmap_edited_after_admission_fails_the_job_and_nothing_runs_from_it(h: Harness, edit):  # noqa: ANN001
    drive_to_running(h)
    pin = h.status["admittedSpecHash"]
    edit_manifest(h, edit)
    assert h.reconcile() == "Failed"
    reason, message = failed(h)
    assert reason == "AdmittedSpecChanged" and message.startswith("ConfigMap demo-config was changed after"), message
    assert h.rayjobs() == []  # the attempt that may have read it is stopped, and none is built
    assert h.kube.count("create_rayjob") == 1 and h.status["admittedSpecHash"] == pin
    assert h.events[-1].type == "Warning" and h.events[-1].reason == "Failed"


def test_a_file_added_beside_the_manifest_is_a_change_too(h: Harness):
    h.reconcile()
    configmap(h)["data"]["sitecustomize.py"] = "import os"
    assert h.reconcile() == "Failed" and failed(h)[0] == "AdmittedSpecChanged"


def test_a_deleted_configmap_and_an_edited_spec_build_nothing(h: Harness):
    drive_to_running(h)
    fail(h, "demo", jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed", message="exit code 1")
    h.kube.delete_configmap(NS, "demo-config")
    h.edit_spec(cluster__image="evil.example.com/miner:1")
    h.advance(31)
    assert h.reconcile() == "Failed"
    reason, message = failed(h)
    assert reason == "AdmittedSpecChanged" and message.startswith("ConfigMap demo-config, which held the spec"), message
    assert h.rayjobs() == [] and h.kube.get_configmap(NS, "demo-config") is None


def test_a_deleted_configmap_is_made_again_when_only_changeable_fields_moved(h: Harness):
    drive_to_running(h)
    pin = h.status["admittedSpecHash"]
    fail(h, "demo", jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed", message="exit code 1")
    h.kube.delete_configmap(NS, "demo-config")
    h.edit_spec(cluster__cpuWorkers__maxReplicas=7, maxRetries=5)
    h.advance(31)
    assert h.reconcile() == "Provisioning" and h.rayjobs() == ["demo-retry-1"]
    assert h.status["admittedSpecHash"] == pin and h.kube.get_configmap(NS, "demo-config") is not None
    (cpu,) = [g for g in h.kube.get_rayjob(NS, "demo-retry-1")["spec"]["rayClusterSpec"]["workerGroupSpecs"]
              if g["groupName"] == "cpu"]
    assert cpu["maxReplicas"] == 7


def test_the_operators_own_scaling_patch_keeps_the_pin(h: Harness):
    drive_to_running(h)
    pin = h.status["admittedSpecHash"]
    h.edit_spec(cluster__cpuWorkers__maxReplicas=12)
    spec_updates.update_spec(h.ctx, NS, "demo")
    assert h.kube.count("patch_configmap") == 1
    assert h.reconcile() == "Running" and h.status["admittedSpecHash"] == pin


def test_an_unrecorded_pin_adopts_only_the_configmap_the_operator_would_make(tmp_path: Path):
    """A crash between the ConfigMap's create and the status write leaves no hash: the ConfigMap is adopted
    if it is the one the spec makes, and refused if anyone changed it in between."""
    h = Harness(tmp_path)
    h.reconcile()
    pin = h.status["admittedSpecHash"]
    h.kube.objects.pop(("rayjob", NS, "demo"))
    for field in ("admittedSpecHash", "rayJobName"):
        h.kube.objects[("vcj", NS, "demo")]["status"].pop(field)
    assert h.reconcile() == "Provisioning" and h.rayjobs() == ["demo"] and h.status["admittedSpecHash"] == pin

    tampered = Harness(tmp_path, name="other")
    tampered.reconcile()
    edit_manifest(tampered, lambda d: d["spec"]["cluster"].update(image="evil.example.com/miner:1"))
    tampered.kube.objects[("vcj", NS, "other")]["status"].pop("admittedSpecHash")
    assert tampered.reconcile() == "Failed" and failed(tampered)[0] == "AdmittedSpecChanged"


@pytest.mark.parametrize("data, words", [
    ({"job.yaml": "spec: [unclosed"}, "ConfigMap demo-config: job.yaml is not YAML"),
    ({"job.yaml": "spec:\n  input: {uri: s3://in/}\n  output: {uri: s3://out/}\n  surprise: 1\n"},
     "ConfigMap demo-config: job.yaml is not a valid job: spec.surprise: Extra inputs are not permitted"),
    ({"job.yaml": "just a string"}, "ConfigMap demo-config: job.yaml is not a job manifest with a spec"),
    ({"other": "x"}, "ConfigMap demo-config has no job.yaml"),
], ids=["malformed-yaml", "validation-error", "not-a-manifest", "no-manifest"])
def test_a_broken_configmap_fails_the_job_with_a_clear_condition(h: Harness, data: dict, words: str):
    drive_to_running(h)
    configmap(h)["data"] = data
    spec_updates.update_spec(h.ctx, NS, "demo")  # no exception for kopf to retry forever
    assert h.reconcile() == "Failed"
    reason, message = failed(h)
    assert reason == "InvalidConfigMap" and message.startswith(words), message
    assert h.rayjobs() == []
    assert h.reconcile() == "Failed"  # terminal: judged once


# ------------------------------------------------------------------------------- the token Secret


@pytest.mark.parametrize("preset", [
    "other-ray-token-bcdfg",  # another job's token Secret
    "demo-ray-token-abc-ray-token-bcdfg",  # the token of the job named demo-ray-token-abc
    "clipforge-s3",  # any Secret at all
])
def test_a_status_writer_cannot_point_the_job_at_another_token(tmp_path: Path, preset: str):
    h = Harness(tmp_path)
    preset_status(h, rayTokenSecret=preset)
    assert h.reconcile() == "Provisioning"
    ours = h.status["rayTokenSecret"]
    assert ours != preset and access.is_ray_token_secret_name("demo", ours)
    assert token_refs(h.kube.get_rayjob(NS, "demo")) == {ours}
    assert "RayTokenSecretRefused" in h.reasons()


def test_a_refused_rayjob_create_leaks_no_token_secret(h: Harness):
    real_create = h.kube.create_rayjob

    def refuse(body: dict) -> dict:
        raise ApiException(status=403, reason="Forbidden: exceeded quota: rayjobs")

    h.kube.create_rayjob = refuse  # type: ignore[method-assign]
    for _ in range(3):  # kopf retries the handler
        with pytest.raises(ApiException):
            h.reconcile()
        h.advance(10)
    assert h.kube.count("create_secret") == 1
    recorded = h.status["rayTokenSecret"]
    h.kube.create_rayjob = real_create  # type: ignore[method-assign]
    assert h.reconcile() == "Provisioning"
    assert token_refs(h.kube.get_rayjob(NS, "demo")) == {recorded} and h.kube.count("create_secret") == 1


def test_a_token_name_status_lost_is_recovered_from_the_rayjob(h: Harness):
    drive_to_running(h)
    ours = h.status["rayTokenSecret"]
    h.kube.objects[("vcj", NS, "demo")]["status"].pop("rayTokenSecret")
    assert h.reconcile() == "Running" and h.status["rayTokenSecret"] == ours
    preset_status(h, rayTokenSecret="demo-ray-token-zzzzz")  # a name of the right shape, but not the RayJob's
    assert h.reconcile() == "Running" and h.status["rayTokenSecret"] == ours
    # Lost again between the failed attempt and its retry: the failed RayJob, left behind, still names it.
    h.kube.delete_rayjob = lambda ns, name: False  # type: ignore[method-assign]
    fail(h, "demo", jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed", message="exit code 1")
    del h.kube.delete_rayjob
    h.kube.objects[("vcj", NS, "demo")]["status"].pop("rayTokenSecret")
    h.advance(31)
    assert h.reconcile() == "Provisioning"
    assert token_refs(h.kube.get_rayjob(NS, "demo-retry-1")) == {ours} and h.kube.count("create_secret") == 1


# ------------------------------------------------------------------------------------ lost attempts


def test_a_rayjob_that_disappears_is_a_lost_attempt_never_a_silent_rerun(tmp_path: Path):
    h = Harness(tmp_path, maxRetries=1)
    drive_to_running(h)
    h.kube.objects.pop(("rayjob", NS, "demo"))  # kubectl delete rayjob, or KubeRay's TTL while the operator was away
    assert h.reconcile() == "Pending"
    assert h.rayjobs() == [] and h.kube.count("create_rayjob") == 1  # not made again under the same name
    assert h.status["retries"] == 1
    retrying = h.condition("Retrying")
    assert retrying["reason"] == "RayJobLost" and "RayJob demo of attempt 1 is gone (last seen: Running" in \
        retrying["message"], retrying
    assert h.events[-1].reason == "AttemptFailed"
    h.advance(31)
    assert h.reconcile() == "Provisioning" and h.rayjobs() == ["demo-retry-1"]  # the counted retry
    h.kube.objects.pop(("rayjob", NS, "demo-retry-1"))
    assert h.reconcile() == "Failed"
    reason, message = failed(h)
    assert reason == "RayJobLost" and message.startswith("RayJob demo-retry-1 of attempt 2 is gone"), message
    assert h.rayjobs() == [] and h.kube.count("create_rayjob") == 2


# ---------------------------------------------------------------------------------------- log text


RAY_FAILURE = ("Job entrypoint command failed with exit code 1, last available logs (truncated to 20,000 chars):\n"
               "Traceback (most recent call last):\n  File \"/app/run.py\", line 3\nKeyError: 'AWS_SECRET_ACCESS_KEY=abc'")


def test_no_driver_log_text_reaches_the_jobs_status_or_events(tmp_path: Path):
    h = Harness(tmp_path, maxRetries=0)
    drive_to_running(h)
    fail(h, "demo", jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed", message=RAY_FAILURE)
    assert h.status["phase"] == "Failed"
    assert h.status["message"] == failed(h)[1] == "Job entrypoint command failed with exit code 1"
    assert not any("Traceback" in e.message or "KeyError" in e.message for e in h.events)


# ------------------------------------------------------------------------ status writes conditional


def test_a_status_written_in_between_is_never_overwritten_from_a_stale_read(h: Harness):
    """The operator reads the job, decides and patches its status: only onto the version it read. A write in
    between (a status writer, a second operator) is a 409, and the operator decides again from a new read."""
    drive_to_running(h)
    h.report(done=2)
    read, writes = h.kube.get_job, []

    def read_then_someone_writes(ns: str, name: str) -> dict | None:
        body = read(ns, name)
        if len(writes) < writes_wanted:
            writes.append(1)
            obj = h.kube.objects[("vcj", ns, name)]
            obj["status"]["message"] = "written in between"
            obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
        return body

    h.kube.get_job = read_then_someone_writes
    writes_wanted = 99  # a writer faster than every read: the operator gives up (kopf retries later), overwriting nothing
    h.advance(5)
    with pytest.raises(ApiException) as refused:
        h.reconcile(poll_progress=True)
    assert refused.value.status == 409
    assert h.status["message"] == "written in between" and "progress" not in h.status
    writes.clear()
    writes_wanted = 1  # one write in between: the operator's status is decided again from the job as it is now
    patches = len(h.kube.status_patches)
    assert h.reconcile(poll_progress=True) == "Running" and h.status["progress"]["videosDone"] == 2
    assert len(writes) == 1 and len(h.kube.status_patches) == patches + 1  # the refused patch was never applied
