"""The KubeRay stand-in (clipforge_operator.kuberay_standin) on the API emulator.

Pods' environment and volumes as the kubelet would make them (fast, no Ray), then one RayJob
run on a real local Ray cluster: KubeRay's status sequence for a failing job, the RayCluster it
owns, the finalizer, and the cluster's processes gone after the RayJob is deleted. The e2e tests
(tests/e2e) run the operator's RayJobs through the same stand-in.
"""

from __future__ import annotations

import time

import pytest
from clipforge.spec import parse_job
from clipforge_operator import builders as b
from clipforge_operator.emulator import KubeAPIEmulator, kuberay_crds
from clipforge_operator.kuberay_standin import (
    RAYJOB_FINALIZER,
    KubeRayStandIn,
    PodConfigError,
    PodView,
    _Api,
    _group_plan,
    _Objects,
    materialise_volumes,
    resolve_env,
    wait_procs,
)

NS = "default"


@pytest.fixture
def k8s():
    with KubeAPIEmulator(crds=kuberay_crds()) as emulator:
        emulator.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
                         "stringData": {"KEY_ID": "id-1", "SECRET": "s3cr3t"}})
        emulator.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
                         "data": {"greeting.txt": "hello", "LEVEL": "debug", "REGION": "eu"}})
        yield emulator


@pytest.fixture
def objects(k8s):
    return _Objects(_Api(k8s.api_client()), NS)


def test_env_is_resolved_like_the_kubelet_does(objects):
    containers = [
        {"env": [{"name": "FROM_WORKER", "value": "w"}, {"name": "SHARED", "value": "worker"}]},
        {"envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CM_"},
                     {"secretRef": {"name": "absent", "optional": True}}],
         "env": [
             {"name": "SHARED", "value": "head"},
             {"name": "PLAIN", "value": "x"},
             {"name": "EXPANDED", "value": "$(PLAIN)-$(CM_LEVEL)-$(UNDEFINED)-$$(PLAIN)"},
             {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "SECRET"}}},
             {"name": "REGION", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "REGION"}}},
             {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "TOKEN", "optional": True}}},
             {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
         ]},
    ]
    env = resolve_env(containers, objects, {"metadata.namespace": NS})
    assert env == {
        "FROM_WORKER": "w", "SHARED": "head", "CM_greeting.txt": "hello", "CM_LEVEL": "debug", "CM_REGION": "eu",
        "PLAIN": "x", "EXPANDED": "x-debug-$(UNDEFINED)-$(PLAIN)", "AWS_SECRET_ACCESS_KEY": "s3cr3t",
        "REGION": "eu", "NS": NS,
    }


@pytest.mark.parametrize(("var", "error"), [
    ({"secretKeyRef": {"name": "missing", "key": "K"}}, 'secret "missing" not found'),
    ({"secretKeyRef": {"name": "creds", "key": "NOPE"}}, "couldn't find key NOPE in secret default/creds"),
    ({"configMapKeyRef": {"name": "settings", "key": "NOPE"}}, "couldn't find key NOPE in configmap"),
])
def test_a_missing_reference_is_a_container_config_error(objects, var, error):
    with pytest.raises(PodConfigError, match=error):
        resolve_env([{"env": [{"name": "X", "valueFrom": var}]}], objects, {})


def test_volumes_are_written_and_mount_paths_rewritten(objects, tmp_path):
    pod = {"volumes": [
        {"name": "job", "configMap": {"name": "settings", "items": [{"key": "greeting.txt", "path": "sub/hi.txt"}]}},
        {"name": "creds", "secret": {"secretName": "creds"}},
        {"name": "scratch", "emptyDir": {}},
    ]}
    container = {"volumeMounts": [
        {"name": "job", "mountPath": "/etc/clipforge"},
        {"name": "creds", "mountPath": "/var/run/creds", "readOnly": True},
        {"name": "scratch", "mountPath": "/scratch"},
        {"name": "job", "mountPath": "/etc/greeting", "subPath": "sub"},
    ]}
    mounts = materialise_volumes(pod, container, objects, tmp_path)
    assert mounts == {"/etc/clipforge": str(tmp_path / "job"), "/var/run/creds": str(tmp_path / "creds"),
                      "/scratch": str(tmp_path / "scratch"), "/etc/greeting": str(tmp_path / "job" / "sub")}
    assert (tmp_path / "job" / "sub" / "hi.txt").read_text() == "hello"
    assert (tmp_path / "creds" / "SECRET").read_text() == "s3cr3t"
    assert (tmp_path / "creds" / "SECRET").stat().st_mode & 0o777 == 0o600
    view = PodView(mounts=mounts)
    assert view.rewrite("clipforge run /etc/clipforge/job.yaml") == f"clipforge run {tmp_path}/job/job.yaml"
    assert view.rewrite("cat '/etc/greeting/hi.txt' /etc/clipforgex") == f"cat '{tmp_path}/job/sub/hi.txt' /etc/clipforgex"
    with pytest.raises(PodConfigError, match='configmap "nope" not found'):
        materialise_volumes({"volumes": [{"name": "v", "configMap": {"name": "nope"}}]},
                            {"volumeMounts": [{"name": "v", "mountPath": "/v"}]}, objects, tmp_path / "other")


def test_the_local_node_advertises_every_worker_groups_resources():
    job = parse_job({"apiVersion": "clipforge.dev/v1alpha1", "kind": "VideoCurationJob", "metadata": {"name": "g"},
                     "spec": {"input": {"uri": "s3://i/"}, "output": {"uri": "s3://o/"},
                              "execution": {"stages": {"split": {"gpus": 1}}}}})
    cluster_spec = b.build_rayjob(job, NS, "uid")["spec"]["rayClusterSpec"]
    resources, gpus, desired, low, high = _group_plan(cluster_spec)
    groups = b.worker_groups(job.spec)
    assert len(groups) == 2 and set(resources) == {r for plan in groups for r in plan.ray_resources}
    assert "clipforge_split" in resources and "clipforge_transcode" in resources
    assert gpus == 1 and low <= desired <= high


# ------------------------------------------------------------------------ a RayJob on real Ray


def rayjob(name: str, entrypoint: str) -> dict:
    pod = {"containers": [{
        "name": "ray-head", "image": "unused",
        "env": [{"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "SECRET"}}}],
        "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"}],
    }], "volumes": [{"name": "cfg", "configMap": {"name": "settings"}}]}
    return {
        "apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": name, "labels": {"team": "video"}},
        "spec": {"entrypoint": entrypoint, "shutdownAfterJobFinishes": False,
                 "rayClusterSpec": {"headGroupSpec": {"rayStartParams": {}, "template": {"spec": pod}},
                                    "workerGroupSpecs": [{"groupName": "cpu", "replicas": 1, "minReplicas": 1,
                                                          "maxReplicas": 3, "rayStartParams": {"resources": '"{\\"thing\\": 5}"'},
                                                          "template": {"spec": {"containers": [{"name": "w"}]}}}]}},
    }


@pytest.mark.slow
def test_a_failing_rayjob_goes_through_kuberays_states_and_deletion_stops_its_cluster(k8s, tmp_path):
    entrypoint = ('cat /etc/cfg/greeting.txt && test "$FROM_SECRET" = s3cr3t && test -z "$AWS_ACCESS_KEY_ID"'
                  ' && python -c "import ray; ray.init(); print(ray.cluster_resources())" && exit 3')
    with KubeRayStandIn(k8s.kubeconfig(), num_cpus=1, workdir=tmp_path) as standin:
        k8s.create(rayjob("fails", entrypoint))
        job = k8s.wait_for("ray.io/v1/rayjobs", "fails", lambda o: (o.get("status") or {}).get("jobDeploymentStatus")
                           in ("Complete", "Failed"), namespace=NS, timeout=180, interval=0.2)
        status = job["status"]
        assert (status["jobDeploymentStatus"], status["jobStatus"], status["reason"]) == ("Failed", "FAILED", "AppFailed")
        assert "exit code 3" in status["message"], status["message"]
        assert status["failed"] == 1 and status["succeeded"] == 0 and status["endTime"] >= status["startTime"]
        assert job["metadata"]["finalizers"] == [RAYJOB_FINALIZER]
        seen = [(e["jobDeploymentStatus"], e["jobStatus"]) for e in standin.events("fails", "status")]
        assert seen[:2] == [("Initializing", ""), ("Running", "")] and seen[-1] == ("Failed", "FAILED"), seen

        cluster = k8s.get("ray.io/v1/rayclusters", status["rayClusterName"], namespace=NS)
        assert cluster["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
        assert cluster["metadata"]["labels"] == {"team": "video", "ray.io/originated-from-cr-name": "fails",
                                                 "ray.io/originated-from-crd": "RayJob"}
        assert cluster["status"]["state"] == "ready" and cluster["status"]["desiredWorkerReplicas"] == 1
        local = standin.local_cluster(NS, status["rayClusterName"])
        driver_log = local.driver_log(status["jobId"])
        assert "hello" in driver_log and "'thing': 5.0" in driver_log and "'CPU': 1.0" in driver_log, driver_log
        processes = local.processes()
        assert processes and local.alive()  # shutdownAfterJobFinishes false: the cluster stays

        k8s.delete("ray.io/v1/rayjobs", "fails", namespace=NS)
        k8s.wait_for("ray.io/v1/rayjobs", "fails", lambda o: o is None, namespace=NS, timeout=30)
        k8s.wait_for("ray.io/v1/rayclusters", status["rayClusterName"], lambda o: o is None, namespace=NS, timeout=30)
        deadline = time.monotonic() + 60
        while standin.local_cluster(NS, status["rayClusterName"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not wait_procs(processes, timeout=10)
        assert not standin.events("fails", "job-stopped")  # it had ended: nothing to stop
        assert not local.temp_dir.exists()
