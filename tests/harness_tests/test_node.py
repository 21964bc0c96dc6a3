"""The real node (tests/harness/node.py, node_cluster.py) runs pods as a cluster's nodes do.

containerd, runc and the CNI bridge run the pods from an image (a busybox image written here),
the kubelet enforces their limits and security contexts and serves logs and exec through the API
server, kube-proxy routes ClusterIPs, CoreDNS answers for Services and kube-router enforces
NetworkPolicy. The nodes get a control plane of their own: the session's may have its own nodes,
under the same names.
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import os
import re
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from harness import netns
from harness.control_plane import ControlPlane
from harness.node import CLUSTER_POD_CIDR, KUBELET_SYSCTLS, NodeSpec, cgroup_root, claim_slot, host_veth
from harness.node_cluster import KUBERAY_NAMESPACE, Nodes
from harness.oci_archive import ImageSpec, write_archive
from harness.waiting import eventually

BUSYBOX = "clipforge.test/busybox:test"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def busybox_image() -> ImageSpec:
    """Debian's static busybox with every applet linked in /bin; no USER, so it runs as root."""
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True, check=True).stdout.split()
    return ImageSpec(BUSYBOX, files={"/bin/busybox": Path("/bin/busybox")},
                     symlinks={f"/bin/{a}": "busybox" for a in applets if a != "busybox"},
                     directories={"/tmp": 0o1777, "/etc": 0o755, "/www": 0o755}, cmd=["sh"])


@pytest.fixture(scope="module")
def busybox_archive(tmp_path_factory) -> Path:
    archive = tmp_path_factory.mktemp("images") / "busybox.tar"
    write_archive(busybox_image(), archive)
    return archive


@pytest.fixture(scope="module")
def real_nodes(tmp_path_factory, busybox_archive: Path):
    workdir = tmp_path_factory.mktemp("real-node")
    with ControlPlane(workdir / "control-plane") as cp, Nodes(cp, workdir / "nodes") as nodes:
        nodes.import_image(busybox_archive, BUSYBOX)
        nodes.start_kuberay()
        yield cp, nodes


@pytest.fixture
def cp(real_nodes) -> ControlPlane:  # noqa: ANN001
    return real_nodes[0]


@pytest.fixture
def ns(cp: ControlPlane) -> str:
    name = cp.create_namespace(f"node-{uuid.uuid4().hex[:8]}")
    yield name
    cp.kubectl("delete", "namespace", name, "--wait=false")


def _pod(ns: str, name: str, command: str, *, node: str = "cpu-node", container: dict | None = None,
         **spec) -> dict:  # noqa: ANN003
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": node}, "terminationGracePeriodSeconds": 1,
                     "tolerations": [GPU_TOLERATION] if node == "gpu-node" else [],
                     "containers": [{"name": "main", "image": BUSYBOX, "imagePullPolicy": "Never",
                                     "command": ["sh", "-c", command], **(container or {})}],
                     **spec}}


def _get(cp: ControlPlane, ns: str, name: str) -> dict:
    return json.loads(cp.kubectl("get", "pod", name, "-n", ns, "-o", "json").stdout)


def _container_state(cp: ControlPlane, ns: str, name: str) -> dict:
    statuses = (_get(cp, ns, name).get("status") or {}).get("containerStatuses") or [{}]
    return statuses[0].get("state") or {}


def _wait(cp: ControlPlane, ns: str, name: str, check, what: str, timeout: float = 90) -> dict:  # noqa: ANN001
    try:
        return eventually(lambda: check(p := _get(cp, ns, name)) and p, what, timeout, interval=0.5)
    except AssertionError as exc:
        status = json.dumps(_get(cp, ns, name).get("status"), indent=1)
        raise AssertionError(f"{exc}\npod {ns}/{name}: {status}") from None


def _ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (pod.get("status") or {}).get("conditions") or [])


def _run_to_end(cp: ControlPlane, ns: str, pod: dict) -> dict:
    """Creates a pod that runs once and returns its container's `terminated` state."""
    pod["spec"]["restartPolicy"] = "Never"
    cp.apply(pod)
    name = pod["metadata"]["name"]
    _wait(cp, ns, name, lambda p: p["status"].get("phase") in ("Succeeded", "Failed"), f"pod {name} to end")
    return _container_state(cp, ns, name)["terminated"]


def test_a_pod_runs_from_its_image_with_logs_and_exec(cp: ControlPlane, ns: str):
    cp.apply(_pod(ns, "hello", 'echo "hello from $(hostname) as $(id -u)"; exec sleep 3600'))
    pod = _wait(cp, ns, "hello", _ready, "pod hello to be Ready")
    assert pod["spec"]["nodeName"] == "cpu-node"
    assert ipaddress.ip_address(pod["status"]["podIP"]) in CLUSTER_POD_CIDR
    assert eventually(lambda: "hello from hello as 0" in cp.kubectl("logs", "-n", ns, "hello").stdout,
                      "the container's output in kubectl logs")
    # The container's root is the image's: busybox and nothing of the host (no Python, no /usr).
    listing = cp.kubectl("exec", "-n", ns, "hello", "--", "sh", "-c", "ls /; ls /usr 2>&1; cat /proc/1/cgroup").stdout
    assert "www" in listing.split() and "No such file or directory" in listing
    # its memory cgroup is under the node's cgroup root, in the pod's QoS class (BestEffort)
    assert re.search(r"memory:/clipforge-node-\d+/kubepods/besteffort/pod", listing), listing


def test_a_memory_limit_oom_kills_the_container(cp: ControlPlane, ns: str):
    # dd's 256 MiB block is the process's own memory, four times the limit.
    terminated = _run_to_end(cp, ns, _pod(ns, "hog", "dd if=/dev/zero of=/dev/null bs=256M count=1", container={
        "resources": {"limits": {"memory": "64Mi"}, "requests": {"memory": "64Mi", "cpu": "10m"}}}))
    assert (terminated["exitCode"], terminated["reason"]) == (137, "OOMKilled")


def test_run_as_non_root_refuses_a_root_image_and_runs_a_given_uid(cp: ControlPlane, ns: str):
    cp.apply(_pod(ns, "root-refused", "sleep 3600", securityContext={"runAsNonRoot": True}))
    waiting = eventually(lambda: _container_state(cp, ns, "root-refused").get("waiting", {}).get("message"),
                         "the kubelet to refuse the container", timeout=90)
    assert "runAsNonRoot" in waiting and "root" in waiting
    terminated = _run_to_end(cp, ns, _pod(ns, "uid-1000", "id -u; id -g", securityContext={
        "runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000}))
    assert terminated["exitCode"] == 0
    assert cp.kubectl("logs", "-n", ns, "uid-1000").stdout.split() == ["1000", "1000"]


def test_a_read_only_root_filesystem_holds(cp: ControlPlane, ns: str):
    script = "touch /www/x 2>&1; echo rc=$?; touch /scratch/x && echo scratch=ok"
    terminated = _run_to_end(cp, ns, _pod(ns, "ro", script, container={
        "securityContext": {"readOnlyRootFilesystem": True},
        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]},
        volumes=[{"name": "scratch", "emptyDir": {}}]))
    assert terminated["exitCode"] == 0
    out = cp.kubectl("logs", "-n", ns, "ro").stdout
    assert "Read-only file system" in out and "rc=1" in out and "scratch=ok" in out


@pytest.fixture
def web(cp: ControlPlane, ns: str) -> str:
    """An httpd pod on the CPU node behind a ClusterIP Service `web` (port 80 -> 8080); returns its ClusterIP."""
    cp.apply(_pod(ns, "web", f"echo served-by-$(hostname) > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"),
             {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": ns},
              "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    _wait(cp, ns, "web", _ready, "pod web to be Ready")
    return json.loads(cp.kubectl("get", "service", "web", "-n", ns, "-o", "json").stdout)["spec"]["clusterIP"]


def _fetch_from(cp: ControlPlane, ns: str, node: str, url: str, *, labels: dict | None = None,
                until_refused: bool = False) -> str:
    """What a pod on `node` gets from `url`; it retries while the node's agents catch up with a change.

    until_refused: it retries until a request fails instead, and prints `refused` then.
    """
    name = f"client-{node}-{uuid.uuid4().hex[:4]}"
    attempt = f"timeout 5 wget -q -O - {url}"
    attempt = f"{attempt} || {{ echo refused; exit 0; }}" if until_refused else f"{attempt} && exit 0"
    pod = _pod(ns, name, f"for i in $(seq 30); do {attempt}; sleep 1; done; exit 1", node=node)
    pod["metadata"]["labels"].update(labels or {})
    _run_to_end(cp, ns, pod)
    return cp.kubectl("logs", "-n", ns, name).stdout


@pytest.mark.parametrize("node", ["cpu-node", "gpu-node"])
def test_a_cluster_ip_routes_through_kube_proxy(cp: ControlPlane, ns: str, web: str, node: str):
    assert web.startswith("10.")  # a ClusterIP from the Service CIDR, not the pod's address
    assert _fetch_from(cp, ns, node, f"http://{web}/").strip() == "served-by-web"


def test_a_service_name_resolves_through_coredns(cp: ControlPlane, ns: str, web: str):
    assert _fetch_from(cp, ns, "gpu-node", f"http://web.{ns}.svc.cluster.local/").strip() == "served-by-web"
    terminated = _run_to_end(cp, ns, _pod(ns, "lookup", "nslookup web; cat /etc/resolv.conf"))
    out = cp.kubectl("logs", "-n", ns, "lookup").stdout
    assert terminated["exitCode"] == 0, out
    assert web in out and "nameserver 10.96.0.10" in out


def test_kube_router_enforces_a_network_policy(cp: ControlPlane, ns: str, web: str):
    cp.apply({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
              "metadata": {"name": "web-from-friends", "namespace": ns},
              "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
                       "ingress": [{"from": [{"podSelector": {"matchLabels": {"friend": "true"}}}]}]}})
    # A stranger is refused once the policy is in force, from either node, by pod address and by ClusterIP;
    # a pod the policy names still gets through.
    pod_ip = _get(cp, ns, "web")["status"]["podIP"]
    assert _fetch_from(cp, ns, "gpu-node", f"http://{web}/", until_refused=True).split()[-1] == "refused"
    assert _fetch_from(cp, ns, "cpu-node", f"http://{pod_ip}:8080/", until_refused=True).split()[-1] == "refused"
    assert _fetch_from(cp, ns, "gpu-node", f"http://{web}/", labels={"friend": "true"}).strip() == "served-by-web"
    assert _fetch_from(cp, ns, "cpu-node", f"http://{pod_ip}:8080/", labels={"friend": "true"}).strip() == "served-by-web"


def test_the_gpu_node_is_tainted_and_advertises_gpus(cp: ControlPlane, ns: str):
    node = json.loads(cp.kubectl("get", "node", "gpu-node", "-o", "json").stdout)
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "2"
    assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in node["spec"]["taints"]
    assert node["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
    pod = _pod(ns, "gpu", "sleep 3600", node="gpu-node", container={"resources": {"limits": {"nvidia.com/gpu": "1"}}})
    del pod["spec"]["nodeSelector"]
    cp.apply(pod)
    assert _wait(cp, ns, "gpu", _ready, "pod gpu to be Ready")["spec"]["nodeName"] == "gpu-node"


def test_kuberay_runs_as_a_pod_and_reconciles_rayclusters(cp: ControlPlane, ns: str):
    """KubeRay's operator runs from an image of its binary, with the labels the jobs' NetworkPolicies
    admit to their dashboards, in place of the control plane's process, and makes a RayCluster's pods."""
    with pytest.raises(KeyError):
        cp.pid("kuberay-operator")
    (pod,) = json.loads(cp.kubectl("get", "pods", "-n", KUBERAY_NAMESPACE, "-o", "json").stdout)["items"]
    assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == "kuberay-operator" and _ready(pod)
    pod_spec = {"containers": [{"name": "ray", "image": BUSYBOX, "imagePullPolicy": "Never",
                                "command": ["sh", "-c", "exec sleep 3600"]}]}
    cp.apply({"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "demo", "namespace": ns},
              "spec": {"headGroupSpec": {"rayStartParams": {}, "template": {"spec": pod_spec}}}})
    head = eventually(lambda: json.loads(cp.kubectl("get", "pods", "-n", ns, "-l", "ray.io/cluster=demo",
                                                    "-o", "json").stdout)["items"], "KubeRay to make the head pod")[0]
    assert head["metadata"]["labels"]["ray.io/node-type"] == "head"
    assert cp.kubectl("get", "service", "demo-head-svc", "-n", ns, check=False).returncode == 0


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie nobody reaped yet does not: the shims' parent is init)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _slot_processes(slot: int) -> set[int]:
    return {int(pid) for procs in Path("/sys/fs/cgroup/memory", cgroup_root(slot)).rglob("cgroup.procs")
            for pid in procs.read_text().split()}


def _host_state(workdir: Path) -> dict:
    """What a node must not change on the host: the sysctls it writes, forwarding, firewall tables, mounts."""
    return {
        "sysctls": {e: Path("/proc/sys", e).read_text() for e in KUBELET_SYSCTLS},
        "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text(),
        "bridge_forwarding": Path(f"/proc/sys/net/ipv4/conf/{netns.BRIDGE}/forwarding").read_text(),
        "nft_tables": [t for t in subprocess.run(["nft", "list", "tables"], capture_output=True, text=True,
                                                 check=True).stdout.splitlines()
                       if "kube-proxy" in t or "clipforge-node" in t],
        "kube_router_rules": [r for r in subprocess.run(["iptables", "-S"], capture_output=True, text=True,
                                                        check=True).stdout.splitlines() if "KUBE-ROUTER" in r],
        "ipsets": subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True, check=True).stdout,
        "mounts": [m for m in Path("/proc/self/mountinfo").read_text().splitlines()
                   if str(workdir) in m or re.search(r" /(var/lib/kubelet|var/log/pods|run/containerd)", m)],
    }


def test_a_node_leaves_nothing_behind_and_the_host_unchanged(cp: ControlPlane, busybox_archive: Path, tmp_path: Path):
    before = _host_state(tmp_path)
    nodes = Nodes(cp, tmp_path, specs=(NodeSpec("short-lived-node"),))
    with nodes:
        nodes.import_image(busybox_archive, BUSYBOX)
        node = nodes.nodes[0]
        slot = node.slot
        cp.apply(_pod("default", "probe", "sleep 3600", node="short-lived-node"))
        _wait(cp, "default", "probe", _ready, "pod probe to be Ready")
        assert _host_state(tmp_path) == before  # the kubelet's sysctls and kube-proxy's tables are the node's own
        assert Path(f"/sys/fs/cgroup/memory/{cgroup_root(slot)}/kubepods").is_dir()
        daemons = list(node.daemon_pids().values())
    assert _host_state(tmp_path) == before
    assert not list(Path("/sys/fs/cgroup").glob(f"*/{cgroup_root(slot)}"))
    assert subprocess.run(["ip", "link", "show", host_veth(slot)], capture_output=True).returncode != 0
    assert not [pid for pid in daemons if _alive(pid)]
    cp.kubectl("delete", "pod", "probe", "-n", "default", "--force", "--grace-period=0", check=False)


def test_what_a_killed_harness_left_is_swept_when_its_slot_is_claimed(cp: ControlPlane, busybox_archive: Path,
                                                                      tmp_path: Path):
    nodes = Nodes(cp, tmp_path, specs=(NodeSpec("crashed-node"),))
    nodes.start()
    nodes.import_image(busybox_archive, BUSYBOX)
    node = nodes.nodes[0]
    cp.apply(_pod("default", "orphan", "sleep 3600", node="crashed-node"))
    _wait(cp, "default", "orphan", _ready, "pod orphan to be Ready")
    # What the kernel does when the harness is killed (PR_SET_PDEATHSIG): its daemons and the namespace
    # holder die with it, its slot's lock is released; containerd's shims and the containers live on.
    atexit.unregister(nodes.stop)
    for pid in [*node.daemon_pids().values(), node._holder.pid]:
        os.kill(pid, signal.SIGKILL)
    os.close(node._lock_fd)
    for proc in [*node._procs.values(), node._holder]:
        proc.wait()
    survivors = _slot_processes(node.slot)
    assert survivors  # the pod's shim, pause and sleep

    slot, lock = claim_slot(set())
    os.close(lock)
    assert slot == node.slot
    assert not [pid for pid in survivors if _alive(pid)]
    assert not list(Path("/sys/fs/cgroup").glob(f"*/{cgroup_root(slot)}"))
    assert subprocess.run(["ip", "link", "show", host_veth(slot)], capture_output=True).returncode != 0
    cp.kubectl("delete", "node", "crashed-node", "--wait=false")
    cp.kubectl("delete", "pod", "orphan", "-n", "default", "--force", "--grace-period=0", check=False)
