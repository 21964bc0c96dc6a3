"""The Kubernetes API emulator (clipforge_operator.emulator) against real clients.

API semantics are checked with the `kubernetes` python client and raw HTTP; kubectl behaviour with
the real binary from <repo>/.tools/bin (scripts/install-kube-tools.sh); watches with a real kopf
operator. A tiny CRD is defined here; the real one lives in crds/.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import pathlib
import subprocess
import textwrap
import threading
import urllib.error
import urllib.request

import kmock
import kubernetes
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from clipforge_operator.emulator import KubeAPIEmulator, KubeAPIError, json_patch, kuberay_crds, parse_label_selector

REPO = pathlib.Path(__file__).resolve().parents[2]
TOOLS = REPO / ".tools" / "bin"

GROUP, VERSION, PLURAL, KIND = "test.clipforge.dev", "v1", "widgets", "Widget"
API_VERSION = f"{GROUP}/{VERSION}"

WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": PLURAL, "singular": "widget", "kind": KIND, "shortNames": ["wdg"]},
        "versions": [{
            "name": VERSION,
            "served": True,
            "storage": True,
            "subresources": {"status": {}},
            "additionalPrinterColumns": [
                {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                {"name": "Color", "type": "string", "jsonPath": ".spec.color"},
                {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            ],
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "spec": {
                        "type": "object",
                        "description": "What the widget should look like.",
                        "required": ["size"],
                        "properties": {
                            "size": {"type": "integer", "minimum": 1, "maximum": 100,
                                     "description": "How big the widget is."},
                            "color": {"type": "string", "enum": ["red", "green", "blue"], "default": "red"},
                            "label": {"type": "string", "pattern": "^[a-z]+$", "nullable": True},
                            "port": {"x-kubernetes-int-or-string": True},
                            "tags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
                            "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    },
                    "status": {
                        "type": "object",
                        "properties": {
                            "phase": {"type": "string"},
                            "seen": {"type": "integer"},
                        },
                    },
                },
            }},
        }],
    },
}


def widget(name: str, size: int = 3, **spec) -> dict:
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name}, "spec": {"size": size, **spec}}


@pytest.fixture
def k8s():
    with KubeAPIEmulator(crds=[WIDGET_CRD]) as emulator:
        yield emulator


@pytest.fixture
def client(k8s):
    api_client = k8s.api_client()
    yield api_client
    api_client.close()


@pytest.fixture
def core(client):
    return kubernetes.client.CoreV1Api(client)


@pytest.fixture
def custom(client):
    return kubernetes.client.CustomObjectsApi(client)


def http(k8s, method: str, path: str, body=None, *, content_type: str = "application/json",
         headers: dict | None = None) -> tuple[int, dict, dict | str]:
    """A raw request; returns (status, headers, parsed JSON body or text)."""
    data = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(k8s.url + path, data=data, method=method,
                                     headers={"Content-Type": content_type, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, raw_headers, payload = response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        status, raw_headers, payload = e.code, e.headers, e.read()
    try:
        parsed = json.loads(payload)
    except ValueError:
        parsed = payload.decode()
    return status, raw_headers, parsed


def widgets_path(namespace: str = "default", name: str = "", sub: str = "") -> str:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    return path + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")


# --- discovery & CRD registration ------------------------------------------------------------


def test_discovery_serves_core_groups_and_registered_crds(k8s):
    status, _, api = http(k8s, "GET", "/api")
    assert status == 200 and api["versions"] == ["v1"]
    _, _, core_v1 = http(k8s, "GET", "/api/v1")
    names = {r["name"] for r in core_v1["resources"]}
    assert {"namespaces", "configmaps", "secrets", "events", "serviceaccounts", "pods", "namespaces/status"} <= names

    _, _, groups = http(k8s, "GET", "/apis")
    by_name = {g["name"]: g for g in groups["groups"]}
    assert {"apiextensions.k8s.io", "events.k8s.io", GROUP} <= set(by_name)
    assert by_name[GROUP]["preferredVersion"] == {"groupVersion": API_VERSION, "version": VERSION}

    _, _, resources = http(k8s, "GET", f"/apis/{GROUP}/{VERSION}")
    widgets = {r["name"]: r for r in resources["resources"]}
    assert widgets[PLURAL]["kind"] == KIND and widgets[PLURAL]["namespaced"] is True
    assert widgets[PLURAL]["shortNames"] == ["wdg"] and "watch" in widgets[PLURAL]["verbs"]
    assert f"{PLURAL}/status" in widgets

    status, _, group = http(k8s, "GET", f"/apis/{GROUP}")
    assert status == 200 and group["kind"] == "APIGroup"
    assert http(k8s, "GET", "/apis/nothing.example.com/v1")[0] == 404
    assert http(k8s, "GET", "/version")[2]["gitVersion"].startswith("v1.")
    assert http(k8s, "GET", "/healthz")[2] == "ok"

    openapi = http(k8s, "GET", "/openapi/v3")[2]
    url = openapi["paths"][f"apis/{GROUP}/{VERSION}"]["serverRelativeURL"]
    doc = http(k8s, "GET", url)[2]
    schema = doc["components"]["schemas"][f"dev.clipforge.test.{VERSION}.{KIND}"]
    assert schema["properties"]["spec"]["properties"]["size"]["type"] == "integer"


def test_creating_a_crd_serves_its_resources_and_deleting_it_removes_them(k8s, client, custom):
    crd = copy.deepcopy(WIDGET_CRD)
    crd["metadata"]["name"] = f"gadgets.{GROUP}"
    crd["spec"]["names"] = {"plural": "gadgets", "kind": "Gadget"}
    crd["spec"]["scope"] = "Cluster"
    del crd["spec"]["versions"][0]["subresources"]
    ext = kubernetes.client.ApiextensionsV1Api(client)
    assert http(k8s, "GET", f"/apis/{GROUP}/{VERSION}/gadgets")[0] == 404

    created = ext.create_custom_resource_definition(crd)
    conditions = {c.type: c.status for c in created.status.conditions}
    assert conditions["Established"] == "True" and created.status.accepted_names.kind == "Gadget"

    custom.create_cluster_custom_object(GROUP, VERSION, "gadgets", {
        "apiVersion": API_VERSION, "kind": "Gadget", "metadata": {"name": "g1"}, "spec": {"size": 1}})
    resources = {r["name"] for r in http(k8s, "GET", f"/apis/{GROUP}/{VERSION}")[2]["resources"]}
    assert "gadgets" in resources and "gadgets/status" not in resources
    # Without a status subresource, status is written through the main endpoint.
    patched = custom.patch_cluster_custom_object(GROUP, VERSION, "gadgets", "g1", {"status": {"phase": "x"}})
    assert patched["status"] == {"phase": "x"}

    ext.delete_custom_resource_definition(f"gadgets.{GROUP}")
    k8s.wait_for("customresourcedefinitions", f"gadgets.{GROUP}", lambda o: o is None)
    assert http(k8s, "GET", f"/apis/{GROUP}/{VERSION}/gadgets")[0] == 404
    assert PLURAL in {r["name"] for r in http(k8s, "GET", f"/apis/{GROUP}/{VERSION}")[2]["resources"]}


def test_multi_version_crds_store_once_and_serve_every_version(k8s, custom):
    crd = copy.deepcopy(WIDGET_CRD)
    crd["metadata"]["name"] = f"gizmos.{GROUP}"
    crd["spec"]["names"] = {"plural": "gizmos", "kind": "Gizmo"}
    v1 = crd["spec"]["versions"][0]
    v1beta1 = dict(copy.deepcopy(v1), name="v1beta1", storage=False)
    crd["spec"]["versions"] = [v1beta1, v1]
    k8s.apply_crd(crd)
    group = http(k8s, "GET", f"/apis/{GROUP}")[2]
    assert group["preferredVersion"]["version"] == "v1"

    custom.create_namespaced_custom_object(GROUP, "v1beta1", "default", "gizmos", {
        "apiVersion": f"{GROUP}/v1beta1", "kind": "Gizmo", "metadata": {"name": "g"}, "spec": {"size": 2}})
    as_v1 = custom.get_namespaced_custom_object(GROUP, "v1", "default", "gizmos", "g")
    assert as_v1["apiVersion"] == f"{GROUP}/v1" and as_v1["spec"]["size"] == 2
    listed = custom.list_namespaced_custom_object(GROUP, "v1beta1", "default", "gizmos")
    assert [item["apiVersion"] for item in listed["items"]] == [f"{GROUP}/v1beta1"]
    assert k8s.objects[f"{GROUP}/v1/gizmos", "default", "g"]["spec"] == {"size": 2, "color": "red"}


def test_dry_run_does_not_persist(k8s):
    status, _, obj = http(k8s, "POST", widgets_path() + "?dryRun=All", widget("dry"))
    assert status == 201 and obj["metadata"]["name"] == "dry"
    assert http(k8s, "GET", widgets_path(name="dry"))[0] == 404


def test_kuberay_stand_in_crds_and_status_helpers(k8s):
    k8s.apply_crd(kuberay_crds()[0])
    k8s.apply_crd(kuberay_crds()[1])
    rayjob = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "rj", "namespace": "default"},
              "spec": {"entrypoint": "python -m clipforge"}, "status": {"jobStatus": "PENDING"}}
    assert "status" not in k8s.create(rayjob)  # like the API: status is a subresource
    k8s.delete("rayjobs", "rj", namespace="default")
    created = k8s.create(rayjob, keep_status=True)
    assert created["status"] == {"jobStatus": "PENDING"} and created["spec"] == rayjob["spec"]
    updated = k8s.set_status("rayjobs", "rj", {"jobStatus": "RUNNING", "rayClusterName": "rc"}, namespace="default")
    assert updated["status"] == {"jobStatus": "RUNNING", "rayClusterName": "rc"}
    assert updated["metadata"]["generation"] == 1
    assert [c["name"] for c in k8s.resolve("rayclusters").printer_columns][-1] == "Age"


def test_invalid_crds_are_rejected(core, client):
    ext = kubernetes.client.ApiextensionsV1Api(client)
    crd = copy.deepcopy(WIDGET_CRD)
    crd["metadata"]["name"] = "wrong.name.dev"
    crd["spec"]["versions"][0]["storage"] = False
    with pytest.raises(ApiException) as err:
        ext.create_custom_resource_definition(crd)
    assert err.value.status == 422
    fields = {c["field"] for c in json.loads(err.value.body)["details"]["causes"]}
    assert fields == {"metadata.name", "spec.versions"}


# --- object metadata & basic verbs ---------------------------------------------------------------


def test_create_sets_server_metadata_and_returns_201(k8s):
    status, _, obj = http(k8s, "POST", widgets_path(), widget("w1"))
    assert status == 201
    meta = obj["metadata"]
    assert meta["namespace"] == "default"  # from the URL
    assert meta["generation"] == 1 and meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert int(meta["resourceVersion"]) > 0
    assert obj["spec"]["color"] == "red"  # defaulted from the schema

    status, _, error = http(k8s, "POST", widgets_path(), widget("w1"))
    assert status == 409 and error["reason"] == "AlreadyExists"
    assert error["message"] == f'{PLURAL}.{GROUP} "w1" already exists'

    status, _, error = http(k8s, "GET", widgets_path(name="nope"))
    assert status == 404 and error["reason"] == "NotFound" and error["details"]["name"] == "nope"

    wrong_ns = widget("w2")
    wrong_ns["metadata"]["namespace"] = "kube-system"
    assert http(k8s, "POST", widgets_path(), wrong_ns)[0] == 400
    status, _, error = http(k8s, "POST", widgets_path("missing"), widget("w3"))
    assert status == 404 and error["message"] == 'namespaces "missing" not found'

    generated = widget("")
    generated["metadata"] = {"generateName": "auto-"}
    status, _, obj = http(k8s, "POST", widgets_path(), generated)
    assert status == 201 and obj["metadata"]["name"].startswith("auto-") and len(obj["metadata"]["name"]) == 10

    status, _, error = http(k8s, "POST", "/api/v1/namespaces/default/configmaps",
                            {"metadata": {"name": "Bad_Name", "labels": {"ok": "not ok!"}}})
    assert status == 422
    assert {c["field"] for c in error["details"]["causes"]} == {"metadata.name", "metadata.labels"}


def test_resource_version_is_monotonic_and_noop_writes_keep_it(custom):
    rvs = []
    obj = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, widget("w"))
    rvs.append(int(obj["metadata"]["resourceVersion"]))
    for size in (4, 5):
        obj = custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "w", {"spec": {"size": size}})
        rvs.append(int(obj["metadata"]["resourceVersion"]))
    obj = custom.patch_namespaced_custom_object_status(GROUP, VERSION, "default", PLURAL, "w", {"status": {"seen": 1}})
    rvs.append(int(obj["metadata"]["resourceVersion"]))
    assert rvs == sorted(set(rvs))

    same = custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "w", {"spec": {"size": 5}})
    assert same["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]

    listed = custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)
    assert int(listed["metadata"]["resourceVersion"]) >= rvs[-1]


def test_generation_changes_on_spec_only_and_status_is_a_separate_subresource(custom):
    args = (GROUP, VERSION, "default", PLURAL, "w")
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, widget("w", status={"phase": "x"}))
    obj = custom.get_namespaced_custom_object(*args)
    assert obj["metadata"]["generation"] == 1 and "status" not in obj  # status is dropped on create

    obj = custom.patch_namespaced_custom_object(*args, {"spec": {"size": 7}, "status": {"phase": "ignored"}})
    assert obj["metadata"]["generation"] == 2 and obj["spec"]["size"] == 7 and "status" not in obj

    obj = custom.patch_namespaced_custom_object(*args, {"metadata": {"labels": {"a": "b"}}})
    assert obj["metadata"]["generation"] == 2

    obj = custom.patch_namespaced_custom_object_status(*args, {"status": {"phase": "Running"}, "spec": {"size": 99}})
    assert obj["metadata"]["generation"] == 2 and obj["status"] == {"phase": "Running"} and obj["spec"]["size"] == 7

    obj["status"]["seen"] = 2
    obj = custom.replace_namespaced_custom_object_status(*args, obj)
    assert obj["status"] == {"phase": "Running", "seen": 2} and obj["metadata"]["generation"] == 2


def test_update_needs_a_fresh_resource_version(custom):
    args = (GROUP, VERSION, "default", PLURAL, "w")
    created = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, widget("w"))
    custom.patch_namespaced_custom_object(*args, {"spec": {"size": 9}})

    stale = copy.deepcopy(created)
    stale["spec"]["size"] = 10
    with pytest.raises(ApiException) as err:
        custom.replace_namespaced_custom_object(*args, stale)
    assert err.value.status == 409 and json.loads(err.value.body)["reason"] == "Conflict"

    fresh = custom.get_namespaced_custom_object(*args)
    fresh["spec"]["size"] = 10
    replaced = custom.replace_namespaced_custom_object(*args, fresh)
    assert replaced["spec"]["size"] == 10 and replaced["metadata"]["generation"] == 3

    del fresh["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as err:
        custom.replace_namespaced_custom_object(*args, fresh)
    assert err.value.status == 422  # custom resources need a resourceVersion on update


def test_merge_patch_and_json_patch_on_objects_and_status(k8s, custom):
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, widget("w", tags=["a"], label="x"))
    merged = http(k8s, "PATCH", widgets_path(name="w"), {"spec": {"label": None, "tags": ["b", "c"]}},
                  content_type="application/merge-patch+json")[2]
    assert "label" not in merged["spec"] and merged["spec"]["tags"] == ["b", "c"]
    rv = merged["metadata"]["resourceVersion"]

    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": rv},
           {"op": "add", "path": "/spec/tags/-", "value": "d"},
           {"op": "replace", "path": "/spec/size", "value": 8}]
    status, _, patched = http(k8s, "PATCH", widgets_path(name="w"), ops, content_type="application/json-patch+json")
    assert status == 200 and patched["spec"]["tags"] == ["b", "c", "d"] and patched["spec"]["size"] == 8

    status, _, error = http(k8s, "PATCH", widgets_path(name="w"), ops, content_type="application/json-patch+json")
    assert status == 422 and error["reason"] == "Invalid"  # the resourceVersion test op fails now

    status_ops = [{"op": "add", "path": "/status", "value": {"phase": "Done"}}]
    status, _, patched = http(k8s, "PATCH", widgets_path(name="w", sub="status"), status_ops,
                              content_type="application/json-patch+json")
    assert status == 200 and patched["status"] == {"phase": "Done"}

    stale = {"metadata": {"resourceVersion": rv}, "spec": {"size": 1}}
    assert http(k8s, "PATCH", widgets_path(name="w"), stale, content_type="application/merge-patch+json")[0] == 409
    assert http(k8s, "PATCH", widgets_path(name="w"), {"spec": {}},
                content_type="application/strategic-merge-patch+json")[0] == 415


def test_strategic_merge_patch_on_builtins_and_secret_string_data(core):
    core.create_namespaced_config_map("default", {"metadata": {"name": "cm", "finalizers": ["a/x"]},
                                                  "data": {"a": "1"}})
    cm = core.patch_namespaced_config_map("cm", "default", {"metadata": {"finalizers": ["a/y"]}, "data": {"b": "2"}})
    assert cm.data == {"a": "1", "b": "2"} and cm.metadata.finalizers == ["a/x", "a/y"]

    secret = core.create_namespaced_secret("default", {"metadata": {"name": "s"}, "stringData": {"token": "abc"}})
    assert secret.data == {"token": base64.b64encode(b"abc").decode()} and secret.type == "Opaque"


def test_list_label_and_field_selectors_and_pagination(core):
    for name, labels in [("a", {"app": "x", "tier": "web"}), ("b", {"app": "x"}), ("c", {"app": "y"})]:
        core.create_namespaced_config_map("default", {"metadata": {"name": name, "labels": labels}})

    def names(**kwargs):
        return [cm.metadata.name for cm in core.list_namespaced_config_map("default", **kwargs).items]

    assert names(label_selector="app=x") == ["a", "b"]
    assert names(label_selector="app=x,tier") == ["a"]
    assert names(label_selector="app=x,!tier") == ["b"]
    assert names(label_selector="app in (x,y),tier!=web") == ["b", "c"]
    assert names(label_selector="app notin (x)") == ["c"]
    assert names(field_selector="metadata.name=c") == ["c"]
    assert names(field_selector="metadata.name!=c") == ["a", "b"]

    page = core.list_namespaced_config_map("default", limit=2)
    assert [cm.metadata.name for cm in page.items] == ["a", "b"] and page.metadata.remaining_item_count == 1
    rest = core.list_namespaced_config_map("default", limit=2, _continue=page.metadata._continue)
    assert [cm.metadata.name for cm in rest.items] == ["c"] and not rest.metadata._continue
    assert int(page.metadata.resource_version) > 0

    all_namespaces = core.list_config_map_for_all_namespaces(label_selector="app")
    assert {cm.metadata.name for cm in all_namespaces.items} == {"a", "b", "c"}

    with pytest.raises(KubeAPIError):  # the server answers 400
        parse_label_selector("a in b")


# --- deletion: finalizers, owners, namespaces --------------------------------------------------


def test_finalizers_block_deletion_until_removed(k8s, custom):
    args = (GROUP, VERSION, "default", PLURAL, "w")
    body = widget("w")
    body["metadata"]["finalizers"] = ["test.clipforge.dev/cleanup"]
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)

    deleted = custom.delete_namespaced_custom_object(*args)
    assert deleted["metadata"]["deletionTimestamp"]
    obj = custom.get_namespaced_custom_object(*args)
    assert obj["metadata"]["deletionTimestamp"] and obj["metadata"]["generation"] == 2

    status, _, error = http(k8s, "PATCH", widgets_path(name="w"),
                            {"metadata": {"finalizers": ["test.clipforge.dev/cleanup", "other.dev/new"]}},
                            content_type="application/merge-patch+json")
    assert status == 422 and "no new finalizers can be added" in error["message"]

    custom.patch_namespaced_custom_object(*args, {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as err:
        custom.get_namespaced_custom_object(*args)
    assert err.value.status == 404


def test_owner_references_cascade(k8s, core, custom):
    def owned(name: str, owner: dict) -> dict:
        ref = {"apiVersion": API_VERSION, "kind": KIND, "name": owner["metadata"]["name"],
               "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
        return {"metadata": {"name": name, "ownerReferences": [ref]}}

    # Background (the default): dependents go after the owner.
    owner = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, widget("o1"))
    core.create_namespaced_config_map("default", owned("cm1", owner))
    custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "o1")
    k8s.wait_for("configmaps", "cm1", lambda o: o is None, namespace="default", timeout=5)

    # Foreground: the owner waits (with a foregroundDeletion finalizer) for its dependents.
    owner = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, widget("o2"))
    dependent = owned("cm2", owner)
    dependent["metadata"]["finalizers"] = ["test.clipforge.dev/hold"]
    core.create_namespaced_config_map("default", dependent)
    custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "o2",
                                           propagation_policy="Foreground")
    held = k8s.wait_for(PLURAL, "o2", lambda o: o and "foregroundDeletion" in o["metadata"].get("finalizers", []),
                        namespace="default", timeout=5)
    assert held["metadata"]["deletionTimestamp"]
    core.patch_namespaced_config_map("cm2", "default", {"metadata": {"finalizers": None}})
    k8s.wait_for(PLURAL, "o2", lambda o: o is None, namespace="default", timeout=5)

    # Orphan: dependents stay, without the owner reference.
    owner = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, widget("o3"))
    core.create_namespaced_config_map("default", owned("cm3", owner))
    custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "o3", propagation_policy="Orphan")
    k8s.wait_for(PLURAL, "o3", lambda o: o is None, namespace="default", timeout=5)
    assert not core.read_namespaced_config_map("cm3", "default").metadata.owner_references


def test_namespace_deletion_deletes_its_content(k8s, core):
    core.create_namespace({"metadata": {"name": "doomed"}})
    core.create_namespaced_config_map("doomed", {"metadata": {"name": "cm"}})
    finalizer = {"metadata": {"finalizers": ["test.clipforge.dev/hold"]}}
    core.create_namespaced_secret("doomed", {"metadata": {"name": "held", **finalizer["metadata"]}})
    core.delete_namespace("doomed")
    assert core.read_namespace("doomed").status.phase == "Terminating"
    assert core.read_namespaced_secret("held", "doomed").metadata.deletion_timestamp
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map("doomed", {"metadata": {"name": "late"}})
    assert err.value.status == 403
    core.patch_namespaced_secret("held", "doomed", {"metadata": {"finalizers": None}})
    k8s.wait_for("namespaces", "doomed", lambda o: o is None, timeout=5)
    assert k8s.get_or_none("configmaps", "cm", namespace="doomed") is None
    with pytest.raises(KubeAPIError) as err:
        k8s.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "doomed"}})
    assert err.value.code == 404


# --- watches -------------------------------------------------------------------------------------


def test_watch_streams_events_and_resumes_from_a_resource_version(k8s, custom):
    listed = custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)
    since = listed["metadata"]["resourceVersion"]
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, widget("w"))
    custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "w", {"spec": {"size": 4}})
    custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "w")

    watch = kubernetes.watch.Watch()
    events = []
    for event in watch.stream(custom.list_namespaced_custom_object, GROUP, VERSION, "default", PLURAL,
                              resource_version=since, timeout_seconds=1):
        events.append((event["type"], event["object"]["metadata"]["name"], event["object"]["spec"]["size"]))
        if len(events) == 3:
            watch.stop()
    assert events == [("ADDED", "w", 3), ("MODIFIED", "w", 4), ("DELETED", "w", 4)]

    k8s.compact()
    status, _, text = http(k8s, "GET", widgets_path() + f"?watch=true&resourceVersion={since}")
    error = json.loads(text.splitlines()[0]) if isinstance(text, str) else text
    assert error["type"] == "ERROR" and error["object"]["code"] == 410


def test_watch_live_events_and_selectors(k8s, core):
    core.create_namespaced_config_map("default", {"metadata": {"name": "pre", "labels": {"w": "1"}}})
    received, ready = [], threading.Event()

    def consume():
        watch = kubernetes.watch.Watch()
        for event in watch.stream(core.list_namespaced_config_map, "default", label_selector="w=1",
                                  timeout_seconds=5):
            received.append((event["type"], event["object"].metadata.name))
            ready.set()
            if len(received) == 4:
                watch.stop()

    thread = threading.Thread(target=consume)
    thread.start()
    assert ready.wait(5)  # the initial ADDED of the existing object
    core.create_namespaced_config_map("default", {"metadata": {"name": "other"}})  # never matches
    core.create_namespaced_config_map("default", {"metadata": {"name": "new", "labels": {"w": "1"}}})
    core.patch_namespaced_config_map("new", "default", {"data": {"k": "v"}})
    core.patch_namespaced_config_map("pre", "default", {"metadata": {"labels": {"w": "2"}}})  # leaves the selector
    thread.join(10)
    assert received == [("ADDED", "pre"), ("ADDED", "new"), ("MODIFIED", "new"), ("DELETED", "pre")]


def test_watch_initial_events_end_with_a_bookmark(k8s, core):
    core.create_namespaced_config_map("default", {"metadata": {"name": "a"}})
    _, _, text = http(k8s, "GET", "/api/v1/namespaces/default/configmaps"
                                  "?watch=true&sendInitialEvents=true&allowWatchBookmarks=true&timeoutSeconds=1")
    events = [json.loads(line) for line in text.splitlines()]
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


# --- schema validation -------------------------------------------------------------------------


def test_custom_objects_are_validated_against_the_crd_schema(k8s, custom):
    bad = widget("bad", size="big", color="purple", label="UPPER", tags=["a", "a"])
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, bad)
    status = json.loads(err.value.body)
    assert err.value.status == 422 and status["reason"] == "Invalid"
    causes = {c["field"]: c["message"] for c in status["details"]["causes"]}
    assert causes == {
        "spec.size": 'Invalid value: "string": spec.size in body must be of type integer: "big"',
        "spec.color": 'Unsupported value: "purple": supported values: "red", "green", "blue"',
        "spec.label": "Invalid value: \"UPPER\": spec.label in body should match '^[a-z]+$'",
        "spec.tags[1]": 'Duplicate value: "a"',
    }
    assert status["message"].startswith(f'{KIND}.{GROUP} "bad" is invalid: [')

    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL,
                                               {"apiVersion": API_VERSION, "kind": KIND,
                                                "metadata": {"name": "b2"}, "spec": {"size": 0}})
    assert json.loads(err.value.body)["message"] == (
        f'{KIND}.{GROUP} "b2" is invalid: spec.size: Invalid value: 0: '
        "spec.size in body should be greater than or equal to 1")
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL,
                                               {"apiVersion": API_VERSION, "kind": KIND,
                                                "metadata": {"name": "b3"}, "spec": {}})
    assert json.loads(err.value.body)["details"]["causes"][0]["field"] == "spec.size"

    # Pruning (unknown fields dropped, with a warning), preserved subtrees, nullable, int-or-string.
    body = widget("ok", port="http", label=None, unknown=1, extra={"any": {"thing": [1]}})
    status_code, headers, obj = http(k8s, "POST", widgets_path(), body)
    assert status_code == 201 and "unknown" not in obj["spec"] and obj["spec"]["label"] is None
    assert obj["spec"]["extra"] == {"any": {"thing": [1]}} and obj["spec"]["port"] == "http"
    assert 'unknown field \\"spec.unknown\\"' in headers.get("Warning", "")

    # kubectl's default: fieldValidation=Strict turns unknown fields into 400 BadRequest.
    status_code, _, error = http(k8s, "POST", widgets_path() + "?fieldValidation=Strict", widget("s", unknown=1))
    assert status_code == 400 and 'strict decoding error: unknown field "spec.unknown"' in error["message"]

    # Updates are validated too, status writes included.
    with pytest.raises(ApiException) as err:
        custom.patch_namespaced_custom_object_status(GROUP, VERSION, "default", PLURAL, "ok",
                                                     {"status": {"seen": "many"}})
    assert err.value.status == 422


def test_the_real_videocurationjob_crd_installs_and_validates(k8s):
    crd_path = REPO / "crds" / "videocurationjobs.yaml"
    if not crd_path.exists():
        pytest.skip("crds/videocurationjobs.yaml is not generated yet")
    (crd,) = k8s.apply_crd(crd_path)
    assert crd["metadata"]["name"] == "videocurationjobs.clipforge.dev"
    examples = sorted((REPO / "examples").glob("*.yaml"))
    for path in examples:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "VideoCurationJob":
                created = k8s.create(doc)
                assert created["metadata"]["generation"] == 1
    with pytest.raises(KubeAPIError) as err:
        k8s.create({"apiVersion": "clipforge.dev/v1alpha1", "kind": "VideoCurationJob",
                    "metadata": {"name": "empty"}, "spec": {}})
    assert err.value.code == 422 and "spec.input: Required value" in err.value.message


# --- emulator plumbing -----------------------------------------------------------------------------


def test_token_auth_tables_and_fault_injection():
    with KubeAPIEmulator(token="s3cret") as k8s:
        assert http(k8s, "GET", "/api/v1/namespaces")[0] == 401
        auth = {"Authorization": "Bearer s3cret"}
        status, _, table = http(k8s, "GET", "/api/v1/namespaces",
                                headers={**auth, "Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})
        assert status == 200 and table["kind"] == "Table"
        assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Status", "Age"]
        assert table["rows"][0]["cells"][:2] == ["default", "Active"]
        # Any kmock reaction takes precedence over the emulation (e.g. to inject API failures).
        k8s.api[kmock.resource("", "v1", "configmaps"), kmock.action.LIST] << 503
        assert http(k8s, "GET", "/api/v1/namespaces/default/configmaps", headers=auth)[0] == 503
        assert http(k8s, "GET", "/api/v1/namespaces/default/secrets", headers=auth)[0] == 200
        assert any(r.resource == kmock.resource("", "v1", "configmaps") for r in k8s.requests)


def test_json_patch_helper_follows_rfc6902():
    doc = {"a": {"b": [1, 2]}, "c": True}
    assert json_patch(doc, [{"op": "move", "from": "/a/b/0", "path": "/a/x"},
                            {"op": "copy", "from": "/c", "path": "/d"},
                            {"op": "remove", "path": "/c"}]) == {"a": {"b": [2], "x": 1}, "d": True}
    for ops in ([{"op": "test", "path": "/c", "value": 1}],  # booleans are not numbers
                [{"op": "replace", "path": "/nope", "value": 1}],
                [{"op": "add", "path": "/a/b/5", "value": 1}]):
        with pytest.raises(Exception) as err:  # noqa: B017 - the failures are internal error types
            json_patch(doc, ops)
        assert "test operation failed" in str(err.value) or "missing value" in str(err.value) \
            or "out of bounds" in str(err.value)
    assert doc == {"a": {"b": [1, 2]}, "c": True}  # never mutated


# --- real kubectl & helm -----------------------------------------------------------------------


@pytest.fixture
def kubectl(k8s, tmp_path):
    binary = TOOLS / "kubectl"
    if not binary.exists():
        pytest.fail(f"{binary} is missing: run scripts/install-kube-tools.sh")
    kubeconfig = k8s.write_kubeconfig(tmp_path / "kubeconfig")
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path)}

    def run(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([str(binary), *args], env=env, input=stdin, capture_output=True, text=True,
                                timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    return run


def test_kubectl_apply_get_explain_and_delete(k8s, kubectl, tmp_path):
    crd = copy.deepcopy(WIDGET_CRD)
    crd["metadata"]["name"] = f"things.{GROUP}"
    crd["spec"]["names"] = {"plural": "things", "singular": "thing", "kind": "Thing"}
    (tmp_path / "crd.yaml").write_text(yaml.safe_dump(crd))
    assert "created" in kubectl("apply", "-f", str(tmp_path / "crd.yaml")).stdout
    assert "unchanged" in kubectl("apply", "-f", str(tmp_path / "crd.yaml")).stdout

    thing = {"apiVersion": API_VERSION, "kind": "Thing", "metadata": {"name": "t1"},
             "spec": {"size": 5, "color": "blue"}}
    (tmp_path / "thing.yaml").write_text(yaml.safe_dump(thing))
    assert kubectl("apply", "-f", str(tmp_path / "thing.yaml")).stdout.strip() == f"thing.{GROUP}/t1 created"
    assert kubectl("apply", "-f", str(tmp_path / "thing.yaml")).stdout.strip() == f"thing.{GROUP}/t1 unchanged"
    thing["spec"]["size"] = 6
    (tmp_path / "thing.yaml").write_text(yaml.safe_dump(thing))
    assert kubectl("apply", "-f", str(tmp_path / "thing.yaml")).stdout.strip() == f"thing.{GROUP}/t1 configured"
    k8s.patch("things", "t1", {"status": {"phase": "Ready"}}, namespace="default", subresource="status")

    table = kubectl("get", "things").stdout.splitlines()
    assert table[0].split() == ["NAME", "SIZE", "COLOR", "PHASE", "AGE"]
    assert table[1].split()[:4] == ["t1", "6", "blue", "Ready"]
    as_json = json.loads(kubectl("get", "thing", "t1", "-o", "json").stdout)
    assert as_json["spec"] == {"size": 6, "color": "blue"}
    assert "kubectl.kubernetes.io/last-applied-configuration" in as_json["metadata"]["annotations"]

    explained = kubectl("explain", "things.spec.size").stdout
    assert "How big the widget is." in explained

    invalid = "\n".join(["apiVersion: test.clipforge.dev/v1", "kind: Thing", "metadata: {name: t2}",
                         "spec: {size: 500, color: purple}"])
    result = kubectl("apply", "-f", "-", stdin=invalid, check=False)
    assert result.returncode != 0
    assert 'The Thing "t2" is invalid' in result.stderr
    assert "spec.size: Invalid value: 500: spec.size in body should be less than or equal to 100" in result.stderr
    assert 'spec.color: Unsupported value: "purple": supported values: "red", "green", "blue"' in result.stderr

    assert kubectl("delete", "-f", str(tmp_path / "thing.yaml")).stdout.strip() == f'thing.{GROUP} "t1" deleted'
    result = kubectl("get", "thing", "t1", check=False)
    assert result.returncode != 0 and "NotFound" in result.stderr
    kubectl("delete", "crd", f"things.{GROUP}")
    assert "things" not in kubectl("api-resources", "--api-group", GROUP).stdout


def test_kubectl_works_with_builtins_and_helm_can_connect(k8s, kubectl, tmp_path):
    kubectl("create", "namespace", "team")
    kubectl("create", "configmap", "settings", "-n", "team", "--from-literal=a=1")  # protobuf bodies
    kubectl("create", "secret", "generic", "creds", "-n", "team", "--from-literal=token=abc")
    assert k8s.get("configmaps", "settings", namespace="team")["data"] == {"a": "1"}
    assert k8s.get("secrets", "creds", namespace="team")["data"] == {"token": base64.b64encode(b"abc").decode()}
    result = kubectl("create", "deployment", "web", "-n", "team", "--image=nginx", check=False)
    assert result.returncode != 0 and "send JSON (e.g. kubectl apply) for Deployment" in result.stderr
    assert "settings" in kubectl("get", "cm", "-n", "team").stdout
    kubectl("label", "cm", "settings", "-n", "team", "tier=web")
    assert kubectl("get", "cm", "-n", "team", "-l", "tier=web", "-o", "name").stdout.strip() == "configmap/settings"
    kubectl("delete", "namespace", "team")
    assert "team" not in kubectl("get", "ns", "-o", "name").stdout

    helm = TOOLS / "helm"
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "kubeconfig"), "HOME": str(tmp_path),
           "HELM_CACHE_HOME": str(tmp_path / "helm-cache"), "HELM_CONFIG_HOME": str(tmp_path / "helm-config"),
           "HELM_DATA_HOME": str(tmp_path / "helm-data")}
    result = subprocess.run([str(helm), "list", "--all-namespaces"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:2] == ["NAME", "NAMESPACE"]


# --- a real kopf operator ----------------------------------------------------------------------


OPERATOR = textwrap.dedent(f"""
    import kopf

    @kopf.on.startup()
    def configure(settings, **_):
        settings.watching.server_timeout = 10  # watches reconnect and resume from a resourceVersion

    @kopf.on.login()
    def login(**kwargs):
        return kopf.login_with_kubeconfig(**kwargs)  # reads $KUBECONFIG

    @kopf.on.create("{GROUP}", "{VERSION}", "{PLURAL}")
    def created(body, spec, patch, **_):
        kopf.info(body, reason="Seen", message=f"size {{spec['size']}}")  # a core/v1 Event
        patch.status["phase"] = "Seen"
        patch.status["seen"] = spec["size"]

    @kopf.on.update("{GROUP}", "{VERSION}", "{PLURAL}", field="spec.size")
    def resized(new, patch, **_):
        patch.status["seen"] = new

    @kopf.on.delete("{GROUP}", "{VERSION}", "{PLURAL}")
    def deleted(**_):
        pass
""")


@pytest.fixture
def kopf_registry():
    """A private default registry: the operator file's handlers must not leak into other tests."""
    import kopf

    previous = kopf.get_default_registry()
    registry = kopf.OperatorRegistry()
    kopf.set_default_registry(registry)
    yield registry
    kopf.set_default_registry(previous)


def test_a_kopf_operator_reacts_to_objects_through_watches(k8s, tmp_path, monkeypatch, kopf_registry):
    from kopf.testing import KopfRunner

    monkeypatch.setenv("KUBECONFIG", str(k8s.write_kubeconfig(tmp_path / "kubeconfig")))
    (tmp_path / "operator.py").write_text(OPERATOR)
    args = ["run", "--standalone", "--all-namespaces", "--verbose", str(tmp_path / "operator.py")]
    with KopfRunner(args, timeout=60, registry=kopf_registry) as runner:
        k8s.create(widget("w1", size=2))
        seen = k8s.wait_for(PLURAL, "w1", lambda o: o and o.get("status", {}).get("seen") == 2,
                            namespace="default", timeout=20)
        assert seen["status"]["phase"] == "Seen"
        assert "kopf.zalando.org/KopfFinalizerMarker" in seen["metadata"]["finalizers"]

        events = k8s.wait_for_list("events", namespace="default", field_selector="involvedObject.name=w1")
        assert events[0]["reason"] == "Seen" and events[0]["message"] == "size 2"

        k8s.patch(PLURAL, "w1", {"spec": {"size": 9}}, namespace="default")
        k8s.wait_for(PLURAL, "w1", lambda o: o and o.get("status", {}).get("seen") == 9,
                     namespace="default", timeout=20)

        k8s.delete(PLURAL, "w1", namespace="default")  # kopf's finalizer holds it until the handler ran
        k8s.wait_for(PLURAL, "w1", lambda o: o is None, namespace="default", timeout=20)
    assert runner.exception is None, runner.output
    assert runner.exit_code == 0, runner.output
    assert "Handler 'created' succeeded" in runner.output
    assert "Handler 'deleted' succeeded" in runner.output
