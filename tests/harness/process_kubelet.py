"""A kubelet for tests that runs pods as local processes: what a node does, without a container runtime.

It registers Nodes with the real API server (a CPU node, and a GPU node that advertises
`nvidia.com/gpu` and carries NVIDIA's usual taint) and keeps their Leases renewed; the real
kube-scheduler decides which pods go where. Each pod bound to one of its nodes runs as its
container specs say:

- `command` + `args` exec'd as given (KubeRay's `/bin/bash -c` lines go through the real bash),
  with Kubernetes' `$(VAR)` expansion; `env` (value, fieldRef, resourceFieldRef, configMapKeyRef,
  secretKeyRef, optional), `envFrom`, `workingDir`; KUBERNETES_SERVICE_HOST/PORT point at the API
  server, as a kubelet sets them (pod_inputs.py resolves all of it);
- volumes (emptyDir, configMap, secret, downwardAPI, projected with a TokenRequest token) written
  under the pod's directory and bind-mounted at their `mountPath` (subPath too) in the
  container's own mount namespace; configMap/secret/projected volumes read-only;
- init containers one by one (each must exit 0), then all containers; restartPolicy with the
  kubelet's back-off (10 s doubling to 5 min, the first restart at once); exec, httpGet and
  tcpSocket startup/liveness/readiness probes, postStart/preStop hooks;
- real pod status: phase, podIP(s), hostIP(s), startTime, conditions, (init)containerStatuses with
  waiting/running/terminated states, exit codes, restart counts;
- deletion: preStop, SIGTERM to each container's first process, SIGKILL after the grace period
  (capped, `grace_period_cap_s`, so tests are quick), then the pod is deleted with grace 0.

How a container runs: `setpriv --pdeathsig KILL` (dies with the kubelet) -> `nsenter` into the
pod's network namespace -> `unshare` a PID, mount and UTS namespace (`--kill-child`: the whole
container dies with its first process) -> a shell that bind-mounts the volumes, a private /tmp,
the hosts file at /etc/hosts and a resolv.conf without nameservers, sets the hostname to the pod's
and execs the command. Its stdout and stderr go to `<workdir>/logs/<ns>_<pod>_<container>.log`.

Network (netns.py): each pod has its own network namespace with its own address on bridge cfbr0
(10.200.0.0/16), so Ray's fixed ports are safe in several pods at once. The API server listens
on the bridge's host address. The host does not forward packets from the bridge
(/proc/sys/net/ipv4/conf/cfbr0/forwarding is 0), so nothing a pod sends leaves the machine.

Names: one hosts file (rewritten in place: it is bind-mounted) maps pod hostnames, and
`<svc>.<ns>.svc.cluster.local`, `<svc>.<ns>.svc` and `<svc>.<ns>` to the ready addresses of
each Service's EndpointSlices (the real endpointslice controller's view; every address for
headless Services, one for ClusterIP Services); `kubernetes.default.svc` is the API server. There
is no cluster DNS: other names do not resolve in pods.

What this is not (do not mistake it for a node):
- no image is pulled or used: every container runs this test environment's Python and tools
  (PATH starts with its bin directory; login shells keep that PATH); a container without `command`
  cannot start, since its image's entrypoint is unknown; the container shares the host's root
  filesystem (only /tmp, /etc/hosts, /etc/resolv.conf and the volume mount paths are its own;
  missing mount paths are created on the host as empty directories); `securityContext` is ignored
  and everything runs as root; the default working directory is the container's private /tmp;
- no cgroups: requests and limits are not enforced (they only feed resourceFieldRef), and the
  nodes' capacity is logical (8 CPUs, 32Gi, 2 GPUs per node on a small test machine);
  `nvidia.com/gpu` is a number for the scheduler: no device is allocated or exposed;
- no kube-proxy: a ClusterIP is not routable; a ClusterIP Service's name resolves to one backing
  pod's address, so only targetPort == port works; no NodePort/LoadBalancer, no NetworkPolicy;
- no kubelet API: `kubectl exec/logs/port-forward/attach` do not work (read logs with `logs()`);
- no service links env vars except KUBERNETES_SERVICE_*; no native sidecars (init containers with
  restartPolicy Always), no gRPC probes, no hostNetwork, no shareProcessNamespace, no ephemeral
  containers, no activeDeadlineSeconds, no in-place resize; ConfigMap/Secret changes and token
  expiry after a pod started are not propagated; no hostPath/PVC/CSI volumes (the pod waits with a
  message naming the volume); no eviction, no node pressure, no static pods, no Events.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import datetime
import http.client
import ipaddress
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import kubernetes.config
import urllib3
from kubernetes.client import Configuration

from harness import netns
from harness.pod_inputs import (ClusterObjects, Mount, PodConfigError, container_argv, container_env,
                                container_mounts, materialise_volumes)
from harness.processes import die_with_parent

CLUSTER_DOMAIN = "cluster.local"
SYNC_PERIOD_S = 0.5  # how often pods, Services and EndpointSlices are read
POD_TICK_S = 0.1  # how often a pod's containers are looked at
LEASE_SECONDS = 40
LEASE_RENEW_S = 10.0
NODE_STATUS_S = 60.0
BACKOFF_INITIAL_S, BACKOFF_MAX_S = 10.0, 300.0
NODE_READY_TIMEOUT_S = 90.0
TERMINAL = ("Succeeded", "Failed")
# PATH of every container: this test environment's Python first (no image is used), then the system's.
CONTAINER_PATH = f"{Path(sys.executable).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What stands in for the image: this environment's Python (a virtualenv's prefix) and the checkout
# its editable install imports from. Those under /tmp are mounted into each container's private
# /tmp (read-only), or a checkout or virtualenv under /tmp would vanish inside every pod.
ENVIRONMENT_UNDER_TMP = sorted({p for p in (Path(sys.prefix), Path(__file__).resolve().parents[2])
                                if Path("/tmp") in p.parents})
UNSHARE = shutil.which("unshare") or "unshare"
SH = shutil.which("sh") or "/bin/sh"

log = logging.getLogger("process_kubelet")


class KubeletError(RuntimeError):
    """The kubelet could not register or serve its nodes."""


class ApiError(RuntimeError):
    def __init__(self, status: int, method: str, path: str, message: str):
        super().__init__(f"{method} {path}: HTTP {status}: {message}")
        self.status = status


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- the API -----------------------------------------------------------------------------------

class KubeApi:
    """JSON over HTTPS with a kubeconfig's credentials: dicts in, dicts out (thread-safe)."""

    def __init__(self, kubeconfig: Path):
        config = Configuration()
        kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=config)
        self.server = config.host.rstrip("/")
        self._headers = {"Accept": "application/json"}
        token = config.api_key.get("authorization") or config.api_key.get("BearerToken")
        if token:
            self._headers["Authorization"] = token if token.startswith("Bearer ") else f"Bearer {token}"
        self._pool = urllib3.PoolManager(
            maxsize=16, block=False, cert_reqs="CERT_REQUIRED", ca_certs=config.ssl_ca_cert,
            cert_file=config.cert_file, key_file=config.key_file, retries=False,
            timeout=urllib3.Timeout(connect=5.0, read=30.0))

    def request(self, method: str, path: str, body: dict | None = None, *, query: dict | None = None,
                content_type: str = "application/json", missing_ok: bool = False) -> dict | None:
        url = self.server + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        headers = dict(self._headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        resp = self._pool.request(method, url, body=data, headers=headers)
        if resp.status == 404 and missing_ok:
            return None
        if resp.status >= 400:
            try:
                message = json.loads(resp.data).get("message", "")
            except ValueError:
                message = resp.data[:200].decode(errors="replace")
            raise ApiError(resp.status, method, path, message)
        return json.loads(resp.data) if resp.data else {}

    def get(self, path: str, **kw) -> dict | None:
        return self.request("GET", path, **kw)

    def merge_patch(self, path: str, body: dict, **kw) -> dict | None:
        return self.request("PATCH", path, body, content_type="application/merge-patch+json", **kw)


class _ApiObjects(ClusterObjects):
    """What pods refer to, read from the API server."""

    def __init__(self, api: KubeApi):
        self.api = api

    def config_map(self, namespace: str, name: str) -> dict | None:
        return self.api.get(f"/api/v1/namespaces/{namespace}/configmaps/{name}", missing_ok=True)

    def secret(self, namespace: str, name: str) -> dict | None:
        return self.api.get(f"/api/v1/namespaces/{namespace}/secrets/{name}", missing_ok=True)

    def service_account_token(self, pod: dict, audience: str | None, expiration_seconds: int) -> str:
        meta = pod["metadata"]
        account = pod["spec"].get("serviceAccountName") or "default"
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {
            "audiences": [audience] if audience else [],  # empty: the API server's own audience
            "expirationSeconds": expiration_seconds,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}}}
        try:
            done = self.api.request("POST", f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token",
                                    request)
        except ApiError as exc:
            raise PodConfigError(f"cannot get a token for serviceaccount {account!r}: {exc}") from exc
        return done["status"]["token"]


# -- nodes -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NodeConfig:
    """A Node the kubelet registers; capacity is logical (what the scheduler counts), not the machine's."""

    name: str
    capacity: dict[str, str]
    labels: dict[str, str] = field(default_factory=dict)
    taints: tuple[dict, ...] = ()


_BASE_CAPACITY = {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
CPU_NODE = NodeConfig("cpu-node", dict(_BASE_CAPACITY))
GPU_NODE = NodeConfig("gpu-node", {**_BASE_CAPACITY, "nvidia.com/gpu": "2"},
                      labels={"nvidia.com/gpu.present": "true", "nvidia.com/gpu.count": "2"},
                      taints=(GPU_TAINT,))
DEFAULT_NODES = (CPU_NODE, GPU_NODE)


def _node_object(node: NodeConfig) -> dict:
    labels = {"kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux",
              "kubernetes.io/arch": "amd64", **node.labels}
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node.name, "labels": labels},
            "spec": {"taints": [dict(t) for t in node.taints]}}


def _node_status(node: NodeConfig) -> dict:
    now = _now()

    def condition(kind: str, status: str, reason: str, message: str) -> dict:
        return {"type": kind, "status": status, "reason": reason, "message": message,
                "lastHeartbeatTime": now, "lastTransitionTime": now}

    return {
        "capacity": node.capacity, "allocatable": node.capacity,
        "conditions": [
            condition("Ready", "True", "KubeletReady", "process kubelet is posting ready status"),
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "logical capacity"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "logical capacity"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "logical capacity"),
        ],
        "addresses": [{"type": "InternalIP", "address": netns.HOST_IP}, {"type": "Hostname", "address": node.name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},  # no kubelet API is served
        "nodeInfo": {"machineID": node.name, "systemUUID": node.name, "bootID": node.name,
                     "kernelVersion": os.uname().release, "osImage": "process kubelet (tests/harness)",
                     "containerRuntimeVersion": "process://0", "kubeletVersion": "v0.0.0-process",
                     "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"},
    }


# -- the hosts file ----------------------------------------------------------------------------

@dataclass(frozen=True, order=True)
class PodName:
    address: str
    hostname: str
    namespace: str
    subdomain: str | None = None


def render_hosts(pods: Sequence[PodName], services: Sequence[dict], endpoint_slices: Sequence[dict]) -> str:
    """The hosts file: pod hostnames, and Service names at their ready endpoint addresses.

    Headless Services resolve to every ready address (and `<hostname>.<svc>...` for endpoints with
    a hostname); ClusterIP Services to one of them, as there is no kube-proxy.
    """
    ready: dict[tuple[str, str], set[str]] = {}
    hostnames: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for eps in endpoint_slices:
        service = (eps.get("metadata", {}).get("labels") or {}).get("kubernetes.io/service-name")
        if not service or eps.get("addressType") != "IPv4":
            continue
        key = (eps["metadata"]["namespace"], service)
        for endpoint in eps.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            ready.setdefault(key, set()).update(endpoint.get("addresses") or [])
            if endpoint.get("hostname"):
                hostnames.setdefault(key, set()).update((a, endpoint["hostname"]) for a in endpoint["addresses"])

    def by_address(addresses):  # noqa: ANN001, ANN202
        return sorted(addresses, key=ipaddress.ip_address)

    lines = ["# Kept by the process kubelet (tests/harness/process_kubelet.py): pod and Service names.",
             "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
             f"{netns.HOST_IP}\tkubernetes.default.svc.{CLUSTER_DOMAIN} kubernetes.default.svc kubernetes.default"]
    for pod in sorted(pods):
        names = [pod.hostname]
        if pod.subdomain:
            names.insert(0, f"{pod.hostname}.{pod.subdomain}.{pod.namespace}.svc.{CLUSTER_DOMAIN}")
        lines.append(f"{pod.address}\t{' '.join(names)}")
    for svc in sorted(services, key=lambda s: (s["metadata"]["namespace"], s["metadata"]["name"])):
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        spec = svc.get("spec") or {}
        if (ns, name) == ("default", "kubernetes") or spec.get("type") == "ExternalName":
            continue
        addresses = by_address(ready.get((ns, name), ()))
        if spec.get("clusterIP") != "None":
            addresses = addresses[:1]
        names = f"{name}.{ns}.svc.{CLUSTER_DOMAIN} {name}.{ns}.svc {name}.{ns}"
        lines += [f"{address}\t{names}" for address in addresses]
        if spec.get("clusterIP") == "None":
            lines += [f"{a}\t{h}.{name}.{ns}.svc.{CLUSTER_DOMAIN}" for a, h in sorted(hostnames.get((ns, name), ()))]
    return "\n".join(lines) + "\n"


def write_in_place(path: Path, text: str) -> None:
    """Overwrites the file without replacing it (bind mounts keep showing the same inode).

    It never gets shorter: a reader between the write and a truncation would see a stale tail.
    A comment pads the new text to the old length instead.
    """
    data = text.encode()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        old = os.fstat(fd).st_size
        if old > len(data):
            data += b"#" * (old - len(data) - 1) + b"\n"
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


# -- containers --------------------------------------------------------------------------------

@dataclass
class _Probe:
    kind: str  # startup, liveness, readiness
    spec: dict
    next_at: float
    successes: int = 0
    failures: int = 0
    future: concurrent.futures.Future | None = None


@dataclass
class _Container:
    spec: dict
    init: bool
    log: Path
    waiting: tuple[str, str]  # (reason, message) while not running and not terminated for good
    proc: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)
    container_id: str = ""
    started_at: str = ""
    terminated: dict | None = None
    last_terminated: dict | None = None
    runs: int = 0
    restart_count: int = 0
    backoff: float = 0.0
    next_start: float = 0.0
    done: bool = False  # terminated and will not be restarted
    started: bool = False  # the startup probe passed (or there is none)
    ready: bool = False
    probes: list[_Probe] = field(default_factory=list)
    kill_message: str = ""

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def running(self) -> bool:
        return self.proc is not None

    def first_process(self) -> int | None:
        """Host PID of the container's PID 1 (the child `unshare --fork` made)."""
        if self.proc is None:
            return None
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None


def _rc_to_exit_code(rc: int) -> int:
    return rc if rc >= 0 else 128 - rc  # killed by signal N: 128+N, as container runtimes report


class _PodRunner:
    """Runs one pod: its own thread, which starts (and so outlives) every process of the pod."""

    def __init__(self, kubelet: ProcessKubelet, pod: dict):
        self.k = kubelet
        self.pod = pod
        meta, spec = pod["metadata"], pod["spec"]
        self.uid, self.namespace, self.name = meta["uid"], meta["namespace"], meta["name"]
        self.hostname = (spec.get("hostname") or self.name)[:63]
        self.subdomain = spec.get("subdomain")
        self.dir = kubelet.workdir / "pods" / f"{self.namespace}_{self.name}_{self.uid[:8]}"
        self.restart_policy = spec.get("restartPolicy", "Always")
        has_init = bool(spec.get("initContainers"))
        self.init = [self._container(c, True, "PodInitializing") for c in spec.get("initContainers") or []]
        self.main = [self._container(c, False, "PodInitializing" if has_init else "ContainerCreating")
                     for c in spec["containers"]]
        self.start_time = _now()
        self.network: netns.PodNetwork | None = None
        self.address: str | None = None
        self.volumes: dict | None = None
        self.stage = "sandbox"  # sandbox -> volumes -> init -> main -> terminal
        self.init_failed = False
        self.retry_at = 0.0
        self.deletion_grace: float | None = None  # set when the pod has a deletionTimestamp
        self.vanished = False  # the pod is gone from the API (deleted with grace 0 by someone)
        self.deleted = False  # its containers were stopped for the deletion
        self.written: dict | None = None
        self.status_retry_at = 0.0
        self.transitions: dict[str, tuple[str, str]] = {}  # condition type -> (status, since)
        self.wake = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"pod {self.namespace}/{self.name}", daemon=True)

    def _container(self, spec: dict, init: bool, reason: str) -> _Container:
        return _Container(spec, init, self.k.log_path(self.namespace, self.name, spec["name"]), (reason, ""))

    # -- called by the kubelet's sync thread -------------------------------------------------

    def observe(self, pod: dict) -> None:
        self.pod = pod
        meta = pod["metadata"]
        if meta.get("deletionTimestamp") and self.deletion_grace is None:
            grace = meta.get("deletionGracePeriodSeconds", pod["spec"].get("terminationGracePeriodSeconds", 30))
            self.deletion_grace = float(grace)
            self.wake.set()

    def gone(self) -> None:
        self.vanished = True
        self.wake.set()

    def pod_name(self) -> PodName | None:
        if self.network is None:
            return None
        return PodName(self.network.address, self.hostname, self.namespace, self.subdomain)

    # -- the pod's thread --------------------------------------------------------------------

    def _interrupted(self) -> bool:
        return self.deletion_grace is not None or self.vanished or self.k.stopping.is_set()

    def _run(self) -> None:
        try:
            while not self._interrupted():
                self._step()
                if self.stage == "terminal" and self.network is not None:
                    self._release_network()
                self._write_status()
                self.wake.wait(POD_TICK_S)
                self.wake.clear()
            self._terminate()
        except Exception:  # one pod's trouble must not take the kubelet down
            log.exception("pod %s/%s: runner failed", self.namespace, self.name)
        finally:
            for c in self.init + self.main:
                self._kill_for_good(c)
            self._release_network()
            shutil.rmtree(self.dir, ignore_errors=True)  # volumes hold secrets

    def _step(self) -> None:
        now = time.monotonic()
        if self.stage == "sandbox":
            if now < self.retry_at:
                return
            if self.pod["spec"].get("hostNetwork"):
                self._all_waiting("CreateContainerConfigError", "hostNetwork pods are not supported by the process kubelet")
                self.retry_at = float("inf")
                return
            try:
                self.network = netns.PodNetwork.create()
            except Exception as exc:  # noqa: BLE001 - reported on the pod, retried
                self._all_waiting("ContainerCreating", f"pod network: {exc}")
                self.retry_at = now + 1.0
                return
            self.address = self.network.address
            self._prepare_files()
            self.k.refresh_hosts()  # its own hostname resolves before anything of it starts
            self.stage = "volumes"
        if self.stage == "volumes":
            if now < self.retry_at:
                return
            try:
                self.volumes = materialise_volumes(self._pod_view(), self.dir, self.k.objects, self.k.allocatable(self))
            except Exception as exc:  # noqa: BLE001 - e.g. the ConfigMap is not created yet: a kubelet retries
                self._all_waiting("ContainerCreating", f"MountVolume failed: {exc}")
                self.retry_at = now + 1.0
                return
            self._all_waiting(None, "")
            self.stage = "init"
        if self.stage == "init":
            pending = next((c for c in self.init if not c.done), None)
            if pending is not None:  # one at a time, in order
                self._drive(pending, now)
                if pending.done and pending.terminated["exitCode"] != 0:
                    self.init_failed = True
                    self.stage = "terminal"
                return
            self.stage = "main"
        if self.stage == "main":
            for c in self.main:
                self._drive(c, now)
            if all(c.done for c in self.main):
                self.stage = "terminal"

    def _all_waiting(self, reason: str | None, message: str) -> None:
        for c in self.init + self.main:
            if not c.running and c.runs == 0:
                c.waiting = (reason or c.waiting[0], message)

    # -- one container -----------------------------------------------------------------------

    def _drive(self, c: _Container, now: float) -> None:
        if c.done:
            return
        if c.proc is None:
            if now >= c.next_start:
                self._start(c, now)
            return
        rc = c.proc.poll()
        if rc is None:
            self._probe(c, now)
            return
        self._record_exit(c, rc)
        code = c.terminated["exitCode"]
        restarts = self.restart_policy == "Always" or (self.restart_policy == "OnFailure" and code != 0)
        if c.init:
            restarts = code != 0 and self.restart_policy != "Never"
        if not restarts:
            c.done = True
            return
        delay, c.backoff = c.backoff, (BACKOFF_INITIAL_S if c.backoff == 0 else min(2 * c.backoff, BACKOFF_MAX_S))
        c.next_start = now + delay
        c.last_terminated, c.terminated = c.terminated, None
        c.waiting = ("CrashLoopBackOff", f"back-off {delay:.0f}s restarting failed container={c.name} "
                                         f"pod={self.name}_{self.namespace}({self.uid})")
        if not delay:  # the first restart is immediate
            self._start(c, now)

    def _start(self, c: _Container, now: float) -> None:
        try:
            if c.init and c.spec.get("restartPolicy") == "Always":
                raise PodConfigError(f"init container {c.name!r} is a sidecar (restartPolicy Always): "
                                     f"not supported by the process kubelet")
            c.env = container_env(self._pod_view(), c.spec, self.k.objects, self._base_env(), self.k.allocatable(self))
            argv = container_argv(c.spec, c.env)
            mounts = container_mounts(c.spec, self.volumes, c.env)
            probes = self._probes(c.spec, now)
            argv = die_with_parent(self.network.enter([
                UNSHARE, "--pid", "--fork", "--kill-child", "--mount", "--uts", "--mount-proc", "--",
                SH, "-c", self._setup_script(c, mounts), f"{c.name}-setup", *argv]))
            with open(c.log, "ab") as out:
                c.proc = subprocess.Popen(argv, env=c.env, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, cwd="/", start_new_session=True)
        except Exception as exc:  # noqa: BLE001 - a missing Secret or a busy API server: retried, as a kubelet does
            reason = "CreateContainerConfigError" if isinstance(exc, PodConfigError) else "CreateContainerError"
            c.waiting = (reason, str(exc))
            c.next_start = now + 1.0
            return
        if c.runs:
            c.restart_count += 1
        c.runs += 1
        c.container_id = f"process://{c.proc.pid}"
        c.started_at = _now()
        c.terminated = None
        c.probes = probes
        c.started = not any(p.kind == "startup" for p in probes)
        c.ready = False
        log.info("pod %s/%s: started container %s (pid %d)", self.namespace, self.name, c.name, c.proc.pid)
        hook = (c.spec.get("lifecycle") or {}).get("postStart")
        if hook:
            ok, message = self._action(c, hook, timeout=60.0)
            if not ok:
                c.kill_message = f"FailedPostStartHook: {message}"
                self._stop_container(c, self._grace(float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))))

    def _record_exit(self, c: _Container, rc: int) -> None:
        code = _rc_to_exit_code(rc)
        c.terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                        "startedAt": c.started_at, "finishedAt": _now(), "containerID": c.container_id}
        if c.kill_message:
            c.terminated["message"] = c.kill_message
            c.kill_message = ""
        c.proc = None
        c.ready = False
        c.started = False
        for p in c.probes:
            if p.future is not None:
                p.future.cancel()
        c.probes = []
        log.info("pod %s/%s: container %s exited with %d", self.namespace, self.name, c.name, code)

    @staticmethod
    def _kill(c: _Container) -> None:
        """SIGKILL to `unshare`: its child, the container's PID 1, dies with it, and with PID 1 all the rest.

        The exit is recorded by whoever looks next (_drive restarts it if the policy says so).
        """
        if c.proc is None or c.proc.poll() is not None:
            return
        try:
            os.kill(c.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        c.proc.wait()

    def _kill_for_good(self, c: _Container) -> None:
        self._kill(c)
        if c.proc is not None:
            self._record_exit(c, c.proc.returncode)
        c.done = True

    def _stop_container(self, c: _Container, grace: float) -> None:
        """preStop, SIGTERM to PID 1, SIGKILL after `grace` seconds (as a kubelet stops a container)."""
        deadline = time.monotonic() + grace
        hook = (c.spec.get("lifecycle") or {}).get("preStop")
        if hook and grace > 0:
            self._action(c, hook, timeout=grace)
        self._signal_first_process(c, signal.SIGTERM)
        while c.proc is not None and c.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        self._kill(c)

    def _signal_first_process(self, c: _Container, sig: int) -> None:
        pid = c.first_process()
        if pid is None:
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    # -- probes and hooks --------------------------------------------------------------------

    def _probes(self, spec: dict, now: float) -> list[_Probe]:
        probes = []
        for kind in ("startup", "liveness", "readiness"):
            probe = spec.get(f"{kind}Probe")
            if not probe:
                continue
            if not any(a in probe for a in ("exec", "httpGet", "tcpSocket")):
                raise PodConfigError(f"container {spec['name']!r}: {kind}Probe {sorted(probe)} is not supported "
                                     f"by the process kubelet (exec, httpGet and tcpSocket are)")
            probes.append(_Probe(kind, probe, now + probe.get("initialDelaySeconds", 0)))
        return probes

    def _probe(self, c: _Container, now: float) -> None:
        for p in c.probes:
            if (p.kind == "startup") == c.started:
                continue  # startup runs until it passes, the others after
            if p.future is not None:
                if not p.future.done():
                    continue
                ok, message = p.future.result()
                p.future = None
                p.successes, p.failures = (p.successes + 1, 0) if ok else (0, p.failures + 1)
                if not ok:
                    log.info("pod %s/%s: %s probe of %s failed: %s", self.namespace, self.name, p.kind, c.name, message)
                if self._judge(c, p, ok, message):
                    return  # the container was stopped
            if p.future is None and now >= p.next_at:
                p.future = self.k.probe_pool.submit(self._action, c, p.spec, float(p.spec.get("timeoutSeconds", 1)))
                p.next_at = now + p.spec.get("periodSeconds", 10)
        if not any(p.kind == "readiness" for p in c.probes):
            c.ready = c.started

    def _judge(self, c: _Container, p: _Probe, ok: bool, message: str) -> bool:
        """Acts on a probe result; True when it stopped the container."""
        threshold = p.spec.get("failureThreshold", 3)
        if p.kind == "readiness":
            if ok and p.successes >= p.spec.get("successThreshold", 1):
                c.ready = True
            elif not ok and p.failures >= threshold:
                c.ready = False
            return False
        if ok:
            if p.kind == "startup":
                c.started = True
            return False
        if p.failures < threshold:
            return False
        c.kill_message = f"{p.kind} probe failed {p.failures} times: {message}"
        grace = p.spec.get("terminationGracePeriodSeconds", self.pod["spec"].get("terminationGracePeriodSeconds", 30))
        self._stop_container(c, self._grace(float(grace)))
        return True

    def _action(self, c: _Container, action: dict, timeout: float) -> tuple[bool, str]:
        """Runs a probe's or hook's handler: exec in the container, httpGet/tcpSocket to the pod, sleep."""
        try:
            if "exec" in action:
                return self._exec(c, action["exec"].get("command") or [], timeout)
            if "httpGet" in action:
                return self._http_get(c, action["httpGet"], timeout)
            if "tcpSocket" in action:
                host = action["tcpSocket"].get("host") or self.address
                with socket.create_connection((host, self._port(c, action["tcpSocket"]["port"])), timeout=timeout):
                    return True, ""
            if "sleep" in action:
                time.sleep(min(float(action["sleep"]["seconds"]), timeout))
                return True, ""
            return False, f"unsupported handler {sorted(action)}"
        except (OSError, http.client.HTTPException, PodConfigError) as exc:
            return False, str(exc)

    def _exec(self, c: _Container, command: list[str], timeout: float) -> tuple[bool, str]:
        deadline = time.monotonic() + min(timeout, 2.0)
        while (pid := c.first_process()) is None and c.running and time.monotonic() < deadline:
            time.sleep(0.02)  # `unshare` has not forked the container's PID 1 yet
        if pid is None:
            return False, "the container has no process"
        # Into all the container's namespaces, its working directory, with its environment.
        argv = [netns.NSENTER, "-t", str(pid), "-m", "-u", "-n", "-p", "-w", "--", *command]
        proc = subprocess.Popen(argv, env=c.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return False, f"command timed out after {timeout:g}s"
        text = out.decode(errors="replace").strip()[-500:]
        return proc.returncode == 0, f"exit code {proc.returncode}: {text}" if proc.returncode else text

    def _http_get(self, c: _Container, get: dict, timeout: float) -> tuple[bool, str]:
        host, port = get.get("host") or self.address, self._port(c, get["port"])
        if get.get("scheme", "HTTP").upper() == "HTTPS":  # a kubelet does not verify probe certificates
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl._create_unverified_context())  # noqa: S323
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        headers = {"User-Agent": "kube-probe/process-kubelet", "Accept": "*/*"}
        headers.update({h["name"]: h["value"] for h in get.get("httpHeaders") or []})
        try:
            conn.request("GET", get.get("path") or "/", headers=headers)
            status = conn.getresponse().status
        finally:
            conn.close()
        return 200 <= status < 400, f"HTTP {status}"

    @staticmethod
    def _port(c: _Container, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in c.spec.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
        raise PodConfigError(f"container {c.name!r} has no port named {port!r}")

    # -- files and environment ---------------------------------------------------------------

    def _prepare_files(self) -> None:
        (self.dir / "etc").mkdir(parents=True, exist_ok=True)
        (self.dir / "etc" / "resolv.conf").write_text(
            "# No cluster DNS: names resolve through /etc/hosts, kept by the process kubelet.\n"
            "options timeout:1 attempts:1\n")

    def _setup_script(self, c: _Container, mounts: list[Mount]) -> str:
        """The shell lines that make the container's mount namespace, then exec its command.

        The private /tmp comes last (recursively, with the mounts made under it), since the
        sources may themselves live under the host's /tmp.
        """
        q = shlex.quote
        own = self.dir / "containers" / c.name
        tmp = own / "tmp"
        shutil.rmtree(tmp, ignore_errors=True)  # a restarted container starts from a clean /tmp
        tmp.mkdir(parents=True)
        tmp.chmod(0o1777)
        lines = ["set -e", f"mount --bind {q(str(self.k.hosts_file))} /etc/hosts",
                 f"mount --bind {q(str(self.dir / 'etc' / 'resolv.conf'))} /etc/resolv.conf"]
        profile = Path("/etc/profile")
        if profile.is_file():  # Debian's resets PATH for login shells (`bash -l`); keep the container's
            (own / "profile").write_text(f"{profile.read_text()}\nPATH={q(c.env.get('PATH', CONTAINER_PATH))}\n"
                                         "export PATH\n")
            lines.append(f"mount --bind {q(str(own / 'profile'))} /etc/profile")
        for path in ENVIRONMENT_UNDER_TMP:
            target = q(str(tmp / path.relative_to("/tmp")))
            lines += [f"mkdir -p {target}", f"mount --bind {q(str(path))} {target}",
                      f"mount -o remount,bind,ro {target}"]
        for m in sorted(mounts, key=lambda m: len(Path(m.target).parts)):  # parents before children
            target = Path(m.target)
            if target == Path("/tmp") or Path("/tmp") in target.parents:
                target = tmp / target.relative_to("/tmp")
            if m.source.is_dir():
                lines.append(f"mkdir -p {q(str(target))}")
            else:
                lines.append(f"mkdir -p {q(str(target.parent))}; [ -e {q(str(target))} ] || : > {q(str(target))}")
            lines.append(f"mount --bind {q(str(m.source))} {q(str(target))}")
            if m.read_only:
                lines.append(f"mount -o remount,bind,ro {q(str(target))}")
        workdir = q(c.spec.get("workingDir") or "/tmp")
        lines += [f"mount --rbind {q(str(tmp))} /tmp", f"hostname {q(self.hostname)}",
                  f"mkdir -p {workdir}", f"cd {workdir}", 'exec "$@"']
        return "\n".join(lines)

    def _base_env(self) -> dict[str, str]:
        return {"PATH": CONTAINER_PATH, "HOME": "/root", "HOSTNAME": self.hostname,
                "KUBERNETES_SERVICE_HOST": self.k.api_host, "KUBERNETES_SERVICE_PORT": str(self.k.api_port),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(self.k.api_port)}

    def _pod_view(self) -> dict:
        """The pod as its containers' downward API sees it: with the addresses this kubelet gave it."""
        status = dict(self.pod.get("status") or {})
        status.update(hostIP=netns.HOST_IP, hostIPs=[{"ip": netns.HOST_IP}])
        if self.address:
            status.update(podIP=self.address, podIPs=[{"ip": self.address}])
        return {**self.pod, "status": status}

    def _grace(self, seconds: float) -> float:
        return max(0.0, min(seconds, self.k.grace_period_cap_s))

    # -- status ------------------------------------------------------------------------------

    def _phase(self) -> str:
        if self.init_failed:
            return "Failed"
        if self.deleted:  # a deleted pod ends terminal, by its containers' exit codes
            ok = all(c.terminated and c.terminated["exitCode"] == 0 for c in self.main)
            return "Succeeded" if ok else "Failed"
        if self.stage in ("sandbox", "volumes", "init") or any(c.runs == 0 for c in self.main):
            return "Pending"
        if not all(c.done for c in self.main):
            return "Running"
        return "Succeeded" if all(c.terminated["exitCode"] == 0 for c in self.main) else "Failed"

    def _container_status(self, c: _Container) -> dict:
        if c.running:
            state = {"running": {"startedAt": c.started_at}}
        elif c.terminated is not None:
            state = {"terminated": c.terminated}
        else:
            reason, message = c.waiting
            state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
        status = {"name": c.name, "image": c.spec.get("image", ""), "imageID": "", "ready": c.ready,
                  "restartCount": c.restart_count, "state": state,
                  "lastState": {"terminated": c.last_terminated} if c.last_terminated else {}}
        if not c.init:
            status["started"] = c.running and c.started
        if c.container_id:
            status["containerID"] = c.container_id
        return status

    def _condition(self, kind: str, ok: bool, reason: str = "", message: str = "") -> dict:
        status = "True" if ok else "False"
        previous = self.transitions.get(kind)
        since = previous[1] if previous and previous[0] == status else _now()
        self.transitions[kind] = (status, since)
        cond = {"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": since}
        if not ok and reason:
            cond.update(reason=reason, message=message)
        return cond

    def _status(self) -> dict:
        phase = self._phase()
        terminal = phase in TERMINAL
        initialized = not self.init_failed and all(c.done and c.terminated["exitCode"] == 0 for c in self.init)
        unready = [c.name for c in self.main if not c.ready]
        not_initialized = [c.name for c in self.init if not c.done or c.terminated["exitCode"] != 0]
        gates = [g["conditionType"] for g in self.pod["spec"].get("readinessGates") or []]
        theirs = {c["type"]: c for c in (self.pod.get("status") or {}).get("conditions") or []}
        gates_ok = all(theirs.get(g, {}).get("status") == "True" for g in gates)
        ready_reason = "PodCompleted" if terminal else "ContainersNotReady"
        ready_message = "" if terminal else f"containers with unready status: [{' '.join(unready)}]"
        mine = [
            self._condition("PodReadyToStartContainers", self.network is not None),
            self._condition("Initialized", initialized, "PodCompleted" if terminal else "ContainersNotInitialized",
                            f"containers with incomplete status: [{' '.join(not_initialized)}]"),
            self._condition("ContainersReady", not unready and not terminal, ready_reason, ready_message),
            self._condition("Ready", not unready and not terminal and gates_ok, ready_reason,
                            ready_message if unready else "readiness gates not met"),
        ]
        owned = {c["type"] for c in mine}
        status = {
            "phase": phase, "hostIP": netns.HOST_IP, "hostIPs": [{"ip": netns.HOST_IP}], "startTime": self.start_time,
            "conditions": [c for t, c in theirs.items() if t not in owned] + mine,
            "containerStatuses": [self._container_status(c) for c in self.main],
            "observedGeneration": self.pod["metadata"].get("generation", 1),
        }
        if self.init:
            status["initContainerStatuses"] = [self._container_status(c) for c in self.init]
        if self.address:
            status.update(podIP=self.address, podIPs=[{"ip": self.address}])
        return status

    def _write_status(self, force: bool = False) -> None:
        status = self._status()
        if status == self.written or (not force and time.monotonic() < self.status_retry_at):
            return
        try:
            self.k.api.merge_patch(f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status", {"status": status})
            self.written = status
        except ApiError as exc:
            if exc.status == 404:
                self.vanished = True
            else:
                log.warning("pod %s/%s: status update failed: %s", self.namespace, self.name, exc)
                self.status_retry_at = time.monotonic() + 1.0
        except Exception as exc:  # noqa: BLE001 - the API server may be restarting; retried
            log.warning("pod %s/%s: status update failed: %s", self.namespace, self.name, exc)
            self.status_retry_at = time.monotonic() + 1.0

    # -- the end -----------------------------------------------------------------------------

    def _terminate(self) -> None:
        """Deletion (graceful, then the pod object goes), vanishing or the kubelet stopping (kill)."""
        graceful = self.deletion_grace is not None and not self.vanished and not self.k.stopping.is_set()
        running = [c for c in self.init + self.main if c.running]
        if graceful and running:
            grace = self._grace(self.deletion_grace)
            threads = [threading.Thread(target=self._stop_container, args=(c, grace)) for c in running]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        for c in self.init + self.main:
            self._kill_for_good(c)
        self.stage = "terminal"
        self._release_network()
        if not graceful:
            return
        self.deleted = True
        self._write_status(force=True)
        try:
            self.k.api.request("DELETE", f"/api/v1/namespaces/{self.namespace}/pods/{self.name}",
                               {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}}, missing_ok=True)
        except ApiError as exc:
            if exc.status != 409:  # 409: a new pod of the same name; this one is gone already
                log.warning("pod %s/%s: final delete failed: %s", self.namespace, self.name, exc)
        log.info("pod %s/%s: deleted", self.namespace, self.name)

    def _release_network(self) -> None:
        if self.network is None:
            return
        network, self.network = self.network, None
        network.delete()
        self.k.refresh_hosts()


# -- the kubelet -------------------------------------------------------------------------------

class ProcessKubelet:
    """Registers `nodes` and runs the pods bound to them; a context manager (start/stop).

    kubeconfig: admin credentials for the API server (the pods reach it at the kubeconfig's host,
    which must be reachable from the pod bridge, e.g. netns.HOST_IP). workdir: logs/, pods/ and
    kubelet.log. hosts_file: the file pods (and the KubeRay operator, via netns.with_hosts_file)
    see as /etc/hosts.
    """

    def __init__(self, kubeconfig: Path | str, workdir: Path | str, hosts_file: Path | str, *,
                 nodes: Sequence[NodeConfig] = DEFAULT_NODES, grace_period_cap_s: float = 2.0):
        self.workdir = Path(workdir).resolve()
        self.hosts_file = Path(hosts_file).resolve()
        self.nodes = {n.name: n for n in nodes}
        self.grace_period_cap_s = grace_period_cap_s
        self.api = KubeApi(Path(kubeconfig))
        self.objects = _ApiObjects(self.api)
        server = urllib.parse.urlsplit(self.api.server)
        self.api_host, self.api_port = server.hostname, server.port or 443
        self.stopping = threading.Event()
        self.probe_pool = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe")
        self._runners: dict[str, _PodRunner] = {}
        self._runners_lock = threading.Lock()
        self._hosts_lock = threading.Lock()
        self._services: list[dict] = []
        self._slices: list[dict] = []
        self._hosts_text: str | None = None
        self._force_deleted: set[str] = set()
        self._thread: threading.Thread | None = None
        self._log_handler: logging.Handler | None = None

    def __enter__(self) -> ProcessKubelet:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def node_names(self) -> list[str]:
        return list(self.nodes)

    def log_path(self, namespace: str, pod: str, container: str) -> Path:
        return self.workdir / "logs" / f"{namespace}_{pod}_{container}.log"

    def logs(self, namespace: str, pod: str, container: str) -> str:
        """Everything the container wrote to stdout and stderr, over all its restarts ('' if nothing yet)."""
        try:
            return self.log_path(namespace, pod, container).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def allocatable(self, runner: _PodRunner) -> dict[str, str]:
        node = self.nodes.get(runner.pod["spec"].get("nodeName"))
        return node.capacity if node else {}

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> ProcessKubelet:
        if self._thread is not None:
            return self
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        (self.workdir / "pods").mkdir(parents=True, exist_ok=True)
        self._log_handler = logging.FileHandler(self.workdir / "kubelet.log")
        self._log_handler.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(levelname)s %(message)s"))
        log.addHandler(self._log_handler)
        log.setLevel(logging.INFO)
        netns.ensure_bridge()
        for stale in netns.remove_stale_pod_networks():
            log.info("removed the stale pod network %s", stale)
        atexit.register(self.stop)
        self.refresh_hosts()
        self._next_lease = time.monotonic() + LEASE_RENEW_S
        self._next_node_status = time.monotonic() + NODE_STATUS_S
        self._thread = threading.Thread(target=self._sync_loop, name="kubelet sync", daemon=True)
        began = time.monotonic()
        try:
            for node in self.nodes.values():
                self._register(node)
            self._thread.start()
            self._wait_schedulable()
        except BaseException:
            self.stop()
            raise
        log.info("nodes %s schedulable %.1fs after registering", ", ".join(self.nodes), time.monotonic() - began)
        return self

    def stop(self) -> None:
        """Kills every process it started, removes the pod networks, deletes its Nodes (idempotent)."""
        if self._thread is None:
            return
        self.stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        with self._runners_lock:
            runners = list(self._runners.values())
        for r in runners:
            r.wake.set()
        for r in runners:
            r.thread.join(timeout=30)
        self.probe_pool.shutdown(wait=False, cancel_futures=True)
        for name in self.nodes:
            try:
                self.api.request("DELETE", f"/api/v1/nodes/{name}", missing_ok=True)
            except Exception as exc:  # noqa: BLE001 - the control plane may be gone already
                log.warning("could not delete node %s: %s", name, exc)
        self._thread = None
        atexit.unregister(self.stop)
        if self._log_handler is not None:
            log.removeHandler(self._log_handler)
            self._log_handler.close()

    # -- nodes -------------------------------------------------------------------------------

    def _register(self, node: NodeConfig) -> None:
        obj = _node_object(node)
        try:
            created = self.api.request("POST", "/api/v1/nodes", obj)
        except ApiError as exc:
            if exc.status != 409:
                raise KubeletError(f"cannot register node {node.name}: {exc}") from exc
            created = self.api.merge_patch(f"/api/v1/nodes/{node.name}",
                                           {"metadata": {"labels": obj["metadata"]["labels"]}, "spec": obj["spec"]})
        self.api.merge_patch(f"/api/v1/nodes/{node.name}/status", {"status": _node_status(node)})
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": node.name, "namespace": "kube-node-lease",
                              "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node.name,
                                                   "uid": created["metadata"]["uid"]}]},
                 "spec": {"holderIdentity": node.name, "leaseDurationSeconds": LEASE_SECONDS,
                          "renewTime": _micro_now()}}
        try:
            self.api.request("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", lease)
        except ApiError as exc:
            if exc.status != 409:
                raise KubeletError(f"cannot create the lease of node {node.name}: {exc}") from exc
            self._renew_lease(node.name)
        log.info("registered node %s", node.name)

    def _renew_lease(self, name: str) -> None:
        self.api.merge_patch(f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}",
                             {"spec": {"holderIdentity": name, "renewTime": _micro_now()}})

    def _wait_schedulable(self) -> None:
        """Until the node lifecycle controller has lifted the not-ready taint every new Node gets."""
        deadline = time.monotonic() + NODE_READY_TIMEOUT_S
        waiting = list(self.nodes)
        while waiting:
            node = self.api.get(f"/api/v1/nodes/{waiting[0]}")
            taints = {t["key"] for t in node["spec"].get("taints") or []}
            if "node.kubernetes.io/not-ready" not in taints and "node.kubernetes.io/unreachable" not in taints:
                waiting.pop(0)
                continue
            if time.monotonic() > deadline:
                raise KubeletError(f"node {waiting[0]} still has taints {sorted(taints)} after "
                                   f"{NODE_READY_TIMEOUT_S:.0f}s: does kube-controller-manager run its node "
                                   f"lifecycle controller?")
            time.sleep(0.2)

    # -- the sync loop -----------------------------------------------------------------------

    def _sync_loop(self) -> None:
        while not self.stopping.wait(SYNC_PERIOD_S):
            try:
                self._sync()
            except Exception:  # noqa: BLE001 - the loop must go on (the API server may be busy)
                log.exception("sync failed")
            now = time.monotonic()
            try:
                if now >= self._next_lease:
                    for name in self.nodes:
                        self._renew_lease(name)
                    self._next_lease = now + LEASE_RENEW_S
                if now >= self._next_node_status:
                    for node in self.nodes.values():
                        self.api.merge_patch(f"/api/v1/nodes/{node.name}/status", {"status": _node_status(node)})
                    self._next_node_status = now + NODE_STATUS_S
            except Exception:  # noqa: BLE001
                log.exception("node heartbeat failed")

    def _sync(self) -> None:
        pods = self.api.get("/api/v1/pods")["items"]
        self._services = self.api.get("/api/v1/services")["items"]
        self._slices = self.api.get("/apis/discovery.k8s.io/v1/endpointslices")["items"]
        seen = set()
        for pod in pods:
            if pod["spec"].get("nodeName") not in self.nodes:
                continue
            uid = pod["metadata"]["uid"]
            seen.add(uid)
            with self._runners_lock:
                runner = self._runners.get(uid)
            if runner is not None and runner.thread.is_alive():
                runner.observe(pod)
            elif runner is not None or (pod.get("status") or {}).get("phase") in TERMINAL \
                    or pod["metadata"].get("deletionTimestamp"):
                # Nothing of it runs here (its runner ended, or it ended before this kubelet started).
                if pod["metadata"].get("deletionTimestamp") and uid not in self._force_deleted:
                    self._force_deleted.add(uid)
                    self.api.request("DELETE", f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods/"
                                               f"{pod['metadata']['name']}",
                                     {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}, missing_ok=True)
            else:
                runner = _PodRunner(self, pod)
                with self._runners_lock:
                    self._runners[uid] = runner
                runner.thread.start()
        with self._runners_lock:
            for uid, runner in list(self._runners.items()):
                if uid not in seen:
                    runner.gone()
                    if not runner.thread.is_alive():
                        del self._runners[uid]
        self.refresh_hosts()

    def refresh_hosts(self) -> None:
        """Rewrites the hosts file if pods or Services changed (called by pod threads too)."""
        with self._runners_lock:
            pods = [n for r in self._runners.values() if (n := r.pod_name()) is not None]
        with self._hosts_lock:
            text = render_hosts(pods, self._services, self._slices)
            if text != self._hosts_text:
                write_in_place(self.hosts_file, text)
                self._hosts_text = text
