"""Real Kubernetes nodes for the tests: containerd, runc, CNI, kubelet and kube-proxy, contained.

Each node is the real thing (scripts/build-kube-binaries.sh --node builds kubelet, kube-proxy,
pause, containerd with its runc shim, and CoreDNS from their Go modules; runc and the CNI plugins
are Debian's), run inside namespaces of its own so the host is left as it was:

- a network namespace: `eth0` on the host's test bridge (netns.BRIDGE) with a node address
  (10.200.254.<slot>), a default route to the host (netns.HOST_IP, where the API server and the
  test S3 server listen), the CNI bridge `cni0` with the node's pod subnet (10.201.<slot>.0/24),
  forwarding, kube-proxy's nftables rules (nftables mode), kube-router's NetworkPolicy firewall
  (iptables rules and ipsets; its router and proxy off), and one masquerade rule for what
  pods send to the host. Routes to the other nodes' pod subnets go via their addresses, across
  the host bridge (the host itself never forwards). Host sysctls and the host firewall are not
  touched; all of it vanishes with the namespace.
- a mount namespace: work-directory folders over /var/lib, /var/log and /run (so
  /var/lib/kubelet, /var/lib/containerd, /var/log/pods, /var/log/containers, /var/lib/cni,
  /run/containerd, /run/netns are the node's own; containerd runs with its default paths and
  `ctr` works from inside), its /var/lib/containerd being the slot's image store (below), and files
  over the /proc/sys entries the kubelet rewrites
  (vm.overcommit_memory, vm.panic_on_oom, kernel.panic, kernel.panic_on_oops,
  kernel.keys.root_maxkeys, kernel.keys.root_maxbytes).
- cgroups under /clipforge-node-<slot> (the kubelet's cgroupRoot; the daemons in `system`
  under it), cgroup v1 with the cgroupfs driver.

A node's slot is a machine-wide flock on its address (the lock netns.py takes for pod addresses),
so concurrent test sessions never share one, and a slot whose owner died is swept when claimed:
everything in its cgroups is killed, the cgroups removed, its host veth deleted.

A slot's containerd root outlives its node (IMAGE_STORES): importing the pipeline image's 6.7 GB
took each node 90-105 s, while its layers rarely change between sessions (a code change rebuilds
the top one). A node starts with only images in it: before its containerd serves the kubelet, one
without the CRI removes every container, sandbox, task and lease a previous node left (a killed
harness leaves them too); a node stopping removes the images it did not import.

Settings this machine needs (../shared/notes/real-node-facts.md): root lacks CAP_SYS_RESOURCE, so
containerd runs with restrict_oom_score_adj and the kubelet with oomScoreAdj 0; cgroup v1 needs
failCgroupV1: false; makeIPTablesUtilChains: false; kube-proxy's conntrack settings are zero (it
leaves conntrack sysctls alone).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import netns
from harness.oci_archive import ImageSpec, normalized_name
from harness.processes import die_with_parent, log_tail

CLUSTER_POD_CIDR = ipaddress.ip_network("10.201.0.0/16")
CLUSTER_DNS_IP = "10.96.0.10"  # in control_plane.SERVICE_CIDR
CLUSTER_DOMAIN = "cluster.local"
NODE_ADDRESS_PREFIX = "10.200.254."  # .<slot> on the host bridge (netns.BRIDGE_CIDR)
MAX_SLOT = 250
CGROUP_FS = Path("/sys/fs/cgroup")
CNI_BIN_DIR = Path("/usr/lib/cni")
RUNC = Path("/usr/sbin/runc")
# /proc/sys entries the kubelet writes (container_manager_linux.go setupKernelTunables).
KUBELET_SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
                   "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
START_TIMEOUT_S = 120.0
IMAGE_STORES = Path.home() / ".cache" / "clipforge" / "node-containerd"  # slot-<n>: a containerd root
CRI_PLUGINS = ("io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images")


class NodeError(RuntimeError):
    """A node's daemon failed; the message names it and carries the tail of its log."""


@dataclass(frozen=True)
class NodeSpec:
    """A node to run: its name, labels, taints and extended resources (advertised by a status patch)."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    taints: tuple[dict, ...] = ()
    extended_resources: dict[str, str] = field(default_factory=dict)


CPU_NODE = NodeSpec("cpu-node")
GPU_NODE = NodeSpec("gpu-node", labels={"nvidia.com/gpu.present": "true", "nvidia.com/gpu.count": "2"},
                    taints=(GPU_TAINT,), extended_resources={"nvidia.com/gpu": "2"})


def node_address(slot: int) -> str:
    return f"{NODE_ADDRESS_PREFIX}{slot}"


def pod_subnet(slot: int) -> ipaddress.IPv4Network:
    return ipaddress.ip_network(f"10.201.{slot}.0/24")


def cgroup_root(slot: int) -> str:
    return f"clipforge-node-{slot}"


def host_veth(slot: int) -> str:
    return f"cfnode{slot}"


# -- slots and what a dead owner left behind ---------------------------------------------------

def _cgroup_dirs(slot: int) -> list[Path]:
    """The slot's cgroup directories in every mounted hierarchy, deepest first."""
    found = []
    for hierarchy in sorted(p for p in CGROUP_FS.iterdir() if p.is_dir()):
        root = hierarchy / cgroup_root(slot)
        if root.is_dir():
            found += sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
            found.append(root)
    return found


def _kill_cgroups(slot: int, timeout: float = 20.0) -> None:
    """SIGKILLs every process in the slot's cgroups and removes them."""
    deadline = time.monotonic() + timeout
    while True:
        pids = set()
        for d in _cgroup_dirs(slot):
            try:
                pids.update(int(p) for p in (d / "cgroup.procs").read_text().split())
            except OSError:
                continue
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        busy = []
        for d in _cgroup_dirs(slot):
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                busy.append(d)
        if not busy:
            return
        if time.monotonic() > deadline:
            raise NodeError(f"cannot remove the cgroups of node slot {slot}: {', '.join(map(str, busy))}")
        time.sleep(0.1)


def sweep(slot: int) -> None:
    """Removes what a node in `slot` left behind (its processes, cgroups and host veth); the slot must be held."""
    _kill_cgroups(slot)
    subprocess.run(["ip", "link", "del", host_veth(slot)], capture_output=True)


def claim_slot(taken: set[int]) -> tuple[int, int]:
    """A free slot (not in `taken`) and the descriptor holding its lock, swept of a dead owner's leftovers."""
    for slot in range(1, MAX_SLOT + 1):
        if slot in taken:
            continue
        fd = netns.lock_address(node_address(slot))
        if fd is not None:
            sweep(slot)
            return slot, fd
    raise NodeError(f"no free node slot (1-{MAX_SLOT})")


def _make_cgroup(path: str) -> None:
    """Creates cgroup `path` in every hierarchy (cpuset's cpus and mems copied from the root)."""
    for hierarchy in (p for p in CGROUP_FS.iterdir() if p.is_dir()):
        d = hierarchy / path
        d.mkdir(parents=True, exist_ok=True)
        if (hierarchy / "cpuset.cpus").exists():
            for parent in [*reversed(d.relative_to(hierarchy).parents), d.relative_to(hierarchy)]:
                if str(parent) == ".":
                    continue
                for name in ("cpuset.cpus", "cpuset.mems"):
                    target = hierarchy / parent / name
                    if not target.read_text().strip():
                        target.write_text((hierarchy / parent).parent.joinpath(name).read_text())


def _join_cgroup(path: str, pid: int) -> None:
    for hierarchy in (p for p in CGROUP_FS.iterdir() if p.is_dir()):
        (hierarchy / path / "cgroup.procs").write_text(f"{pid}\n")


# -- images -------------------------------------------------------------------------------------

def node_images(bin_dir: Path, versions: dict[str, str]) -> list[ImageSpec]:
    """The images every node has: the sandbox's (Kubernetes' pause) and cluster DNS's (CoreDNS)."""
    return [
        ImageSpec(sandbox_image(versions), files={"/pause": bin_dir / "pause"}, entrypoint=["/pause"]),
        ImageSpec(coredns_image(versions), files={"/coredns": bin_dir / "coredns"}, entrypoint=["/coredns"]),
    ]


def sandbox_image(versions: dict[str, str]) -> str:
    return f"clipforge.test/pause:{versions['kubelet']}"


def coredns_image(versions: dict[str, str]) -> str:
    return f"clipforge.test/coredns:{versions['coredns']}"


# -- one node -----------------------------------------------------------------------------------

class Node:
    """One real node; Nodes (node_cluster.py) starts and stops them, with CoreDNS."""

    def __init__(self, spec: NodeSpec, slot: int, lock_fd: int, workdir: Path, bin_dir: Path,
                 control_plane, sandbox_image: str):  # noqa: ANN001
        self.spec = spec
        self.sandbox_image = sandbox_image
        self.slot = slot
        self._lock_fd = lock_fd
        self.workdir = workdir
        self.bin_dir = bin_dir
        self.control_plane = control_plane
        self.address = node_address(slot)
        self.pod_subnet = pod_subnet(slot)
        self.cgroup_root = cgroup_root(slot)
        self.logs_dir = workdir / "logs"
        # containerd's own defaults, inside the node's mount namespace (under its /var/lib and /run)
        self.containerd_socket = Path("/run/containerd/containerd.sock")
        self.image_store = IMAGE_STORES / f"slot-{slot}"
        self.imported: set[str] = set()  # the images this node was given, which its store keeps
        self._holder: subprocess.Popen | None = None
        self._procs: dict[str, subprocess.Popen] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def start_namespaces(self, peers: list[Node]) -> None:
        """The node's mount and network namespaces, its cgroups, and its link to the host bridge."""
        for sub in ("logs", "containerd", "cni", "sysctl", "var-lib", "var-log", "run"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        _make_cgroup(f"{self.cgroup_root}/system")
        self.image_store.mkdir(parents=True, exist_ok=True)
        binds = [f'mount --bind "{self.workdir}/{sub}" {target}'
                 for sub, target in (("var-lib", "/var/lib"), ("var-log", "/var/log"), ("run", "/run"))]
        binds += ["mkdir -p /var/lib/containerd", f'mount --bind "{self.image_store}" /var/lib/containerd']
        for entry in KUBELET_SYSCTLS:
            copy = self.workdir / "sysctl" / entry.replace("/", ".")
            copy.write_text(Path("/proc/sys", entry).read_text())
            binds.append(f'mount --bind "{copy}" /proc/sys/{entry}')
        # The holder keeps both namespaces while the daemons start; they join it with nsenter.
        script = " && ".join([*binds, "echo ready", "exec sleep infinity"])
        self._holder = subprocess.Popen(
            die_with_parent(["unshare", "--mount", "--net", "--propagation", "private", "sh", "-c", script]),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        _join_cgroup(f"{self.cgroup_root}/system", self._holder.pid)
        if self._holder.stdout.readline().strip() != "ready":
            raise NodeError(f"node {self.spec.name}: its namespaces failed: {self._holder.stderr.read()}")
        pid = str(self._holder.pid)
        netns.ensure_bridge()
        _run("ip", "link", "add", host_veth(self.slot), "type", "veth", "peer", "name", "eth0", "netns", pid)
        _run("ip", "link", "set", host_veth(self.slot), "master", netns.BRIDGE, "up")
        inside = ["nsenter", "-t", pid, "-n", "--"]
        _run(*inside, "ip", "link", "set", "lo", "up")
        _run(*inside, "ip", "addr", "add", f"{self.address}/{netns.PREFIX_LEN}", "dev", "eth0")
        _run(*inside, "ip", "link", "set", "eth0", "up")
        _run(*inside, "ip", "route", "add", "default", "via", netns.HOST_IP)
        for peer in peers:
            _run(*inside, "ip", "route", "add", str(peer.pod_subnet), "via", peer.address)
        # This namespace's own sysctls: it routes between pods, the host bridge and its peers.
        _run(*inside, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
        # What pods send to the host leaves with the node's address (the host has no route back).
        ruleset = (f"table ip clipforge-node {{\n chain postrouting {{\n"
                   f"  type nat hook postrouting priority srcnat;\n"
                   f'  ip saddr {self.pod_subnet} ip daddr != {CLUSTER_POD_CIDR} oifname "eth0" masquerade\n }}\n}}\n')
        subprocess.run([*inside, "nft", "-f", "-"], input=ruleset, text=True, check=True, capture_output=True)

    def start_containerd(self) -> None:
        self._clear_image_store()
        config = self.workdir / "containerd" / "config.toml"
        config.write_text(self._containerd_config())
        self._spawn("containerd", [str(self.bin_dir / "containerd"), "--config", str(config)])
        self._wait("containerd", "its socket", lambda: self.ctr("version", check=False).returncode == 0)

    def _clear_image_store(self) -> None:
        """Everything but images out of the slot's containerd root, by a containerd without the CRI
        (the CRI would load what it finds and hand it to the kubelet)."""
        if not any(self.image_store.iterdir()):
            return
        config = self.workdir / "containerd" / "clear.toml"
        config.write_text(f"version = 3\ndisabled_plugins = {json.dumps(list(CRI_PLUGINS))}\n")
        self._spawn("containerd-clear", [str(self.bin_dir / "containerd"), "--config", str(config)])
        self._wait("containerd-clear", "its socket", lambda: self.ctr("version", check=False).returncode == 0)
        for namespace in self.ctr("namespaces", "ls", "-q").stdout.split():
            def listed(kind: str) -> list[str]:  # the ids, from the first column under the header
                lines = self.ctr(kind, "ls", namespace=namespace).stdout.splitlines()[1:]
                return [line.split()[0] for line in lines if line.strip()]
            for task in listed("tasks"):
                self.ctr("tasks", "rm", "-f", task, namespace=namespace, check=False)
            for kind, force in (("containers", ()), ("sandboxes", ("-f",)), ("leases", ())):
                if ids := listed(kind):
                    self.ctr(kind, "rm", *force, *ids, namespace=namespace)
        proc = self._procs.pop("containerd-clear")
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(self.image_store / "io.containerd.grpc.v1.cri", ignore_errors=True)

    def import_image(self, archive: Path, name: str) -> None:
        """Imports an OCI archive into the node's containerd (namespace k8s.io) as `name`, from an
        archive without the blobs its image store has: reading the pipeline image's 3.3 GB layer
        again cost each node about a minute when nothing in it had changed."""
        full = normalized_name(name)
        repository = full.rsplit(":", 1)[0]
        slim = self.workdir / "images" / f"import-{archive.name}"
        slim.parent.mkdir(exist_ok=True)
        blobs = self.image_store / "io.containerd.content.v1.content" / "blobs"
        with tarfile.open(archive) as tar:
            [entry] = json.load(tar.extractfile("index.json"))["manifests"]
            layers = {layer["digest"] for layer in json.load(tar.extractfile(_blob(entry["digest"])))["layers"]}
        self._drop_outgrown(full, layers, blobs)
        with tarfile.open(archive) as tar, tarfile.open(slim, "w") as out:
            for member in tar:  # a file archive: a member's data is skipped by seeking, not read
                if member.name.startswith("blobs/") and (blobs / member.name.removeprefix("blobs/")).is_file():
                    continue
                out.addfile(member, tar.extractfile(member) if member.isfile() else None)
        try:
            self.ctr("images", "import", "--base-name", repository, str(slim), timeout=900)
        finally:
            slim.unlink()
        listed = self.ctr("images", "ls", "-q").stdout.split()
        if full not in listed:
            raise NodeError(f"importing {archive} into node {self.spec.name} gave {listed}, not {full}")
        self.imported.add(full)

    def _drop_outgrown(self, full: str, layers: set[str], blobs: Path) -> None:
        """Removes the store's `full` before its import when the new image does not keep the old
        one's largest layer (the dependencies changed): side by side, the two generations of the
        pipeline image took the disk the kubelet needs (it reported DiskPressure). A code change
        keeps that layer, and the old image stays until the new one shares it."""
        rows = [line.split() for line in self.ctr("images", "ls").stdout.splitlines()[1:]]
        old = next((row[2] for row in rows if row and row[0] == full), None)
        manifest = blobs / old.replace(":", "/", 1) if old else None
        if manifest is None or not manifest.is_file():
            return
        old_layers = json.loads(manifest.read_text()).get("layers") or []
        if old_layers and max(old_layers, key=lambda layer: layer["size"])["digest"] not in layers:
            self.ctr("images", "rm", "--sync", full, timeout=300)

    def start_kubelet(self) -> None:
        cp = self.control_plane
        cert, key = cp.serving_certificate(f"kubelet-{self.spec.name}", self.spec.name, ips=(self.address,))
        kubeconfig = cp.client_kubeconfig(f"system:node:{self.spec.name}", groups=("system:nodes",))
        resolv = self.workdir / "resolv.conf"
        resolv.write_text("# no DNS server outside the cluster in tests\n")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": self.address, "port": 10250, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
            "tlsCertFile": str(cert), "tlsPrivateKeyFile": str(key),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(cp.ca_path)}},
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{self.cgroup_root}", "failCgroupV1": False,
            "failSwapOn": False, "oomScoreAdj": 0, "makeIPTablesUtilChains": False,
            "clusterDNS": [CLUSTER_DNS_IP], "clusterDomain": CLUSTER_DOMAIN, "resolvConf": str(resolv),
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            # No image garbage collection: the node shares the machine's disk, whose use (build
            # caches, the other node) is not the node's, and the imported images cannot be pulled
            # back. At the default 85 % the kubelet deleted the pipeline image under running tests.
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "registerWithTaints": [dict(t) for t in self.spec.taints],
            "serializeImagePulls": False,
            "shutdownGracePeriod": "0s",
        }
        path = self.workdir / "kubelet.yaml"
        path.write_text(json.dumps(config, indent=2))
        labels = ",".join(f"{k}={v}" for k, v in self.spec.labels.items())
        self._spawn("kubelet", [
            str(self.bin_dir / "kubelet"), f"--config={path}", f"--kubeconfig={kubeconfig}",
            f"--hostname-override={self.spec.name}", f"--node-ip={self.address}", "--v=2",
            *([f"--node-labels={labels}"] if labels else []),
        ])

    def start_kube_proxy(self) -> None:
        kubeconfig = self.control_plane.client_kubeconfig("system:kube-proxy")
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "mode": "nftables", "clientConnection": {"kubeconfig": str(kubeconfig)},
            "hostnameOverride": self.spec.name, "clusterCIDR": str(CLUSTER_POD_CIDR),
            "healthzBindAddress": "127.0.0.1:10256", "metricsBindAddress": "127.0.0.1:10249",
            # zeros: kube-proxy leaves every conntrack sysctl as it is
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s",
                          "udpTimeout": "0s", "udpStreamTimeout": "0s"},
        }
        path = self.workdir / "kube-proxy.yaml"
        path.write_text(json.dumps(config, indent=2))
        self._spawn("kube-proxy", [str(self.bin_dir / "kube-proxy"), f"--config={path}", "--v=2"])
        self._wait("kube-proxy", "its nftables table", lambda: "table ip kube-proxy" in self.run_inside(
            ["nft", "list", "tables"], check=False).stdout)

    def start_kube_router(self) -> None:
        """kube-router's NetworkPolicy firewall alone (iptables rules and ipsets, in the node's network namespace)."""
        kubeconfig = self.control_plane.client_kubeconfig("kube-router")
        self._spawn("kube-router", [
            str(self.bin_dir / "kube-router"), f"--kubeconfig={kubeconfig}", f"--hostname-override={self.spec.name}",
            "--run-firewall=true", "--run-router=false", "--run-service-proxy=false", "--enable-cni=false",
        ])
        self._wait("kube-router", "its firewall chains", lambda: "KUBE-ROUTER-FORWARD" in self.run_inside(
            ["iptables", "-S"], check=False).stdout)

    def stop(self) -> None:
        """Kills the daemons, every pod's processes and shim, and removes its cgroups (idempotent)."""
        kubelet = self._procs.get("kubelet")
        if kubelet is not None and kubelet.poll() is None:
            kubelet.terminate()
            try:
                kubelet.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self._forget_other_images()
        _kill_cgroups(self.slot)  # daemons, shims, containers: the namespaces die with the last of them
        for proc in [*self._procs.values(), *([self._holder] if self._holder else [])]:
            proc.wait()
        self._procs.clear()
        self._holder = None
        subprocess.run(["ip", "link", "del", host_veth(self.slot)], capture_output=True)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _forget_other_images(self) -> None:
        """Removes from the image store what this node was not given (an older build's images), so
        that the store holds one generation of images."""
        if "containerd" not in self._procs or self._procs["containerd"].poll() is not None or not self.imported:
            return
        stale = set(self.ctr("images", "ls", "-q", check=False).stdout.split()) - self.imported
        if stale:
            self.ctr("images", "rm", "--sync", *sorted(stale), check=False, timeout=300)

    # -- helpers -----------------------------------------------------------------------------

    def ctr(self, *args: str, check: bool = True, timeout: float = 60,
            namespace: str = "k8s.io") -> subprocess.CompletedProcess:
        """containerd's ctr on this node (namespace k8s.io, the CRI's); host paths outside /var/lib and /run work."""
        argv = [str(self.bin_dir / "ctr"), "--namespace", namespace, *args]
        done = self.run_inside(argv, check=False, timeout=timeout)
        if check and done.returncode != 0:
            raise NodeError(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")
        return done

    def run_inside(self, argv: list[str], *, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """argv in the node's mount and network namespaces."""
        assert self._holder is not None, "start_namespaces() first"
        return subprocess.run(["nsenter", "-t", str(self._holder.pid), "-m", "-n", "--", *argv],
                              capture_output=True, text=True, check=check, timeout=timeout)

    def daemon_pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self._procs.items()}

    def check_running(self) -> None:
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                raise self._error(name, f"exited with status {proc.returncode}")

    def _containerd_config(self) -> str:
        runtime = "plugins.'io.containerd.cri.v1.runtime'"
        return f"""version = 3
[plugins.'io.containerd.internal.v1.opt']
  path = "/var/lib/containerd/opt"
[plugins.'io.containerd.nri.v1.nri']
  disable = true
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{normalized_name(self.sandbox_image)}"
[{runtime}]
  restrict_oom_score_adj = true
  [{runtime}.containerd]
    default_runtime_name = "runc"
    [{runtime}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{runtime}.containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        SystemdCgroup = false
  [{runtime}.cni]
    bin_dirs = ["{CNI_BIN_DIR}"]
    conf_dir = "{self._write_cni_config()}"
"""

    def _write_cni_config(self) -> Path:
        conf_dir = self.workdir / "cni"
        gateway = str(next(self.pod_subnet.hosts()))
        (conf_dir / "10-clipforge.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "clipforge-pods",
            "plugins": [{
                "type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": str(self.pod_subnet), "gateway": gateway}]],
                         "routes": [{"dst": "0.0.0.0/0"}]},
            }],
        }, indent=2))
        return conf_dir

    def _spawn(self, name: str, argv: list[str]) -> None:
        assert self._holder is not None, "start_namespaces() first"
        env = {**os.environ, "PATH": f"{self.bin_dir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"}
        with open(self.logs_dir / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                die_with_parent(["nsenter", "-t", str(self._holder.pid), "-m", "-n", "--", *argv]),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        _join_cgroup(f"{self.cgroup_root}/system", proc.pid)
        self._procs[name] = proc

    def _wait(self, name: str, what: str, ready, timeout: float = START_TIMEOUT_S) -> None:  # noqa: ANN001
        deadline = time.monotonic() + timeout
        while not ready():
            self.check_running()
            if time.monotonic() > deadline:
                raise self._error(name, f"not ready after {timeout:.0f}s: waited for {what}")
            time.sleep(0.1)

    def _error(self, name: str, message: str) -> NodeError:
        log = self.logs_dir / f"{name}.log"
        return NodeError(f"node {self.spec.name}: {name} {message}\n--- last lines of {log} ---\n{log_tail(log, 40)}")


def _blob(digest: str) -> str:
    return "blobs/" + digest.replace(":", "/", 1)


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise NodeError(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")
