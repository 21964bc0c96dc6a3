"""The operator against the real control plane and the real KubeRay 1.5.0, pods run on the real nodes.

The operator runs as the Helm chart deploys it: the chart's ServiceAccount and the RBAC that
`helm template` renders, under real RBAC authorization, with a token of that ServiceAccount
(harness/operator_process.py). Every test also fails if the operator was refused anything (403)
while it ran: a verb or resource the chart forgot shows here. Jobs are tiny (tests/support/cluster_jobs.py)
and run in a namespace that enforces the `restricted` Pod Security level.

The nodes (tests/harness/node_cluster.py) run the pods from the pipeline image, with their limits,
security contexts and NetworkPolicies enforced. There is no GPU here: the GPU node's `nvidia.com/gpu`
capacity is a status patch (and it carries NVIDIA's taint), which is all the scheduler needs to
decide placement.
"""

from __future__ import annotations

import base64
import json
import time

import pytest

from clipforge.dashboard_gate import STATUS_FIELDS
from support.cluster_jobs import GPU_NODE_SELECTOR, GPU_TOLERATION, POD, refused_calls
from harness.operator_process import ChartOperator

pytestmark = [pytest.mark.usefixtures("never_forbidden"), pytest.mark.slow, pytest.mark.timeout(1200)]  # the first test starts everything

NS = "operator-kube"  # the namespace of the module's stack (tests/conftest.py)
LIGHT = {"embeddings": {"enabled": False}, "previews": {"enabled": False}}  # probe, split, transcode, motion, write


def events_of(stack, job: str) -> list[tuple[str, str]]:  # noqa: ANN001
    events = [e for e in stack.list("events")
              if e["involvedObject"].get("kind") == "VideoCurationJob" and e["involvedObject"]["name"] == job]
    # Every one says it is the operator's (kubectl describe's "From"), and which instance (its pod's
    # name in a pod; here, a process on the host, the host's).
    assert {(e["source"]["component"], e["reportingComponent"]) for e in events} <= {
        ("clipforge-operator", "clipforge-operator")}, events
    assert all(e["reportingInstance"] not in ("", "dev") for e in events), events
    return [(e["type"], e["reason"]) for e in events]


# ------------------------------------------------------------------------------------ RBAC


def test_the_operator_runs_as_the_charts_service_account_and_nothing_more(stack):
    kubeconfig = stack.operator.kubeconfig
    who = json.loads(stack.cp.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig).stdout)
    assert who["status"]["userInfo"]["username"] == \
        f"system:serviceaccount:{stack.operator.namespace}:{stack.operator.service_account}"
    questions = {"create rayjobs.ray.io": "yes", "patch videocurationjobs.clipforge.dev --subresource=status": "yes",
                 "get secrets/clipforge-s3": "yes", "get secrets": "no", "list secrets": "no", "create pods": "no", "delete rayclusters.ray.io": "no",
                 # No pod is read: the RayCluster's status says how many workers are Ready.
                 "list pods": "no", "get pods": "no", "patch pods": "no",
                 "update videocurationjobs.clipforge.dev": "no",
                 # The jobs' Ray tokens and NetworkPolicies: made, never changed; the GC deletes them with the job.
                 "create secrets": "yes", "update secrets": "no", "delete secrets": "no",
                 "create networkpolicies.networking.k8s.io": "yes", "get networkpolicies.networking.k8s.io": "yes",
                 "delete networkpolicies.networking.k8s.io": "no", "patch networkpolicies.networking.k8s.io": "no"}
    answers = {q: stack.cp.kubectl("auth", "can-i", *q.split(), "-n", NS, kubeconfig=kubeconfig,
                                   check=False).stdout.strip() for q in questions}
    assert answers == questions
    refused = stack.kubectl("--kubeconfig", str(kubeconfig), "get", "secrets", check=False)
    assert refused.returncode != 0 and "Forbidden" in refused.stderr  # RBAC is enforced for this identity


def test_the_namespace_scoped_chart_serves_its_namespace_with_a_role(stack, tmp_path):
    """scope=namespace: a Role and RoleBinding in the watched namespace, `--namespace`, no cluster rights."""
    watched = "operator-kube-ns"
    stack.cp.create_namespace(watched)
    scoped = ChartOperator(stack.cp, tmp_path, namespace="clipforge-scoped",
                           sets=("progressIntervalSeconds=1", "scope=namespace", f"watchNamespace={watched}"))
    assert {o["kind"] for o in scoped.objects} >= {"Role", "RoleBinding"}
    assert not {o["kind"] for o in scoped.objects} & {"ClusterRole", "ClusterRoleBinding"}
    assert f"--namespace={watched}" in scoped.container["args"]
    stack.operator.stop()  # one operator per job: the cluster-scoped one would take this job too
    try:
        scoped.start()
        # Pods that never schedule: this test is about the API calls, not about Ray.
        job = {"apiVersion": "clipforge.dev/v1alpha1", "kind": "VideoCurationJob",
               "metadata": {"name": "scoped", "namespace": watched},
               "spec": {"input": {"uri": "s3://in/"}, "output": {"uri": "s3://out/"},
                        "cluster": {"head": {"nodeSelector": {"no-such-label": "x"}}}}}
        stack.cp.apply(job)
        kubectl = lambda *a: stack.cp.kubectl("-n", watched, *a, check=False)  # noqa: E731
        stack.wait(lambda: kubectl("get", "rayjob", "scoped").returncode == 0, 60, "the RayJob", operator=scoped)
        stack.wait(lambda: json.loads(kubectl("get", "vcj", "scoped", "-o", "json").stdout)
                   .get("status", {}).get("phase") == "Provisioning", 60, "phase Provisioning", operator=scoped)
        assert kubectl("get", "configmap", "scoped-config").returncode == 0
        assert kubectl("delete", "vcj", "scoped", "--timeout=60s").returncode == 0
        stack.wait(lambda: kubectl("get", "rayjob", "scoped").returncode != 0, 60, "the RayJob deleted", operator=scoped)
        log = scoped.log_text()
        refused = refused_calls(log)
        assert not refused, "the namespace-scoped operator was refused:\n" + "\n".join(refused[:10])
    finally:
        scoped.stop()
        stack.operator.start()
        stack.cp.kubectl("delete", "namespace", watched, "--wait=false")


def test_the_cluster_scoped_chart_with_watched_namespaces_serves_those_only(stack, tmp_path):
    """scope=cluster with watchNamespaces: the ClusterRole bound by a RoleBinding in the watched namespace
    only, the operator started with --namespace: a job there is served, one elsewhere is not touched."""
    watched, unwatched = "operator-kube-watched", "operator-kube-unwatched"
    for namespace in (watched, unwatched):
        stack.cp.create_namespace(namespace)
    scoped = ChartOperator(stack.cp, tmp_path, namespace="clipforge-watched",
                           sets=("progressIntervalSeconds=1", "fullnameOverride=cf-watched",
                                 f"watchNamespaces={{{watched}}}"))
    assert [o["metadata"]["namespace"] for o in scoped.objects if o["kind"] == "RoleBinding"] == [watched]
    assert f"--namespace={watched}" in scoped.container["args"] and "--all-namespaces" not in scoped.container["args"]
    stack.operator.stop()  # one operator per job: the stack's cluster-wide one would take these jobs too
    try:
        scoped.start()
        for namespace in (watched, unwatched):  # pods that never schedule: this test is about the API calls
            stack.cp.apply({"apiVersion": "clipforge.dev/v1alpha1", "kind": "VideoCurationJob",
                            "metadata": {"name": "scoped", "namespace": namespace},
                            "spec": {"input": {"uri": "s3://in/"}, "output": {"uri": "s3://out/"},
                                     "cluster": {"head": {"nodeSelector": {"no-such-label": "x"}}}}})
        kubectl = lambda ns, *a: stack.cp.kubectl("-n", ns, *a, check=False)  # noqa: E731
        stack.wait(lambda: json.loads(kubectl(watched, "get", "vcj", "scoped", "-o", "json").stdout)
                   .get("status", {}).get("phase") == "Provisioning", 60, "phase Provisioning", operator=scoped)
        assert kubectl(watched, "get", "rayjob", "scoped").returncode == 0
        # The other namespace's job: no status, no children (the operator neither watches nor may act there).
        assert "status" not in json.loads(kubectl(unwatched, "get", "vcj", "scoped", "-o", "json").stdout)
        assert kubectl(unwatched, "get", "rayjob,configmap/scoped-config", "-o", "name").stdout.strip() == ""
        assert kubectl(watched, "delete", "vcj", "scoped", "--timeout=60s").returncode == 0
        refused = refused_calls(scoped.log_text())
        assert not refused, "the operator of watched namespaces was refused:\n" + "\n".join(refused[:10])
    finally:
        scoped.stop()
        # Gone before the stack's operator, which serves every namespace, could take it up.
        stack.cp.kubectl("-n", unwatched, "delete", "vcj", "scoped", "--ignore-not-found", "--timeout=60s", check=False)
        stack.operator.start()
        stack.cp.kubectl("delete", "namespace", watched, unwatched, "--wait=false")


# --------------------------------------------------------------------- the closed Ray cluster

# What a pod outside the job tries against the job's head: the dashboard's job submission, list and
# logs, the job's status (the one thing the gate tells without a token), and the GCS, each without
# Ray's token, with a wrong one, and with the right one (which this pod has by reference to the
# job's token Secret, for the comparison). Prints one JSON object: what each attempt got.
OUTSIDER = r"""
import json, os, socket, subprocess, sys, time, urllib.error, urllib.request
head, job_id, token = sys.argv[1], sys.argv[2], os.environ.pop("JOB_TOKEN")
# The NetworkPolicy firewall learns this pod's address a moment after it starts: wait to be let in.
for attempt in range(60):
    try:
        socket.create_connection((head, 8265), timeout=5).close()
        break
    except OSError:
        time.sleep(1)
def http(method, path, body=None, auth=None):
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {auth}"} if auth else {})}
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://{head}:8265{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return [answer.status, answer.read().decode()]
    except urllib.error.HTTPError as refused:
        return [refused.code, refused.read().decode()]
def gcs(env):
    done = subprocess.run(["ray", "health-check", "--address", f"{head}:6379"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})
    return [done.returncode, (done.stdout + done.stderr)[-2000:]]
submission = {"entrypoint": "echo outsider", "submission_id": job_id}
wrong = "0" * 64
print(json.dumps({
    "submit": http("POST", "/api/jobs/", submission), "submit_wrong": http("POST", "/api/jobs/", submission, wrong),
    "list": http("GET", "/api/jobs/"), "state": http("GET", "/api/v0/nodes"),
    "gcs": gcs({"RAY_AUTH_MODE": "disabled"}), "gcs_wrong": gcs({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": wrong}),
    "submit_token": http("POST", "/api/jobs/", submission, token),
    "status": http("GET", f"/api/jobs/{job_id}"), "logs": http("GET", f"/api/jobs/{job_id}/logs"),
    "status_token": http("GET", f"/api/jobs/{job_id}", auth=token),
    "gcs_token": gcs({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}),
}))
"""


# What a pod the job's NetworkPolicy does not admit gets from the head's dashboard and GCS ports, by
# the head's pod address and its (headless) Service's name: "refused" when no attempt in 60 s (the
# admitted outsider below gets in within that) made a connection.
NETWORK_PROBE = r"""
import json, socket, sys, time
def connect(host, port):
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
        return "connected"
    except socket.gaierror:
        return "unresolved"
    except OSError:
        return "refused"
got, deadline = {}, time.monotonic() + 60
while time.monotonic() < deadline and "connected" not in got.values():
    got = {target: connect(*target.split(":")) for target in sys.argv[1:]}
    time.sleep(1)
print(json.dumps(got))
"""


def outsider_pod(name: str, head_ip: str, job_id: str, token_secret: str, labels: dict | None = None,
                 command: list[str] | None = None) -> dict:
    """A pod of nobody's job in the job's namespace, as Pod Security `restricted` admits it; with the
    job's `labels` (which anyone who may create pods there can set), the NetworkPolicy admits it."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "labels": labels or {}},
            "spec": {"restartPolicy": "Never",
                     "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
                     "containers": [{
                         "name": "outsider", "image": "clipforge/pipeline:0.1.0",
                         "command": command or ["python", "-c", OUTSIDER, head_ip, job_id],
                         # HOME: no token file of anyone's (Ray would read ~/.ray/auth_token).
                         "env": [{"name": "HOME", "value": "/tmp"},
                                 {"name": "JOB_TOKEN", "valueFrom": {"secretKeyRef": {"name": token_secret,
                                                                                     "key": "RAY_AUTH_TOKEN"}}}],
                         "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]}}


def test_a_pod_outside_the_job_is_refused_by_its_ray_cluster_without_the_token(stack, tmp_path):
    """The job's Ray cluster answers nobody without its token, and the job's Secret and NetworkPolicy
    are made, owned by the job and deleted with it.

    Two outsiders: a stranger (no labels), whom the enforced NetworkPolicy refuses at the head's
    ports, by pod address and by Service name; and one that carries the job's uid label, which anyone
    allowed to create pods in the namespace can set, whom the network admits and Ray's token refuses.
    A head-only cluster is enough: the workers select a node nobody has, so the job stays Provisioning.
    """
    doc = stack.job_manifest("closed", "unused-bucket", pendingDeadlineSeconds=900, **LIGHT)
    doc["spec"]["cluster"]["cpuWorkers"]["nodeSelector"] = {"no-such-label": "x"}
    stack.apply_job(doc, tmp_path)
    job = stack.get("videocurationjob", "closed")
    uid = job["metadata"]["uid"]

    def head_ready() -> dict | None:
        for pod in stack.pods_of("closed", "head"):
            conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions") or []}
            if conditions.get("Ready") == "True":  # KubeRay's probes ask the gate for Ray's health
                return pod
        return None

    head = stack.wait(head_ready, 240, "the head pod ready", "closed")
    status = stack.status("closed")
    token_secret = status["rayTokenSecret"]
    assert status["phase"] == "Provisioning" and token_secret.startswith("closed-ray-token-")

    # The Secret and the NetworkPolicy, as the API server has them.
    secret = stack.get("secret", token_secret)
    policy = stack.get("networkpolicy", "closed-ray")
    for child in (secret, policy):
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner["controller"]) == ("VideoCurationJob", uid, True)
    assert secret["immutable"] is True and len(base64.b64decode(secret["data"]["RAY_AUTH_TOKEN"])) == 64
    job_pods = {"matchLabels": {"clipforge.dev/job-uid": uid}}
    assert policy["spec"]["podSelector"] == job_pods and policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [
        {"from": [{"podSelector": job_pods}]},
        {"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}}],
         "ports": [{"protocol": "TCP", "port": 8265}]}]
    selected = stack.list("pods", "clipforge.dev/job-uid=" + uid)
    assert head["metadata"]["name"] in {p["metadata"]["name"] for p in selected}

    def run_to_end(pod: dict) -> dict:
        name = pod["metadata"]["name"]
        stack.cp.apply(pod)
        try:
            stack.wait(lambda: (stack.get("pod", name) or {}).get("status", {}).get("phase") in ("Succeeded", "Failed"),
                       300, f"the {name} pod to finish", "closed")
            log = stack.logs(name, "outsider")
            assert stack.get("pod", name)["status"]["phase"] == "Succeeded", log[-3000:]
            return json.loads(log.strip().splitlines()[-1])
        finally:
            stack.kubectl("delete", "pod", name, "--wait=false", check=False)

    head_ip = head["status"]["podIP"]
    (service,) = [s for s in stack.list("services", f"ray.io/cluster={head['metadata']['labels']['ray.io/cluster']}")
                  if s["metadata"]["name"].endswith("-head-svc")]
    targets = [f"{head_ip}:8265", f"{head_ip}:6379", f"{service['metadata']['name']}.{NS}.svc.cluster.local:8265"]
    probed = run_to_end(outsider_pod("stranger", head_ip, "closed", token_secret,
                                     command=["python", "-c", NETWORK_PROBE, *targets]))
    assert probed == dict.fromkeys(targets, "refused"), probed
    got = run_to_end(outsider_pod("outsider", head_ip, "closed", token_secret, labels={"clipforge.dev/job-uid": uid}))

    # Without the token: Ray's dashboard (behind the gate) and its GCS refuse everything.
    assert got["submit"] == [401, "Unauthorized: Missing authentication token"], got["submit"]
    assert got["submit_wrong"] == [403, "Forbidden: Invalid authentication token"], got["submit_wrong"]
    assert got["list"][0] == 401 and got["state"][0] == 401 and got["logs"][0] == 401
    for attempt in ("gcs", "gcs_wrong"):
        code, output = got[attempt]
        assert code != 0 and "InvalidAuthToken" in output, (attempt, output)  # the GCS's refusal, not a network error
    # With it, the same calls succeed.
    code, answer = got["submit_token"]
    assert code == 200 and json.loads(answer)["submission_id"] == "closed", got["submit_token"]
    assert got["gcs_token"][0] == 0, got["gcs_token"]
    # The job's status, which KubeRay polls without a token: the gate gives its status fields, nothing more.
    code, view = got["status"]
    assert code == 200 and set(json.loads(view)) <= set(STATUS_FIELDS) and "entrypoint" not in view, got["status"]
    assert json.loads(view)["submission_id"] == "closed" and json.loads(view)["status"] in ("PENDING", "RUNNING", "SUCCEEDED")
    assert json.loads(got["status_token"][1])["entrypoint"] == "echo outsider"  # the dashboard's own answer

    assert stack.kubectl("delete", "videocurationjob", "closed", "--timeout=120s").returncode == 0
    # The garbage collector deletes what the job owns: its token Secret and NetworkPolicy too.
    stack.wait(lambda: stack.get("secret", token_secret) is None and stack.get("networkpolicy", "closed-ray") is None,
               120, "the token Secret and the NetworkPolicy deleted with the job")


# ------------------------------------------------------------------------- pending deadline


def test_a_gpu_group_without_a_schedulable_gpu_node_stays_pending_until_the_deadline(stack, tmp_path):
    """No GPU exists here: the GPU node is logical. Cordoned, it leaves the GPU group unschedulable."""
    bucket = stack.upload_samples(tmp_path)
    doc = stack.job_manifest("no-gpu", bucket, pendingDeadlineSeconds=20, **LIGHT)
    doc["spec"]["execution"]["stages"]["motion"]["gpus"] = 1
    doc["spec"]["cluster"]["gpuWorkers"] = {"motion": {
        "gpus": 1, "resources": POD, "nodeSelector": GPU_NODE_SELECTOR, "tolerations": [GPU_TOLERATION]}}
    stack.cp.kubectl("cordon", "gpu-node")
    try:
        stack.apply_job(doc, tmp_path)
        unschedulable: list[dict] = []

        def watch_gpu_pod() -> None:
            for pod in stack.pods_of("no-gpu", "gpu-motion"):
                cond = {c["type"]: c for c in pod["status"].get("conditions") or []}.get("PodScheduled")
                assert not pod["spec"].get("nodeName"), f"the GPU pod was bound to {pod['spec']['nodeName']}"
                if cond and cond["status"] == "False":
                    unschedulable.append(cond)

        status = stack.wait_phase("no-gpu", ("Failed", "Succeeded"), timeout=240, on_poll=watch_gpu_pod)
    finally:
        stack.cp.kubectl("uncordon", "gpu-node")
    assert status["phase"] == "Failed", stack.diagnostics("no-gpu")
    failed = {c["type"]: c for c in status["conditions"]}["Failed"]
    assert failed["reason"] == "PendingDeadlineExceeded" and "not running after 20s" in failed["message"]
    assert unschedulable and unschedulable[-1]["reason"] == "Unschedulable", unschedulable
    assert "unschedulable" in unschedulable[-1]["message"], unschedulable[-1]  # the cordon's taint
    # The operator deletes the stuck RayJob, and the garbage collector everything it made.
    stack.wait_gone("rayjobs", "clipforge.dev/job=no-gpu", 60, "no-gpu")
    stack.wait_gone("pods", "clipforge.dev/job=no-gpu", 90, "no-gpu")
    assert ("Warning", "Failed") in events_of(stack, "no-gpu")


def test_pods_a_quota_refuses_are_named_in_the_jobs_message_and_failure(stack):
    """A ResourceQuota smaller than the head pod: KubeRay cannot create it, and the job says why."""
    ns = "operator-kube-quota"
    stack.cp.create_namespace(ns)
    try:
        stack.cp.apply({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "small", "namespace": ns},
                        "spec": {"hard": {"limits.cpu": "500m"}}})
        stack.cp.apply({"apiVersion": "clipforge.dev/v1alpha1", "kind": "VideoCurationJob",
                        "metadata": {"name": "over-quota", "namespace": ns},
                        "spec": {"input": {"uri": "s3://in/"}, "output": {"uri": "s3://out/"}, "maxRetries": 0,
                                 "pendingDeadlineSeconds": 30, "cluster": {"head": {"resources": POD}}}})

        def status() -> dict:
            done = stack.cp.kubectl("-n", ns, "get", "vcj", "over-quota", "-o", "json")
            return json.loads(done.stdout).get("status") or {}

        waiting = stack.wait(lambda: "exceeded quota" in (status().get("message") or "") and status(), 60,
                             "the quota refusal in the job's message")
        assert waiting["phase"] == "Provisioning" and "FailedCreateHeadPod" in waiting["message"], waiting
        failed = stack.wait(lambda: status().get("phase") == "Failed" and status(), 90, "the pending deadline")
        cond = {c["type"]: c for c in failed["conditions"]}["Failed"]
        assert cond["reason"] == "PendingDeadlineExceeded" and "exceeded quota" in cond["message"], cond
    finally:
        stack.cp.kubectl("delete", "namespace", ns, "--wait=false")


# --------------------------------------------------------------------------------- restart


def test_an_operator_restarted_mid_job_picks_it_up_and_finishes_it(stack, tmp_path):
    bucket = stack.upload_samples(tmp_path, copies=2)
    stack.apply_job(stack.job_manifest("restart", bucket, **LIGHT), tmp_path)
    running = stack.wait_phase("restart", ("Running",), timeout=300)
    before = stack.get("rayjob", "restart")
    stack.operator.restart()  # SIGTERM, as a rolling update of the Deployment would, then a new process
    assert stack.get("rayjob", "restart")["status"]["jobStatus"] == "RUNNING", \
        "the job ended before the operator came back: give it more work"
    status = stack.wait_phase("restart", ("Succeeded", "Failed"), timeout=400)
    assert status["phase"] == "Succeeded", stack.diagnostics("restart")
    assert stack.names("rayjobs") == ["restart"]  # no second RayJob
    assert stack.get("rayjob", "restart")["metadata"]["uid"] == before["metadata"]["uid"]
    assert status["retries"] == 0 and status["startTime"] == running["startTime"]
    assert status["progress"]["videosDone"] == 4 and status["progress"]["clipsPassed"] == 6
    reasons = [r for _, r in events_of(stack, "restart")]
    assert reasons.count("Running") == 1 and reasons.count("Succeeded") == 1, reasons


# ---------------------------------------------------------------------- scaling and deletion


@pytest.fixture(scope="module")
def long_job(stack, tmp_path_factory):
    """A job with enough work to be still running while the tests below edit and delete it."""
    tmp_path = tmp_path_factory.mktemp("long-job")
    bucket = stack.upload_samples(tmp_path, copies=4)
    stack.apply_job(stack.job_manifest("rescale", bucket, **LIGHT), tmp_path)
    return stack.wait_phase("rescale", ("Running",), timeout=300)


def cpu_group(obj: dict, prefix: tuple[str, ...] = ("spec",)) -> dict:
    node = obj
    for key in prefix:
        node = node[key]
    (group,) = [g for g in node["workerGroupSpecs"] if g["groupName"] == "cpu"]
    return group


def test_a_live_scaling_edit_rescales_the_real_raycluster(stack, long_job):
    cluster_name = long_job["rayClusterName"]
    group = cpu_group(stack.get("raycluster", cluster_name))
    assert (group["minReplicas"], group["maxReplicas"], group["replicas"]) == (2, 2, 2)
    stack.kubectl("patch", "videocurationjob", "rescale", "--type=merge", "-p",
                  json.dumps({"spec": {"cluster": {"cpuWorkers": {"minReplicas": 3, "maxReplicas": 4}}}}))

    def rescaled() -> dict | None:
        live = cpu_group(stack.get("raycluster", cluster_name))
        return live if (live["minReplicas"], live["maxReplicas"], live["replicas"]) == (3, 4, 3) else None

    stack.wait(rescaled, 60, "the RayCluster's cpu group at min 3, max 4, replicas 3", "rescale")
    rayjob_group = cpu_group(stack.get("rayjob", "rescale"), ("spec", "rayClusterSpec"))
    assert (rayjob_group["minReplicas"], rayjob_group["maxReplicas"]) == (3, 4)
    # KubeRay acts on it: a third worker pod of the group runs.
    stack.wait(lambda: len([p for p in stack.pods_of("rescale", "cpu") if p["status"].get("phase") == "Running"
                            and not p["metadata"].get("deletionTimestamp")]) == 3,
               120, "three running cpu worker pods", "rescale")
    assert stack.status("rescale")["phase"] == "Running"
    assert not any(c["type"] == "SpecUpdateRefused" and c["status"] == "True"
                   for c in stack.status("rescale")["conditions"])


def test_deleting_the_job_cascades_through_garbage_collection(stack, long_job):
    rayjob = stack.get("rayjob", "rescale")
    configmap = stack.get("configmap", "rescale-config")
    uid = stack.get("videocurationjob", "rescale")["metadata"]["uid"]
    for child in (rayjob, configmap):  # what lets the garbage collector find them
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner["controller"], owner["blockOwnerDeletion"]) == \
            ("VideoCurationJob", uid, True, True)
    cluster_name = long_job["rayClusterName"]
    assert stack.get("raycluster", cluster_name) is not None and stack.pods_of("rescale")

    began = time.monotonic()
    out = stack.kubectl("delete", "videocurationjob", "rescale", "--timeout=120s").stdout
    assert 'videocurationjob.clipforge.dev "rescale" deleted' in out
    assert stack.get("videocurationjob", "rescale") is None  # kubectl waited for the operator's finalizer
    made_by_kuberay = "ray.io/originated-from-cr-name=rescale"  # the submitter Job, the RayJob's head Service
    for kind, selector in [("configmaps", "clipforge.dev/job=rescale"), ("rayjobs", "clipforge.dev/job=rescale"),
                           ("rayclusters", "clipforge.dev/job=rescale"), ("jobs", made_by_kuberay),
                           ("services", made_by_kuberay), ("services", f"ray.io/cluster={cluster_name}"),
                           ("pods", "clipforge.dev/job=rescale")]:
        stack.wait_gone(kind, selector, max(10.0, 150 - (time.monotonic() - began)))
    assert stack.get("raycluster", cluster_name) is None
