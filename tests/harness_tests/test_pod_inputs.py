"""The process kubelet resolves a pod's environment, argv and volume files as a kubelet does.

Unit tests without an API server: the objects a pod refers to come from dicts here (the
kubelet reads them from the real API server; test_process_kubelet.py runs pods end to end).
"""

from __future__ import annotations

import base64

import pytest

from harness.pod_inputs import (PodConfigError, container_argv, container_env, container_mounts, expand,
                                materialise_volumes)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Objects:
    """ConfigMaps and Secrets by (namespace, name); tokens record what was asked for."""

    def __init__(self, config_maps=None, secrets=None):  # noqa: ANN001
        self.config_maps = config_maps or {}
        self.secrets = secrets or {}
        self.token_requests = []

    def config_map(self, namespace, name):  # noqa: ANN001, ANN201
        return self.config_maps.get((namespace, name))

    def secret(self, namespace, name):  # noqa: ANN001, ANN201
        return self.secrets.get((namespace, name))

    def service_account_token(self, pod, audience, expiration_seconds):  # noqa: ANN001, ANN201
        self.token_requests.append((pod["metadata"]["name"], audience, expiration_seconds))
        return f"token-for-{pod['spec']['serviceAccountName']}"


def _pod(containers, volumes=(), init=()):  # noqa: ANN001, ANN202
    return {"metadata": {"name": "p1", "namespace": "ns", "uid": "u-1", "labels": {"app": "x", "tier": "a b"},
                         "annotations": {"note": "n"}},
            "spec": {"nodeName": "cpu-node", "serviceAccountName": "runner", "containers": list(containers),
                     "initContainers": list(init), "volumes": list(volumes)},
            "status": {"podIP": "10.200.1.7", "podIPs": [{"ip": "10.200.1.7"}], "hostIP": "10.200.0.1",
                       "hostIPs": [{"ip": "10.200.0.1"}]}}


ALLOCATABLE = {"cpu": "8", "memory": "32Gi"}


@pytest.mark.parametrize(("text", "expected"), [
    ("$(A)-$(B)", "1-two"),
    ("$(MISSING) stays", "$(MISSING) stays"),
    ("$$(A) is escaped", "$(A) is escaped"),
    ("cost $5 and $", "cost $5 and $"),
    ("unclosed $(A", "unclosed $(A"),
    ("ray start --address=$(A):6379", "ray start --address=1:6379"),
])
def test_expand_follows_kubernetes_rules(text, expected):
    assert expand(text, {"A": "1", "B": "two"}) == expected


def test_env_resolves_every_source_in_order():
    objects = Objects(config_maps={("ns", "cfg"): {"data": {"MODE": "fast", "LEVEL": "3"}}},
                      secrets={("ns", "creds"): {"data": {"key": _b64("s3cr3t")}}})
    container = {
        "name": "main",
        "resources": {"limits": {"memory": "2Gi"}, "requests": {"cpu": "500m"}},
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
        "env": [
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "CPU_REQ_M", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
            {"name": "CPU_REQ", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "0"}}},
            {"name": "CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "MODE"}}},
            {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "key"}}},
            {"name": "ABSENT", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": True}}},
            {"name": "ABSENT_KEY", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "x", "optional": True}}},
            {"name": "ADDR", "value": "$(IP):$(CPU_REQ_M)/$(CFG_LEVEL)"},
        ],
    }
    env = container_env(_pod([container]), container, objects, {"PATH": "/bin"}, ALLOCATABLE)
    assert env == {
        "PATH": "/bin", "CFG_MODE": "fast", "CFG_LEVEL": "3", "POD": "p1", "NS": "ns", "IP": "10.200.1.7",
        "NODE": "cpu-node", "APP": "x", "CPU_REQ_M": "500", "CPU_REQ": "1",  # divisor 0 (the API default) is 1; rounded up
        "CPU_LIMIT": "8",  # no limit: the node's allocatable
        "MEM_MI": "2048", "MODE": "fast", "SECRET": "s3cr3t", "ADDR": "10.200.1.7:500/3",
    }


@pytest.mark.parametrize(("env", "message"), [
    ({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}},
     "configmap 'nope' not found in namespace 'ns'"),
    ({"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "other"}}},
     "key 'other' not found in secret 'creds'"),
    ({"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.bogus"}}}, "unsupported fieldPath 'spec.bogus'"),
])
def test_env_names_what_is_missing(env, message):
    objects = Objects(secrets={("ns", "creds"): {"data": {"key": _b64("v")}}})
    container = {"name": "main", "env": [env]}
    with pytest.raises(PodConfigError, match=message.replace("(", r"\(")):
        container_env(_pod([container]), container, objects, {}, ALLOCATABLE)


def test_argv_is_command_then_args_expanded_and_a_missing_command_is_an_error():
    container = {"name": "ray-head", "image": "rayproject/ray:2.60.0", "command": ["/bin/bash", "-c", "--"],
                 "args": ["ray kuberay-autoscaler --cluster-name $(RAY_CLUSTER_NAME)"]}
    assert container_argv(container, {"RAY_CLUSTER_NAME": "rc"}) == [
        "/bin/bash", "-c", "--", "ray kuberay-autoscaler --cluster-name rc"]
    with pytest.raises(PodConfigError, match="'rayproject/ray:2.60.0' is never used"):
        container_argv({"name": "ray-head", "image": "rayproject/ray:2.60.0", "args": ["x"]}, {})


def test_volumes_are_written_with_their_keys_paths_and_modes(tmp_path):
    objects = Objects(config_maps={("ns", "cfg"): {"data": {"a.yaml": "a: 1", "b": "2"},
                                                   "binaryData": {"blob": _b64("\x00\x01")}},
                                   ("ns", "kube-root-ca.crt"): {"data": {"ca.crt": "CA PEM"}}},
                      secrets={("ns", "creds"): {"data": {"key": _b64("s3cr3t")}}})
    volumes = [
        {"name": "config", "configMap": {"name": "cfg"}},
        {"name": "picked", "configMap": {"name": "cfg", "items": [{"key": "a.yaml", "path": "sub/x.yaml", "mode": 0o600}]}},
        {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400}},
        {"name": "maybe", "secret": {"secretName": "absent", "optional": True}},
        {"name": "scratch", "emptyDir": {}},
        {"name": "info", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                                                   {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
        {"name": "kube-api-access", "projected": {"defaultMode": 0o644, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}},
    ]
    pod = _pod([{"name": "main"}], volumes)
    got = materialise_volumes(pod, tmp_path, objects, ALLOCATABLE)
    root = tmp_path / "volumes"
    assert {name: (path.relative_to(root).as_posix(), ro) for name, (path, ro) in got.items()} == {
        "config": ("config", True), "picked": ("picked", True), "creds": ("creds", True), "maybe": ("maybe", True),
        "scratch": ("scratch", False), "info": ("info", True), "kube-api-access": ("kube-api-access", True)}
    assert (root / "config" / "a.yaml").read_text() == "a: 1"
    assert (root / "config" / "blob").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in (root / "picked").rglob("*")) == ["sub", "x.yaml"]
    assert (root / "picked" / "sub" / "x.yaml").stat().st_mode & 0o777 == 0o600
    assert (root / "creds" / "key").read_bytes() == b"s3cr3t"
    assert (root / "creds" / "key").stat().st_mode & 0o777 == 0o400
    assert list((root / "maybe").iterdir()) == []
    assert (root / "info" / "labels").read_text() == 'app="x"\ntier="a b"\n'
    assert (root / "info" / "name").read_text() == "p1"
    api = root / "kube-api-access"
    assert {p.name: p.read_text() for p in api.iterdir()} == {
        "token": "token-for-runner", "ca.crt": "CA PEM", "namespace": "ns"}
    assert objects.token_requests == [("p1", None, 3607)]

    # A retry (after a missing object) keeps what is there: an emptyDir keeps its files.
    (root / "scratch" / "kept").write_text("x")
    materialise_volumes(pod, tmp_path, objects, ALLOCATABLE)
    assert (root / "scratch" / "kept").read_text() == "x"


def test_a_missing_config_map_fails_the_volume_until_it_exists(tmp_path):
    objects = Objects()
    pod = _pod([{"name": "main"}], [{"name": "config", "configMap": {"name": "later"}}])
    with pytest.raises(PodConfigError, match="configmap 'later' not found"):
        materialise_volumes(pod, tmp_path, objects, ALLOCATABLE)
    assert not (tmp_path / "volumes" / "config").exists()
    objects.config_maps[("ns", "later")] = {"data": {"k": "v"}}
    materialise_volumes(pod, tmp_path, objects, ALLOCATABLE)
    assert (tmp_path / "volumes" / "config" / "k").read_text() == "v"


def test_unsupported_volumes_are_named(tmp_path):
    pod = _pod([{"name": "main"}], [{"name": "data", "hostPath": {"path": "/data"}}])
    with pytest.raises(PodConfigError, match="volume 'data': hostPath volumes are not supported"):
        materialise_volumes(pod, tmp_path, Objects(), ALLOCATABLE)


def test_mounts_resolve_sub_paths_and_keep_api_volumes_read_only(tmp_path):
    objects = Objects(config_maps={("ns", "cfg"): {"data": {"job.yaml": "x"}}})
    pod = _pod([{"name": "main"}], [{"name": "config", "configMap": {"name": "cfg"}},
                                    {"name": "scratch", "emptyDir": {}}])
    volumes = materialise_volumes(pod, tmp_path, objects, ALLOCATABLE)
    container = {"name": "main", "volumeMounts": [
        {"name": "config", "mountPath": "/etc/job.yaml", "subPath": "job.yaml"},
        {"name": "scratch", "mountPath": "/work"},
        {"name": "scratch", "mountPath": "/logs", "subPathExpr": "$(POD)", "readOnly": True}]}
    mounts = container_mounts(container, volumes, {"POD": "p1"})
    root = tmp_path / "volumes"
    assert [(m.source, m.target, m.read_only) for m in mounts] == [
        (root / "config" / "job.yaml", "/etc/job.yaml", True),
        (root / "scratch", "/work", False),
        (root / "scratch" / "p1", "/logs", True)]
    assert (root / "scratch" / "p1").is_dir()  # a missing subPath is created, as a kubelet does
    with pytest.raises(PodConfigError, match="mounts volume 'other', which the pod lacks"):
        container_mounts({"name": "main", "volumeMounts": [{"name": "other", "mountPath": "/x"}]}, volumes, {})
    with pytest.raises(PodConfigError, match="leaves the volume"):
        container_mounts({"name": "main", "volumeMounts": [{"name": "scratch", "mountPath": "/x",
                                                            "subPath": "../../etc"}]}, volumes, {})
