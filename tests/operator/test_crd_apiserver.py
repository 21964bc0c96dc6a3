"""The VideoCurationJob CRD from crds/, served by the real kube-apiserver (tests/harness/control_plane.py).

What the API server does with it, through the real kubectl: the structural schema rejects invalid
manifests with the field's path, fills in defaults, explains fields; the printer columns show in
`kubectl get`; status is a subresource (a spec write cannot set status, a status write cannot
change spec). No operator runs here: nothing but the API server touches these objects.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml

from support.jobs import manifest

REPO = Path(__file__).resolve().parents[2]
NS = "crd-tests"


@pytest.fixture(scope="module")
def cp(control_plane):
    control_plane.create_namespace(NS)
    yield control_plane
    # Waited for: an operator a later module starts must not find these hand-made jobs.
    control_plane.kubectl("delete", "namespace", NS, "--timeout=120s")


def kubectl(cp, *args: str, stdin: str | None = None, check: bool = True):  # noqa: ANN001, ANN201
    return cp.kubectl("-n", NS, *args, input=stdin, check=check)


def apply(cp, document: dict, check: bool = True):  # noqa: ANN001, ANN201
    return kubectl(cp, "apply", "-f", "-", stdin=yaml.safe_dump(document), check=check)


def get(cp, name: str) -> dict:  # noqa: ANN001
    return json.loads(kubectl(cp, "get", "videocurationjob", name, "-o", "json").stdout)


@pytest.mark.parametrize(("spec", "messages"), [
    ({"splitting": {"algorithm": "bogus"}},
     ['spec.splitting.algorithm: Unsupported value: "bogus"', '"fixed-stride"', '"transnetv2"', '"scenedetect"']),
    ({"transcoding": {"crf": 99}, "maxRetries": -1},
     ["spec.transcoding.crf: Invalid value: 99", "spec.maxRetries: Invalid value: -1"]),
    ({"cluster": {"cpuWorkers": {"minReplicas": "two"}}},
     ['spec.cluster.cpuWorkers.minReplicas: Invalid value: "string"']),
], ids=["unknown-algorithm", "out-of-range", "wrong-type"])
def test_the_schema_rejects_an_invalid_manifest_with_the_fields_path(cp, spec, messages):
    name = f"invalid-{uuid.uuid4().hex[:6]}"
    result = apply(cp, manifest("s3://in/", "s3://out/", name=name, **spec), check=False)
    assert result.returncode != 0
    assert f'The VideoCurationJob "{name}" is invalid' in result.stderr, result.stderr
    for message in messages:
        assert message in result.stderr, result.stderr
    assert kubectl(cp, "get", "videocurationjob", name, check=False).returncode != 0  # nothing stored


def test_required_fields_and_unknown_fields_are_refused(cp):
    missing = apply(cp, {"apiVersion": "clipforge.dev/v1alpha1", "kind": "VideoCurationJob",
                         "metadata": {"name": "no-output"}, "spec": {"input": {"uri": "s3://in/"}}}, check=False)
    assert missing.returncode != 0 and "spec.output: Required value" in missing.stderr, missing.stderr
    # kubectl's server-side field validation (Strict by default) names a misspelt field.
    typo = apply(cp, manifest("s3://in/", "s3://out/", name="typo", splittin={"algorithm": "fixed-stride"}), check=False)
    assert typo.returncode != 0 and 'unknown field "spec.splittin"' in typo.stderr, typo.stderr


def test_examples_validate_and_the_api_server_fills_in_defaults(cp):
    for example in ("cpu-job.yaml", "gpu-job.yaml", "s3-job.yaml"):
        kubectl(cp, "apply", "--dry-run=server", "-f", str(REPO / "examples" / example))
    kubectl(cp, "apply", "-f", str(REPO / "examples" / "cpu-job.yaml"))
    stored = get(cp, "cpu-demo")["spec"]
    assert stored["maxRetries"] == 1  # as written
    assert stored["transcoding"]["crf"] == 23 and stored["pendingDeadlineSeconds"] == 900  # schema defaults
    explained = kubectl(cp, "explain", "videocurationjob.spec.cluster.cpuWorkers").stdout
    assert "The CPU worker group" in explained and "maxReplicas" in explained


def write_status(cp, name: str, status: dict):  # noqa: ANN001, ANN201
    return kubectl(cp, "patch", "videocurationjob", name, "--subresource=status", "--type=merge",
                   "-p", json.dumps({"status": status}))


def test_printer_columns_show_the_status_in_kubectl_get(cp):
    apply(cp, manifest("s3://in/", "s3://out/", name="columns"))
    write_status(cp, "columns", {"phase": "Running", "reason": "RayJobRunning", "retries": 1,
                                 "rayJobName": "columns-retry-1",
                                 "progress": {"videosDone": 3, "videosTotal": 7, "clipsPassed": 12,
                                              "videosFailed": 1}})
    table = kubectl(cp, "get", "vcj", "columns").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "REASON", "DONE", "TOTAL", "CLIPS", "AGE"], table
    assert table[1].split()[:6] == ["columns", "Running", "RayJobRunning", "3", "7", "12"], table
    wide = kubectl(cp, "get", "videocurationjobs", "columns", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "PHASE", "REASON", "DONE", "TOTAL", "CLIPS", "FAILED", "RETRIES", "RAYJOB",
                               "AGE"], wide
    assert wide[1].split()[:9] == ["columns", "Running", "RayJobRunning", "3", "7", "12", "1", "1",
                                   "columns-retry-1"], wide


def test_status_is_a_subresource(cp):
    apply(cp, manifest("s3://in/", "s3://out/", name="subresource"))
    write_status(cp, "subresource", {"phase": "Running"})
    before = get(cp, "subresource")
    generation = before["metadata"]["generation"]

    # A write of the main resource that carries a status: the spec changes, the status does not.
    edited = {**before, "spec": {**before["spec"], "maxRetries": 5}, "status": {"phase": "Succeeded"}}
    kubectl(cp, "replace", "-f", "-", stdin=json.dumps(edited))
    after_spec = get(cp, "subresource")
    assert after_spec["spec"]["maxRetries"] == 5 and after_spec["status"] == before["status"]
    assert before["status"]["phase"] == "Running"
    assert after_spec["metadata"]["generation"] == generation + 1  # a spec change is a new generation

    # A write of the status subresource that carries a spec: the status changes, the spec does not.
    kubectl(cp, "patch", "videocurationjob", "subresource", "--subresource=status", "--type=merge",
            "-p", json.dumps({"spec": {"maxRetries": 9}, "status": {"phase": "Succeeded"}}))
    after_status = get(cp, "subresource")
    assert after_status["status"]["phase"] == "Succeeded" and after_status["spec"]["maxRetries"] == 5
    assert after_status["metadata"]["generation"] == generation + 1  # status writes leave it

    # The status schema is enforced too.
    bad = kubectl(cp, "patch", "videocurationjob", "subresource", "--subresource=status", "--type=merge",
                  "-p", json.dumps({"status": {"phase": "Exploded"}}), check=False)
    assert bad.returncode != 0 and 'status.phase: Unsupported value: "Exploded"' in bad.stderr, bad.stderr
