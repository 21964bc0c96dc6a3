"""The test cluster's real nodes (node.py), started together on a control plane, with cluster DNS.

    with Nodes(control_plane, workdir) as nodes:        # cpu-node and gpu-node, CoreDNS running
        nodes.import_image(archive, "clipforge/operator:0.1.0")

Each node runs its own containerd, kubelet, kube-proxy (nftables mode) and kube-router (its
NetworkPolicy firewall only) in namespaces of its own; the GPU node advertises `nvidia.com/gpu: 2` by a status patch on its Node (no device plugin:
there is no GPU) and carries NVIDIA's taint. CoreDNS runs as a Deployment in kube-system behind the
`kube-dns` Service at CLUSTER_DNS_IP, as in a kubeadm cluster; it answers for cluster.local only
(nothing outside the machine is reachable). Images come from OCI archives imported into each node's
containerd (pods use `imagePullPolicy: Never` or `IfNotPresent`; there is no registry).
`start_kuberay()` moves KubeRay's operator from the control plane's process into a pod (an image of
its binary, the labels of KubeRay's chart): the jobs' NetworkPolicies admit it, not the host, to
their Ray dashboards, and the host has no route to pods anyway.
"""

from __future__ import annotations

import atexit
import json
import subprocess
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness import kube_binaries
from harness.node import (CLUSTER_DNS_IP, CLUSTER_DOMAIN, CPU_NODE, GPU_NODE, Node, NodeError, NodeSpec,
                          RUNC, claim_slot, coredns_image, node_images, sandbox_image)
from harness.oci_archive import ImageSpec, write_archive

READY_TIMEOUT_S = 180.0
BUILD_IMAGES = kube_binaries.REPO_ROOT / "scripts" / "build-images.sh"
COREFILE = f""".:53 {{
    errors
    health :8080
    ready :8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    cache 30
    loadbalance
}}
"""


def node_versions(bin_dir: Path) -> dict[str, str]:
    """What each part of the node says its version is (read from the binaries and Debian's packages)."""

    def out(*argv: str) -> str:  # kube-router prints its version on stderr
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
        return done.stdout + done.stderr

    return {
        "kubelet": out(str(bin_dir / "kubelet"), "--version").split()[-1],
        "kube-proxy": out(str(bin_dir / "kube-proxy"), "--version").split()[-1],
        "containerd": out(str(bin_dir / "containerd"), "--version").split()[2],
        "runc": out(str(RUNC), "--version").splitlines()[0].split()[-1],
        "cni-plugins": out("dpkg-query", "-W", "-f", "${Version}", "containernetworking-plugins"),
        "coredns": out(str(bin_dir / "coredns"), "-version").split()[0].removeprefix("CoreDNS-"),
        # `Running /path/kube-router version v2.1.0, built on ...`
        "kube-router": out(str(bin_dir / "kube-router"), "--version").split(" version ")[1].split(",")[0],
    }


def image_archives() -> dict[str, Path]:
    """ClipForge's image archives by name, as scripts/build-images.sh names them (built or not)."""
    done = subprocess.run(["bash", str(BUILD_IMAGES), "--print-archives"], capture_output=True, text=True, check=True)
    return {name: Path(path) for name, _, path in (line.partition("=") for line in done.stdout.split())}


def archive_digest(archive: Path) -> str:
    """The manifest digest an OCI archive's index names (what the image is pinned by)."""
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))
    return index["manifests"][0]["digest"]


def report_header() -> list[str]:
    """The pytest header's lines: the node's versions and the images' digests."""
    bin_dir = kube_binaries.built(node=True)
    if bin_dir is None:
        return ["test node: not built yet (scripts/build-kube-binaries.sh --node)"]
    try:
        versions = node_versions(bin_dir)
    except (OSError, subprocess.CalledProcessError) as exc:
        return [f"test node: cannot read its versions ({exc})"]
    lines = ["test node: " + ", ".join(f"{name} {version}" for name, version in versions.items())]
    try:
        lines += [f"image {name}: {archive_digest(path) if path.exists() else 'not built yet'}"
                  for name, path in image_archives().items()]
    except (OSError, subprocess.CalledProcessError, tarfile.TarError, KeyError) as exc:
        lines.append(f"images: cannot read their archives ({exc})")  # the tests that use them report it
    return lines


# What kube-router's own manifests grant it (daemonset/generic-kuberouter.yaml), for its firewall.
KUBE_ROUTER_RBAC = (
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "kube-router"},
     "rules": [{"apiGroups": [""], "resources": ["namespaces", "pods", "services", "nodes", "endpoints"],
                "verbs": ["list", "get", "watch"]},
               {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["list", "get", "watch"]},
               {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "get", "watch"]}]},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "kube-router"},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kube-router"},
     "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "kube-router"}]},
)


def coredns_manifests(image: str) -> list[dict]:
    """CoreDNS as kubeadm deploys it: its ServiceAccount and RBAC, Corefile, Deployment and the kube-dns Service."""
    ns, labels = "kube-system", {"k8s-app": "kube-dns"}
    meta = {"name": "coredns", "namespace": ns}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "system:coredns"},
         "rules": [{"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"]},
                   {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "system:coredns"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
         "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": ns}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"Corefile": COREFILE}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {**meta, "labels": labels},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
             "metadata": {"labels": labels},
             "spec": {
                 "serviceAccountName": "coredns", "dnsPolicy": "Default",
                 "priorityClassName": "system-cluster-critical",
                 "containers": [{
                     "name": "coredns", "image": image, "imagePullPolicy": "Never",
                     "args": ["-conf", "/etc/coredns/Corefile"],
                     "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                               {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"}],
                     "resources": {"requests": {"cpu": "50m", "memory": "70Mi"}, "limits": {"memory": "170Mi"}},
                     "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2},
                     "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}},
                     "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                         "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}},
                     "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns", "readOnly": True}],
                 }],
                 "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
             }}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kube-dns", "namespace": ns, "labels": labels},
         "spec": {"clusterIP": CLUSTER_DNS_IP, "selector": labels,
                  "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                            {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}},
    ]


KUBERAY_NAMESPACE = "kuberay-system"
KUBERAY_LABELS = {"app.kubernetes.io/name": "kuberay-operator"}  # what the jobs' NetworkPolicies admit


def kuberay_manifests(image: str) -> list[dict]:
    """KubeRay's operator as its chart deploys it: a ServiceAccount bound to its ClusterRole, and a Deployment."""
    meta = {"name": "kuberay-operator", "namespace": KUBERAY_NAMESPACE}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KUBERAY_NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "kuberay-operator-pod"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kuberay-operator"},
         "subjects": [{"kind": "ServiceAccount", "name": "kuberay-operator", "namespace": KUBERAY_NAMESPACE}]},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {**meta, "labels": KUBERAY_LABELS},
         "spec": {"replicas": 1, "selector": {"matchLabels": KUBERAY_LABELS}, "template": {
             "metadata": {"labels": KUBERAY_LABELS},
             "spec": {
                 "serviceAccountName": "kuberay-operator",
                 "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
                 "containers": [{
                     "name": "kuberay-operator", "image": image, "imagePullPolicy": "Never",
                     "args": ["--enable-leader-election=false", "--health-probe-bind-address=:8082",
                              "--metrics-addr=:8080", "--log-stdout-encoder=console"],
                     "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
                     "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8082}, "periodSeconds": 2},
                     "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                         "capabilities": {"drop": ["ALL"]}},
                 }],
             }}}},
    ]


class Nodes:
    """Starts and stops the nodes; usable as a context manager (yields itself)."""

    def __init__(self, control_plane, workdir: Path | str, specs: tuple[NodeSpec, ...] = (CPU_NODE, GPU_NODE)):  # noqa: ANN001
        self.control_plane = control_plane
        self.workdir = Path(workdir).resolve()
        self.specs = specs
        self.nodes: list[Node] = []
        self.versions: dict[str, str] = {}
        self.image_digests: dict[str, str] = {}
        self.start_seconds: float | None = None

    def __enter__(self) -> Nodes:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.spec.name == name)

    def start(self) -> Nodes:
        began = time.monotonic()
        bin_dir = kube_binaries.ensure_built(node=True)
        self.versions = node_versions(bin_dir)
        atexit.register(self.stop)
        try:
            taken: set[int] = set()
            for spec in self.specs:
                slot, fd = claim_slot(taken)
                taken.add(slot)
                self.nodes.append(Node(spec, slot, fd, self.workdir / spec.name, bin_dir, self.control_plane,
                                       sandbox_image(self.versions)))
            for node in self.nodes:
                node.start_namespaces(peers=[n for n in self.nodes if n is not node])
                node.start_containerd()
            for spec in node_images(bin_dir, self.versions):
                archive = self.workdir / "images" / f"{spec.name.replace('/', '_').replace(':', '_')}.tar"
                self.image_digests[spec.name] = write_archive(spec, archive)
                self.import_image(archive, spec.name)
            self.control_plane.apply(*KUBE_ROUTER_RBAC)
            for node in self.nodes:
                node.start_kubelet()
                node.start_kube_proxy()
                node.start_kube_router()
            self._wait_ready()
            self.control_plane.apply(*coredns_manifests(coredns_image(self.versions)))
            self._wait(lambda: self.control_plane.kubectl(
                "-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=5s",
                check=False, timeout=30).returncode == 0, "CoreDNS to be ready")
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def import_image(self, archive: Path, name: str) -> None:
        """Imports an OCI archive into every node's containerd as `name`, the nodes side by side
        (each import is mostly one core gunzipping and one disk unpacking: the pipeline image
        took 92 s and 105 s one after the other on the 2-core VM)."""
        with ThreadPoolExecutor(max_workers=len(self.nodes) or 1) as pool:
            for done in [pool.submit(node.import_image, archive, name) for node in self.nodes]:
                done.result()

    def import_clipforge_images(self) -> None:
        """ClipForge's images, from the archives scripts/build-images.sh made (about 11 GB in each node's image store)."""
        for name, archive in image_archives().items():
            if not archive.is_file():
                raise NodeError(f"{archive} ({name}) is missing: run scripts/build-images.sh")
            self.import_image(archive, name)

    def start_kuberay(self) -> None:
        """KubeRay's operator as a pod on the nodes, in place of the control plane's process: the jobs'
        NetworkPolicies admit its pods, and nothing on the host, to their Ray dashboards."""
        bin_dir = kube_binaries.ensure_built()
        version = kube_binaries.binary_versions(bin_dir)["kuberay-operator"]
        image = f"clipforge.test/kuberay-operator:{version}"
        archive = self.workdir / "images" / "kuberay-operator.tar"
        self.image_digests[image] = write_archive(
            ImageSpec(image, files={"/kuberay-operator": bin_dir / "kuberay-operator"},
                      entrypoint=["/kuberay-operator"]), archive)
        self.import_image(archive, image)
        self.control_plane.stop_kuberay()
        self.control_plane.apply(*kuberay_manifests(image))
        self._wait(lambda: self.control_plane.kubectl(
            "-n", KUBERAY_NAMESPACE, "rollout", "status", "deployment/kuberay-operator", "--timeout=5s",
            check=False, timeout=30).returncode == 0, "KubeRay's operator to be ready")

    def stop(self) -> None:
        """Stops every node and deletes its Node object (idempotent); work directories and logs stay."""
        nodes, self.nodes = self.nodes, []
        errors = []
        for node in nodes:
            try:
                node.stop()
            except NodeError as exc:
                errors.append(exc)
        if nodes and self.control_plane.server is not None:
            self.control_plane.kubectl("delete", "node", "--ignore-not-found", "--wait=false",
                                       *(n.spec.name for n in nodes), check=False)
        atexit.unregister(self.stop)
        if errors:
            raise errors[0]

    def _wait_ready(self) -> None:
        for node in self.nodes:
            name = node.spec.name
            self._wait(lambda: self.control_plane.kubectl(
                "wait", "--for=condition=Ready", f"node/{name}", "--timeout=5s", check=False, timeout=30,
            ).returncode == 0, f"node {name} to be Ready")
            if node.spec.extended_resources:
                # What a device plugin would advertise; the kubelet copies capacity into allocatable.
                patch = {"status": {"capacity": node.spec.extended_resources}}
                self.control_plane.kubectl("patch", "node", name, "--subresource=status", "--type=merge",
                                           "-p", json.dumps(patch))
                wanted = node.spec.extended_resources
                self._wait(lambda: all(
                    json.loads(self.control_plane.kubectl("get", "node", name, "-o", "json").stdout)
                    ["status"].get("allocatable", {}).get(k) == v for k, v in wanted.items()),
                    f"node {name} to advertise {wanted}")

    def _wait(self, ready, what: str) -> None:  # noqa: ANN001
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready():
            for node in self.nodes:
                node.check_running()
            if time.monotonic() > deadline:
                raise NodeError(f"timed out after {READY_TIMEOUT_S:.0f}s waiting for {what}")
            time.sleep(0.5)
