"""What the chart lets the operator do and what the operator lets jobs ask for, on the real API server.

The operator runs as the chart deploys it (harness/operator_process.py: the chart's RBAC, a token of
its ServiceAccount), with a job policy set through chart values as an administrator would. Real
RBAC authorization decides what it may read; real PodSecurity admission (the namespace enforces
`restricted`) decides whether the Ray pods it asks KubeRay for may exist. No test here runs Ray:
the pods are admitted and then wait on a node label nobody has. That a job naming its allowed
Secret runs to the end, progress read with that Secret, is test_operator_kube.py's restart test
and the e2e tests, under the same chart defaults.
"""

from __future__ import annotations

import json

import pytest
import yaml

from support.cluster_jobs import SECRET

pytestmark = [pytest.mark.usefixtures("never_forbidden"), pytest.mark.slow, pytest.mark.timeout(900)]

NS = "security-kube"  # the namespace of the module's stack (tests/conftest.py)
TEAM_SECRET = "team-s3"  # allowed beside the chart's default clipforge-s3
UNRELATED = "database-password"  # a Secret of the namespace that no job may name
RUNNER = "model-reader"  # the one service account jobs may ask for
CHART_SETS = (f"jobPolicy.allowedCredentialsSecrets={{{SECRET},{TEAM_SECRET}}}",
        f"jobPolicy.allowedServiceAccounts={{{RUNNER}}}")
NOWHERE = {"no-such-label": "x"}  # pods are admitted and then never scheduled


@pytest.fixture(scope="module", autouse=True)
def namespace_objects(stack):  # noqa: ANN001
    """The Secrets and the service account the tests name, in the stack's namespace."""
    for name in (TEAM_SECRET, UNRELATED):
        stack.cp.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS},
                        "type": "Opaque", "stringData": {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "v"}})
    stack.cp.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": RUNNER, "namespace": NS}})


def job(name: str, **spec) -> dict:  # noqa: ANN003
    return {"apiVersion": "clipforge.dev/v1alpha1", "kind": "VideoCurationJob", "metadata": {"name": name, "namespace": NS},
            "spec": {"input": {"uri": "s3://in/"}, "output": {"uri": "s3://out/"}, "maxRetries": 0, **spec}}


def job_events(stack, name: str) -> list[dict]:  # noqa: ANN001
    return [e for e in stack.list("events") if e["involvedObject"].get("kind") == "VideoCurationJob"
            and e["involvedObject"]["name"] == name]


# ------------------------------------------------------------------------------ secrets (RBAC)


def test_the_operator_can_read_only_the_secrets_jobs_may_name(stack):
    kubeconfig = stack.operator.kubeconfig
    questions = {f"get secrets/{SECRET}": "yes", f"get secrets/{TEAM_SECRET}": "yes",
                 f"get secrets/{UNRELATED}": "no", "get secrets": "no", "list secrets": "no", "watch secrets": "no"}
    answers = {q: stack.cp.kubectl("auth", "can-i", *q.split(), "-n", NS, kubeconfig=kubeconfig,
                                   check=False).stdout.strip() for q in questions}
    assert answers == questions
    # What RBAC says is what the API server does.
    refused = stack.kubectl("--kubeconfig", str(kubeconfig), "get", "secret", UNRELATED, "-o", "name", check=False)
    assert refused.returncode != 0, refused.stdout
    assert f'cannot get resource "secrets" in API group "" in the namespace "{NS}"' in refused.stderr, refused.stderr
    allowed = stack.kubectl("--kubeconfig", str(kubeconfig), "get", "secret", TEAM_SECRET, "-o", "name")
    assert allowed.stdout.strip() == f"secret/{TEAM_SECRET}"


# ------------------------------------------------------------------------------- job policy


def test_a_job_asking_for_another_image_account_or_secret_is_refused_and_nothing_is_made(stack):
    stack.cp.apply(job("greedy", storage={"credentialsSecret": UNRELATED},
                       cluster={"image": "evil.example.com/miner:1", "serviceAccountName": "default-admin"}))
    status = stack.wait(lambda: (s := stack.status("greedy")).get("phase") == "Failed" and s, 60,
                        "job greedy to be refused", "greedy")
    failed = {c["type"]: c for c in status["conditions"]}["Failed"]
    assert failed["reason"] == "PolicyViolation", failed
    for field in ("spec.cluster.image: evil.example.com/miner:1", "spec.cluster.serviceAccountName: default-admin",
                  f"spec.storage.credentialsSecret: {UNRELATED}"):
        assert field in failed["message"], failed["message"]
    assert "allowed: docker.io/clipforge/pipeline" in failed["message"]
    (event,) = [e for e in stack.wait(lambda: job_events(stack, "greedy"), 30, "the job's event", "greedy")
                if e["reason"] == "Failed"]
    assert event["type"] == "Warning" and "spec.cluster.image: evil.example.com/miner:1" in event["message"]
    for kind in ("rayjobs", "rayclusters", "configmaps", "pods"):
        assert stack.list(kind, "clipforge.dev/job=greedy") == [], kind
    assert stack.get("configmap", "greedy-config") is None and stack.get("rayjob", "greedy") is None


def test_a_job_within_the_policy_is_provisioned(stack):
    stack.cp.apply(job("modest", storage={"credentialsSecret": TEAM_SECRET},
                       cluster={"serviceAccountName": RUNNER, "head": {"nodeSelector": NOWHERE},
                                "cpuWorkers": {"nodeSelector": NOWHERE}}))
    stack.wait(lambda: stack.status("modest").get("phase") == "Provisioning", 60, "job modest provisioning", "modest")
    rayjob = stack.get("rayjob", "modest")
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert head["serviceAccountName"] == RUNNER
    stack.kubectl("delete", "vcj", "modest", "--timeout=60s")


def test_a_configmap_edit_after_admission_fails_the_job_and_nothing_is_built_from_it(stack):
    """Who may edit ConfigMaps in the namespace cannot change what a started job runs: the operator pinned
    the ConfigMap's content (status.admittedSpecHash) when it made it, and a job whose ConfigMap no longer
    has it fails, its attempt stopped, with no RayJob built from the edit."""
    stack.cp.apply(job("pinned", cluster={"head": {"nodeSelector": NOWHERE}, "cpuWorkers": {"nodeSelector": NOWHERE}}))
    status = stack.wait(lambda: (s := stack.status("pinned")).get("phase") == "Provisioning" and s, 60,
                        "job pinned provisioning", "pinned")
    assert len(status["admittedSpecHash"]) == 64, status  # the CRD's status schema keeps it
    assert stack.get("rayjob", "pinned") is not None
    document = yaml.safe_load(stack.get("configmap", "pinned-config")["data"]["job.yaml"])
    document["spec"]["cluster"]["image"] = "evil.example.com/miner:1"
    document["spec"]["cluster"]["serviceAccountName"] = "default-admin"
    stack.kubectl("patch", "configmap", "pinned-config", "--type=merge",
                  "-p", json.dumps({"data": {"job.yaml": yaml.safe_dump(document)}}))
    status = stack.wait(lambda: (s := stack.status("pinned")).get("phase") == "Failed" and s, 60,
                        "job pinned to fail", "pinned")
    failed = {c["type"]: c for c in status["conditions"]}["Failed"]
    assert failed["reason"] == "AdmittedSpecChanged", failed
    assert failed["message"].startswith("ConfigMap pinned-config was changed after the job was admitted"), failed
    stack.wait_gone("rayjobs", "clipforge.dev/job=pinned", 60, "pinned")  # the attempt is stopped
    stack.wait_gone("rayclusters", "clipforge.dev/job=pinned", 60, "pinned")
    (event,) = [e for e in stack.wait(lambda: job_events(stack, "pinned"), 30, "the job's events", "pinned")
                if e["reason"] == "Failed"]
    assert event["type"] == "Warning" and event["message"].startswith("AdmittedSpecChanged: "), event
    stack.kubectl("delete", "vcj", "pinned", "--timeout=60s")


# ----------------------------------------------------------------------- restricted pods


EXTRAS = {
    "serviceAccountName": RUNNER,
    "imagePullSecrets": [{"name": "registry-creds"}],
    "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}],
    "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}},
                {"name": "scratch", "emptyDir": {"sizeLimit": "10Gi"}},
                {"name": "ca", "configMap": {"name": "corp-ca"}}],
    "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True},
                     {"name": "scratch", "mountPath": "/scratch"}, {"name": "ca", "mountPath": "/etc/ssl/corp"}],
    "head": {"nodeSelector": NOWHERE, "resources": {"requests": {"cpu": "1", "memory": "2Gi", "ephemeralStorage": "2Gi"},
                                                    "limits": {"cpu": "1", "memory": "2Gi"}}},
    "cpuWorkers": {"nodeSelector": NOWHERE, "minReplicas": 1, "maxReplicas": 1,
                   "resources": {"requests": {"cpu": "1", "memory": "2Gi", "ephemeralStorage": "20Gi"},
                                 "limits": {"cpu": "1", "memory": "2Gi", "ephemeralStorage": "30Gi"}}},
}


def test_ray_pods_with_pull_secrets_env_volumes_and_disk_are_admitted_under_restricted(stack):
    labels = json.loads(stack.cp.kubectl("get", "namespace", NS, "-o", "json").stdout)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    stack.cp.apply(job("extras", storage={"credentialsSecret": SECRET}, cluster=EXTRAS))

    def pods() -> dict[str, dict] | None:
        found = {p["metadata"]["labels"]["clipforge.dev/group"]: p for p in stack.pods_of("extras")}
        return found if {"head", "cpu"} <= set(found) else None

    by_group = stack.wait(pods, 120, "the head and cpu worker pods of job extras", "extras")
    for group, pod in by_group.items():
        spec = pod["spec"]
        assert spec["serviceAccountName"] == RUNNER, group
        assert spec["imagePullSecrets"] == [{"name": "registry-creds"}], group
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}, group
        assert volumes["scratch"]["emptyDir"] == {"sizeLimit": "10Gi"}, group
        assert volumes["ca"]["configMap"]["name"] == "corp-ca", group
        (ray,) = [c for c in spec["containers"] if c["name"] in ("ray-head", "ray-worker")]
        assert {"name": "HF_HUB_OFFLINE", "value": "1"} in ray["env"], group
        mounts = {m["mountPath"]: m["name"] for m in ray["volumeMounts"]}
        assert {k: mounts.get(k) for k in ("/models", "/scratch", "/etc/ssl/corp")} == \
            {"/models": "models", "/scratch": "scratch", "/etc/ssl/corp": "ca"}, group
    assert by_group["head"]["spec"]["containers"][0]["resources"]["requests"]["ephemeral-storage"] == "2Gi"
    worker = [c for c in by_group["cpu"]["spec"]["containers"] if c["name"] == "ray-worker"][0]["resources"]
    assert worker["requests"]["ephemeral-storage"] == "20Gi" and worker["limits"]["ephemeral-storage"] == "30Gi"
    status = stack.status("extras")
    assert status["phase"] == "Provisioning" and "PodSecurity" not in (status.get("message") or ""), status

    # KubeRay makes the submitter's pod only once the cluster runs Ray: the pod the operator asked for is
    # put to the same admission, server-side, as a dry run.
    submitter = stack.get("rayjob", "extras")["spec"]["submitterPodTemplate"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "extras-submitter-check", "namespace": NS},
           "spec": submitter["spec"]}
    assert pod["spec"]["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in pod["spec"]["containers"][0]["env"]
    admitted = stack.kubectl("create", "--dry-run=server", "-f", "-", stdin=json.dumps(pod), check=False)
    assert admitted.returncode == 0, admitted.stderr
    # The check can fail: the same pod with its container's security context dropped is refused.
    del pod["spec"]["containers"][0]["securityContext"]
    refused = stack.kubectl("create", "--dry-run=server", "-f", "-", stdin=json.dumps(pod), check=False)
    assert refused.returncode != 0 and 'violates PodSecurity "restricted' in refused.stderr, refused.stderr
    stack.kubectl("delete", "vcj", "extras", "--timeout=60s")
