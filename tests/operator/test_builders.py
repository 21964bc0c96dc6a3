"""Pure builders: names, ConfigMap, RayJob, scaling patches, spec-change rules, RayJob -> phase."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonpatch
import pytest
import yaml

from clipforge.spec import (
    DEFAULT_IMAGE, STAGES, InvalidJobError, RunReport, VideoCurationJob, parse_job, stage_resource_name,
)
from clipforge_operator import builders as b
from clipforge_operator import cluster_access as access
from clipforge_operator.config import KubeRayPods
from clipforge_operator.admission import spec_from_configmap
from clipforge_operator.pipeline_pods import scratch_mounts, scratch_volumes, with_pipeline_image
from clipforge_operator.progress import (
    Credentials,
    ProgressUnavailable,
    credentials_from_secret,
    progress_from_report,
    read_progress,
)
from clipforge_operator.status import (
    Observation,
    observe_rayjob,
    phase_conditions,
    ready_workers,
    rfc3339,
    set_condition,
    worker_group_sizes,
)
from clipforge_operator.update_rules import UPDATE_RULES, SpecChange, classify_spec_change, field_values, merge_allowed
from support.pid1 import sigterm_as_pid1

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
UID = "0b8f9a52-1111-2222-3333-444455556666"
TOKEN_SECRET = "demo-ray-token-x7k2p"  # the name the API server gave the job's token Secret
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def job(name: str = "demo", **spec: Any) -> VideoCurationJob:
    """A job as the builders get it: with the operator's default image where it names none."""
    doc = {
        "apiVersion": "clipforge.dev/v1alpha1",
        "kind": "VideoCurationJob",
        "metadata": {"name": name, "namespace": "videos"},
        "spec": {"input": {"uri": "s3://raw/in/"}, "output": {"uri": "s3://sets/out/"}, **spec},
    }
    parsed = parse_job(doc)
    return parsed.model_copy(update={"spec": with_pipeline_image(parsed.spec, DEFAULT_IMAGE)})


def gpu_job(**extra: Any) -> VideoCurationJob:
    return job(
        storage={"credentialsSecret": "s3-creds"},
        execution={"stages": {"split": {"gpus": 1, "cpus": 2, "maxWorkers": 4},
                              "transcode": {"gpus": 0.5, "cpus": 1, "minWorkers": 2, "maxWorkers": 8}}},
        cluster={"gpuWorkers": {"transcode": {
            "gpus": 1, "nodeSelector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "resources": {"requests": {"cpu": 4, "memory": "16Gi"}, "limits": {"cpu": 4, "memory": "16Gi"}},
        }}},
        **extra,
    )


def containers(rayjob: dict) -> dict[str, dict]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    out = {"head": cluster["headGroupSpec"]["template"]["spec"]["containers"][0],
           "submitter": rayjob["spec"]["submitterPodTemplate"]["spec"]["containers"][0]}
    for group in cluster["workerGroupSpecs"]:
        out[group["groupName"]] = group["template"]["spec"]["containers"][0]
    return out


# ------------------------------------------------------------------------------------- import


def test_operator_never_imports_the_pipeline_heavyweights():
    modules = ["clipforge_operator", "clipforge_operator.crd", "clipforge_operator.builders",
               "clipforge_operator.handlers", "clipforge_operator.reconcile", "clipforge_operator.progress",
               "clipforge_operator.kube", "clipforge_operator.metrics", "clipforge_operator.__main__",
               "clipforge_operator.config", "clipforge_operator.status", "clipforge_operator.update_rules"]
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in ('torch', 'av', 'ray', 'pyarrow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


# -------------------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["demo", "a.b", "a-b", "1st-run", "x" * 253, "v" * 38, "v" * 39, "my.job.v2"])
def test_child_names_are_dns1035_and_short_enough_for_kuberay(name: str):
    for attempt in (0, 1, 20, 99):
        rj = b.rayjob_name(name, attempt)
        assert DNS1035.match(rj) and len(rj) <= 47, rj
        assert b.rayjob_name(name, attempt) == rj  # deterministic
    assert DNS1035.match(b.configmap_name(name))
    assert len(b.base_name(name)) <= 63  # also a label value


def test_names_keep_simple_job_names_and_never_collide():
    assert b.rayjob_name("demo") == "demo"
    assert b.rayjob_name("demo", 2) == "demo-retry-2"
    assert b.configmap_name("demo") == "demo-config"
    assert b.base_name("a.b") != b.base_name("a-b")
    assert b.base_name("x" * 100) != b.base_name("x" * 101)
    assert len({b.rayjob_name("demo", a) for a in range(10)}) == 10


# ---------------------------------------------------------------------------------- ConfigMap


def test_configmap_carries_the_job_with_every_stage_pinned():
    j = gpu_job()
    cm = b.build_configmap(j, "videos", UID)
    assert cm["metadata"]["name"] == "demo-config" and cm["metadata"]["namespace"] == "videos"
    assert cm["metadata"]["ownerReferences"] == [b.owner_reference("demo", UID)]
    doc = yaml.safe_load(cm["data"]["job.yaml"])
    inner = parse_job(doc)
    assert inner.metadata.name == "demo"
    assert all(getattr(inner.spec.execution.stages, s).pinned for s in STAGES)
    assert inner.spec.execution.stages.transcode.gpus == 0.5  # nothing else changed
    assert spec_from_configmap(cm) == b.pinned_spec(j.spec)
    assert inner.spec.storage.credentials_secret == "s3-creds"  # a name, never a value


def test_configmap_keeps_explicit_nulls():
    j = job(transcoding={"crf": None})
    doc = yaml.safe_load(b.build_configmap(j, "videos", UID)["data"]["job.yaml"])
    assert parse_job(doc).spec.transcoding.crf is None


# ------------------------------------------------------------------------------------- RayJob


def test_rayjob_basics():
    rj = b.build_rayjob(job(), "videos", UID, TOKEN_SECRET)
    assert rj["apiVersion"] == "ray.io/v1" and rj["kind"] == "RayJob"
    meta = rj["metadata"]
    assert meta["name"] == "demo" and meta["namespace"] == "videos"
    assert meta["ownerReferences"] == [{"apiVersion": "clipforge.dev/v1alpha1", "kind": "VideoCurationJob",
                                        "name": "demo", "uid": UID, "controller": True, "blockOwnerDeletion": True}]
    assert meta["labels"][b.LABEL_JOB_UID] == UID and meta["labels"][b.LABEL_ATTEMPT] == "0"
    assert meta["labels"][b.LABEL_MANAGED_BY] == "clipforge-operator"
    spec = rj["spec"]
    assert spec["entrypoint"] == "clipforge run /etc/clipforge/job.yaml"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] == 300
    assert spec["backoffLimit"] == 0  # the operator retries, not KubeRay
    assert spec["rayClusterSpec"]["enableInTreeAutoscaling"] is True
    assert b.build_rayjob(job(), "videos", UID, TOKEN_SECRET, attempt=2)["metadata"]["name"] == "demo-retry-2"


def test_only_the_autoscaler_mounts_a_service_account_token():
    """Job code runs in ray-head, the workers and the submitter: none of them gets the account's token."""
    rj = b.build_rayjob(job(cluster={"volumes": [{"name": "data", "emptyDir": {}}],
                                     "volumeMounts": [{"name": "data", "mountPath": "/data"}]}),
                        "videos", UID, TOKEN_SECRET)
    cluster = rj["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]["spec"], rj["spec"]["submitterPodTemplate"]["spec"],
            *(g["template"]["spec"] for g in cluster["workerGroupSpecs"])]
    assert all(pod["automountServiceAccountToken"] is False for pod in pods)
    token_dir = "/var/run/secrets/kubernetes.io/serviceaccount"
    assert not [c["name"] for pod in pods for c in pod["containers"]
                if any(m["mountPath"] == token_dir for m in c.get("volumeMounts") or [])]
    autoscaler_mounts = cluster["autoscalerOptions"]["volumeMounts"]
    assert {"name": "kube-api-access", "mountPath": token_dir, "readOnly": True} in autoscaler_mounts
    (volume,) = [v for v in pods[0]["volumes"] if v["name"] == "kube-api-access"]
    sources = volume["projected"]["sources"]
    assert sources[0] == {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}
    assert {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}} in sources
    # The name is the operator's: a job's volume of that name is refused.
    with pytest.raises(b.BuildError, match="kube-api-access is the operator's"):
        b.build_rayjob(job(cluster={"volumes": [{"name": "kube-api-access", "emptyDir": {}}],
                                    "volumeMounts": [{"name": "kube-api-access", "mountPath": "/x"}]}),
                       "videos", UID, TOKEN_SECRET)


def test_head_mounts_the_job_and_runs_no_stage_work():
    rj = b.build_rayjob(job(), "videos", UID, TOKEN_SECRET)
    head = rj["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    pod = head["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == ["job", "tmp", "home", "kube-api-access"]
    assert pod["volumes"][:3] == [{"name": "job", "configMap": {"name": "demo-config"}},
                                  {"name": "tmp", "emptyDir": {}}, {"name": "home", "emptyDir": {}}]
    assert pod["containers"][0]["volumeMounts"] == [{"name": "job", "mountPath": "/etc/clipforge", "readOnly": True},
                                                    {"name": "tmp", "mountPath": "/tmp"},
                                                    {"name": "home", "mountPath": "/home/ray"}]
    assert pod["containers"][0]["image"] == job().spec.cluster.image == DEFAULT_IMAGE


def ray_containers(rj: dict) -> list[tuple[dict, dict]]:
    """(pod template, Ray container) of the head and every worker group."""
    cluster = rj["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]
    return [(t, t["spec"]["containers"][0]) for t in templates]


@pytest.mark.ray
def test_ray_is_its_containers_pid_1_and_stops_at_sigterm(tmp_path, request):
    # KubeRay's own `ulimit ...; ray start --block` line keeps bash as PID 1, deaf to SIGTERM: every
    # Ray pod took its 30 s grace period to stop. KubeRay keeps a command the annotation marks ours.
    rj = b.build_rayjob(gpu_job(), "videos", UID, TOKEN_SECRET)
    for template, ray in ray_containers(rj):
        assert template["metadata"]["annotations"] == {"ray.io/overwrite-container-cmd": "true"}
        assert ray["command"] == ["/bin/bash", "-lc", "--"] and ray["args"] == [b.RAY_START_ARGS]
    # The line with a `ray start` as KubeRay generates it for a worker group (quoted JSON resources).
    log = tmp_path / "ray.log"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    short_tmp = tempfile.mkdtemp(prefix="cf-ray-")  # Ray's socket paths must fit in 107 bytes
    request.addfinalizer(lambda: shutil.rmtree(short_tmp, ignore_errors=True))
    generated = (f"ray start --head --block --port={port} --include-dashboard=false --num-cpus=1"
                 f" --resources='{{\"transcode\":1000}}' --temp-dir={short_tmp}")
    status = sigterm_as_pid1(["/bin/bash", "-lc", "--", b.RAY_START_ARGS],
                             lambda: "block forever" in log.read_text(errors="replace"),
                             {**os.environ, "KUBERAY_GEN_RAY_START_CMD": generated, "RAY_AUTH_MODE": "disabled"},
                             log=log)
    # Ray's own SIGTERM handler drained the node, stopped its processes and exited 1. (`ray start`
    # refuses resources it cannot parse before it blocks: the quoting held.)
    assert status == 1 and "received SIGTERM" in log.read_text(), log.read_text()


def test_every_ray_process_runs_with_token_auth_and_gets_the_token_by_reference_only():
    rj = b.build_rayjob(gpu_job(), "videos", UID, TOKEN_SECRET)
    by_reference = {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": TOKEN_SECRET, "key": "RAY_AUTH_TOKEN"}}}
    cluster = rj["spec"]["rayClusterSpec"]
    for name, env in [*((n, c["env"]) for n, c in containers(rj).items()), ("autoscaler", cluster["autoscalerOptions"]["env"])]:
        named = {e["name"]: e for e in env}
        assert named["RAY_AUTH_MODE"] == {"name": "RAY_AUTH_MODE", "value": "token"}, name
        assert named["RAY_AUTH_TOKEN"] == by_reference, name
    gate = cluster["headGroupSpec"]["template"]["spec"]["containers"][1]
    assert gate["name"] == "dashboard-gate" and gate["env"] == [by_reference]


def test_the_heads_dashboard_answers_on_loopback_behind_the_gate():
    rj = b.build_rayjob(job(), "videos", UID, TOKEN_SECRET, attempt=1)
    head = rj["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert (head["rayStartParams"]["dashboard-host"], head["rayStartParams"]["dashboard-port"]) == ("127.0.0.1", "8266")
    ray, gate = head["template"]["spec"]["containers"]
    assert ray["name"] == "ray-head" and "ports" not in ray  # KubeRay runs Ray in the first; its Service keeps 8265
    assert gate["command"] == ["python", "-m", "clipforge.dashboard_gate", "--listen=0.0.0.0:8265",
                               "--dashboard=127.0.0.1:8266", "--job-id=demo-retry-1"]
    assert gate["image"] == ray["image"] and gate["resources"]["limits"] == {"cpu": "500m", "memory": "256Mi"}
    assert rj["spec"]["jobId"] == "demo-retry-1"  # the one job whose status the gate tells without a token


def test_the_token_secret_has_a_generated_name_and_belongs_to_the_job():
    secret = access.build_ray_token_secret("demo", "videos", UID, "t0ken")
    assert "name" not in secret["metadata"] and secret["metadata"]["generateName"] == "demo-ray-token-"
    assert secret["stringData"] == {"RAY_AUTH_TOKEN": "t0ken"} and secret["immutable"] is True
    assert secret["metadata"]["labels"][b.LABEL_JOB_UID] == UID
    (owner,) = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("VideoCurationJob", UID, True)


def test_the_network_policy_admits_the_jobs_own_pods_and_kuberay_to_the_dashboard_only():
    policy = access.build_network_policy("demo", "videos", UID, KubeRayPods())
    assert policy["metadata"]["name"] == "demo-ray" and policy["metadata"]["ownerReferences"][0]["uid"] == UID
    spec = policy["spec"]
    job_pods = {"matchLabels": {b.LABEL_JOB_UID: UID}}
    assert spec["podSelector"] == job_pods and spec["policyTypes"] == ["Ingress"]
    own, kuberay = spec["ingress"]
    assert own == {"from": [{"podSelector": job_pods}]}  # every port: Ray's nodes talk on many
    assert kuberay == {"from": [{"namespaceSelector": {},
                                 "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}}],
                       "ports": [{"protocol": "TCP", "port": 8265}]}
    pinned = KubeRayPods.from_json('{"namespace": "ray-system", "podLabels": {"app": "kuberay", "tier": "op"}}')
    (peer,) = access.build_network_policy("demo", "videos", UID, pinned)["spec"]["ingress"][1]["from"]
    assert peer == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ray-system"}},
                    "podSelector": {"matchLabels": {"app": "kuberay", "tier": "op"}}}
    # Every pod of every attempt carries the label the policy selects.
    for attempt in (0, 3):
        rj = b.build_rayjob(gpu_job(), "videos", UID, TOKEN_SECRET, attempt=attempt)
        cluster = rj["spec"]["rayClusterSpec"]
        templates = [cluster["headGroupSpec"]["template"], rj["spec"]["submitterPodTemplate"],
                     *(g["template"] for g in cluster["workerGroupSpecs"])]
        assert all(t["metadata"]["labels"][b.LABEL_JOB_UID] == UID for t in templates)


@pytest.mark.parametrize("text", ['{"podLabels": {}}', '{"namespace": 3, "podLabels": {"a": "b"}}',
                                  '{"podLabels": {"a": 1}}', "[]", "app=kuberay"])
def test_kuberay_pod_settings_that_select_nothing_sensible_are_refused(text: str):
    with pytest.raises(ValueError, match="the KubeRay operator's pods"):
        KubeRayPods.from_json(text)


def test_credentials_come_from_the_secret_by_reference_only():
    rj = b.build_rayjob(gpu_job(), "videos", UID, TOKEN_SECRET)
    for name, container in containers(rj).items():
        aws = [e for e in container["env"] if e["name"].startswith("AWS_")]
        if name == "submitter":
            assert aws == []
            continue
        assert {e["name"] for e in aws} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
        for e in aws:
            assert "value" not in e and e["valueFrom"]["secretKeyRef"]["name"] == "s3-creds"
    no_secret = b.build_rayjob(job(), "videos", UID, TOKEN_SECRET)
    assert not any(e["name"].startswith("AWS_") for c in containers(no_secret).values() for e in c["env"])


def test_every_pod_and_container_meets_the_restricted_pod_security_standard():
    # What PodSecurity admission checks at level `restricted` (the e2e tests run in such a namespace).
    rj = b.build_rayjob(gpu_job(), "videos", UID, TOKEN_SECRET)
    cluster = rj["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]["spec"], rj["spec"]["submitterPodTemplate"]["spec"],
            *(g["template"]["spec"] for g in cluster["workerGroupSpecs"])]
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # KubeRay's autoscaler sidecar takes autoscalerOptions.securityContext; its init containers copy the worker's.
    for name, context in [*((n, c["securityContext"]) for n, c in containers(rj).items()),
                          ("autoscaler", cluster["autoscalerOptions"]["securityContext"])]:
        assert context == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                           "capabilities": {"drop": ["ALL"]}}, name
    gate = cluster["headGroupSpec"]["template"]["spec"]["containers"][1]
    assert gate["securityContext"] == containers(rj)["head"]["securityContext"]


def test_every_container_of_the_pipeline_image_writes_only_to_its_pods_emptydirs():
    """A read-only root: /tmp and /home/ray (docs/images.md) are emptyDirs in every container running the
    image (the head's Ray and gate, the autoscaler beside them, workers, submitter), clear of KubeRay's own."""
    rj = b.build_rayjob(gpu_job(), "videos", UID, TOKEN_SECRET)
    cluster = rj["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert [c["name"] for c in head["containers"]] == ["ray-head", "dashboard-gate"]
    in_pods = [*((n, c, p) for n, p in pods(rj).items() for c in p["containers"]),
               ("autoscaler", cluster["autoscalerOptions"], head)]
    assert len(in_pods) == 7  # head, gate, 3 worker groups, submitter, autoscaler
    for name, container, pod in in_pods:
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounted = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
        assert mounted["/tmp"] == {"name": "tmp", "emptyDir": {}}, name
        assert mounted["/home/ray"] == {"name": "home", "emptyDir": {}}, name
        # KubeRay adds /dev/shm and the head's shared /tmp/ray log volume only where no mount has their path.
        assert not {"/dev/shm", "/tmp/ray"} & set(mounted), name
        assert not {"shared-mem", "ray-logs"} & set(volumes), name


def test_worker_groups_advertise_their_stages_resources():
    rj = b.build_rayjob(gpu_job(), "videos", UID, TOKEN_SECRET)
    groups = {g["groupName"]: g for g in rj["spec"]["rayClusterSpec"]["workerGroupSpecs"]}
    assert list(groups) == ["cpu", "gpu-split", "gpu-transcode"]
    cpu = groups["cpu"]["resources"]
    cpu_stages = ("probe", "motion", "embed", "preview", "write")
    assert set(cpu) == {stage_resource_name(s) for s in cpu_stages}
    assert groups["gpu-transcode"]["resources"] == {"clipforge_transcode": "1000"}
    assert groups["gpu-split"]["resources"] == {"clipforge_split": "1000"}
    assert "nvidia.com/gpu" not in json.dumps(groups["cpu"])
    transcode = groups["gpu-transcode"]
    container = transcode["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}
    assert transcode["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert transcode["template"]["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    # Resources only in the group's `resources` and the container limits: KubeRay refuses a group
    # with resources in rayStartParams as well (validateRayGroupResources).
    assert all(g["rayStartParams"] == {} for g in groups.values())
    # Two transcoders (0.5 GPU each) fit one 1-GPU pod: minWorkers 2 -> 1 pod, maxWorkers 8 -> 4 pods.
    assert (transcode["minReplicas"], transcode["maxReplicas"], transcode["replicas"]) == (1, 4, 1)


def test_cpu_group_bounds_follow_stage_hints_or_explicit_values():
    (cpu,) = b.worker_groups(job().spec)
    # The stages a default job runs (the optional filters and captions are off).
    assert cpu.name == "cpu" and cpu.stages == ("probe", "split", "transcode", "motion", "embed", "preview", "write")
    assert cpu.gpus == 0
    # min workers 0.25+1+2+0.5+1+0.5+0.25 = 5.5 CPUs on 4-CPU pods -> 2; max 0.5+4+16+2+2+2+0.5 = 27 -> 7
    assert (cpu.min_replicas, cpu.max_replicas) == (2, 7)
    (explicit,) = b.worker_groups(job(cluster={"cpuWorkers": {"minReplicas": 2, "maxReplicas": 9}}).spec)
    assert (explicit.min_replicas, explicit.max_replicas) == (2, 9)
    (capped,) = b.worker_groups(job(cluster={"cpuWorkers": {"maxReplicas": 1}}).spec)
    assert (capped.min_replicas, capped.max_replicas) == (1, 1)
    (milli,) = b.worker_groups(job(cluster={"cpuWorkers": {"resources": {"limits": {"cpu": "500m"}}}}).spec)
    assert (milli.min_replicas, milli.max_replicas) == (11, 54)


def test_a_stage_wanting_more_gpus_than_a_pod_has_is_refused():
    bad = job(execution={"stages": {"split": {"gpus": 2}}})
    with pytest.raises(b.BuildError, match="gpuWorkers.split.gpus"):
        b.build_rayjob(bad, "videos", UID, TOKEN_SECRET)


def test_placement_and_service_account_reach_every_pod():
    j = job(cluster={"serviceAccountName": "clipforge-runner", "imagePullPolicy": "Always",
                     "head": {"nodeSelector": {"pool": "system"}},
                     "cpuWorkers": {"tolerations": [{"key": "spot", "value": "true", "effect": "NoSchedule"}]}})
    rj = b.build_rayjob(j, "videos", UID, TOKEN_SECRET)
    cluster = rj["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]
    assert head["serviceAccountName"] == worker["serviceAccountName"] == "clipforge-runner"
    assert rj["spec"]["submitterPodTemplate"]["spec"]["serviceAccountName"] == "clipforge-runner"
    assert head["nodeSelector"] == {"pool": "system"} and "nodeSelector" not in worker
    assert worker["tolerations"] == [{"key": "spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"}]
    assert all(c["imagePullPolicy"] == "Always" for c in containers(rj).values())


EXTRAS = {
    "imagePullSecrets": [{"name": "registry-creds"}],
    "env": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}, {"name": "RAY_DEDUP_LOGS", "value": "0"}],
    "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "model-store", "readOnly": True}},
                {"name": "scratch", "emptyDir": {"sizeLimit": "20Gi"}},
                {"name": "ca", "configMap": {"name": "corp-ca"}}],
    "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True},
                     {"name": "scratch", "mountPath": "/scratch"}, {"name": "ca", "mountPath": "/etc/ssl/corp"}],
}


def pods(rayjob: dict) -> dict[str, dict]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    out = {"head": cluster["headGroupSpec"]["template"]["spec"],
           "submitter": rayjob["spec"]["submitterPodTemplate"]["spec"]}
    for group in cluster["workerGroupSpecs"]:
        out[group["groupName"]] = group["template"]["spec"]
    return out


def test_pull_secrets_env_and_volumes_reach_every_ray_pod():
    spec = gpu_job().spec.model_dump(by_alias=True, mode="json")
    spec["cluster"].update(EXTRAS)
    rj = b.build_rayjob(job(**spec), "videos", UID, TOKEN_SECRET)
    by_pod = pods(rj)
    assert set(by_pod) == {"head", "submitter", "cpu", "gpu-split", "gpu-transcode"}
    for name, pod in by_pod.items():
        assert pod["imagePullSecrets"] == [{"name": "registry-creds"}], name
        container = pod["containers"][0]  # Ray's (the head's second is the dashboard gate)
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["HTTPS_PROXY"] == "http://proxy:3128" and env["RAY_DEDUP_LOGS"] == "0", name
        assert env["RAY_AUTH_MODE"] == "token", name  # the operator's own variables stay
        if name == "submitter":  # it only submits: the image's pull secret and env, no volumes but its scratch
            assert pod["volumes"] == scratch_volumes() and container["volumeMounts"] == scratch_mounts()
            continue
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["models"] == {"name": "models", "persistentVolumeClaim": {"claimName": "model-store",
                                                                               "readOnly": True}}
        assert volumes["scratch"] == {"name": "scratch", "emptyDir": {"medium": "", "sizeLimit": "20Gi"}}
        assert volumes["ca"] == {"name": "ca", "configMap": {"name": "corp-ca"}}
        mounts = {m["mountPath"]: (m["name"], m.get("readOnly", False)) for m in container["volumeMounts"]}
        assert {k: mounts[k] for k in ("/models", "/scratch", "/etc/ssl/corp")} == {
            "/models": ("models", True), "/scratch": ("scratch", False), "/etc/ssl/corp": ("ca", False)}
    # The head keeps the job's manifest next to the extra volumes.
    assert {"name": "job", "configMap": {"name": "demo-config"}} in by_pod["head"]["volumes"]
    assert "/etc/clipforge" in {m["mountPath"] for m in by_pod["head"]["containers"][0]["volumeMounts"]}


def test_no_extras_add_nothing_to_the_pods():
    for name, pod in pods(b.build_rayjob(job(), "videos", UID, TOKEN_SECRET)).items():
        assert "imagePullSecrets" not in pod, name
        assert [e["name"] for e in pod["containers"][0]["env"]] == ["RAY_AUTH_MODE", "RAY_AUTH_TOKEN"], name
    worker = pods(b.build_rayjob(job(), "videos", UID, TOKEN_SECRET))["cpu"]
    assert worker["volumes"] == scratch_volumes() and worker["containers"][0]["volumeMounts"] == scratch_mounts()


def test_ephemeral_storage_is_requested_per_group():
    j = job(cluster={"head": {"resources": {"requests": {"cpu": 1, "memory": "4Gi", "ephemeralStorage": "2Gi"}}},
                     "cpuWorkers": {"resources": {"requests": {"cpu": 4, "memory": "8Gi", "ephemeralStorage": "40Gi"},
                                                  "limits": {"cpu": 4, "memory": "8Gi", "ephemeralStorage": "60Gi"}}}})
    by_pod = pods(b.build_rayjob(j, "videos", UID, TOKEN_SECRET))
    head, worker = by_pod["head"]["containers"][0]["resources"], by_pod["cpu"]["containers"][0]["resources"]
    assert head["requests"] == {"cpu": "1", "memory": "4Gi", "ephemeral-storage": "2Gi"}
    assert worker["requests"]["ephemeral-storage"] == "40Gi" and worker["limits"]["ephemeral-storage"] == "60Gi"
    defaults = pods(b.build_rayjob(job(), "videos", UID, TOKEN_SECRET))
    assert not any("ephemeral-storage" in c["resources"].get(kind, {}) for pod in defaults.values()
                   for c in pod["containers"] for kind in ("requests", "limits"))


@pytest.mark.parametrize("cluster, problem", [
    ({"env": [{"name": "RAY_AUTH_MODE", "value": "disabled"}]}, "cluster.env: RAY_AUTH_MODE is set by the operator"),
    ({"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]}, "cluster.env: AWS_SECRET_ACCESS_KEY is set"),
    ({"volumes": [{"name": "job", "emptyDir": {}}]}, "cluster.volumes: the name job is the operator's"),
    ({"volumes": [{"name": "x", "emptyDir": {}}], "volumeMounts": [{"name": "x", "mountPath": "/etc/clipforge/"}]},
     "cluster.volumeMounts: /etc/clipforge/ is where the operator mounts the job"),
    ({"volumes": [{"name": "x", "emptyDir": {}}], "volumeMounts": [{"name": "x", "mountPath": "/etc/clipforge/a"}]},
     "cluster.volumeMounts: /etc/clipforge/a"),
    ({"volumes": [{"name": "tmp", "emptyDir": {}}]}, "cluster.volumes: the name tmp is the operator's"),
    ({"volumes": [{"name": "x", "emptyDir": {}}], "volumeMounts": [{"name": "x", "mountPath": "/tmp"}]},
     "cluster.volumeMounts: /tmp is where the operator mounts"),
    ({"volumes": [{"name": "x", "emptyDir": {}}], "volumeMounts": [{"name": "x", "mountPath": "/home/ray/"}]},
     "cluster.volumeMounts: /home/ray/ is where the operator mounts"),
], ids=["ray-env", "credential-env", "volume-name", "mount-path", "mount-below", "scratch-name", "scratch-tmp",
        "scratch-home"])
def test_extras_cannot_replace_what_the_operator_sets(cluster: dict, problem: str):
    with pytest.raises(b.BuildError, match=re.escape(problem)):
        b.build_rayjob(job(cluster=cluster), "videos", UID, TOKEN_SECRET)


def test_a_volume_may_go_below_a_scratch_directory():
    """Say, a claim with the models where models.cacheDir points by default."""
    models = {"volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "models"}}],
              "volumeMounts": [{"name": "models", "mountPath": "/tmp/clipforge-models"}]}
    worker = pods(b.build_rayjob(job(cluster=models), "videos", UID, TOKEN_SECRET))["cpu"]
    assert [m["mountPath"] for m in worker["containers"][0]["volumeMounts"]] == \
        ["/tmp", "/home/ray", "/tmp/clipforge-models"]


@pytest.mark.parametrize("cluster, problem", [
    ({"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}, "env: A given more than once"),
    ({"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}, "volumeMounts: no volume named nope"),
    ({"volumes": [{"name": "v", "emptyDir": {}, "configMap": {"name": "c"}}]}, "exactly one of emptyDir"),
    ({"volumes": [{"name": "v"}]}, "exactly one of emptyDir"),
    ({"volumes": [{"name": "v", "hostPath": {"path": "/"}}]}, "hostPath"),
    ({"volumes": [{"name": "v", "secret": {"secretName": "s"}}]}, "secret"),
    ({"volumeMounts": [{"name": "v", "mountPath": "relative"}]}, "mountPath"),
], ids=["env-twice", "mount-unknown", "two-sources", "no-source", "host-path", "secret-volume", "relative"])
def test_the_spec_refuses_pod_extras_that_cannot_work(cluster: dict, problem: str):
    with pytest.raises(InvalidJobError, match=re.escape(problem)):
        job(cluster=cluster)


# ------------------------------------------------------------------------------------ scaling


def _live_cluster(j: VideoCurationJob) -> dict:
    return {"spec": b.build_rayjob(j, "videos", UID, TOKEN_SECRET)["spec"]["rayClusterSpec"]}


def test_scaling_patch_targets_groups_by_index_guarded_by_name():
    before = gpu_job()
    live = _live_cluster(before)
    after = gpu_job().spec.model_copy(deep=True)
    after.cluster.cpu_workers.min_replicas, after.cluster.cpu_workers.max_replicas = 3, 12
    after.cluster.gpu_workers.transcode.max_replicas = 2
    ops = b.scaling_patch(live, after)
    assert ops[0] == {"op": "test", "path": "/spec/workerGroupSpecs/0/groupName", "value": "cpu"}
    assert {"op": "replace", "path": "/spec/workerGroupSpecs/0/minReplicas", "value": 3} in ops
    assert {"op": "replace", "path": "/spec/workerGroupSpecs/0/maxReplicas", "value": 12} in ops
    assert {"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": 3} in ops  # clamped up
    assert {"op": "test", "path": "/spec/workerGroupSpecs/2/groupName", "value": "gpu-transcode"} in ops
    assert not any("/workerGroupSpecs/1/" in op["path"] for op in ops)  # gpu-split unchanged
    patched = jsonpatch.apply_patch(live, ops)
    groups = {g["groupName"]: g for g in patched["spec"]["workerGroupSpecs"]}
    assert (groups["cpu"]["minReplicas"], groups["cpu"]["maxReplicas"], groups["cpu"]["replicas"]) == (3, 12, 3)
    assert groups["gpu-transcode"]["maxReplicas"] == 2
    assert b.scaling_patch(patched, after) == []  # converged


def test_scaling_patch_fails_whole_when_groups_were_reordered():
    live = _live_cluster(gpu_job())
    after = gpu_job().spec.model_copy(deep=True)
    after.cluster.gpu_workers.transcode.max_replicas = 2
    ops = b.scaling_patch(live, after)
    live["spec"]["workerGroupSpecs"].reverse()
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(live, ops)


def test_scaling_patch_on_a_rayjob_uses_its_cluster_spec_prefix():
    rayjob = b.build_rayjob(job(), "videos", UID, TOKEN_SECRET)
    after = job(cluster={"cpuWorkers": {"maxReplicas": 2}}).spec
    ops = b.scaling_patch(rayjob, after, prefix="/spec/rayClusterSpec")
    assert ops and all(op["path"].startswith("/spec/rayClusterSpec/workerGroupSpecs/0/") for op in ops)
    assert jsonpatch.apply_patch(rayjob, ops)["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"] == 2


def test_replicas_are_clamped_down_too():
    live = _live_cluster(job())
    live["spec"]["workerGroupSpecs"][0]["replicas"] = 5
    ops = b.scaling_patch(live, job(cluster={"cpuWorkers": {"maxReplicas": 2}}).spec)
    assert {"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": 2} in ops


def test_the_autoscalers_idle_timeout_comes_from_the_spec():
    def idle_timeout(rj: dict) -> int:
        return rj["spec"]["rayClusterSpec"]["autoscalerOptions"]["idleTimeoutSeconds"]

    assert idle_timeout(b.build_rayjob(job(), "videos", UID, TOKEN_SECRET)) == 60  # KubeRay's default
    quick = job(cluster={"workerIdleTimeoutSeconds": 15})
    assert idle_timeout(b.build_rayjob(quick, "videos", UID, TOKEN_SECRET)) == 15
    with pytest.raises(InvalidJobError, match="workerIdleTimeoutSeconds"):
        job(cluster={"workerIdleTimeoutSeconds": 0})


def test_group_sizes_are_the_autoscalers_replicas_and_kuberays_ready_count():
    live = _live_cluster(job(execution={"stages": {"motion": {"gpus": 1, "maxWorkers": 3}}}))
    groups = live["spec"]["workerGroupSpecs"]
    assert [g["groupName"] for g in groups] == ["cpu", "gpu-motion"]
    groups[1]["replicas"] = 3  # the autoscaler wants two more pods of the motion group
    del groups[0]["replicas"]  # unset: KubeRay keeps minReplicas
    live["status"] = {"readyWorkerReplicas": 2}
    # Two groups: KubeRay's count is the cluster's, no group's own.
    assert worker_group_sizes(live) == [
        {"name": "cpu", "minReplicas": groups[0]["minReplicas"], "maxReplicas": groups[0]["maxReplicas"],
         "desiredReplicas": groups[0]["minReplicas"]},
        {"name": "gpu-motion", "minReplicas": 1, "maxReplicas": 3, "desiredReplicas": 3}]
    assert ready_workers(live) == 2
    del groups[0]  # one group: the cluster's count is the group's
    assert worker_group_sizes(live) == [
        {"name": "gpu-motion", "minReplicas": 1, "maxReplicas": 3, "desiredReplicas": 3, "readyReplicas": 2}]
    del live["status"]  # KubeRay has not counted yet
    assert ready_workers(live) == 0 and worker_group_sizes(live)[0]["readyReplicas"] == 0


# ----------------------------------------------------------------------------- spec changes


def test_scaling_only_changes_are_allowed():
    old = job().spec
    new = job(cluster={"cpuWorkers": {"maxReplicas": 9}, "gpuWorkers": {"motion": {"minReplicas": 1}}}).spec
    change = classify_spec_change(old, new)
    assert not change.refused and change.scaling  # allowed, and a change
    assert change.scaling == ("cluster.cpuWorkers.maxReplicas", "cluster.gpuWorkers.motion.minReplicas")


def test_operator_only_changes_are_allowed():
    change = classify_spec_change(job().spec, job(maxRetries=5, retryBackoff={"maxSeconds": 60},
                                                    pendingDeadlineSeconds=60).spec)
    assert not change.refused and not change.scaling
    assert set(change.operator) == {"maxRetries", "retryBackoff.maxSeconds", "pendingDeadlineSeconds"}


@pytest.mark.parametrize("spec", [
    {"output": {"uri": "s3://elsewhere/"}},
    {"splitting": {"algorithm": "transnetv2"}},
    {"execution": {"stages": {"transcode": {"maxWorkers": 16}}}},
    {"cluster": {"image": "clipforge/pipeline:next"}},
    {"cluster": {"cpuWorkers": {"resources": {"limits": {"cpu": 8}}}}},
    {"storage": {"credentialsSecret": "other"}},
], ids=lambda s: next(iter(s)))
def test_pipeline_and_cluster_shape_changes_are_refused(spec: dict):
    change = classify_spec_change(job().spec, job(**spec).spec)
    assert change.refused
    assert all(path.startswith(next(iter(spec))) for path in change.refused)  # each named by its path
    assert change.refused[0] in change.refusal()


def test_pinning_and_absent_gpu_groups_are_not_changes():
    old = job().spec
    assert classify_spec_change(b.pinned_spec(old), old) == SpecChange()  # nothing changed
    assert classify_spec_change(old, job(cluster={"gpuWorkers": {"split": {}}}).spec) == SpecChange()


def test_every_updatable_field_is_a_field_of_the_spec():
    # A rule for a renamed or removed field would never match: the field would be refused unnamed in the table.
    assert set(UPDATE_RULES) <= set(field_values(gpu_job().spec))


def test_a_field_not_in_the_table_is_refused_by_its_path():
    change = classify_spec_change(job().spec, job(cluster={"workerIdleTimeoutSeconds": 30},
                                                  retryBackoff={"maxSeconds": 60}).spec)
    assert change == SpecChange(operator=("retryBackoff.maxSeconds",), refused=("cluster.workerIdleTimeoutSeconds",))
    assert change.refusal().startswith("not applied: cluster.workerIdleTimeoutSeconds. ")
    stages = {s: {"minWorkers": 2, "maxWorkers": 7} for s in STAGES}
    many = classify_spec_change(job().spec, job(execution={"stages": stages}).spec)
    assert len(many.refused) == 2 * len(STAGES)
    assert many.refusal().startswith(f"not applied: {', '.join(many.refused[:10])} and {2 * len(STAGES) - 10} more. ")


def test_merge_allowed_takes_scaling_and_operator_fields_only():
    accepted = b.pinned_spec(job().spec)
    requested = job(output={"uri": "s3://elsewhere/"}, maxRetries=7,
                    cluster={"cpuWorkers": {"maxReplicas": 3}}).spec
    merged = merge_allowed(accepted, requested)
    assert merged.output.uri == "s3://sets/out/"
    assert merged.max_retries == 7 and merged.cluster.cpu_workers.max_replicas == 3
    assert merged.execution.stages.probe.pinned  # still the accepted (pinned) pipeline


# ------------------------------------------------------------------------------ RayJob -> phase


def rayjob(deployment: str = "", job_status: str = "", reason: str = "", message: str = "",
           started: datetime | None = NOW, created: datetime = NOW) -> dict:
    status: dict[str, Any] = {}
    if deployment:
        status["jobDeploymentStatus"] = deployment
    if job_status:
        status["jobStatus"] = job_status
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    if started and deployment:
        status["startTime"] = rfc3339(started)
    if deployment in ("Running", "Complete", "Failed"):
        status.update(rayClusterName="demo-x7k2p", dashboardURL="demo-x7k2p-head-svc.videos.svc.cluster.local:8265")
    return {"metadata": {"name": "demo", "creationTimestamp": rfc3339(created)}, "status": status}


def observe(rj: dict, after: float = 1, deadline: int = 900) -> Observation:
    return observe_rayjob(rj, NOW + timedelta(seconds=after), deadline)


def test_kuberay_success_sequence():
    phases = [observe(rayjob(*s)).phase for s in [
        ("", ""), ("Initializing", ""), ("Running", ""), ("Running", "PENDING"), ("Running", "RUNNING"),
        ("Complete", "SUCCEEDED")]]
    assert phases == ["Provisioning"] * 4 + ["Running", "Succeeded"]
    done = observe(rayjob("Complete", "SUCCEEDED"))
    assert done.terminal and done.ray_cluster_name == "demo-x7k2p" and done.dashboard_url.endswith(":8265")


def test_app_failure_carries_kuberay_reason_and_message():
    obs = observe(rayjob("Failed", "FAILED", "AppFailed", "Job entrypoint command failed with exit code 1"))
    assert (obs.phase, obs.reason, obs.terminal) == ("Failed", "AppFailed", True)
    assert obs.message == "Job entrypoint command failed with exit code 1"
    older = observe(rayjob("Complete", "FAILED"))  # KubeRay before the AppFailed reason
    assert (older.phase, older.reason) == ("Failed", "AppFailed")


def test_submission_failure_and_deadline_exceeded():
    obs = observe(rayjob("Failed", "", "SubmissionFailed", "submitter K8s Job has failed"))
    assert (obs.phase, obs.reason, obs.message) == ("Failed", "SubmissionFailed", "submitter K8s Job has failed")
    assert observe(rayjob("Failed", "RUNNING", "DeadlineExceeded", "past activeDeadlineSeconds")).reason == \
        "DeadlineExceeded"
    assert observe(rayjob("Failed")).reason == "SubmissionFailed"


def test_stopped_job_is_cancelled():
    obs = observe(rayjob("Complete", "STOPPED"))
    assert (obs.phase, obs.terminal) == ("Cancelled", True)


@pytest.mark.parametrize("deployment,job_status", [("Initializing", ""), ("", ""), ("Running", "PENDING"),
                                                   ("Suspended", ""), ("Retrying", "")])
def test_stuck_before_running_fails_after_the_pending_deadline(deployment: str, job_status: str):
    rj = rayjob(deployment, job_status)
    assert observe(rj, after=899, deadline=900).phase == "Provisioning"
    late = observe(rj, after=901, deadline=900)
    assert (late.phase, late.reason, late.terminal) == ("Failed", "PendingDeadlineExceeded", True)
    assert "900s" in late.message


def test_running_jobs_are_not_subject_to_the_pending_deadline():
    assert observe(rayjob("Running", "RUNNING"), after=10_000, deadline=900).phase == "Running"


@pytest.mark.parametrize("job_status", ["SUCCEEDED", "FAILED", "STOPPED"])
def test_a_finished_ray_job_under_a_running_deployment_is_still_running(job_status: str):
    # Real KubeRay writes the Ray job's end first and moves jobDeploymentStatus on a reconcile
    # later: that moment is neither a return to Provisioning nor a missed pending deadline.
    for after in (1, 10_000):
        obs = observe(rayjob("Running", job_status, message="Job entrypoint command failed"), after=after)
        assert (obs.phase, obs.terminal) == ("Running", False)


# --------------------------------------------------------------------------------- conditions


def test_conditions_move_transition_time_only_when_status_flips():
    c = set_condition([], "Running", True, "JobRunning", "a", NOW, 1)
    assert c == [{"type": "Running", "status": "True", "reason": "JobRunning", "message": "a",
                  "lastTransitionTime": "2025-06-01T12:00:00Z", "observedGeneration": 1}]
    later = NOW + timedelta(minutes=5)
    c2 = set_condition(c, "Running", True, "JobRunning", "b", later, 2)
    assert c2[0]["lastTransitionTime"] == "2025-06-01T12:00:00Z" and c2[0]["message"] == "b"
    c3 = set_condition(c2, "Running", False, "JobSucceeded", "done", later, 2)
    assert c3[0]["lastTransitionTime"] == "2025-06-01T12:05:00Z" and c3[0]["status"] == "False"


def test_phase_conditions_are_mutually_consistent():
    c = phase_conditions([], "Provisioning", "ClusterStarting", "", NOW, 1)
    assert c == []
    c = phase_conditions(c, "Running", "JobRunning", "", NOW, 1)
    assert [(x["type"], x["status"]) for x in c] == [("Running", "True")]
    c = phase_conditions(c, "Succeeded", "JobSucceeded", "", NOW, 1)
    assert [(x["type"], x["status"]) for x in c] == [("Running", "False"), ("Succeeded", "True")]


# ----------------------------------------------------------------------------------- progress


REPORT = {"state": "running", "updatedAt": "2025-06-01T12:00:10Z", "elapsedSeconds": 12.5,
          "videos": {"total": 10, "done": 4, "failed": 1, "skipped": 2}, "clips": {"passed": 31, "filtered": 5},
          "videoSecondsProcessed": 120.0, "throughputVideoSecondsPerSecond": 9.6, "clipsPerSecond": 2.5}


def test_progress_report_maps_to_status_progress():
    p = progress_from_report(RunReport.model_validate(REPORT)).model_dump(by_alias=True, mode="json")
    assert p == {"videosDone": 4, "videosFailed": 1, "videosSkipped": 2, "videosTotal": 10, "clipsPassed": 31,
                 "clipsFiltered": 5, "throughputVideoSecondsPerSecond": 9.6, "updatedAt": "2025-06-01T12:00:10Z"}


def test_read_progress_from_a_local_output(tmp_path):
    storage = job().spec.storage
    with pytest.raises(ProgressUnavailable):
        read_progress(str(tmp_path), storage)
    (tmp_path / "progress.json").write_text(json.dumps(REPORT))
    assert read_progress(str(tmp_path), storage).videos_done == 4
    (tmp_path / "summary.json").write_text(json.dumps({**REPORT, "state": "succeeded",
                                                       "videos": {**REPORT["videos"], "done": 10}, "failures": []}))
    assert read_progress(str(tmp_path), storage, final=True).videos_done == 10
    assert read_progress(str(tmp_path), storage).videos_done == 4
    (tmp_path / "progress.json").write_text("{not json")
    with pytest.raises(ProgressUnavailable):
        read_progress(str(tmp_path), storage)


def test_an_endpoint_that_does_not_answer_is_not_asked_again_for_a_while(monkeypatch: pytest.MonkeyPatch):
    """A storage endpoint that cuts every connection (a real socket): a few short failed reads, then none
    at all until the breaker's time is up, so it holds no handler thread; a client per endpoint, kept."""
    import socket
    import threading

    from clipforge_operator import progress

    now = [1000.0]
    monkeypatch.setattr(progress, "BREAKER", progress.EndpointBreaker(clock=lambda: now[0]))
    accepted: list[int] = []
    server = socket.create_server(("127.0.0.1", 0))

    def cut_every_connection() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()

    threading.Thread(target=cut_every_connection, daemon=True).start()
    storage = job(storage={"endpoint": f"http://127.0.0.1:{server.getsockname()[1]}"}).spec.storage
    creds = Credentials("AKIDEXAMPLE", "TOPSECRETVALUE")
    try:
        assert progress._client(storage, creds) is progress._client(storage, creds)
        for _ in range(progress.BREAKER_FAILURES):
            with pytest.raises(ProgressUnavailable):
                read_progress("s3://sets/out/", storage, creds)
        asked = len(accepted)
        assert 0 < asked <= progress.BREAKER_FAILURES  # one connection a read: no retries within it
        with pytest.raises(ProgressUnavailable, match="not asked again"):
            read_progress("s3://sets/out/", storage, creds)
        assert len(accepted) == asked  # refused without a connection
        now[0] += progress.BREAKER_OPEN_S
        with pytest.raises(ProgressUnavailable, match="ConnectionClosedError|EndpointConnectionError"):
            read_progress("s3://sets/out/", storage, creds)
        assert len(accepted) == asked + 1  # asked again once the time is up
    finally:
        server.close()


def test_credentials_never_print_their_values():
    import base64

    secret = {"data": {"AWS_ACCESS_KEY_ID": base64.b64encode(b"AKIDEXAMPLE").decode(),
                       "AWS_SECRET_ACCESS_KEY": base64.b64encode(b"TOPSECRETVALUE").decode()}}
    creds = credentials_from_secret(secret)
    assert creds == Credentials("AKIDEXAMPLE", "TOPSECRETVALUE")
    assert "TOPSECRETVALUE" not in repr(creds) and "TOPSECRETVALUE" not in str(creds)
    assert credentials_from_secret({"data": {}}) is None
