"""The Ray autoscaler KubeRay 1.5.0 puts beside the Ray head, on the real control plane.

One job, never edited after `kubectl apply`: its transcode stage (libx264 at a slow preset, the
job's bottleneck) runs two workers in a worker group of its own, one worker per pod, on the logical
GPU node, and the group starts with no pod (minReplicas 0; maxReplicas 2 from maxWorkers). Ray
Data starts both workers at once; they wait for the stage's custom resource, which only that
group's pods advertise. The autoscaler container in the head pod (in-cluster config: the token of
the service account KubeRay made for it, projected into the pod, and the API server's CA) sees
that demand and patches the RayCluster's replicas to 2; KubeRay makes the pods; the waiting
workers start there, as no other pod could run them. When the stage has no more work its workers
go, the pods idle, and after cluster.workerIdleTimeoutSeconds the autoscaler drains and deletes
them, back to none (while the job still runs, or after it ended, while the cluster waits out
ttlSecondsAfterFinished). The job's status shows the group sizes while it runs.

Starting from no pod keeps the test from racing its own work: nothing transcodes before the
autoscaler's first pod is up, and the second starts alongside it.

Real: kube-apiserver with RBAC and the ServiceAccount admission, KubeRay, Ray's autoscaler and Ray
Data, and the nodes that run the pods from the pipeline image (harness/node_cluster.py). Not real:
both nodes are this one machine, so "growing" adds containers, never a machine; nobody provisions
nodes, and the GPU node's GPUs are a status patch (docs/testing.md).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from support.cluster_jobs import GPU_NODE_SELECTOR, GPU_TOLERATION, POD, ray_state
from clipforge.spec import stage_resource_name

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]  # the first test starts everything

NS = "autoscaler"  # the namespace of the module's stack (tests/conftest.py)
JOB = "autoscale"
STAGE = "transcode"
GROUP = f"gpu-{STAGE}"
IDLE_SECONDS = 10
LIGHT_STAGES = ("probe", "split", "write")  # one worker each, in the one-pod CPU group
COPIES = 5  # of the two sample videos: 20 clips, minutes of transcoding


def manifest(stack, bucket: str) -> dict:  # noqa: ANN001
    doc = stack.job_manifest(JOB, bucket, motionFilter={"mode": "disable"}, embeddings={"enabled": False},
                             previews={"enabled": False},
                             # the cluster outlives the job long enough to be seen shrinking if the job ends first
                             ttlSecondsAfterFinished=600)
    doc["spec"]["transcoding"] = {**doc["spec"]["transcoding"], "preset": "veryslow"}
    doc["spec"]["execution"]["stages"] = {
        **{s: {"cpus": 0.25, "minWorkers": 1, "maxWorkers": 1} for s in LIGHT_STAGES},
        STAGE: {"cpus": 1, "gpus": 1, "minWorkers": 2, "maxWorkers": 2},
    }
    cluster = doc["spec"]["cluster"]
    cluster["cpuWorkers"] = {"resources": POD}  # 0.75 CPUs of light stages: one pod
    cluster["gpuWorkers"] = {STAGE: {"gpus": 1, "minReplicas": 0, "resources": POD,
                                     "nodeSelector": GPU_NODE_SELECTOR, "tolerations": [GPU_TOLERATION]}}
    cluster["workerIdleTimeoutSeconds"] = IDLE_SECONDS
    return doc


# Run in a container of the head pod: a dry-run PATCH of the head pod itself (KubeRay's Role lets the
# head pod's account patch pods) with whatever service account token the container has; prints
# whether it had one and the API server's answer.
PATCH_OWN_POD = """
import os, ssl, urllib.error, urllib.request
account = "/var/run/secrets/kubernetes.io/serviceaccount"
request = urllib.request.Request(
    "https://{{}}:{{}}/api/v1/namespaces/{namespace}/pods/{pod}?dryRun=All".format(
        os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]), method="PATCH",
    data=b'{{"metadata": {{"labels": {{"clipforge-test": "patched"}}}}}}',
    headers={{"Content-Type": "application/merge-patch+json"}})
has_token = os.path.exists(account + "/token")
if has_token:
    request.add_header("Authorization", "Bearer " + open(account + "/token").read())
    context = ssl.create_default_context(cafile=account + "/ca.crt")
else:
    context = ssl._create_unverified_context()  # no CA either: what code without the account sees
try:
    code = urllib.request.urlopen(request, context=context, timeout=20).status
except urllib.error.HTTPError as error:
    code = error.code
print("token" if has_token else "no-token", code)
"""


def live(pod: dict) -> bool:
    return not pod["metadata"].get("deletionTimestamp")


def ready(pod: dict) -> bool:
    return live(pod) and any(c["type"] == "Ready" and c["status"] == "True"
                             for c in pod["status"].get("conditions") or [])


@pytest.fixture(scope="module")
def run(stack, tmp_path_factory):
    """The job applied and run to its end, then its cluster watched until the group has no pod again.

    Every poll records the group's replicas on the live RayCluster with its Ready pods, the job's
    status.workerGroups, and (from the head's state API) the transcode workers: which pod runs
    each, and whether one waits for resources.
    """
    tmp = tmp_path_factory.mktemp("autoscaler-job")
    bucket = stack.upload_samples(tmp, copies=COPIES)
    stack.apply_job(manifest(stack, bucket), tmp)
    applied = stack.get("videocurationjob", JOB)
    seen = SimpleNamespace(sizes=[], pods={}, statuses=[], ready_workers=[], worker_pods={}, waiting=set(),
                           token=None, cluster=None, head=None)

    def group_pods() -> list[dict]:
        return stack.list("pods", f"clipforge.dev/job={JOB},ray.io/group={GROUP}")

    def sample() -> None:
        status = stack.status(JOB)
        seen.cluster = seen.cluster or status.get("rayClusterName")
        if not seen.cluster:
            return
        raycluster = stack.get("raycluster", seen.cluster)
        if raycluster is None:
            return
        (group,) = [g for g in raycluster["spec"]["workerGroupSpecs"] if g["groupName"] == GROUP]
        pods = group_pods()
        seen.pods.update({p["metadata"]["name"]: p for p in pods})
        size = (group.get("replicas", 0), sum(ready(p) for p in pods))
        if not seen.sizes or seen.sizes[-1] != size:
            seen.sizes.append(size)
        if status.get("phase") == "Running":
            seen.statuses.append(next((g for g in status.get("workerGroups") or [] if g["name"] == GROUP), None))
            seen.ready_workers.append(status.get("readyWorkers"))
        heads = stack.list("pods", f"ray.io/cluster={seen.cluster},ray.io/node-type=head")
        if not heads or not heads[0]["status"].get("podIP"):
            return
        seen.head = heads[0]
        seen.token = seen.token or stack.ray_token(JOB)
        pod_of_ip = {p["status"]["podIP"]: p["metadata"]["name"] for p in pods if p["status"].get("podIP")}
        try:
            head = heads[0]["metadata"]["name"]
            ip_of_node = {n["node_id"]: n["node_ip"] for n in ray_state(stack, head, "nodes", seen.token)}
            actors = ray_state(stack, head, "actors", seen.token)
        except OSError:
            return  # the dashboard is busy or the job just ended; the next poll tries again
        for actor in actors:
            if stage_resource_name(STAGE) not in (actor.get("required_resources") or {}):
                continue
            if actor["state"] == "PENDING_CREATION":
                seen.waiting.add(actor["actor_id"])
            pod = pod_of_ip.get(ip_of_node.get(actor.get("node_id")))
            if pod and actor["state"] == "ALIVE":
                seen.worker_pods.setdefault(pod, set()).add(actor["actor_id"])

    phases: list[str] = []
    status = stack.wait_phase(JOB, ("Succeeded", "Failed", "Cancelled"), timeout=1000, seen=phases, on_poll=sample)

    def back_to_none() -> bool:
        sample()
        return seen.sizes[-1][0] == 0 and not [p for p in group_pods() if live(p)]

    if any(replicas == 2 for replicas, _ in seen.sizes):  # else the tests below say what went wrong
        stack.wait(back_to_none, 300, f"group {GROUP} back at no pod after the idle timeout", JOB)
    head = seen.head["metadata"]["name"]
    patches = {container: stack.kubectl("exec", head, "-c", container, "--", "python", "-c",
                                        PATCH_OWN_POD.format(namespace=NS, pod=head), check=False)
               for container in ("ray-head", "autoscaler")}
    yield SimpleNamespace(status=status, phases=phases, seen=seen, applied=applied, patches=patches,
                          rayjob=stack.get("rayjob", JOB), raycluster=stack.get("raycluster", seen.cluster),
                          autoscaler_log=stack.logs(head, "autoscaler"))
    stack.kubectl("delete", "videocurationjob", JOB, "--timeout=120s", check=False)


def test_the_job_succeeds_and_nobody_edited_it(stack, run):
    assert run.status["phase"] == "Succeeded", stack.diagnostics(JOB)
    progress = run.status["progress"]
    videos = 2 * COPIES
    assert (progress["videosDone"], progress["videosFailed"], progress["videosTotal"]) == (videos, 0, videos)
    now = stack.get("videocurationjob", JOB)
    assert now["metadata"]["generation"] == run.applied["metadata"]["generation"] == 1
    assert now["spec"] == run.applied["spec"]
    # Nor did the operator scale anything: the RayJob still asks for the group's minimum.
    (group,) = [g for g in run.rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == GROUP]
    assert (group["minReplicas"], group["maxReplicas"], group["replicas"]) == (0, 2, 0)
    assert run.rayjob["spec"]["rayClusterSpec"]["autoscalerOptions"]["idleTimeoutSeconds"] == IDLE_SECONDS


def test_the_group_grew_to_its_max_replicas_while_the_stages_workers_waited(run):
    sizes = run.seen.sizes
    assert sizes[0] == (0, 0), sizes  # no pod before the autoscaler
    assert run.seen.waiting, "no transcode worker was seen waiting for resources"
    assert (2, 2) in sizes, f"never two Ready pods wanted and running: {sizes}"
    assert max(wanted for wanted, _ in sizes) == 2  # never past maxReplicas
    assert len(run.seen.pods) == 2 and {p["spec"]["nodeName"] for p in run.seen.pods.values()} == {"gpu-node"}
    # Each pod the autoscaler brought ran a transcode worker, and no other pod did.
    assert set(run.seen.worker_pods) == set(run.seen.pods), run.seen.worker_pods


def test_the_group_shrank_to_its_minimum_after_the_idle_timeout(run):
    (group,) = [g for g in run.raycluster["spec"]["workerGroupSpecs"] if g["groupName"] == GROUP]
    assert (group["minReplicas"], group.get("replicas", 0)) == (0, 0)
    wanted = [w for w, _ in run.seen.sizes]
    assert wanted[-1] == 0 and wanted.index(2) < len(wanted) - 1, run.seen.sizes
    # The autoscaler deleted both pods, for idleness (not a failure).
    assert f"of type {GROUP} (idle)" in run.autoscaler_log
    terminated = [line for line in run.autoscaler_log.splitlines() if "Terminating worker pods" in line]
    assert all(any(f"'{pod}'" in line for line in terminated) for pod in run.seen.pods), terminated


def test_the_autoscaler_ran_with_the_service_account_kuberay_made_for_it(stack, run):
    head = run.seen.head
    account = head["spec"]["serviceAccountName"]
    assert account == run.raycluster["metadata"]["name"]  # KubeRay's, as the job names none
    assert stack.get("serviceaccount", account) is not None
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in stack.get("role", account)["rules"]}
    assert rules[(("ray.io",), ("rayclusters",))] >= {"get", "patch"}
    assert rules[(("",), ("pods",))] >= {"list", "patch"}
    binding = stack.get("rolebinding", account)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NS}]
    assert binding["roleRef"]["name"] == account
    # The token reaches it as in any cluster: the projected volume the ServiceAccount admission adds.
    (autoscaler,) = [c for c in head["spec"]["containers"] if c["name"] == "autoscaler"]
    mounts = {m["mountPath"]: m["name"] for m in autoscaler.get("volumeMounts") or []}
    volume = mounts["/var/run/secrets/kubernetes.io/serviceaccount"]
    (projected,) = [v["projected"] for v in head["spec"]["volumes"] if v["name"] == volume]
    assert any("serviceAccountToken" in s for s in projected["sources"])
    assert any(s.get("configMap", {}).get("name") == "kube-root-ca.crt" for s in projected["sources"])


def test_only_the_autoscaler_holds_the_accounts_token(run):
    """Job code runs in ray-head and the workers: they have no token, so the API server refuses the
    pod patch that KubeRay's Role grants the head pod's account; the autoscaler has it, and may."""
    # Anonymous: 401 where the API server turns anonymous requests away, 403 where RBAC does.
    token, code = run.patches["ray-head"].stdout.split() or ("?", "?")
    assert token == "no-token" and code in ("401", "403"), run.patches["ray-head"]
    assert run.patches["autoscaler"].stdout.split() == ["token", "200"], run.patches["autoscaler"]
    token_dir = "/var/run/secrets/kubernetes.io/serviceaccount"
    for pod in [run.seen.head, *run.seen.pods.values()]:
        assert pod["spec"]["automountServiceAccountToken"] is False
        holders = [c["name"] for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", [])
                   if any(m["mountPath"] == token_dir for m in c.get("volumeMounts") or [])]
        assert holders == (["autoscaler"] if pod is run.seen.head else []), (pod["metadata"]["name"], holders)


def test_the_jobs_status_showed_the_group_sizes(run):
    statuses = [s for s in run.seen.statuses if s is not None]
    assert statuses, "status.workerGroups never listed the group while the job ran"
    assert {(s["minReplicas"], s["maxReplicas"]) for s in statuses} == {(0, 2)}
    # Two groups: KubeRay counts Ready workers per cluster, so the group has no readyReplicas of its own.
    assert {"name": GROUP, "minReplicas": 0, "maxReplicas": 2, "desiredReplicas": 2} in statuses, json.dumps(statuses)
    assert max(n or 0 for n in run.seen.ready_workers) >= 3, run.seen.ready_workers  # the CPU pod and both transcode pods
    assert "workerGroups" not in run.status  # the attempt ended: its cluster is going
