"""The generated CRD: up to date, structural, and as strict as the pydantic models."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from clipforge.spec import InvalidJobError, VideoCurationJobStatus, parse_job
from clipforge_operator import crd

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "videocurationjobs.yaml"
CHART_CRD_FILE = REPO / "charts" / "clipforge-operator" / "files" / "videocurationjobs.yaml"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def _jobs_in(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict) and d.get("kind") == "VideoCurationJob"]


def _walk(schema: dict, path: str = "") -> Any:
    yield path, schema
    for name, prop in (schema.get("properties") or {}).items():
        yield from _walk(prop, f"{path}.{name}")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}.*")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")


@pytest.fixture(scope="module")
def definition() -> dict:
    return crd.crd()


@pytest.fixture(scope="module")
def schema(definition: dict) -> dict:
    return definition["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.fixture(scope="module")
def validator():
    return crd.validator()


def minimal(**spec: Any) -> dict:
    doc = {
        "apiVersion": "clipforge.dev/v1alpha1",
        "kind": "VideoCurationJob",
        "metadata": {"name": "t"},
        "spec": {"input": {"uri": "./in"}, "output": {"uri": "./out"}},
    }
    doc["spec"].update(spec)
    return doc


# ------------------------------------------------------------------------------ committed files


def test_committed_crd_is_up_to_date():
    assert CRD_FILE.exists(), f"missing {CRD_FILE}; generate it with: {crd.GENERATE_COMMAND}"
    assert CRD_FILE.read_text() == crd.render(), (
        f"crds/videocurationjobs.yaml is stale (the spec models changed). Regenerate it with:\n"
        f"  {crd.GENERATE_COMMAND} && cp crds/videocurationjobs.yaml charts/clipforge-operator/files/"
    )


def test_chart_carries_the_same_crd():
    assert CHART_CRD_FILE.read_text() == CRD_FILE.read_text(), (
        "charts/clipforge-operator/files/videocurationjobs.yaml differs from crds/; sync it with:\n"
        "  cp crds/videocurationjobs.yaml charts/clipforge-operator/files/"
    )


def test_check_flag_reports_stale_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    stale = tmp_path / "crd.yaml"
    stale.write_text("old")
    assert crd.main(["--check", str(stale)]) == 1
    assert crd.GENERATE_COMMAND in capsys.readouterr().err
    fresh = tmp_path / "fresh.yaml"
    assert crd.main(["-o", str(fresh)]) == 0
    assert crd.main(["--check", str(fresh)]) == 0


# ------------------------------------------------------------------------------- CRD structure


def test_names_scope_and_subresources(definition: dict):
    spec = definition["spec"]
    assert definition["apiVersion"] == "apiextensions.k8s.io/v1"
    assert definition["metadata"]["name"] == "videocurationjobs.clipforge.dev"
    assert spec["group"] == "clipforge.dev" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "VideoCurationJob"
    assert spec["names"]["plural"] == "videocurationjobs"
    assert spec["names"]["shortNames"] == ["vcj"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert {"Phase", "Done", "Total", "Clips", "Age"} <= set(columns)
    assert columns["Phase"]["jsonPath"] == ".status.phase"
    assert columns["Done"]["jsonPath"] == ".status.progress.videosDone"
    assert columns["Total"]["jsonPath"] == ".status.progress.videosTotal"
    assert columns["Clips"]["jsonPath"] == ".status.progress.clipsPassed"
    assert columns["Age"] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def test_schema_is_structural(schema: dict):
    assert schema["properties"]["metadata"] == {"type": "object"}
    assert schema["required"] == ["spec"]
    for path, node in _walk(schema):
        text = yaml.safe_dump(node)
        assert "$ref" not in text and "$defs" not in text, path
        assert "title" not in node and "const" not in node and "allOf" not in node, path
        assert node.get("additionalProperties") is not False, path
        assert not ("properties" in node and "additionalProperties" in node), path
        if "anyOf" in node:  # only Kubernetes' int-or-string form is allowed
            assert node.get("x-kubernetes-int-or-string") is True, path
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        elif path != ".metadata":
            assert node.get("type") in {"object", "array", "string", "integer", "number", "boolean"}, path
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(bound, True) is True, f"{path}: draft-4 style boolean {bound}"
        if node.get("type") == "object" and path not in ("", ".metadata"):
            assert "properties" in node or "additionalProperties" in node, path


def test_every_field_is_described(schema: dict):
    for path, node in _walk(schema["properties"]["spec"], ".spec"):
        if not path.endswith(("[]", ".*")):
            assert node.get("description"), f"{path} has no description"
    for path, node in _walk(schema["properties"]["status"], ".status"):
        if not path.endswith(("[]", ".*")):
            assert node.get("description"), f"{path} has no description"


def test_nullable_enums_bounds_patterns_and_defaults_survive(schema: dict):
    spec = schema["properties"]["spec"]["properties"]
    algorithm = spec["splitting"]["properties"]["algorithm"]
    assert algorithm["enum"] == ["fixed-stride", "transnetv2", "scenedetect"]
    assert algorithm["default"] == "fixed-stride"
    crf = spec["transcoding"]["properties"]["crf"]
    assert crf["nullable"] is True and crf["minimum"] == 0 and crf["maximum"] == 63 and crf["default"] == 23
    assert spec["transcoding"]["properties"]["bitrate"]["pattern"] == r"^[0-9]+[kKmM]?$"
    fps = spec["previews"]["properties"]["fps"]
    assert fps["minimum"] == 0 and fps["exclusiveMinimum"] is True and fps["maximum"] == 30
    # One of uri and manifest: the operator's validation (pydantic) says which is missing.
    assert "required" not in spec["input"] and {"uri", "manifest"} <= set(spec["input"]["properties"])
    assert spec["input"]["properties"]["uri"]["minLength"] == 1
    assert spec["maxRetries"]["default"] == 2
    assert spec["pendingDeadlineSeconds"]["default"] == 900
    cluster = spec["cluster"]["properties"]
    assert "default" not in cluster["image"] and cluster["image"]["nullable"] is True  # the operator's pipelineImage
    toleration = cluster["cpuWorkers"]["properties"]["tolerations"]["items"]["properties"]
    assert toleration["effect"]["enum"] == ["NoSchedule", "PreferNoSchedule", "NoExecute"]
    cpu = cluster["cpuWorkers"]["properties"]["resources"]["properties"]["limits"]["properties"]["cpu"]
    assert cpu["x-kubernetes-int-or-string"] is True and cpu["nullable"] is True
    status = schema["properties"]["status"]["properties"]
    assert status["phase"]["enum"] == ["Pending", "Provisioning", "Running", "Succeeded", "Failed", "Cancelled"]
    assert status["dashboardURL"]["type"] == "string"
    assert status["conditions"]["items"]["properties"]["lastTransitionTime"]["format"] == "date-time"


def _apply_defaults(schema: dict, value: Any) -> Any:
    """What the API server does: fill in defaults of missing fields of objects that are present."""
    if isinstance(value, dict) and "properties" in schema:
        out = dict(value)
        for name, prop in schema["properties"].items():
            if name not in out and "default" in prop:
                out[name] = copy.deepcopy(prop["default"])
            if name in out:
                out[name] = _apply_defaults(prop, out[name])
        return out
    if isinstance(value, list) and "items" in schema:
        return [_apply_defaults(schema["items"], v) for v in value]
    return value


DEFAULTING_CASES = {
    "minimal": minimal(),
    "partial nested objects": minimal(
        execution={"stages": {"probe": {"minWorkers": 2}, "transcode": {"gpus": 0.5}}},
        transcoding={"crf": None},
        cluster={"cpuWorkers": {"tolerations": [{"key": "k"}]}, "gpuWorkers": {"transcode": {"maxReplicas": 2}}},
        retryBackoff={"initialSeconds": 5},
    ),
    **{p.name: _jobs_in(p)[0] for p in EXAMPLES},
}


@pytest.mark.parametrize("doc", DEFAULTING_CASES.values(), ids=DEFAULTING_CASES.keys())
def test_api_server_defaulting_does_not_change_the_meaning(schema: dict, doc: dict):
    defaulted = _apply_defaults(schema, doc)
    assert defaulted != doc  # the case exercises defaulting at all
    assert parse_job(defaulted).spec == parse_job(doc).spec


# ---------------------------------------------------------------------------- validating manifests


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_against_the_crd_and_the_models(path: Path, validator):
    jobs = _jobs_in(path)
    assert len(jobs) == 1
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(jobs[0])]
    assert errors == []
    parse_job(jobs[0], str(path))


def test_examples_exist():
    assert {p.name for p in EXAMPLES} >= {"cpu-job.yaml", "gpu-job.yaml", "s3-job.yaml"}


def _bad(mutate) -> dict:
    doc = copy.deepcopy(_jobs_in(REPO / "examples" / "cpu-job.yaml")[0])
    mutate(doc)
    return doc


BAD = {
    "wrong enum": lambda d: d["spec"]["splitting"].update(algorithm="magic"),
    "negative number": lambda d: d["spec"]["input"].update(limit=-1),
    "missing input.uri": lambda d: d["spec"]["input"].pop("uri"),
    "empty input.uri": lambda d: d["spec"]["input"].update(uri=""),
    "zero fps": lambda d: d["spec"]["previews"].update(fps=0),
    "bad bitrate": lambda d: d["spec"]["transcoding"].update(bitrate="fast"),
    "wrong type": lambda d: d["spec"].update(maxRetries="two"),
    "unknown field": lambda d: d["spec"].update(colour="blue"),
    "bad toleration effect": lambda d: d["spec"]["cluster"]["cpuWorkers"].update(
        tolerations=[{"key": "k", "operator": "Exists", "effect": "Sometimes"}]),
    "negative replicas": lambda d: d["spec"]["cluster"]["cpuWorkers"].update(minReplicas=-1),
    "misspelt gpu stage": lambda d: d["spec"]["cluster"].update(gpuWorkers={"transcod": {"gpus": 1}}),
    "missing spec": lambda d: d.pop("spec"),
}


@pytest.mark.parametrize("mutation", BAD.values(), ids=BAD.keys())
def test_bad_manifests_are_rejected_by_both(mutation, validator):
    doc = _bad(mutation)
    assert list(validator.iter_errors(doc)), "the CRD schema accepted it"
    with pytest.raises(InvalidJobError):
        parse_job(doc)


def test_status_model_validates_against_the_status_schema(schema: dict):
    import jsonschema

    status = VideoCurationJobStatus.model_validate({
        "phase": "Running",
        "conditions": [{"type": "Running", "status": "True", "reason": "JobRunning", "message": "",
                        "lastTransitionTime": "2025-01-01T00:00:00Z", "observedGeneration": 3}],
        "observedGeneration": 3, "rayJobName": "j", "rayClusterName": "j-abcde",
        "dashboardURL": "j-head-svc.ns.svc.cluster.local:8265", "startTime": "2025-01-01T00:00:00Z",
        "retries": 1, "progress": {"videosDone": 3, "videosTotal": 10, "clipsPassed": 40,
                                   "throughputVideoSecondsPerSecond": 2.5, "updatedAt": "2025-01-01T00:01:00Z"},
    }).model_dump(by_alias=True, mode="json")
    jsonschema.Draft4Validator(crd.to_jsonschema(schema["properties"]["status"])).validate(status)
    bad = dict(status, phase="Exploded")
    assert list(jsonschema.Draft4Validator(crd.to_jsonschema(schema["properties"]["status"])).iter_errors(bad))
