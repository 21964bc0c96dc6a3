"""The operator's start-up check of KubeRay's RayJob schema (clipforge_operator/kuberay_schema.py), against
the real CRDs of KubeRay's Go module, and the strict field validation every write of it asks for."""

from __future__ import annotations

import copy
import http.server
import json
import os
import subprocess
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from clipforge.spec import parse_job
from clipforge_operator import builders as b
from clipforge_operator.kube import Kube
from clipforge_operator.kuberay_schema import (
    REQUIRED_KUBERAY_VERSION,
    check_kuberay,
    field_paths,
    missing_fields,
    own_pod,
    probe_rayjob,
)

REPO = Path(__file__).resolve().parents[2]
VERSIONS = dict(line.split("=", 1) for line in (REPO / "tests" / "harness" / "kube-versions.env").read_text()
                .splitlines() if line and not line.startswith("#"))
TESTED_KUBERAY = VERSIONS["KUBERAY_VERSION"]
GROUP_RESOURCES = "spec.rayClusterSpec.workerGroupSpecs[].resources"
POD = {"name": "cf-operator-5d9f-abcde", "namespace": "clipforge-system", "uid": "0b7e6c1a-0000-4000-8000-000000000001"}
NOW = datetime(2026, 12, 8, 1, 0, tzinfo=UTC)


def kuberay_rayjob_crd(version: str) -> dict:
    """KubeRay's own RayJob CRD, from its ray-operator Go module (as scripts/build-kube-binaries.sh installs it)."""
    done = subprocess.run(["go", "mod", "download", "-json", f"github.com/ray-project/kuberay/ray-operator@v{version}"],
                          capture_output=True, text=True, env={**os.environ, "GOTOOLCHAIN": "local"}, timeout=300)
    assert done.returncode == 0, done.stderr
    crd_file = Path(json.loads(done.stdout)["Dir"]) / "config" / "crd" / "bases" / "ray.io_rayjobs.yaml"
    return yaml.load(crd_file.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 1.3 MB


def served_schema(crd: dict, version: str = b.RAY_VERSION) -> dict:
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    return served["schema"]["openAPIV3Schema"]


def published(schema: dict) -> dict:
    """The OpenAPI v3 document the API server serves for ray.io/v1, with this RayJob schema in it."""
    rayjob = {**schema, "x-kubernetes-group-version-kind": [{"group": "ray.io", "version": "v1", "kind": "RayJob"}]}
    return {"openapi": "3.0.0", "components": {"schemas": {
        "io.ray.v1.RayJobList": {"type": "object", "x-kubernetes-group-version-kind": [
            {"group": "ray.io", "version": "v1", "kind": "RayJobList"}]},
        "io.ray.v1.RayJob": rayjob}}}


@pytest.fixture(scope="module")
def crd() -> dict:
    return kuberay_rayjob_crd(TESTED_KUBERAY)


@pytest.fixture(scope="module")
def schema(crd: dict) -> dict:
    return served_schema(crd)


def without(schema: dict, path: tuple[str, ...]) -> dict:
    """A copy of `schema` without the field at `path` (`[]` steps into a list's items)."""
    cut = copy.deepcopy(schema)
    node = cut
    for step in path[:-1]:
        node = node["items"] if step == "[]" else node["properties"][step]
    del node["properties"][path[-1]]
    return cut


def test_the_tested_kuberay_is_the_required_one_and_has_every_field(schema: dict):
    assert TESTED_KUBERAY == REQUIRED_KUBERAY_VERSION  # the chart promises what the tests run
    paths = field_paths(probe_rayjob(), schema)
    assert missing_fields(probe_rayjob(), schema) == []
    # The walk reaches every part of the RayJob, and reads maps (labels, rayStartParams, resources) as maps.
    for field in (GROUP_RESOURCES, "spec.submitterPodTemplate.spec.containers[].env[].valueFrom.secretKeyRef.name",
                  "spec.rayClusterSpec.headGroupSpec.template.spec.tolerations[].tolerationSeconds",
                  "spec.rayClusterSpec.workerGroupSpecs[].template.spec.volumes[].persistentVolumeClaim.claimName",
                  "spec.rayClusterSpec.autoscalerOptions.idleTimeoutSeconds", "spec.backoffLimit"):
        assert paths[field] is True, field
    assert not any(".nvidia.com" in p or "ray-io" in p or p.endswith(".num-cpus") for p in paths)


@pytest.mark.parametrize("removed", [
    ("spec", "rayClusterSpec", "workerGroupSpecs", "[]", "resources"),  # KubeRay 1.4's RayJob
    ("spec", "submissionMode"),
    ("spec", "rayClusterSpec", "autoscalerOptions", "securityContext"),
], ids=lambda path: ".".join(path))
def test_a_field_the_crd_lacks_is_named(schema: dict, removed: tuple[str, ...]):
    assert missing_fields(probe_rayjob(), without(schema, removed)) == [".".join(removed).replace(".[]", "[]")]


def test_kuberay_v1alpha1_lacks_what_v1_has(crd: dict):
    # The real CRD's older version, which the operator never uses: a second real schema that lacks fields.
    assert missing_fields(probe_rayjob(), served_schema(crd, "v1alpha1")) == [
        "spec.backoffLimit", GROUP_RESOURCES, "spec.submissionMode"]


@pytest.mark.parametrize("example", ["cpu-job.yaml", "gpu-job.yaml", "s3-job.yaml"])
def test_the_probe_sends_every_field_an_example_jobs_rayjob_sends(schema: dict, example: str):
    job = parse_job(yaml.safe_load((REPO / "examples" / example).read_text()))
    sent = b.build_rayjob(job, "videos", "uid-1", "token-secret")
    assert set(field_paths(sent, schema)) <= set(field_paths(probe_rayjob(), schema))


class FakeApi:
    """The two calls check_kuberay makes."""

    def __init__(self, openapi: dict | None, refuse_events: bool = False):
        self.openapi, self.refuse_events = openapi, refuse_events
        self.paths: list[str] = []
        self.events: list[dict] = []

    def get_openapi(self, path: str) -> dict | None:
        self.paths.append(path)
        return self.openapi

    def create_event(self, body: dict) -> dict:
        if self.refuse_events:
            raise client.exceptions.ApiException(status=403, reason="Forbidden")
        self.events.append(body)
        return body


def test_the_operator_refuses_a_crd_without_group_resources_with_an_event_on_its_pod(schema: dict, caplog):
    api = FakeApi(published(without(schema, ("spec", "rayClusterSpec", "workerGroupSpecs", "[]", "resources"))))
    assert check_kuberay(api, NOW, POD) is False
    assert api.paths == ["/openapi/v3/apis/ray.io/v1"]
    (event,) = api.events
    assert event["metadata"]["namespace"] == POD["namespace"]
    assert event["involvedObject"] == {"apiVersion": "v1", "kind": "Pod", **POD}
    assert (event["type"], event["reason"]) == ("Warning", "KubeRayTooOld")
    assert (event["source"]["component"], event["reportingComponent"]) == ("clipforge-operator", "clipforge-operator")
    assert GROUP_RESOURCES in event["message"] and "KubeRay 1.5.0 or later" in event["message"]
    assert f"refusing to run: {event['message']}" in caplog.text


def test_the_refusal_stands_without_a_pod_or_a_right_to_post_events(schema: dict, caplog):
    old = published(without(schema, ("spec", "submissionMode")))
    assert check_kuberay(FakeApi(old), NOW, None) is False
    refused = FakeApi(old, refuse_events=True)
    assert check_kuberay(refused, NOW, POD) is False
    assert "could not post the KubeRayTooOld Event on pod clipforge-system/cf-operator-5d9f-abcde: 403" in caplog.text


def test_the_real_schema_and_no_kuberay_at_all_pass(schema: dict):
    api = FakeApi(published(schema))
    assert check_kuberay(api, NOW, POD) is True and api.events == []
    assert check_kuberay(FakeApi(None), NOW, POD) is True  # jobs wait for KubeRay (KubeRayNotInstalled)


def test_own_pod_reads_the_downward_api_files(tmp_path: Path):
    assert own_pod(tmp_path) is None
    for key, value in POD.items():
        (tmp_path / key).write_text(value + "\n")
    assert own_pod(tmp_path) == POD


def test_the_chart_requires_the_version_the_operator_checks_for():
    chart = yaml.safe_load((REPO / "charts" / "clipforge-operator" / "Chart.yaml").read_text())
    assert chart["annotations"]["clipforge.dev/requires"] == f"kuberay-operator >= {REQUIRED_KUBERAY_VERSION}"


# ------------------------------------------------------------------------ strict field validation


class Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[tuple[str, str]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        Recorder.seen.append((self.command, self.path))
        body = b'{"metadata": {"name": "x"}}'
        self.send_response(201 if self.command == "POST" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = do_DELETE = _answer

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass


def test_every_create_and_patch_asks_for_strict_field_validation():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = client.Configuration(host=f"http://127.0.0.1:{server.server_port}")
        kube = Kube(client.ApiClient(config))
        meta = {"name": "x", "namespace": "ns"}
        kube.create_rayjob({"metadata": meta})
        kube.create_configmap({"metadata": meta})
        kube.create_secret({"metadata": {"generateName": "x-", "namespace": "ns"}})
        kube.create_network_policy({"metadata": meta})
        kube.create_event({"metadata": meta})
        kube.patch_job_status("ns", "x", {"phase": "Running"}, "7")
        kube.patch_configmap_data("ns", "x", {"job.yaml": ""})
        kube.json_patch_rayjob("ns", "x", [])
        kube.json_patch_raycluster("ns", "x", [])
        kube.get_rayjob("ns", "x")
        kube.list_rayjobs("ns", "uid")
        kube.delete_rayjob("ns", "x")
    finally:
        server.shutdown()
    writes = [(method, path) for method, path in Recorder.seen if method in ("POST", "PATCH")]
    assert len(writes) == 9
    assert all(path.endswith("fieldValidation=Strict") for _, path in writes), writes
    assert not any("fieldValidation" in path for method, path in Recorder.seen if method in ("GET", "DELETE"))


def test_the_operator_exits_with_status_1_before_kopf_runs_when_refused(monkeypatch: pytest.MonkeyPatch):
    import kopf

    from clipforge_operator import __main__, kube, kuberay_schema

    monkeypatch.setattr(kube, "load_config", lambda: None)
    monkeypatch.setattr(kuberay_schema, "check_kuberay", lambda api, now, pod: False)
    monkeypatch.setattr(kopf, "run", lambda **_: pytest.fail("kopf ran although the check refused"))
    assert __main__.main(["--all-namespaces", "--log-format=text"]) == 1
