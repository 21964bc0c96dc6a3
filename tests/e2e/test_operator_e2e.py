"""End to end on a real Kubernetes: `kubectl apply` a VideoCurationJob, get clips in a Ceph bucket.

Real here: kube-apiserver, etcd, controller-manager and scheduler, the KubeRay 1.5.0 operator
(tests/harness/control_plane.py), our operator with the Helm chart's ServiceAccount and RBAC
(harness/operator_process.py), Ray, PyAV and Ceph RGW, and the nodes (harness/node_cluster.py):
containerd runs every pod from the pipeline image built by scripts/build-images.sh, with its limits,
security contexts and the job's enforced NetworkPolicy. There is no GPU: the GPU node advertises
`nvidia.com/gpu` by a status patch and carries NVIDIA's taint, so the "GPU" stage's actors run on its CPU.

One job runs, in a namespace that enforces the `restricted` Pod Security level: examples/cpu-job.yaml
pointed at the bucket, with the motion stage on a GPU worker group. While it runs, the head's
state API tells which Ray node (so which pod, so which worker group) advertises which stage
resource and runs which stage's actors. The tests then read what it left behind.
"""

from __future__ import annotations

import base64
import json
import time
from collections import defaultdict
from types import SimpleNamespace

import pytest

from support.cluster_jobs import GPU_NODE_SELECTOR, GPU_TOLERATION, POD, SECRET, ray_state
from clipforge.spec import stage_resource_name

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]  # the first test starts everything

NS = "e2e"  # the namespace of the module's stack (tests/conftest.py)
JOB = "curate"
CPU_STAGES = ("probe", "split", "transcode", "embed", "preview", "write")  # cpu-job.yaml's, but motion
GPU_STAGE = "motion"


@pytest.fixture(scope="module")
def run(stack, tmp_path_factory):
    """The job applied and run to its end; Ray's view of its cluster sampled while it ran."""
    tmp = tmp_path_factory.mktemp("e2e-job")
    bucket = stack.upload_samples(tmp)
    doc = stack.job_manifest(JOB, bucket)
    doc["spec"]["execution"]["stages"][GPU_STAGE]["gpus"] = 1
    doc["spec"]["cluster"]["gpuWorkers"] = {GPU_STAGE: {
        "gpus": 1, "resources": POD, "nodeSelector": GPU_NODE_SELECTOR, "tolerations": [GPU_TOLERATION]}}
    stack.apply_job(doc, tmp)

    ray = SimpleNamespace(nodes={}, actors={}, pods={}, token=None)
    logs: dict[tuple[str, str], str] = {}  # (pod, container) -> the longest log read: pods go with the cluster
    read_logs_at = [0.0]

    def read_logs() -> None:
        for key, text in stack.pod_logs(f"clipforge.dev/job={JOB}").items():
            if len(text) >= len(logs.get(key, "")):
                logs[key] = text
        read_logs_at[0] = time.monotonic()

    def sample() -> None:  # Ray's nodes and actors, and the pods behind them, while the job runs
        pods = stack.pods_of(JOB)
        heads = [p for p in pods if p["metadata"]["labels"].get("ray.io/node-type") == "head"
                 and p["status"].get("podIP")]
        if not heads or stack.status(JOB).get("phase") != "Running":
            return
        if time.monotonic() - read_logs_at[0] > 15:
            read_logs()
        ray.pods.update({p["status"]["podIP"]: p for p in pods if p["status"].get("podIP")})
        ray.token = ray.token or stack.ray_token(JOB)  # the state API, like the rest of the dashboard, wants it
        try:
            nodes = ray_state(stack, heads[0]["metadata"]["name"], "nodes", ray.token)
            actors = ray_state(stack, heads[0]["metadata"]["name"], "actors", ray.token)
        except OSError:
            return  # the dashboard is busy or the cluster just went; the next poll tries again
        ray.nodes.update({n["node_id"]: n for n in nodes})
        ray.actors.update({a["actor_id"]: a for a in actors if a.get("node_id")})

    phases: list[str] = []
    status = stack.wait_phase(JOB, ("Succeeded", "Failed", "Cancelled"), timeout=600, seen=phases, on_poll=sample)
    read_logs()  # before ttlSecondsAfterFinished takes the cluster
    return SimpleNamespace(bucket=bucket, status=status, phases=phases, ray=ray, logs=logs)


def test_the_job_succeeds_with_real_counts_and_decodable_clips_in_the_bucket(stack, run):
    status = run.status
    assert status["phase"] == "Succeeded", stack.diagnostics(JOB)
    # Pending until the operator's first write, then exactly these, in order, nothing in between.
    assert [p for p in run.phases if p != "Pending"] == ["Provisioning", "Running", "Succeeded"], run.phases
    # Two videos, 5 s clips: 4 clips, the static one filtered by the motion filter.
    assert {k: v for k, v in status["progress"].items() if k not in ("throughputVideoSecondsPerSecond", "updatedAt")} \
        == {"videosDone": 2, "videosFailed": 0, "videosSkipped": 0, "videosTotal": 2,
            "clipsPassed": 3, "clipsFiltered": 1}
    assert status["progress"]["throughputVideoSecondsPerSecond"] > 0
    assert status["rayJobName"] == JOB and status["retries"] == 0
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["Succeeded"] == "True" and conditions["Submitted"] == "True" and conditions["Running"] == "False"

    stack.check_sample_clips(run.bucket)
    summary = json.loads(stack.s3_client.get_object(Bucket=run.bucket, Key="out/summary.json")["Body"].read())
    assert summary["state"] == "succeeded" and summary["videos"]["done"] == 2 and summary["clips"]["passed"] == 3


def group_of_node(run, node: dict) -> str:  # noqa: ANN001
    pod = run.ray.pods[node["node_ip"]]
    return pod["metadata"]["labels"]["clipforge.dev/group"]


def test_each_group_advertises_its_stages_resources_and_runs_their_actors(run):
    assert run.ray.nodes, "the head's state API was never reached while the job ran"
    advertised = defaultdict(set)
    for node in run.ray.nodes.values():
        advertised[group_of_node(run, node)] |= {r for r in node["resources_total"] if r.startswith("clipforge_")}
    assert dict(advertised) == {
        "head": set(),
        "cpu": {stage_resource_name(s) for s in CPU_STAGES},
        f"gpu-{GPU_STAGE}": {stage_resource_name(GPU_STAGE)},
    }
    # One GPU pod, or two when Ray Data asks for a second motion actor while the first is busy: the
    # GPU node has two GPUs and the autoscaler fills it. Each advertises its pod's one GPU.
    gpu_nodes = [n for n in run.ray.nodes.values() if group_of_node(run, n) == f"gpu-{GPU_STAGE}"]
    assert gpu_nodes and {n["resources_total"].get("GPU") for n in gpu_nodes} == {1.0}  # the nvidia.com/gpu limit

    ran_on = defaultdict(set)  # stage -> groups whose nodes ran an actor of it
    for actor in run.ray.actors.values():
        stages = [r.removeprefix("clipforge_") for r in actor.get("required_resources") or {} if r.startswith("clipforge_")]
        for stage in stages:
            ran_on[stage].add(group_of_node(run, run.ray.nodes[actor["node_id"]]))
    assert dict(ran_on) == {**{s: {"cpu"} for s in CPU_STAGES}, GPU_STAGE: {f"gpu-{GPU_STAGE}"}}


def test_the_gpu_group_was_scheduled_only_onto_the_gpu_node(run):
    pods = list(run.ray.pods.values())
    by_group = defaultdict(set)
    for pod in pods:
        by_group[pod["metadata"]["labels"]["clipforge.dev/group"]].add(pod["spec"]["nodeName"])
    # The GPU node's taint keeps everything else off it; the GPU group's nodeSelector keeps it there.
    assert by_group.pop("submitter", {"cpu-node"}) == {"cpu-node"}, by_group  # if sampled
    assert by_group == {"head": {"cpu-node"}, "cpu": {"cpu-node"}, f"gpu-{GPU_STAGE}": {"gpu-node"}}, by_group
    gpu_pods = [p for p in pods if p["metadata"]["labels"]["clipforge.dev/group"] == f"gpu-{GPU_STAGE}"]
    assert 1 <= len(gpu_pods) <= 2, gpu_pods  # the autoscaler may add a second (the GPU node has two GPUs)
    for gpu_pod in gpu_pods:
        (container,) = gpu_pod["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
        assert gpu_pod["spec"]["nodeSelector"] == GPU_NODE_SELECTOR
        assert GPU_TOLERATION in gpu_pod["spec"]["tolerations"]


def test_kuberay_ran_the_submitter_and_removed_the_cluster_after_the_ttl(stack, run):
    rayjob = stack.get("rayjob", JOB)
    status = rayjob["status"]
    assert (status["jobDeploymentStatus"], status["jobStatus"]) == ("Complete", "SUCCEEDED")
    assert status["startTime"] <= status["endTime"] and status["succeeded"] == 1
    submitter = stack.get("job", JOB)  # KubeRay's submitter Job ran `ray job submit` and succeeded
    assert submitter["status"]["succeeded"] == 1
    # shutdownAfterJobFinishes with ttlSecondsAfterFinished 10: the RayCluster and its pods go.
    cluster = run.status["rayClusterName"]
    stack.wait(lambda: stack.get("raycluster", cluster) is None, 90, f"RayCluster {cluster} deleted", JOB)
    stack.wait(lambda: not [p for p in stack.pods_of(JOB) if p["metadata"]["labels"].get("ray.io/cluster")],
               90, "the Ray pods deleted", JOB)
    assert stack.get("videocurationjob", JOB)["status"]["phase"] == "Succeeded"  # the job's record stays


def test_the_credentials_and_the_ray_token_appear_nowhere_but_in_their_secrets(stack, run):
    secret_key, access_key, token = stack.s3.secret_key, stack.s3.access_key, stack.ray_token(JOB)
    values = {"the S3 secret key": secret_key, "the S3 access key": access_key, "the Ray token": token,
              "the S3 secret key (base64)": base64.b64encode(secret_key.encode()).decode(),
              "the Ray token (base64)": base64.b64encode(token.encode()).decode()}
    outputs = [k for k in stack.s3_keys(run.bucket, "out/") if k.endswith((".json", ".html"))]
    places = {
        "RayJob": json.dumps(stack.get("rayjob", JOB)),
        "VideoCurationJob": json.dumps(stack.get("videocurationjob", JOB)),
        "ConfigMaps": json.dumps(stack.list("configmaps")),
        "events": json.dumps(stack.list("events")),
        "operator log": stack.operator.log_text(),
        "logs of the job's containers": "".join(run.logs.values()),
        "outputs": "".join(stack.s3_client.get_object(Bucket=run.bucket, Key=k)["Body"].read().decode(errors="replace")
                           for k in outputs),
    }
    assert "Succeeded" in places["VideoCurationJob"] and len(places["operator log"]) > 1000
    assert "curate" in places["logs of the job's containers"] and "out/summary.json" in outputs
    for where, text in places.items():
        for what, value in values.items():
            assert value not in text, f"{what} appears in the {where}"
    # The pods get them by reference to the Secrets, which is how the kubelet gave them to Ray.
    rayjob = stack.get("rayjob", JOB)
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in head["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": "AWS_SECRET_ACCESS_KEY"}
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": run.status["rayTokenSecret"],
                                                                  "key": "RAY_AUTH_TOKEN"}


def test_the_job_ran_with_ray_token_auth_and_kuberay_polled_it_through_the_gate(stack, run):
    """Token auth was on in every Ray process (so the success above was with it), and KubeRay 1.5.0,
    which sends no token, still read the job's end: from the dashboard gate (clipforge.dashboard_gate)."""
    rayjob = stack.get("rayjob", JOB)
    cluster = rayjob["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"], rayjob["spec"]["submitterPodTemplate"],
                 *(g["template"] for g in cluster["workerGroupSpecs"])]
    envs = [c["env"] for t in templates for c in t["spec"]["containers"] if c["name"] != "dashboard-gate"]
    for env in [*envs, cluster["autoscalerOptions"]["env"]]:
        assert {"name": "RAY_AUTH_MODE", "value": "token"} in env
    assert rayjob["status"]["jobId"] == JOB and rayjob["status"]["jobStatus"] == "SUCCEEDED"
    gate_log = "".join(log for (pod, container), log in run.logs.items()
                       if "head" in pod and container == "dashboard-gate")
    assert f"status poll of job {JOB}" in gate_log


def test_kubectl_get_shows_the_printer_columns_with_real_values(stack, run):
    table = stack.kubectl("get", "videocurationjobs", JOB, "-o", "wide").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "REASON", "DONE", "TOTAL", "CLIPS", "FAILED", "RETRIES", "RAYJOB",
                                "AGE"], table
    assert table[1].split()[:9] == [JOB, "Succeeded", "JobSucceeded", "2", "2", "3", "0", "0", JOB], table
    rayjobs = stack.kubectl("get", "rayjobs", JOB).stdout.splitlines()
    assert rayjobs[1].split()[:3] == [JOB, "SUCCEEDED", "Complete"], rayjobs
