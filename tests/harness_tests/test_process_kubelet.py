"""The process kubelet runs real pods for the real control plane (see tests/harness/process_kubelet.py).

The API server, scheduler and controllers are the real ones; the kubelet registers a CPU node and
a tainted GPU node and runs what the scheduler binds to them as processes (no container runtime:
no image is used, every container runs this environment's Python). Each test works in its own
namespace and reads back what the pod saw, its status and its logs.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import uuid
from pathlib import Path

from harness import netns
from harness.process_kubelet import ENVIRONMENT_UNDER_TMP, NodeConfig, ProcessKubelet
from harness.waiting import eventually






def _get_pod(kubelet: ProcessKubelet, ns: str, name: str) -> dict | None:
    return kubelet.api.get(f"/api/v1/namespaces/{ns}/pods/{name}", missing_ok=True)


def _describe(kubelet: ProcessKubelet, ns: str, name: str) -> str:
    """The pod's status and its containers' logs, for failure messages."""
    pod = _get_pod(kubelet, ns, name) or {}
    spec = pod.get("spec") or {}
    logs = "".join(f"\n--- log of {c['name']} ---\n{kubelet.logs(ns, name, c['name'])[-3000:]}"
                   for c in (spec.get("initContainers") or []) + (spec.get("containers") or []))
    return f"pod {ns}/{name}: {json.dumps(pod.get('status'), indent=1)}{logs}"


def _wait_pod(kubelet: ProcessKubelet, ns: str, name: str, check, what: str, timeout: float = 60.0) -> dict:  # noqa: ANN001
    try:
        return eventually(lambda: (p := _get_pod(kubelet, ns, name)) is not None and check(p) and p, what, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_describe(kubelet, ns, name)}") from None


def _phase(*phases: str):  # noqa: ANN202
    return lambda pod: (pod.get("status") or {}).get("phase") in phases


def _condition(pod: dict, kind: str) -> str | None:
    return next((c["status"] for c in (pod.get("status") or {}).get("conditions") or [] if c["type"] == kind), None)


def _pod(name: str, *containers: dict, **spec) -> dict:  # noqa: ANN003
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **spec.pop("metadata", {})},
            "spec": {"containers": list(containers), **spec}}


def _python(name: str, code: str, **extra) -> dict:  # noqa: ANN003
    return {"name": name, "image": "python:3.11", "command": ["python3", "-c", code], **extra}


def _apply(control_plane, ns: str, *objects: dict) -> None:  # noqa: ANN001
    control_plane.apply(*({**o, "metadata": {**o["metadata"], "namespace": ns}} for o in objects))


def _processes_with(marker: str) -> list[int]:
    """PIDs whose environment holds `marker` (a pod's processes inherit its env)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


REPORT = r'''
import errno, json, os, socket, ssl, sys, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
review = urllib.request.Request(
    f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}"
    "/apis/authentication.k8s.io/v1/selfsubjectreviews", method="POST",
    data=json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}).encode(),
    headers={"Authorization": "Bearer " + open(f"{sa}/token").read(), "Content-Type": "application/json"})
with urllib.request.urlopen(review, context=ssl.create_default_context(cafile=f"{sa}/ca.crt"), timeout=10) as r:
    user = json.load(r)["status"]["userInfo"]["username"]
try:
    open("/etc/creds/new-file", "w")
    read_only = False
except OSError as exc:
    read_only = errno.errorcode[exc.errno]
names = ("POD_NAME", "POD_NS", "POD_IP", "NODE", "CPU_LIMIT", "MEM_REQUEST_MI", "MODE", "ACCESS_KEY",
         "S3_region", "GREETING", "KUBERNETES_SERVICE_HOST")
print(json.dumps({
    "argv": sys.argv[1:], "cwd": os.getcwd(), "hostname": socket.gethostname(),
    "hostname_resolves_to": socket.gethostbyname(socket.gethostname()),
    "env": {k: os.environ.get(k) for k in names},
    "marker": open("/work/marker").read().strip(), "job": open("/etc/clipforge/job.yaml").read(),
    "secret_file": open("/etc/creds/secret-key").read(), "read_only": read_only,
    "namespace_file": open(f"{sa}/namespace").read(), "api_user": user,
    "tmp_is_private": sorted(os.listdir("/tmp")),
}))
'''


def test_a_pod_runs_its_command_with_its_env_and_volumes(control_plane, kubelet, namespace):
    ns = namespace
    scratch = {"name": "scratch", "mountPath": "/work"}
    env = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
        {"name": "MEM_REQUEST_MI", "valueFrom": {"resourceFieldRef": {"resource": "requests.memory",
                                                                      "divisor": "1Mi"}}},
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
        {"name": "ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "access-key"}}},
        {"name": "MISSING", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope", "optional": True}}},
        {"name": "GREETING", "value": "hello from $(POD_NAME)"},
    ]
    pod = _pod(
        "reporter",
        {"name": "main", "image": "never-pulled:latest", "command": ["/bin/bash", "-lc", "--"],
         # a login shell (its profile resets PATH in Debian) and Kubernetes' $(VAR) expansion
         "args": ['python3 /opt/report/report.py "$(MODE)" "two words" $HOSTNAME'],
         "workingDir": "/work", "env": env, "envFrom": [{"secretRef": {"name": "creds"}, "prefix": "S3_"}],
         "resources": {"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "1", "memory": "512Mi"}},
         "volumeMounts": [scratch, {"name": "report", "mountPath": "/opt/report"},
                          {"name": "settings", "mountPath": "/etc/clipforge/job.yaml", "subPath": "job.yaml"},
                          {"name": "creds", "mountPath": "/etc/creds"}]},
        restartPolicy="Never",
        initContainers=[{"name": "prepare", "image": "never-pulled:latest", "env": env[:1],
                         "command": ["/bin/sh", "-c", "echo prepared by $(POD_NAME) > /work/marker; touch /tmp/x"],
                         "volumeMounts": [scratch]}],
        volumes=[{"name": "scratch", "emptyDir": {}},
                 {"name": "report", "configMap": {"name": "settings", "items": [{"key": "report.py",
                                                                                 "path": "report.py"}]}},
                 {"name": "settings", "configMap": {"name": "settings"}},
                 {"name": "creds", "secret": {"secretName": "creds"}}])
    _apply(control_plane, ns,
           {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
            "data": {"mode": "fast", "job.yaml": "stages: [split]\n", "report.py": REPORT}},
           {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
            # (bash passes on no variable whose name has a '-': S3_access-key never reaches python)
            "stringData": {"access-key": "AKIA-TEST", "secret-key": "not-a-real-secret", "region": "local"}},
           pod)

    done = _wait_pod(kubelet, ns, "reporter", _phase("Succeeded", "Failed"), "the pod to finish")
    assert done["status"]["phase"] == "Succeeded", _describe(kubelet, ns, "reporter")
    main, = done["status"]["containerStatuses"]
    init, = done["status"]["initContainerStatuses"]
    assert main["state"]["terminated"]["exitCode"] == 0 and main["state"]["terminated"]["reason"] == "Completed"
    assert init["state"]["terminated"]["exitCode"] == 0
    assert done["spec"]["nodeName"] == "cpu-node"  # no toleration for the GPU node's taint
    assert {c["type"]: c["status"] for c in done["status"]["conditions"]} == {
        "PodScheduled": "True", "PodReadyToStartContainers": "False",  # its network is gone once it ended
        "Initialized": "True", "ContainersReady": "False", "Ready": "False"}
    ip = done["status"]["podIP"]
    assert ipaddress.ip_address(ip) in netns.POD_CIDR and done["status"]["hostIP"] == netns.HOST_IP

    report = json.loads(kubelet.logs(ns, "reporter", "main"))
    assert report == {
        "argv": ["fast", "two words", "reporter"], "cwd": "/work", "hostname": "reporter", "hostname_resolves_to": ip,
        "env": {"POD_NAME": "reporter", "POD_NS": ns, "POD_IP": ip, "NODE": "cpu-node", "CPU_LIMIT": "2",
                "MEM_REQUEST_MI": "512", "MODE": "fast", "ACCESS_KEY": "AKIA-TEST",
                "S3_region": "local", "GREETING": "hello from reporter",
                "KUBERNETES_SERVICE_HOST": netns.HOST_IP},
        "marker": "prepared by reporter", "job": "stages: [split]\n", "secret_file": "not-a-real-secret",
        "read_only": "EROFS", "namespace_file": ns, "api_user": f"system:serviceaccount:{ns}:default",
        # the init container's /tmp was its own; only the test environment shows through, if under /tmp
        "tmp_is_private": sorted({p.relative_to("/tmp").parts[0] for p in ENVIRONMENT_UNDER_TMP}),
    }


def test_the_scheduler_puts_gpu_pods_on_the_gpu_node_only_when_they_tolerate_its_taint(control_plane, kubelet,
                                                                                         namespace):
    ns = namespace
    gpu = {"limits": {"nvidia.com/gpu": "1"}}
    toleration = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    node_env = [{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]
    _apply(control_plane, ns,
           _pod("tolerating", _python("c", "import os; print('on', os.environ['NODE'])", resources=gpu, env=node_env),
                restartPolicy="Never", tolerations=toleration),
           _pod("intolerant", _python("c", "print('never runs')", resources=gpu), restartPolicy="Never"),
           _pod("plain", _python("c", "print('cpu work')"), restartPolicy="Never", tolerations=toleration))

    ran = _wait_pod(kubelet, ns, "tolerating", _phase("Succeeded"), "the GPU pod to run")
    assert ran["spec"]["nodeName"] == "gpu-node"
    assert kubelet.logs(ns, "tolerating", "c") == "on gpu-node\n"
    plain = _wait_pod(kubelet, ns, "plain", _phase("Succeeded"), "the CPU pod to run")
    assert plain["spec"]["nodeName"] in kubelet.node_names
    pending = _wait_pod(kubelet, ns, "intolerant", lambda p: _condition(p, "PodScheduled") == "False",
                        "the scheduler to reject the pod")
    scheduled = next(c for c in pending["status"]["conditions"] if c["type"] == "PodScheduled")
    assert scheduled["reason"] == "Unschedulable"
    assert "untolerated taint" in scheduled["message"] and "Insufficient nvidia.com/gpu" in scheduled["message"]
    assert "nodeName" not in pending["spec"] and pending["status"]["phase"] == "Pending"
    assert kubelet.logs(ns, "intolerant", "c") == ""


PEER = r'''
import http.server, json, socket, sys, threading, time, urllib.request
me, peer, ns = socket.gethostname(), sys.argv[1], sys.argv[2]
class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = me.encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Hello)  # the same port in every pod
threading.Thread(target=server.serve_forever, daemon=True).start()
while True:
    try:
        addresses = sorted({a[4][0] for a in socket.getaddrinfo(f"peers.{ns}.svc.cluster.local", 8080,
                                                                 proto=socket.IPPROTO_TCP)})
        if len(addresses) == 2:
            got = urllib.request.urlopen(f"http://{peer}.peers.{ns}.svc.cluster.local:8080/", timeout=2).read()
            print(json.dumps({"me": me, "peer": got.decode(), "service": addresses}), flush=True)
            break
    except OSError:
        pass
    time.sleep(0.3)
threading.Event().wait()
'''


def test_pods_on_the_same_port_reach_each_other_by_service_names(control_plane, kubelet, namespace):
    ns = namespace
    ready = {"tcpSocket": {"port": "http"}, "periodSeconds": 1}
    pods = [_pod(name, _python("peer", PEER, args=[other, ns], readinessProbe=ready,
                               ports=[{"name": "http", "containerPort": 8080}]),
                 metadata={"labels": {"app": "peers", "role": name}}, hostname=name, subdomain="peers",
                 terminationGracePeriodSeconds=1)
            for name, other in (("a", "b"), ("b", "a"))]
    _apply(control_plane, ns, *pods,
           {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "peers"},
            "spec": {"clusterIP": "None", "selector": {"app": "peers"}, "ports": [{"port": 8080}]}},
           {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "front"},
            "spec": {"selector": {"role": "a"}, "ports": [{"port": 8080}]}})

    statuses = {n: _wait_pod(kubelet, ns, n, lambda p: _condition(p, "Ready") == "True", f"pod {n} to be ready")
                for n in ("a", "b")}
    ips = {n: p["status"]["podIP"] for n, p in statuses.items()}
    assert ips["a"] != ips["b"]
    for me, peer in (("a", "b"), ("b", "a")):
        line = eventually(lambda: kubelet.logs(ns, me, "peer").strip(), f"pod {me} to reach {peer}")
        assert json.loads(line) == {"me": me, "peer": peer, "service": sorted(ips.values())}, _describe(kubelet, ns, me)

    # Host processes see the same names through the hosts file (the KubeRay operator does).
    def host_lookup(name: str) -> list[str]:
        done = subprocess.run(netns.with_hosts_file(["getent", "ahostsv4", name], kubelet.hosts_file),
                              capture_output=True, text=True)
        return sorted({line.split()[0] for line in done.stdout.splitlines()})

    assert host_lookup(f"peers.{ns}.svc.cluster.local") == sorted(ips.values())
    assert host_lookup(f"front.{ns}.svc") == [ips["a"]]  # ClusterIP: resolves to its backing pod
    assert host_lookup(f"b.peers.{ns}.svc.cluster.local") == [ips["b"]]

    control_plane.kubectl("delete", "pod", "-n", ns, "a", "b", "--wait=true", "--timeout=60s")
    eventually(lambda: host_lookup(f"peers.{ns}.svc.cluster.local") == [], "the names to go with the pods")


def test_deleting_a_pod_stops_all_its_processes_and_its_network(control_plane, kubelet, namespace):
    ns = namespace
    marker = f"MARKER_{uuid.uuid4().hex}"
    graceful = ("import signal, sys, time\n"
                "def bye(*_):\n    print('terminating on SIGTERM', flush=True); sys.exit(0)\n"
                "signal.signal(signal.SIGTERM, bye); print('up', flush=True); time.sleep(600)")
    _apply(control_plane, ns, _pod(
        "doomed",
        # PID 1 without a SIGTERM handler ignores SIGTERM (as in a container): SIGKILL after the grace period
        {"name": "stubborn", "image": "x", "command": ["/bin/bash", "-c", "sleep 600 & sleep 601 & wait"],
         "env": [{"name": marker, "value": "1"}]},
        _python("graceful", graceful, env=[{"name": marker, "value": "1"}]),
        terminationGracePeriodSeconds=30))  # the kubelet caps it (grace_period_cap_s)

    running = _wait_pod(kubelet, ns, "doomed", lambda p: _condition(p, "Ready") == "True", "the pod to run")
    ip = running["status"]["podIP"]
    eventually(lambda: "up" in kubelet.logs(ns, "doomed", "graceful"), "the graceful container to start")
    assert len(_processes_with(marker)) >= 4  # bash, two sleeps, python

    control_plane.kubectl("delete", "pod", "-n", ns, "doomed", "--wait=false")
    eventually(lambda: _get_pod(kubelet, ns, "doomed") is None, "the pod object to be deleted")
    assert _processes_with(marker) == []
    assert kubelet.logs(ns, "doomed", "graceful").splitlines() == ["up", "terminating on SIGTERM"]
    assert not (netns.NETNS_DIR / f"cf-{ip.replace('.', '-')}").exists()
    assert ip not in kubelet.hosts_file.read_text()


def test_a_job_pod_runs_to_succeeded(control_plane, kubelet, namespace):
    ns = namespace
    _apply(control_plane, ns, {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "count"}, "spec": {
        "backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [
            _python("count", "print(sum(range(101)))")]}}}})

    def complete():  # noqa: ANN202
        job = kubelet.api.get(f"/apis/batch/v1/namespaces/{ns}/jobs/count")
        return job if any(c["type"] == "Complete" and c["status"] == "True"
                          for c in (job.get("status") or {}).get("conditions") or []) else None

    job = eventually(complete, "the Job to complete")
    assert job["status"]["succeeded"] == 1
    pods = kubelet.api.get(f"/api/v1/namespaces/{ns}/pods", query={"labelSelector": "job-name=count"})["items"]
    assert [p["status"]["phase"] for p in pods] == ["Succeeded"]
    assert kubelet.logs(ns, pods[0]["metadata"]["name"], "count") == "5050\n"


def test_restart_policy_back_off_and_probes(control_plane, kubelet, namespace):
    ns = namespace
    flaky = ("if [ -e /state/failed-once ]; then echo second run; exit 0; fi; "
             "touch /state/failed-once; echo first run; exit 3")
    # KubeRay's probe shape: `wget ... | grep success` against the Ray dashboard, here a small server
    # that answers 'starting' three times first.
    dashboard = ("import http.server\n"
                 "n = 0\n"
                 "class H(http.server.BaseHTTPRequestHandler):\n"
                 "    def do_GET(self):\n"
                 "        global n; n += 1; body = b'success' if n > 3 else b'starting'\n"
                 "        print(self.path, body.decode(), flush=True)\n"
                 "        self.send_response(200); self.send_header('Content-Length', str(len(body))); "
                 "self.end_headers(); self.wfile.write(body)\n"
                 "    def log_message(self, *a): pass\n"
                 "http.server.HTTPServer(('0.0.0.0', 8265), H).serve_forever()")
    wget = "wget --tries 1 -T 2 -q -O- http://localhost:8265/api/gcs_healthz | grep success"
    liveness = "touch /tmp/alive; echo alive; sleep 2; rm /tmp/alive; echo stopped answering; exec sleep 600"
    _apply(control_plane, ns,
           _pod("flaky", {"name": "c", "image": "x", "command": ["/bin/sh", "-c", flaky],
                          "volumeMounts": [{"name": "state", "mountPath": "/state"}]},
                restartPolicy="OnFailure", volumes=[{"name": "state", "emptyDir": {}}]),
           _pod("dashboard", _python("ray-head", dashboard, readinessProbe={
               "exec": {"command": ["bash", "-c", wget]}, "periodSeconds": 1, "failureThreshold": 10})),
           _pod("liveness", {"name": "c", "image": "x", "command": ["/bin/sh", "-c", liveness], "livenessProbe": {
               "exec": {"command": ["test", "-e", "/tmp/alive"]}, "initialDelaySeconds": 1, "periodSeconds": 1,
               "failureThreshold": 2}},
                terminationGracePeriodSeconds=1))

    flaky_done = _wait_pod(kubelet, ns, "flaky", _phase("Succeeded", "Failed"), "the flaky pod to finish")
    status, = flaky_done["status"]["containerStatuses"]
    assert flaky_done["status"]["phase"] == "Succeeded"
    assert status["restartCount"] == 1
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert kubelet.logs(ns, "flaky", "c") == "first run\nsecond run\n"

    ready = _wait_pod(kubelet, ns, "dashboard", lambda p: _condition(p, "Ready") == "True", "the dashboard to be ready")
    answers = kubelet.logs(ns, "dashboard", "ray-head").splitlines()
    assert answers[:4] == ["/api/gcs_healthz starting"] * 3 + ["/api/gcs_healthz success"]
    assert ready["status"]["containerStatuses"][0]["ready"] is True

    restarted = _wait_pod(kubelet, ns, "liveness", lambda p: p["status"]["containerStatuses"][0]["restartCount"] >= 1,
                          "the liveness probe to restart the container")
    last = restarted["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert "liveness probe failed" in last["message"] and last["exitCode"] == 137
    eventually(lambda: kubelet.logs(ns, "liveness", "c").startswith("alive\nstopped answering\nalive\n"),
                "the restarted container to run again")


def test_a_pod_waits_for_what_it_needs_and_says_why(control_plane, kubelet, namespace):
    ns = namespace
    _apply(control_plane, ns,
           _pod("no-command", {"name": "c", "image": "rayproject/ray:2.60.0"}, restartPolicy="Never"),
           _pod("needs-config", _python("c", "print(open('/cfg/k').read())",
                                        volumeMounts=[{"name": "cfg", "mountPath": "/cfg"}]),
                restartPolicy="Never", volumes=[{"name": "cfg", "configMap": {"name": "later"}}]))

    def waiting(reason: str):  # noqa: ANN202
        return lambda p: ((p["status"].get("containerStatuses") or [{}])[0].get("state", {})
                          .get("waiting", {}).get("reason") == reason)

    no_command = _wait_pod(kubelet, ns, "no-command", waiting("CreateContainerConfigError"), "a config error")
    assert "pulls no image" in no_command["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
    creating = _wait_pod(kubelet, ns, "needs-config", waiting("ContainerCreating"), "a mount error")
    assert "configmap 'later' not found" in creating["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
    _apply(control_plane, ns, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "later"},
                               "data": {"k": "arrived"}})
    _wait_pod(kubelet, ns, "needs-config", _phase("Succeeded"), "the pod to run once its ConfigMap exists")
    assert kubelet.logs(ns, "needs-config", "c") == "arrived\n"


def test_stopping_the_kubelet_leaves_nothing_running(control_plane, kubelet, namespace, tmp_path):
    ns = namespace
    taint = {"key": "clipforge.test/stoppable", "value": "yes", "effect": "NoSchedule"}
    node = NodeConfig("stoppable-node", {"cpu": "2", "memory": "4Gi", "pods": "10"},
                      labels={"clipforge.test/stoppable": "yes"}, taints=(taint,))
    marker = f"MARKER_{uuid.uuid4().hex}"
    (tmp_path / "hosts").write_text("")
    second = ProcessKubelet(control_plane.kubeconfig, tmp_path / "kubelet", tmp_path / "hosts", nodes=[node])
    with second:
        _apply(control_plane, ns, _pod(
            "orphan", {"name": "c", "image": "x", "command": ["/bin/bash", "-c", "sleep 600 & sleep 601 & wait"],
                       "env": [{"name": marker, "value": "1"}]},
            nodeSelector={"clipforge.test/stoppable": "yes"},
            tolerations=[{"key": taint["key"], "operator": "Exists", "effect": "NoSchedule"}]))
        running = _wait_pod(second, ns, "orphan", _phase("Running"), "the pod to run on the second kubelet")
        assert running["spec"]["nodeName"] == "stoppable-node"
        eventually(lambda: len(_processes_with(marker)) >= 3, "its processes")  # bash and two sleeps
        ip = running["status"]["podIP"]
    assert _processes_with(marker) == []
    assert not (netns.NETNS_DIR / f"cf-{ip.replace('.', '-')}").exists()
    assert kubelet.api.get("/api/v1/nodes/stoppable-node", missing_ok=True) is None
    assert os.path.exists(second.log_path(ns, "orphan", "c"))
