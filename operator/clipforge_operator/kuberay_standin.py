"""
A stand-in for the KubeRay operator, for tests and the local playground. NEVER use it in production.

Where ClipForge is developed and tested there is no Kubernetes cluster and no KubeRay, so the
operator's RayJobs are run by this module instead: it watches ``ray.io/v1`` RayJobs on an API
server (in practice :class:`clipforge_operator.emulator.KubeAPIEmulator`) and, for each one,
plays the part KubeRay plays in a cluster, with a real Ray cluster on this machine:

* ``New -> Initializing``: adds KubeRay's finalizer (``ray.io/rayjob-finalizer``), picks the
  job id and the RayCluster name the way KubeRay does (``<rayjob>-<5 random characters>``) and
  sets ``startTime``;
* creates the RayCluster object (owned by the RayJob, KubeRay's labels) and starts a one-node
  Ray cluster standing in for all of its pods: ``ray start --head --block`` on 127.0.0.1 with
  free ports, its own ``--temp-dir`` and ``RAY_AUTH_MODE=disabled``. The node advertises the
  custom resources of every worker group (``rayStartParams.resources``) and the logical CPUs of
  the pods the cluster starts with (bounded by this machine's cores, or the stand-in's ``num_cpus``);
* the "pods'" environment is the head container's (and worker groups') ``env``/``envFrom``,
  resolved against the API's Secrets and ConfigMaps like the kubelet does (``secretKeyRef``,
  ``configMapKeyRef``, ``optional``, ``$(VAR)`` references). It is the environment of the Ray
  processes themselves, as in a pod, so secrets never enter Ray's job table or the RayJob;
* the ConfigMap/Secret volumes the head container mounts are written into the cluster's temp
  dir, and each ``mountPath`` in the entrypoint (and env values) is rewritten to that directory
  (``/etc/clipforge/job.yaml`` -> ``<temp>/volumes/job/job.yaml``);
* ``Initializing -> Running`` once the cluster's dashboard answers (``dashboardURL`` is set,
  ``host:port`` as KubeRay writes it); the entrypoint is submitted with Ray's job-submission API
  under ``submission_id = status.jobId``;
* ``jobStatus`` follows the Ray job (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED) with its
  ``message`` and ``rayJobInfo`` times; a terminal job moves the RayJob to ``Complete``
  (SUCCEEDED, STOPPED) or ``Failed`` with reason ``AppFailed`` (FAILED), sets ``endTime`` and
  the ``succeeded``/``failed`` counters; a submission that keeps failing gives ``Failed`` with
  reason ``SubmissionFailed``, ``activeDeadlineSeconds`` gives ``DeadlineExceeded``;
* ``shutdownAfterJobFinishes``: ``ttlSecondsAfterFinished`` after ``endTime`` the RayCluster is
  deleted; a RayCluster that disappears (deleted, or garbage-collected with its RayJob) has its
  local Ray cluster stopped;
* deleting a RayJob stops its Ray job first (KubeRay's finalizer), then lets it go.

Stopping a local cluster touches only that cluster's processes: SIGTERM to its ``ray start
--block`` (which stops its children), then any survivor among the processes descended from it or
carrying its marker environment variable is killed. Other Ray instances on the machine (a test's
own ``ray.init()``) are never touched; ``ray stop`` is never run, since it stops every Ray on the
machine. The Ray processes also die with the stand-in's thread (``PR_SET_PDEATHSIG``) should the
stand-in itself die without cleaning up.

Not emulated: the submitter Kubernetes Job (the stand-in submits over HTTP, like KubeRay's
HTTPMode, whatever ``submissionMode`` says), pods and Services, autoscaling (scaling changes to a
RayCluster are stored, the local node keeps its size), ``suspend``, ``clusterSelector``,
``backoffLimit`` retries, ``deletionStrategy``, ``InteractiveMode``, GPUs unless the machine has them.

    standin = KubeRayStandIn(emulator.kubeconfig(), num_cpus=4, workdir=".")
    standin.start()          # a background thread; standin.stop() stops every local cluster
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import json
import logging
import os
import pathlib
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

__all__ = ["RAYJOB_FINALIZER", "KubeRayStandIn", "LocalRayCluster", "PodConfigError", "Proc"]

log = logging.getLogger(__name__)

RAY_GROUP, RAY_VERSION = "ray.io", "v1"
RAYJOB_FINALIZER = "ray.io/rayjob-finalizer"  # KubeRay's utils.RayJobStopJobFinalizer
LABEL_ORIGIN_NAME = "ray.io/originated-from-cr-name"
LABEL_ORIGIN_CRD = "ray.io/originated-from-crd"
MARKER_ENV = "CLIPFORGE_KUBERAY_STANDIN_CLUSTER"
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery/pkg/util/rand
TERMINAL_JOB_STATUSES = ("SUCCEEDED", "FAILED", "STOPPED")
DEFAULT_OBJECT_STORE_BYTES = 1 << 30
SUBMIT_DEADLINE_S = 120.0  # how long submission is retried after the cluster is up (KubeRay: submitter backoff)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _rfc3339(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _from_millis(value: int | None) -> str | None:
    if not value:
        return None
    return _rfc3339(datetime.datetime.fromtimestamp(value / 1000, datetime.UTC))


def _parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value)
    except ValueError:
        return None


def _random_suffix(n: int = 5) -> str:
    return "".join(random.choice(_NAME_ALPHABET) for _ in range(n))


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# Run as `python -S -c _FATE_SHARING <parent pid> <command...>`: asks the kernel for SIGTERM when the
# thread that started it exits or its process dies (PR_SET_PDEATHSIG, kept across exec), then execs
# the command. A wrapper rather than a preexec_fn, which is unsafe in a threaded parent.
_FATE_SHARING = (
    "import ctypes, os, sys\n"
    "ctypes.CDLL(None).prctl(1, 15, 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def fate_sharing(command: list[str]) -> list[str]:
    """`command`, made to get SIGTERM when the calling thread exits or this process dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return command
    return [sys.executable, "-S", "-c", _FATE_SHARING, str(os.getpid()), *command]


def _short_temp_root() -> str:
    # Ray puts Unix sockets under --temp-dir; their paths must stay under ~107 bytes.
    root = tempfile.gettempdir()
    return root if len(root) <= 24 else "/tmp"


def _no_proxy_get(url: str, timeout: float = 2.0) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as response:
        return response.read()


# ----------------------------------------------------------------------------------------------
# Processes, from /proc (Linux; elsewhere nothing is found and `ray start` cleans up alone)
# ----------------------------------------------------------------------------------------------


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time in clock ticks) of every process."""
    table = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        table[int(entry)] = (int(fields[1]), int(fields[19]))
    return table


@dataclass(frozen=True)
class Proc:
    """A process, by pid and start time (so a reused pid is never mistaken for it)."""

    pid: int
    start: int

    def alive(self) -> bool:
        try:
            stat = pathlib.Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        fields = stat[stat.rindex(")") + 2:].split()
        return int(fields[19]) == self.start and fields[0] != "Z"

    def cmdline(self) -> list[str]:
        try:
            raw = pathlib.Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except OSError:
            return []
        return [part.decode(errors="replace") for part in raw.split(b"\0") if part]

    def kill(self) -> None:
        if self.alive():
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)


def wait_procs(procs: Iterable[Proc], timeout: float) -> list[Proc]:
    """Wait until the processes have exited (or `timeout`); returns those still alive."""
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if p.alive()]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if p.alive()]
    return alive


def check_job_server() -> None:
    """Ray's job server runs in the dashboard, which a minimal Ray (no `default` extra) lacks."""
    try:
        import ray.dashboard.optional_deps  # noqa: F401
    except ImportError as exc:
        import ray

        raise RuntimeError(
            f"the KubeRay stand-in submits jobs through Ray's dashboard, which needs `ray[default]`"
            f" ({exc}): pip install 'ray[default]=={ray.__version__}' (or the project's dev extra)"
        ) from None


# ----------------------------------------------------------------------------------------------
# One local Ray cluster
# ----------------------------------------------------------------------------------------------


class ClusterStartError(RuntimeError):
    """``ray start`` exited before the cluster was up; the message has the tail of its log."""


class LocalRayCluster:
    """
    A one-node Ray cluster on 127.0.0.1: ``ray start --head --block`` in its own temp dir.

    ``start()`` returns at once; ``ready()`` tells when the dashboard (and job server) answers.
    ``stop()`` stops this cluster's processes only. Call start() from a thread that outlives the
    cluster: the Ray processes get SIGTERM when that thread exits (PR_SET_PDEATHSIG).
    """

    def __init__(
            self,
            name: str,
            *,
            num_cpus: float,
            env: Mapping[str, str],
            cwd: str | os.PathLike[str],
            resources: Mapping[str, float] | None = None,
            num_gpus: float | None = None,
            object_store_memory: int = DEFAULT_OBJECT_STORE_BYTES,
            keep_temp: bool = False,
    ) -> None:
        self.name = name
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.resources = dict(resources or {})
        self.cwd = str(cwd)
        self.object_store_memory = object_store_memory
        self.keep_temp = keep_temp
        self.temp_dir = pathlib.Path(tempfile.mkdtemp(prefix="cfray-", dir=_short_temp_root()))
        self.volumes_dir = self.temp_dir / "volumes"
        self.env = dict(env)
        self.process: subprocess.Popen[bytes] | None = None
        self.gcs_port = self.dashboard_port = self.client_port = 0
        self._ready = False
        self._stopped = False
        self._client: Any = None

    # -- addresses

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_address(self) -> str:
        """``host:port``, the way KubeRay writes ``status.dashboardURL``."""
        return f"127.0.0.1:{self.dashboard_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.dashboard_address}"

    @property
    def log_path(self) -> pathlib.Path:
        return self.temp_dir / "ray-start.log"

    # -- lifecycle

    def start(self) -> None:
        from ray._private.utils import get_ray_client_dependency_error

        (gcs, dashboard, client, agent_http, agent_grpc, runtime_env_agent, metrics, node_manager,
         object_manager, dashboard_metrics, autoscaler_metrics) = _free_ports(11)
        self.gcs_port, self.dashboard_port, self.client_port = gcs, dashboard, client
        ray = pathlib.Path(sys.executable).with_name("ray")
        command = [str(ray)] if ray.exists() else [sys.executable, "-m", "ray.scripts.scripts"]
        command += [
            "start", "--head", "--block", "--disable-usage-stats",
            "--node-ip-address=127.0.0.1", f"--port={gcs}",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
            f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={runtime_env_agent}", f"--metrics-export-port={metrics}",
            f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
            f"--num-cpus={self.num_cpus:g}", f"--object-store-memory={self.object_store_memory}",
            f"--temp-dir={self.temp_dir}",
        ]
        if get_ray_client_dependency_error() is None:  # else `ray start` refuses a client port
            command.append(f"--ray-client-server-port={client}")
        if self.num_gpus is not None:
            command.append(f"--num-gpus={self.num_gpus:g}")
        if self.resources:
            command.append(f"--resources={json.dumps(self.resources, sort_keys=True)}")
        env = dict(self.env)
        env.update({
            MARKER_ENV: str(self.temp_dir),
            "RAY_AUTH_MODE": "disabled",
            # One node: every address on loopback (Ray would otherwise pick the host's IP) ...
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            # ... including the metrics servers, whose fixed default ports two clusters would share,
            "DASHBOARD_METRIC_PORT": str(dashboard_metrics), "AUTOSCALER_METRIC_PORT": str(autoscaler_metrics),
            # and nothing to drain on SIGTERM (Ray waits up to 30 s for a multi-node drain by default).
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        })
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(
                fate_sharing(command), env=env, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal is the stand-in's to handle, in order
            )
        log.info("Ray cluster %s: starting on %s (dashboard %s, temp dir %s)",
                 self.name, self.gcs_address, self.dashboard_url, self.temp_dir)

    def ready(self) -> bool:
        """True once the dashboard answers; ClusterStartError if ``ray start`` has exited."""
        if self._ready:
            return True
        if self.process is None:
            return False
        if self.process.poll() is not None:
            raise ClusterStartError(f"`ray start` exited with {self.process.returncode}: {self.log_tail()}")
        try:
            _no_proxy_get(f"{self.dashboard_url}/api/version", timeout=1.0)
        except OSError:
            return False
        self._ready = True
        return True

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def job_client(self) -> Any:
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            self._client = JobSubmissionClient(self.dashboard_url)
        return self._client

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def driver_log(self, job_id: str) -> str:
        path = self.temp_dir / "session_latest" / "logs" / f"job-driver-{job_id}.log"
        try:
            return path.read_text(errors="replace")
        except OSError:
            return ""

    def processes(self) -> list[Proc]:
        """This cluster's live processes: ``ray start`` and its descendants, and anything carrying
        the cluster's marker environment variable (a driver or worker reparented after its parent died)."""
        table = _process_table()
        found: set[int] = set()
        if self.process is not None and self.process.pid in table:
            found.add(self.process.pid)
            changed = True
            while changed:
                before = len(found)
                found |= {pid for pid, (ppid, _) in table.items() if ppid in found}
                changed = len(found) != before
        marker = f"{MARKER_ENV}={self.temp_dir}".encode()
        for pid in table.keys() - found - {os.getpid()}:
            try:
                if marker in pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    found.add(pid)
            except OSError:
                continue
        return [Proc(pid, table[pid][1]) for pid in sorted(found)]

    def stop(self, timeout: float = 20.0) -> None:
        """Stop this cluster's processes (and only those), then remove its temp dir."""
        if self._stopped:
            return
        self._stopped = True
        procs = self.processes()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # `ray start --block` stops its children on SIGTERM
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        alive = wait_procs(procs, timeout=3)
        alive += [p for p in self.processes() if p not in alive]  # started during the shutdown
        for proc in alive:
            proc.kill()
        wait_procs(alive, timeout=5)
        if self.keep_temp:
            shutil.rmtree(self.volumes_dir, ignore_errors=True)  # materialised Secrets never stay behind
        else:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        log.info("Ray cluster %s: stopped", self.name)


# ----------------------------------------------------------------------------------------------
# Pods: environment and volumes from a pod template, as the kubelet would make them
# ----------------------------------------------------------------------------------------------


class PodConfigError(Exception):
    """The pod could not be configured (CreateContainerConfigError): a missing Secret, key..."""


_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are substituted, $$ escapes, others stay."""
    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)
    return _VAR_REF.sub(sub, value)


def _decode(data: Mapping[str, str] | None) -> dict[str, str]:
    out = {}
    for key, value in (data or {}).items():
        try:
            out[key] = base64.b64decode(value).decode()
        except (ValueError, UnicodeDecodeError):
            continue
    return out


@dataclass
class PodView:
    """What a pod of the RayCluster sees: environment and mounted files (paths on this machine)."""

    env: dict[str, str] = field(default_factory=dict)
    mounts: dict[str, str] = field(default_factory=dict)  # mountPath -> local directory

    def rewrite(self, text: str) -> str:
        """Replace each mount path in `text` (a command line, an env value) by its local directory."""
        for mount in sorted(self.mounts, key=len, reverse=True):
            text = re.sub(re.escape(mount.rstrip("/")) + r"(?=/|$|[\s'\";:,])", self.mounts[mount].replace("\\", r"\\"), text)
        return text


class _Objects:
    """Reads the Secrets and ConfigMaps a pod refers to."""

    def __init__(self, api: _Api, namespace: str) -> None:
        self.api, self.namespace = api, namespace
        self._cache: dict[tuple[str, str], dict | None] = {}

    def get(self, plural: str, name: str) -> dict | None:
        key = (plural, name)
        if key not in self._cache:
            self._cache[key] = self.api.get(f"/api/v1/namespaces/{self.namespace}/{plural}/{name}")
        return self._cache[key]

    def values(self, plural: str, name: str) -> dict[str, str] | None:
        obj = self.get(plural, name)
        if obj is None:
            return None
        if plural == "secrets":
            return {**_decode(obj.get("data")), **(obj.get("stringData") or {})}
        return {**(obj.get("data") or {}), **_decode(obj.get("binaryData"))}


def resolve_env(containers: Iterable[Mapping], objects: _Objects, pod_fields: Mapping[str, str]) -> dict[str, str]:
    """The environment the containers get (later containers win), or PodConfigError."""
    env: dict[str, str] = {}
    for container in containers:
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix") or ""
            for kind, plural in (("configMapRef", "configmaps"), ("secretRef", "secrets")):
                ref = source.get(kind)
                if not ref:
                    continue
                values = objects.values(plural, ref.get("name", ""))
                if values is None:
                    if ref.get("optional"):
                        continue
                    raise PodConfigError(f'{plural[:-1]} "{ref.get("name")}" not found')
                env.update({prefix + k: v for k, v in values.items()})
        for var in container.get("env") or []:
            name = var["name"]
            if "valueFrom" not in var:
                env[name] = _expand(str(var.get("value") or ""), env)
                continue
            source = var["valueFrom"]
            for kind, plural in (("secretKeyRef", "secrets"), ("configMapKeyRef", "configmaps")):
                ref = source.get(kind)
                if not ref:
                    continue
                values = objects.values(plural, ref.get("name", ""))
                if values is None or ref.get("key") not in values:
                    if ref.get("optional"):
                        break
                    what = (f'{plural[:-1]} "{ref.get("name")}" not found' if values is None
                            else f'couldn\'t find key {ref.get("key")} in {plural[:-1]} {objects.namespace}/{ref.get("name")}')
                    raise PodConfigError(what)
                env[name] = values[ref["key"]]
                break
            else:
                path = (source.get("fieldRef") or {}).get("fieldPath")
                if path in pod_fields:
                    env[name] = pod_fields[path]
                else:
                    log.warning("env %s: unsupported valueFrom %s (left unset)", name, sorted(source))
    return env


def materialise_volumes(pod_spec: Mapping, container: Mapping, objects: _Objects, root: pathlib.Path) -> dict[str, str]:
    """Write the ConfigMap/Secret/emptyDir volumes `container` mounts under `root`; mountPath -> dir."""
    volumes = {v.get("name"): v for v in pod_spec.get("volumes") or []}
    mounts: dict[str, str] = {}
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount.get("name"))
        if volume is None:
            raise PodConfigError(f'volume "{mount.get("name")}" is mounted but not defined')
        target = root / volume["name"]
        if not target.exists():
            target.mkdir(parents=True)
            if "configMap" in volume or "secret" in volume:
                source = volume.get("configMap") or volume.get("secret") or {}
                plural = "configmaps" if "configMap" in volume else "secrets"
                name = source.get("name") or source.get("secretName") or ""
                values = objects.values(plural, name)
                if values is None:
                    if not source.get("optional"):
                        raise PodConfigError(f'{plural[:-1]} "{name}" not found (volume {volume["name"]})')
                    values = {}
                items = source.get("items") or [{"key": k, "path": k} for k in values]
                for item in items:
                    if item["key"] not in values:
                        if source.get("optional"):
                            continue
                        raise PodConfigError(f'couldn\'t find key {item["key"]} in {plural[:-1]} {name}')
                    path = target / item.get("path", item["key"])
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(values[item["key"]])
                    if plural == "secrets":
                        path.chmod(0o600)
            elif "emptyDir" not in volume:
                log.warning("volume %s: only configMap, secret and emptyDir volumes are materialised",
                            volume["name"])
        local = target / mount["subPath"] if mount.get("subPath") else target
        mounts[mount["mountPath"]] = str(local)
    return mounts


# ----------------------------------------------------------------------------------------------
# API access
# ----------------------------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"{status}: {text[:300]}")
        self.status = status


class _Api:
    """Plain-dict requests over a ``kubernetes`` ApiClient (one per thread)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def request(self, method: str, path: str, body: Any = None, query: Mapping[str, str] | None = None,
                content_type: str = "application/json") -> dict:
        method, url, headers, body, _ = self.client.param_serialize(
            method=method, resource_path=path, query_params=list((query or {}).items()) or None,
            header_params={"Accept": "application/json", "Content-Type": content_type}, body=body,
            auth_settings=["BearerToken"],
        )
        response = self.client.call_api(method, url, header_params=headers, body=body, _request_timeout=(5, 30))
        response.read()
        if not 200 <= response.status < 300:
            raise ApiError(response.status, response.data.decode(errors="replace") if response.data else "")
        return json.loads(response.data) if response.data else {}

    def get(self, path: str) -> dict | None:
        try:
            return self.request("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def merge_patch(self, path: str, patch: Mapping) -> dict:
        return self.request("PATCH", path, body=patch, content_type="application/merge-patch+json")

    def json_patch(self, path: str, ops: list[dict]) -> dict:
        return self.request("PATCH", path, body=ops, content_type="application/json-patch+json")


def _ray_path(plural: str, namespace: str | None = None, name: str | None = None) -> str:
    path = f"/apis/{RAY_GROUP}/{RAY_VERSION}"
    if namespace:
        path += f"/namespaces/{namespace}"
    path += f"/{plural}"
    return f"{path}/{name}" if name else path


def _new_api_client(kubeconfig: str | os.PathLike[str] | Mapping[str, Any] | Callable[[], Any]) -> Any:
    import kubernetes.config

    if callable(kubeconfig):
        return kubeconfig()
    if isinstance(kubeconfig, Mapping):
        return kubernetes.config.new_client_from_config_dict(dict(kubeconfig), persist_config=False)
    return kubernetes.config.new_client_from_config(config_file=str(kubeconfig), persist_config=False)


# ----------------------------------------------------------------------------------------------
# The controller
# ----------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """What the stand-in keeps about one RayJob's Ray cluster."""

    namespace: str
    rayjob: str
    cluster_name: str
    cluster: LocalRayCluster | None = None
    pod: PodView | None = None
    submitted: bool = False
    submit_since: float = 0.0
    submit_error: str = ""
    start_error: str = ""
    last_job_status: str = ""


def _group_plan(cluster_spec: Mapping) -> tuple[dict[str, float], float | None, int, int, int]:
    """(custom resources, GPUs, desired, min, max worker replicas) of a RayCluster spec."""
    resources: dict[str, float] = {}
    gpus: float = 0.0
    desired = low = high = 0
    groups = [cluster_spec.get("headGroupSpec") or {}] + list(cluster_spec.get("workerGroupSpecs") or [])
    for index, group in enumerate(groups):
        params = group.get("rayStartParams") or {}
        raw = params.get("resources")
        if raw:
            text = str(raw).strip()
            if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":  # KubeRay docs' '"{\"a\": 1}"' form
                text = text[1:-1].replace('\\"', '"')
            try:
                for key, value in json.loads(text).items():
                    resources[key] = max(resources.get(key, 0.0), float(value))
            except (ValueError, TypeError, AttributeError):
                log.warning("ignoring unparsable rayStartParams.resources %r", raw)
        if index == 0:
            continue
        with contextlib.suppress(ValueError, TypeError):
            gpus += float(params.get("num-gpus") or 0)
        mn, mx = int(group.get("minReplicas") or 0), int(group.get("maxReplicas") or 0)
        replicas = group.get("replicas")
        replicas = mn if replicas is None else int(replicas)
        desired += min(max(replicas, mn), mx) if mx >= mn else mx
        low, high = low + mn, high + mx
    return resources, (gpus or None), desired, low, high


def _cpu_quantity(value: Any) -> float:
    text = str(value or "0").strip()
    try:
        return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        return 0.0


def _initial_pod_cpus(cluster_spec: Mapping) -> float:
    """Ray CPUs of the head and of each worker group's initial replicas (limits, else requests)."""
    def pod_cpus(group: Mapping) -> float:
        params = group.get("rayStartParams") or {}
        if params.get("num-cpus") is not None:
            return _cpu_quantity(params["num-cpus"])
        containers = ((group.get("template") or {}).get("spec") or {}).get("containers") or [{}]
        resources = containers[0].get("resources") or {}
        return _cpu_quantity((resources.get("limits") or {}).get("cpu") or (resources.get("requests") or {}).get("cpu"))

    total = pod_cpus(cluster_spec.get("headGroupSpec") or {})
    for group in cluster_spec.get("workerGroupSpecs") or []:
        low, high = int(group.get("minReplicas") or 0), int(group.get("maxReplicas") or 0)
        replicas = group.get("replicas")
        replicas = low if replicas is None else int(replicas)
        total += pod_cpus(group) * (min(max(replicas, low), high) if high >= low else high)
    return total


class KubeRayStandIn:
    """
    Runs the RayJobs of an API server on local Ray clusters (see the module docstring).

    ``kubeconfig``: a kubeconfig path or dict (``KubeAPIEmulator.kubeconfig()``), or a callable
    returning a ``kubernetes.client.ApiClient``. ``num_cpus``: logical CPUs of each local cluster
    (default: :meth:`node_cpus`, from the RayCluster's pods). ``workdir``: the
    working directory of the Ray processes, so relative paths in a job resolve there (default:
    the current directory). ``namespace``: only this namespace's RayJobs (default: all).
    """

    def __init__(
            self,
            kubeconfig: str | os.PathLike[str] | Mapping[str, Any] | Callable[[], Any],
            *,
            num_cpus: float | None = None,
            num_gpus: float | None = None,
            workdir: str | os.PathLike[str] | None = None,
            namespace: str | None = None,
            object_store_memory: int = DEFAULT_OBJECT_STORE_BYTES,
            resync_seconds: float = 1.0,
            keep_temp: bool = False,
    ) -> None:
        self._kubeconfig = kubeconfig
        self.num_cpus = num_cpus  # None: from each RayCluster's pods, see node_cpus()
        self.num_gpus = num_gpus
        self.workdir = str(pathlib.Path(workdir or os.getcwd()).resolve())
        self.namespace = namespace
        self.object_store_memory = object_store_memory
        self.resync_seconds = resync_seconds
        self.keep_temp = keep_temp
        self.history: list[dict[str, Any]] = []  # what the stand-in did, for tests and the curious
        self._runs: dict[tuple[str, str], _Run] = {}  # (namespace, RayCluster name) -> run
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._watchers: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._api: _Api | None = None

    # -- lifecycle

    def __enter__(self) -> KubeRayStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> KubeRayStandIn:
        if self._thread is not None:
            raise RuntimeError("the stand-in is already started")
        check_job_server()
        self._api = _Api(_new_api_client(self._kubeconfig))
        self._thread = threading.Thread(target=self._main, name="kuberay-standin", daemon=True)
        self._thread.start()
        for plural in ("rayjobs", "rayclusters"):
            watcher = threading.Thread(target=self._watch, args=(plural,), name=f"kuberay-standin-watch-{plural}",
                                       daemon=True)
            watcher.start()
            self._watchers.append(watcher)
        return self

    def stop(self, timeout: float = 90.0) -> None:
        """Stop the controller and every local Ray cluster it started."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._lock:
            leftovers = [run.cluster for run in self._runs.values() if run.cluster is not None]
        for cluster in leftovers:  # only if the controller thread could not (it stops them itself)
            cluster.stop()

    def node_cpus(self, cluster_spec: Mapping) -> float:
        """Logical CPUs of the one local node: the stand-in's ``num_cpus`` if set, else the CPUs of
        the pods the RayCluster starts with (a worker's Ray CPUs are its container's CPU limit, as
        with KubeRay), at least this machine's cores and at most four times them."""
        if self.num_cpus is not None:
            return self.num_cpus
        cores = os.cpu_count() or 1
        return float(max(cores, min(_initial_pod_cpus(cluster_spec), 4 * cores)))

    # -- introspection

    def local_cluster(self, namespace: str, cluster_name: str) -> LocalRayCluster | None:
        with self._lock:
            run = self._runs.get((namespace, cluster_name))
            return run.cluster if run else None

    def local_clusters(self) -> list[LocalRayCluster]:
        with self._lock:
            return [run.cluster for run in self._runs.values() if run.cluster is not None]

    def events(self, rayjob: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.history
                    if (rayjob is None or e["rayjob"] == rayjob) and (kind is None or e["event"] == kind)]

    def _record(self, namespace: str, rayjob: str, event: str, **details: Any) -> None:
        with self._lock:
            self.history.append({"time": time.time(), "namespace": namespace, "rayjob": rayjob, "event": event,
                                 **details})

    # -- threads

    def _watch(self, plural: str) -> None:
        """Wake the controller on every change of `plural`; the controller re-reads everything."""
        from kubernetes import client, watch

        api = _new_api_client(self._kubeconfig)
        custom = client.CustomObjectsApi(api)
        while not self._stopping.is_set():
            try:
                stream = watch.Watch().stream(custom.list_cluster_custom_object, RAY_GROUP, RAY_VERSION, plural,
                                              timeout_seconds=5, _request_timeout=30)
                for _ in stream:
                    self._wake.set()
                    if self._stopping.is_set():
                        break
            except Exception as exc:  # noqa: BLE001 - the API may be restarting; the resync covers the gap
                log.debug("watch of %s ended: %s", plural, exc)
                self._stopping.wait(1.0)

    def _main(self) -> None:
        try:
            while not self._stopping.is_set():
                self._wake.wait(self.resync_seconds)
                self._wake.clear()
                if self._stopping.is_set():
                    break
                try:
                    self.reconcile_all()
                except Exception:
                    log.exception("KubeRay stand-in: reconcile failed")
        finally:
            with self._lock:
                runs = list(self._runs.values())
            for run in runs:
                if run.cluster is not None:
                    run.cluster.stop()
                    self._record(run.namespace, run.rayjob, "cluster-stopped", cluster=run.cluster_name,
                                 why="stand-in stopped")
            with self._lock:
                self._runs.clear()

    # -- reconciliation

    @property
    def api(self) -> _Api:
        assert self._api is not None, "start() first"
        return self._api

    def reconcile_all(self) -> None:
        rayjobs = (self.api.get(_ray_path("rayjobs", self.namespace)) or {}).get("items") or []
        for rayjob in rayjobs:
            meta = rayjob.get("metadata") or {}
            try:
                self.reconcile_rayjob(rayjob)
            except Exception:
                log.exception("RayJob %s/%s: reconcile failed", meta.get("namespace"), meta.get("name"))
        clusters = (self.api.get(_ray_path("rayclusters", self.namespace)) or {}).get("items") or []
        live = {(c["metadata"]["namespace"], c["metadata"]["name"]) for c in clusters
                if not c["metadata"].get("deletionTimestamp")}
        with self._lock:
            gone = [key for key, run in self._runs.items() if run.cluster is not None and key not in live]
        for key in gone:
            with self._lock:
                run = self._runs[key]
            assert run.cluster is not None
            run.cluster.stop()
            self._record(run.namespace, run.rayjob, "cluster-stopped", cluster=run.cluster_name,
                         why="RayCluster deleted")
            with self._lock:  # gone from local_cluster() only once stopped
                del self._runs[key]

    def _patch_status(self, rayjob: Mapping, status: Mapping[str, Any]) -> None:
        meta = rayjob["metadata"]
        current = rayjob.get("status") or {}
        changes = {k: v for k, v in status.items() if current.get(k) != v}
        if not changes:
            return
        changes["observedGeneration"] = meta.get("generation")
        self.api.merge_patch(_ray_path("rayjobs", meta["namespace"], meta["name"]) + "/status", {"status": changes})
        moved = {k: changes[k] for k in ("jobDeploymentStatus", "jobStatus") if k in changes}
        if moved:
            self._record(meta["namespace"], meta["name"], "status",
                         jobDeploymentStatus=moved.get("jobDeploymentStatus", current.get("jobDeploymentStatus", "")),
                         jobStatus=moved.get("jobStatus", current.get("jobStatus", "")))

    def reconcile_rayjob(self, rayjob: Mapping) -> None:
        meta, spec = rayjob["metadata"], rayjob.get("spec") or {}
        status = rayjob.get("status") or {}
        ns, name = meta["namespace"], meta["name"]
        if meta.get("deletionTimestamp"):
            self._finalize(rayjob)
            return
        if spec.get("clusterSelector") or spec.get("suspend") or spec.get("submissionMode") == "InteractiveMode":
            log.warning("RayJob %s/%s: clusterSelector, suspend and InteractiveMode are not emulated", ns, name)
            return
        deployment = status.get("jobDeploymentStatus") or ""
        now = _now()
        if deployment == "":
            if RAYJOB_FINALIZER not in (meta.get("finalizers") or []):
                self.api.json_patch(_ray_path("rayjobs", ns, name), [
                    {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]},
                    {"op": "add", "path": "/metadata/finalizers",
                     "value": [*(meta.get("finalizers") or []), RAYJOB_FINALIZER]},
                ])
            self._patch_status(rayjob, {
                "jobDeploymentStatus": "Initializing",
                "jobId": status.get("jobId") or spec.get("jobId") or f"{name}-{_random_suffix()}",
                "rayClusterName": status.get("rayClusterName") or f"{name}-{_random_suffix()}",
                "startTime": _rfc3339(now), "succeeded": 0, "failed": 0,
            })
            return
        if deployment in ("Initializing", "Running") and self._deadline_exceeded(rayjob, now):
            return
        if deployment == "Initializing":
            self._initialize(rayjob)
        elif deployment == "Running":
            self._follow(rayjob)
        elif deployment in ("Complete", "Failed"):
            self._maybe_shutdown(rayjob, now)

    def _deadline_exceeded(self, rayjob: Mapping, now: datetime.datetime) -> bool:
        deadline = (rayjob.get("spec") or {}).get("activeDeadlineSeconds")
        start = _parse_time((rayjob.get("status") or {}).get("startTime"))
        if not deadline or start is None or (now - start).total_seconds() < float(deadline):
            return False
        self._stop_ray_job(rayjob)
        self._terminal(rayjob, "Failed", reason="DeadlineExceeded",
                       message=f"The RayJob has passed the activeDeadlineSeconds. StartTime: {_rfc3339(start)}."
                               f" ActiveDeadlineSeconds: {deadline}")
        return True

    def _terminal(self, rayjob: Mapping, deployment: str, **fields: Any) -> None:
        status = rayjob.get("status") or {}
        failed = int(status.get("failed") or 0) + (deployment == "Failed")
        succeeded = int(status.get("succeeded") or 0) + (deployment == "Complete" and
                                                          fields.get("jobStatus", status.get("jobStatus")) == "SUCCEEDED")
        self._patch_status(rayjob, {"jobDeploymentStatus": deployment, "endTime": _rfc3339(_now()),
                                    "failed": failed, "succeeded": succeeded, **fields})

    def _run_for(self, rayjob: Mapping) -> _Run:
        meta, status = rayjob["metadata"], rayjob.get("status") or {}
        key = (meta["namespace"], status["rayClusterName"])
        with self._lock:
            run = self._runs.get(key)
            if run is None:
                run = self._runs[key] = _Run(meta["namespace"], meta["name"], status["rayClusterName"])
            return run

    def _ensure_raycluster(self, rayjob: Mapping) -> dict:
        meta, spec, status = rayjob["metadata"], rayjob.get("spec") or {}, rayjob.get("status") or {}
        ns, cluster_name = meta["namespace"], status["rayClusterName"]
        existing = self.api.get(_ray_path("rayclusters", ns, cluster_name))
        if existing is not None:
            return existing
        body = {
            "apiVersion": f"{RAY_GROUP}/{RAY_VERSION}", "kind": "RayCluster",
            "metadata": {
                "name": cluster_name, "namespace": ns,
                "labels": {**(meta.get("labels") or {}), LABEL_ORIGIN_NAME: meta["name"], LABEL_ORIGIN_CRD: "RayJob"},
                "annotations": dict(meta.get("annotations") or {}),
                "ownerReferences": [{"apiVersion": f"{RAY_GROUP}/{RAY_VERSION}", "kind": "RayJob",
                                     "name": meta["name"], "uid": meta["uid"], "controller": True,
                                     "blockOwnerDeletion": True}],
            },
            "spec": spec.get("rayClusterSpec") or {},
        }
        created = self.api.request("POST", _ray_path("rayclusters", ns), body=body)
        self._record(ns, meta["name"], "raycluster-created", cluster=cluster_name)
        return created

    def _pod_view(self, rayjob: Mapping, run: _Run, cluster_root: pathlib.Path) -> PodView:
        meta, spec = rayjob["metadata"], rayjob.get("spec") or {}
        cluster_spec = spec.get("rayClusterSpec") or {}
        head_template = (cluster_spec.get("headGroupSpec") or {}).get("template") or {}
        head_pod = head_template.get("spec") or {}
        head_containers = head_pod.get("containers") or [{}]
        worker_containers = [((g.get("template") or {}).get("spec") or {}).get("containers", [{}])[0]
                             for g in cluster_spec.get("workerGroupSpecs") or []]
        objects = _Objects(self.api, meta["namespace"])
        pod_fields = {"metadata.name": f"{run.cluster_name}-head", "metadata.namespace": meta["namespace"],
                      "status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1", "spec.nodeName": socket.gethostname(),
                      "spec.serviceAccountName": head_pod.get("serviceAccountName") or "default"}
        # Workers first: the head's container wins where they differ (the driver runs on the head).
        env = resolve_env([*worker_containers, head_containers[0]], objects, pod_fields)
        mounts = materialise_volumes(head_pod, head_containers[0], objects, cluster_root)
        view = PodView(mounts=mounts)
        view.env = {k: view.rewrite(v) for k, v in env.items()}
        return view

    def _base_env(self) -> dict[str, str]:
        """The environment of the local "pods": this process's, less what a pod would not have."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "RAY_", "KUBECONFIG", "CLIPFORGE_KUBERAY"))}
        bindir = str(pathlib.Path(sys.executable).parent)  # `clipforge`, `ray` of this environment first
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _initialize(self, rayjob: Mapping) -> None:
        meta, spec = rayjob["metadata"], rayjob.get("spec") or {}
        ns, name = meta["namespace"], meta["name"]
        raycluster = self._ensure_raycluster(rayjob)
        run = self._run_for(rayjob)
        cluster_spec = spec.get("rayClusterSpec") or {}
        if run.cluster is None:
            resources, gpus, *_ = _group_plan(cluster_spec)
            cluster = LocalRayCluster(
                f"{ns}/{run.cluster_name}", num_cpus=self.node_cpus(cluster_spec), resources=resources,
                num_gpus=self.num_gpus if self.num_gpus is not None else (0 if not gpus else None),
                env={}, cwd=self.workdir, object_store_memory=self.object_store_memory, keep_temp=self.keep_temp,
            )
            try:
                run.pod = self._pod_view(rayjob, run, cluster.volumes_dir)
            except PodConfigError as exc:
                shutil.rmtree(cluster.temp_dir, ignore_errors=True)
                if run.start_error != str(exc):  # like a pod in CreateContainerConfigError: retried
                    run.start_error = str(exc)
                    log.warning("RayJob %s/%s: the head pod cannot start: %s", ns, name, exc)
                    self._record(ns, name, "pod-config-error", error=str(exc))
                    self._set_cluster_status(raycluster, {"state": "", "reason": f"CreateContainerConfigError: {exc}"})
                return
            cluster.env = {**self._base_env(), **run.pod.env}
            run.cluster, run.start_error = cluster, ""
            try:
                cluster.start()
            except OSError as exc:  # no `ray` to run: the head "pod" cannot start
                run.start_error = f"cannot run `ray start`: {exc}"
                log.error("RayJob %s/%s: %s", ns, name, run.start_error)
                self._record(ns, name, "cluster-failed", error=run.start_error)
                self._set_cluster_status(raycluster, {"state": "failed", "reason": run.start_error})
                return
            self._record(ns, name, "cluster-starting", cluster=run.cluster_name, temp_dir=str(cluster.temp_dir))
        try:
            if not run.cluster.ready():
                return
        except ClusterStartError as exc:
            if not run.start_error:
                run.start_error = str(exc)
                log.error("RayJob %s/%s: Ray cluster %s did not start: %s", ns, name, run.cluster_name, exc)
                self._record(ns, name, "cluster-failed", error=str(exc))
                self._set_cluster_status(raycluster, {"state": "failed", "reason": str(exc)[:2000]})
            return
        _, _, desired, low, high = _group_plan(cluster_spec)
        cluster = run.cluster
        self._set_cluster_status(raycluster, {
            "state": "ready", "reason": None,
            "desiredWorkerReplicas": desired, "availableWorkerReplicas": desired, "readyWorkerReplicas": desired,
            "minWorkerReplicas": low, "maxWorkerReplicas": high, "desiredCPU": f"{cluster.num_cpus:g}",
            "endpoints": {"dashboard": str(cluster.dashboard_port), "gcs-server": str(cluster.gcs_port),
                          "client": str(cluster.client_port)},
            "head": {"podIP": "127.0.0.1", "serviceIP": "127.0.0.1", "podName": f"{run.cluster_name}-head"},
            "conditions": [
                {"type": "HeadPodReady", "status": "True", "reason": "HeadPodRunningAndReady",
                 "lastTransitionTime": _rfc3339(_now()), "message": ""},
                {"type": "RayClusterProvisioned", "status": "True", "reason": "AllPodRunningAndReadyFirstTime",
                 "lastTransitionTime": _rfc3339(_now()), "message": ""},
            ],
        })
        self._record(ns, name, "cluster-ready", cluster=run.cluster_name, dashboard=cluster.dashboard_url)
        run.submit_since = time.monotonic()
        self._patch_status(rayjob, {"dashboardURL": cluster.dashboard_address, "jobDeploymentStatus": "Running"})

    def _set_cluster_status(self, raycluster: Mapping, status: Mapping[str, Any]) -> None:
        meta = raycluster["metadata"]
        self.api.merge_patch(_ray_path("rayclusters", meta["namespace"], meta["name"]) + "/status",
                             {"status": {**status, "lastUpdateTime": _rfc3339(_now()),
                                         "observedGeneration": meta.get("generation")}})

    def _submit(self, rayjob: Mapping, run: _Run) -> None:
        meta, spec, status = rayjob["metadata"], rayjob.get("spec") or {}, rayjob.get("status") or {}
        assert run.cluster is not None and run.pod is not None
        kwargs: dict[str, Any] = {"entrypoint": run.pod.rewrite(spec.get("entrypoint") or ""),
                                  "submission_id": status["jobId"]}
        if spec.get("runtimeEnvYAML"):
            kwargs["runtime_env"] = yaml.safe_load(spec["runtimeEnvYAML"])
        if spec.get("metadata"):
            kwargs["metadata"] = dict(spec["metadata"])
        for key, arg in (("entrypointNumCpus", "entrypoint_num_cpus"), ("entrypointNumGpus", "entrypoint_num_gpus")):
            if spec.get(key):
                kwargs[arg] = float(spec[key])
        if spec.get("entrypointResources"):
            kwargs["entrypoint_resources"] = json.loads(spec["entrypointResources"])
        try:
            run.cluster.job_client().submit_job(**kwargs)
        except Exception as exc:  # noqa: BLE001 - the job server may still be starting: retried
            text = str(exc)
            if "already exists" not in text:
                run.submit_error = f"{type(exc).__name__}: {text[:500]}"
                log.info("RayJob %s/%s: submission not accepted yet: %s", meta["namespace"], meta["name"],
                         run.submit_error)
                return
        run.submitted = True
        self._record(meta["namespace"], meta["name"], "job-submitted", job_id=status["jobId"],
                     entrypoint=kwargs["entrypoint"])

    def _follow(self, rayjob: Mapping) -> None:
        meta, status = rayjob["metadata"], rayjob.get("status") or {}
        ns, name = meta["namespace"], meta["name"]
        with self._lock:
            run = self._runs.get((ns, status.get("rayClusterName", "")))
        if run is None or run.cluster is None or not run.cluster.alive():
            # The head is gone (the stand-in restarted, or the RayCluster was deleted): KubeRay would
            # keep asking a dashboard that no longer has the job; a stand-in says so instead.
            self._terminal(rayjob, "Failed", reason="",
                           message=f"the Ray cluster {status.get('rayClusterName')} of this RayJob is gone")
            return
        if not run.submitted:
            self._submit(rayjob, run)
            if not run.submitted:
                if time.monotonic() - run.submit_since > SUBMIT_DEADLINE_S:
                    self._terminal(rayjob, "Failed", reason="SubmissionFailed",
                                   message=f"Job submission has failed. Reason: {run.submit_error}")
                return
        try:
            info = run.cluster.job_client().get_job_info(status["jobId"])
        except Exception as exc:  # noqa: BLE001
            log.info("RayJob %s/%s: no job info yet: %s", ns, name, exc)
            return
        job_status = str(getattr(info.status, "value", info.status))
        fields = {
            "jobStatus": job_status, "message": info.message or "",
            "rayJobInfo": {k: v for k, v in (("startTime", _from_millis(info.start_time)),
                                             ("endTime", _from_millis(info.end_time))) if v},
        }
        if job_status != run.last_job_status:
            run.last_job_status = job_status
            if job_status == "FAILED":
                tail = "\n".join(run.cluster.driver_log(status["jobId"]).strip().splitlines()[-20:])
                log.warning("RayJob %s/%s: the Ray job failed: %s\n%s", ns, name, info.message, tail)
        if job_status in TERMINAL_JOB_STATUSES:
            if job_status == "FAILED":
                self._terminal(rayjob, "Failed", reason="AppFailed", **fields)
            else:
                self._terminal(rayjob, "Complete", **fields)
            return
        self._patch_status(rayjob, fields)

    def _maybe_shutdown(self, rayjob: Mapping, now: datetime.datetime) -> None:
        meta, spec, status = rayjob["metadata"], rayjob.get("spec") or {}, rayjob.get("status") or {}
        if not spec.get("shutdownAfterJobFinishes") or not status.get("rayClusterName"):
            return
        end = _parse_time(status.get("endTime")) or now
        if (now - end).total_seconds() < float(spec.get("ttlSecondsAfterFinished") or 0):
            return
        path = _ray_path("rayclusters", meta["namespace"], status["rayClusterName"])
        cluster = self.api.get(path)
        if cluster is not None and not cluster["metadata"].get("deletionTimestamp"):
            self.api.request("DELETE", path, body={"propagationPolicy": "Background"})
            self._record(meta["namespace"], meta["name"], "raycluster-deleted", cluster=status["rayClusterName"],
                         why="shutdownAfterJobFinishes")

    def _stop_ray_job(self, rayjob: Mapping) -> str | None:
        """Stop the RayJob's Ray job if it runs; returns the Ray job's last status (None: unknown)."""
        meta, status = rayjob["metadata"], rayjob.get("status") or {}
        with self._lock:
            run = self._runs.get((meta["namespace"], status.get("rayClusterName") or ""))
        if run is None or run.cluster is None or not run.cluster.alive() or not status.get("jobId"):
            return None
        final = None
        try:
            if not run.cluster.ready():  # still starting: no job yet
                return None
            client = run.cluster.job_client()
            client.stop_job(status["jobId"])
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                final = str(getattr(client.get_job_status(status["jobId"]), "value", ""))
                if final in TERMINAL_JOB_STATUSES:
                    break
                time.sleep(0.2)
        except Exception as exc:  # noqa: BLE001 - best effort, like KubeRay's StopJob
            log.warning("RayJob %s/%s: could not stop Ray job %s: %s", meta["namespace"], meta["name"],
                        status["jobId"], exc)
        self._record(meta["namespace"], meta["name"], "job-stopped", job_id=status["jobId"], status=final)
        return final

    def _finalize(self, rayjob: Mapping) -> None:
        meta, status = rayjob["metadata"], rayjob.get("status") or {}
        finalizers = meta.get("finalizers") or []
        if RAYJOB_FINALIZER not in finalizers:
            return
        if status.get("jobStatus") not in TERMINAL_JOB_STATUSES:
            self._stop_ray_job(rayjob)
        index = finalizers.index(RAYJOB_FINALIZER)
        try:
            self.api.json_patch(_ray_path("rayjobs", meta["namespace"], meta["name"]), [
                {"op": "test", "path": f"/metadata/finalizers/{index}", "value": RAYJOB_FINALIZER},
                {"op": "remove", "path": f"/metadata/finalizers/{index}"},
            ])
        except ApiError as exc:
            if exc.status not in (404, 422):
                raise
        self._record(meta["namespace"], meta["name"], "finalized")


def main(argv: list[str] | None = None) -> None:
    """``python -m clipforge_operator.kuberay_standin --kubeconfig FILE``: run RayJobs until interrupted."""
    parser = argparse.ArgumentParser(description="A KubeRay stand-in for tests and the playground (not for production).")
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"), required=not os.environ.get("KUBECONFIG"))
    parser.add_argument("--num-cpus", type=float, default=None)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--namespace", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with KubeRayStandIn(args.kubeconfig, num_cpus=args.num_cpus, workdir=args.workdir, namespace=args.namespace):
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
