"""The test control plane is the real thing: it serves the CRDs, enforces RBAC, and its controllers act.

There is no node in these tests, so pods stay Pending; that the scheduler saw and rejected them
shows it runs. Each test works in its own namespace.
"""

from __future__ import annotations

import json
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from harness import control_plane as control_plane_module
from harness.control_plane import ControlPlane, ControlPlaneError
from harness.waiting import eventually




def _get_json(cp: ControlPlane, *args: str) -> dict:
    return json.loads(cp.kubectl("get", *args, "-o", "json").stdout)




def test_versions_are_the_pinned_ones(control_plane: ControlPlane):
    pinned = dict(line.split("=", 1) for line in
                  (Path(__file__).parents[1] / "harness" / "kube-versions.env").read_text().splitlines()
                  if line and not line.startswith("#"))
    assert control_plane.versions == {
        "kube-apiserver": f"v{pinned['KUBERNETES_VERSION']}",
        "etcd": pinned["ETCD_VERSION"],
        "kuberay-operator": f"v{pinned['KUBERAY_VERSION']}",
    }


def test_serves_our_crd_and_kuberays(control_plane: ControlPlane, namespace: str):
    crds = {c["metadata"]["name"]: c for c in _get_json(control_plane, "crd")["items"]}
    for name in ("videocurationjobs.clipforge.dev", "rayclusters.ray.io", "rayjobs.ray.io"):
        established = {c["type"]: c["status"] for c in crds[name]["status"]["conditions"]}["Established"]
        assert established == "True", name
    # served: listing the kinds works (an empty list, not "the server doesn't have a resource type")
    for kind in ("videocurationjobs.clipforge.dev", "rayclusters.ray.io", "rayjobs.ray.io"):
        assert _get_json(control_plane, kind, "-n", namespace)["items"] == []


def test_rbac_is_enforced(control_plane: ControlPlane, namespace: str):
    cp = control_plane
    cp.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    token = cp.service_account_token(namespace, "reader")
    ctx = ssl.create_default_context(cafile=str(cp.ca_path))

    def status(path: str) -> int:
        req = urllib.request.Request(f"{cp.server}{path}", headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    secrets = f"/api/v1/namespaces/{namespace}/secrets"
    assert status(secrets) == 403
    cp.kubectl("create", "role", "secret-reader", "--verb=list", "--resource=secrets", "-n", namespace)
    cp.kubectl("create", "rolebinding", "reader-reads-secrets", "--role=secret-reader",
               f"--serviceaccount={namespace}:reader", "-n", namespace)
    eventually(lambda: status(secrets) == 200, "the RoleBinding to take effect")
    # only what was granted: not pods, not other namespaces' secrets
    assert status(f"/api/v1/namespaces/{namespace}/pods") == 403
    assert status("/api/v1/namespaces/default/secrets") == 403
    # the token kubeconfig authenticates as the ServiceAccount too
    kubeconfig = cp.service_account_kubeconfig(namespace, "reader")
    assert cp.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}",
                      kubeconfig=kubeconfig).stdout == f"system:serviceaccount:{namespace}:reader"
    denied = cp.kubectl("get", "pods", "-n", namespace, kubeconfig=kubeconfig, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr


# A node selector no node matches: these pods stay Pending even when the session's nodes have
# registered nodes (the fixture is session-wide), so the scheduler's verdict is always the same.
NO_NODE = {"clipforge.dev/test-no-such-node": "true"}


def test_job_controller_creates_the_pod_and_the_scheduler_sees_it(control_plane: ControlPlane, namespace: str):
    cp = control_plane
    cp.apply({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "hello", "namespace": namespace},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never", "nodeSelector": NO_NODE,
            "containers": [{"name": "hello", "image": "busybox", "command": ["true"]}]}}},
    })
    job_uid = _get_json(cp, "job", "hello", "-n", namespace)["metadata"]["uid"]
    pods = eventually(lambda: _get_json(cp, "pods", "-n", namespace, "-l", "job-name=hello")["items"],
                       "the job controller to create the pod")
    assert len(pods) == 1
    owner = pods[0]["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("Job", job_uid, True)
    # the ServiceAccount admission plugin mounted the default ServiceAccount's token
    assert pods[0]["spec"]["serviceAccountName"] == "default"
    assert any(v.get("projected") for v in pods[0]["spec"]["volumes"])

    def unschedulable() -> bool:
        pod = _get_json(cp, "pod", pods[0]["metadata"]["name"], "-n", namespace)
        return any(c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"
                   for c in pod["status"].get("conditions", []))

    eventually(unschedulable, "the scheduler to find no node for the pod")


def test_garbage_collector_deletes_dependents(control_plane: ControlPlane, namespace: str):
    cp = control_plane
    cp.kubectl("create", "configmap", "owner", "-n", namespace)
    owner_uid = _get_json(cp, "configmap", "owner", "-n", namespace)["metadata"]["uid"]
    cp.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
        "name": "child", "namespace": namespace,
        "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid}]}})
    cp.kubectl("create", "configmap", "bystander", "-n", namespace)
    cp.kubectl("delete", "configmap", "owner", "-n", namespace)
    cp.kubectl("wait", "--for=delete", "configmap/child", "-n", namespace, "--timeout=60s")
    assert _get_json(cp, "configmap", "bystander", "-n", namespace)["metadata"]["name"] == "bystander"


def test_kuberay_creates_the_rayclusters_service_and_pods(control_plane: ControlPlane, namespace: str):
    cp = control_plane
    container = {"name": "ray", "image": "rayproject/ray:2.60.0"}
    pod_spec = {"containers": [container], "nodeSelector": NO_NODE}
    cp.apply({
        "apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "demo", "namespace": namespace},
        "spec": {
            "headGroupSpec": {"rayStartParams": {}, "template": {"spec": pod_spec}},
            "workerGroupSpecs": [{"groupName": "cpu", "replicas": 1, "minReplicas": 1, "maxReplicas": 1,
                                  "rayStartParams": {}, "template": {"spec": pod_spec}}],
        },
    })
    cluster_uid = _get_json(cp, "raycluster", "demo", "-n", namespace)["metadata"]["uid"]

    service = eventually(lambda: _get_json(cp, "services", "-n", namespace, "-l", "ray.io/cluster=demo")["items"],
                          "KubeRay to create the head Service")[0]
    assert service["metadata"]["name"] == "demo-head-svc"
    assert service["spec"]["clusterIP"] == "None"  # KubeRay's head Service is headless by default
    assert {p["name"] for p in service["spec"]["ports"]} >= {"gcs-server", "dashboard", "client"}

    def head_and_worker() -> list[dict] | None:
        pods = _get_json(cp, "pods", "-n", namespace, "-l", "ray.io/cluster=demo")["items"]
        return pods if len(pods) == 2 else None

    pods = eventually(head_and_worker, "KubeRay to create the head and worker pods")
    by_type = {p["metadata"]["labels"]["ray.io/node-type"]: p for p in pods}
    assert set(by_type) == {"head", "worker"}
    for pod in pods:
        owner = pod["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"]) == ("RayCluster", cluster_uid)
        assert pod["status"]["phase"] == "Pending"  # no node matches
    head_command = " ".join(by_type["head"]["spec"]["containers"][0]["command"]
                            + by_type["head"]["spec"]["containers"][0].get("args", []))
    assert "ray start --head" in head_command


def test_a_component_that_cannot_start_is_named_with_its_log_tail(tmp_path: Path, monkeypatch):
    with socket.socket() as busy:  # every port the control plane picks is taken: etcd cannot listen
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        monkeypatch.setattr(control_plane_module, "free_port", lambda host="127.0.0.1": busy.getsockname()[1])
        plane = ControlPlane(tmp_path)
        with pytest.raises(ControlPlaneError) as failure:
            plane.start()
    message = str(failure.value)
    assert message.startswith("etcd failed to start: exited with status 1")
    assert "address already in use" in message  # from etcd's own log
    with pytest.raises(KeyError):
        plane.pid("etcd")  # nothing left running
