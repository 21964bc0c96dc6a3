"""The ClipForge operator as its Helm chart deploys it, run as a local process against the test control plane.

`helm template` renders the chart; its ServiceAccount and RBAC (ClusterRole or Role, and the
binding) are applied to the cluster as rendered, and the operator authenticates with a
TokenRequest token of that ServiceAccount: real RBAC authorization judges every call it makes, so
a verb or resource the chart forgot fails. The Deployment is not applied: the tests stop, restart
and read the operator as a process of their own (test_chart_upgrade.py runs the Deployment from the
operator's image on the real nodes). Its container's command, args and env are what the process
runs, from this Python environment, with the liveness endpoint moved to a free loopback port and
metrics off.

    op = ChartOperator(control_plane, workdir, scope="cluster")
    op.start()          # installs the RBAC once, then runs `python -m clipforge_operator ...`
    op.restart()        # stop (SIGTERM, as the kubelet would) and start again
    op.stop()
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from harness.processes import die_with_parent, free_port, log_tail

REPO_ROOT = Path(__file__).resolve().parents[2]
HELM = REPO_ROOT / ".tools" / "bin" / "helm"
CHART = REPO_ROOT / "charts" / "clipforge-operator"
RELEASE = "cf"
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
DEFAULT_SETS = ("progressIntervalSeconds=1",)  # tests wait on progress: refresh it every second


class OperatorError(RuntimeError):
    """The operator did not come up, or died; the message carries its log tail."""


def render_chart(namespace: str, *sets: str) -> list[dict]:
    """The chart's objects as `helm template` renders them for a release in `namespace`."""
    if not HELM.is_file():
        raise OperatorError(f"{HELM} is missing: run scripts/install-kube-tools.sh")
    argv = [str(HELM), "template", RELEASE, str(CHART), "--namespace", namespace]
    for value in sets:
        argv += ["--set", value]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise OperatorError(f"helm template failed: {done.stderr.strip()}")
    return [d for d in yaml.safe_load_all(done.stdout) if d]


class ChartOperator:
    """The chart's RBAC in the cluster and the chart's operator command as a child process."""

    def __init__(self, control_plane, workdir: Path, *, namespace: str = "clipforge-system",  # noqa: ANN001
                 sets: tuple[str, ...] = DEFAULT_SETS):
        self.cp = control_plane
        self.workdir = Path(workdir)
        self.namespace = namespace
        self.objects = render_chart(namespace, *sets)
        self.log_path = self.workdir / "operator.log"
        self.kubeconfig: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def _one(self, kind: str) -> dict:
        (found,) = [o for o in self.objects if o["kind"] == kind]
        return found

    @property
    def service_account(self) -> str:
        return self._one("ServiceAccount")["metadata"]["name"]

    @property
    def container(self) -> dict:
        (container,) = self._one("Deployment")["spec"]["template"]["spec"]["containers"]
        return container

    def install(self) -> Path:
        """The chart's ServiceAccount and RBAC applied (once); returns the token kubeconfig."""
        if self.kubeconfig is None:
            if self.cp.kubectl("get", "namespace", self.namespace, check=False).returncode != 0:
                self.cp.create_namespace(self.namespace)
            self.cp.apply(*[o for o in self.objects if o["kind"] in RBAC_KINDS])
            self.kubeconfig = self.cp.service_account_kubeconfig(self.namespace, self.service_account)
        return self.kubeconfig

    def argv(self, liveness_port: int) -> list[str]:
        command, args = self.container["command"], self.container.get("args") or []
        assert command[:1] == ["python"], command
        return [sys.executable, *command[1:], *args,
                f"--liveness=http://127.0.0.1:{liveness_port}/healthz", "--metrics-port=0", "--log-format=text",
                "--verbose"]

    def start(self, timeout: float = 60) -> None:
        kubeconfig = self.install()
        port = free_port()
        env = {**os.environ, **{e["name"]: str(e["value"]) for e in self.container.get("env") or []},
               "KUBECONFIG": str(kubeconfig), "HOME": str(self.workdir)}
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== operator start {self.starts} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(die_with_parent(self.argv(port)), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self._live(port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                state = (f"exited with status {self.proc.returncode}" if self.proc.poll() is not None
                         else f"not live after {timeout:g}s")
                self.stop()
                raise OperatorError(f"the operator {state}:\n{log_tail(self.log_path, 40)}")
            time.sleep(0.2)

    @staticmethod
    def _live(port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                return resp.status == 200
        except (OSError, urllib.error.HTTPError):
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, as a kubelet stops a container; SIGKILL after `timeout`."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
