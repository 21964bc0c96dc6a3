"""An older KubeRay RayJob CRD on the real control plane: the operator refuses to start, and the API
server refuses a RayJob with a field the CRD lacks instead of pruning it (the operator asks for strict
field validation).

The session's KubeRay RayJob CRD is changed here to KubeRay 1.4's shape (no worker-group `resources`)
and put back after each test that needs it; against KubeRay's own CRD the operator starts and its
writes (every one strict) create a job's children. The operator runs as the chart deploys it
(harness/operator_process.py), with the chart's ServiceAccount and RBAC; its Event on its own pod is
posted by the same start-up check, in this process, on a real Pod object (a process on the host has
no pod of its own).
"""

from __future__ import annotations

import copy
import json
import time
from datetime import UTC, datetime

import pytest
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException

from clipforge.spec import VideoCurationJob
from clipforge_operator import builders as b
from clipforge_operator.kube import Kube, status_message
from clipforge_operator.kuberay_schema import PROBE_JOB, RAY_OPENAPI_PATH, check_kuberay, rayjob_schema
from harness.operator_process import ChartOperator, OperatorError
from support.jobs import manifest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

NS = "kuberay-schema"
CRD = "rayjobs.ray.io"
GROUP_RESOURCES = "spec.rayClusterSpec.workerGroupSpecs[].resources"


def served_has_group_resources(cp) -> bool:  # noqa: ANN001
    schema = rayjob_schema(json.loads(cp.kubectl("get", "--raw", RAY_OPENAPI_PATH).stdout))
    group = schema["properties"]["spec"]["properties"]["rayClusterSpec"]["properties"]["workerGroupSpecs"]["items"]
    return "resources" in group["properties"]


def apply_crd(cp, crd: dict, *, resources: bool) -> None:  # noqa: ANN001
    """The CRD applied as the harness applies KubeRay's (server-side, its field manager), and served so."""
    cp.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=clipforge-tests", "-f", "-",
               input=json.dumps(crd))
    deadline = time.monotonic() + 60
    while served_has_group_resources(cp) != resources:  # the API server republishes a changed CRD's schema
        state = "lacks" if resources else "has"
        assert time.monotonic() < deadline, f"{RAY_OPENAPI_PATH} still {state} {GROUP_RESOURCES}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def operator(control_plane, tmp_path_factory):  # noqa: ANN001, ANN201
    """The chart's operator, not started, in a namespace of this module's."""
    control_plane.create_namespace(NS)
    op = ChartOperator(control_plane, tmp_path_factory.mktemp("operator"), namespace=NS)
    yield op
    op.stop()
    control_plane.kubectl("delete", "namespace", NS, "--timeout=120s")


@pytest.fixture
def old_kuberay(control_plane, operator):  # noqa: ANN001, ANN201
    """KubeRay's RayJob CRD as KubeRay 1.4 has it (no worker-group `resources`) while the test runs."""
    cp = control_plane
    live = json.loads(cp.kubectl("get", "crd", CRD, "-o", "json").stdout)
    original = {"apiVersion": live["apiVersion"], "kind": live["kind"],
                "metadata": {"name": CRD, "annotations": live["metadata"].get("annotations") or {}},
                "spec": live["spec"]}
    older = copy.deepcopy(original)
    (v1,) = [v for v in older["spec"]["versions"] if v["name"] == b.RAY_VERSION]
    spec = v1["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    del spec["rayClusterSpec"]["properties"]["workerGroupSpecs"]["items"]["properties"]["resources"]
    apply_crd(cp, older, resources=False)
    try:
        yield cp, operator
    finally:
        operator.stop()
        apply_crd(cp, original, resources=True)


def operator_kube(operator: ChartOperator) -> Kube:
    """The operator's client, as the chart's ServiceAccount."""
    return Kube(kube_config.new_client_from_config(config_file=str(operator.install())))


def test_the_operator_refuses_to_start_against_an_older_rayjob_crd_with_an_event_on_its_pod(old_kuberay):
    cp, operator = old_kuberay
    with pytest.raises(OperatorError) as refused:
        operator.start()
    assert "exited with status 1" in str(refused.value), str(refused.value)
    assert "refusing to run" in str(refused.value) and GROUP_RESOURCES in str(refused.value)
    assert "KubeRay 1.5.0 or later" in str(refused.value)

    cp.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "operator", "namespace": NS},
              "spec": {"containers": [{"name": "operator", "image": "clipforge/operator:test"}]}})
    uid = json.loads(cp.kubectl("-n", NS, "get", "pod", "operator", "-o", "json").stdout)["metadata"]["uid"]
    pod = {"name": "operator", "namespace": NS, "uid": uid}
    assert check_kuberay(operator_kube(operator), datetime.now(UTC), pod) is False
    events = [e for e in json.loads(cp.kubectl("-n", NS, "get", "events", "--field-selector",
                                               f"involvedObject.uid={uid}", "-o", "json").stdout)["items"]
              if e.get("reportingComponent") == "clipforge-operator"]  # not the scheduler's, on a pod with no node
    assert [(e["type"], e["reason"], e["involvedObject"]["kind"], e["source"]["component"])
            for e in events] == [("Warning", "KubeRayTooOld", "Pod", "clipforge-operator")], events
    assert GROUP_RESOURCES in events[0]["message"]
    assert "KubeRayTooOld" in cp.kubectl("-n", NS, "describe", "pod", "operator").stdout


def test_the_api_server_refuses_a_rayjob_with_a_field_the_crd_lacks_instead_of_pruning_it(old_kuberay):
    cp, operator = old_kuberay
    rayjob = b.build_rayjob(VideoCurationJob.model_validate(PROBE_JOB), NS, "uid-1", "probe-ray-token-xxxxx")
    with pytest.raises(ApiException) as refused:
        operator_kube(operator).create_rayjob(rayjob)
    assert refused.value.status == 400
    assert 'unknown field "spec.rayClusterSpec.workerGroupSpecs[0].resources"' in status_message(refused.value)
    assert cp.kubectl("-n", NS, "get", "rayjobs", "-o", "name").stdout.strip() == ""  # nothing created, pruned or not


def test_against_kuberays_own_crd_the_operator_starts_and_its_strict_writes_pass(control_plane, operator):
    cp = control_plane
    assert served_has_group_resources(cp)
    cp.kubectl("-n", NS, "apply", "-f", "-", input=json.dumps(manifest("s3://in/", "s3://out/", name="strict")))
    operator.start()
    try:
        deadline = time.monotonic() + 60
        while True:  # ConfigMap, token Secret, NetworkPolicy and RayJob created, status patched: all strict
            job = json.loads(cp.kubectl("-n", NS, "get", "vcj", "strict", "-o", "json").stdout)
            submitted = [c for c in job.get("status", {}).get("conditions", []) if c["type"] == "Submitted"]
            if submitted and submitted[0]["status"] == "True":
                break
            assert time.monotonic() < deadline, (job.get("status"), operator.log_text()[-3000:])
            time.sleep(0.5)
        rayjob = json.loads(cp.kubectl("-n", NS, "get", "rayjob", job["status"]["rayJobName"], "-o", "json").stdout)
        assert all(group["resources"] for group in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"])
        assert "Kubernetes API error" not in operator.log_text()
    finally:
        cp.kubectl("-n", NS, "delete", "vcj", "strict", "--timeout=60s")  # its finalizer needs the operator
        operator.stop()
