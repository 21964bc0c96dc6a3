"""
The ClipForge playground: the operator, a Kubernetes API and a KubeRay stand-in on this machine.

No cluster needed. One command starts, on 127.0.0.1:

* a Kubernetes API server (clipforge_operator.emulator) with the VideoCurationJob CRD and
  stand-ins for KubeRay's RayJob/RayCluster CRDs;
* the operator, ``python -m clipforge_operator --all-namespaces``, as a subprocess against it;
* a KubeRay stand-in (clipforge_operator.kuberay_standin) that runs each RayJob on a local Ray
  cluster, so the pipeline really runs and writes real clips;

writes a kubeconfig, prints its path, and runs until Ctrl-C, which stops all of it. The
operator logs to ``operator.log`` beside the kubeconfig (``--operator-log -``: the terminal)::

    pip install -e '.[pipeline,operator,dev]'         # the dev extra brings kmock and ray[default]
    clipforge samples ./samples                         # a few sample videos
    python -m clipforge_operator.playground             # leave it running; then, in another terminal:

    export KUBECONFIG=/tmp/clipforge-playground/kubeconfig      # the path it prints
    kubectl apply -f examples/cpu-job.yaml
    kubectl get videocurationjobs -w                    # Pending -> Provisioning -> Running -> Succeeded
    kubectl get rayjobs,rayclusters                     # what the operator asked of "KubeRay"
    kubectl describe videocurationjob cpu-demo          # conditions and events
    ls out/clips out/previews                           # the dataset

Relative paths in a job (``./samples``, ``./out`` in examples/cpu-job.yaml) are relative to the
directory the playground was started in (``--workdir``): the Ray "pods" and the operator run
there. Jobs may also read and write ``s3://`` (set ``spec.storage.endpoint`` and create the
Secret that ``spec.storage.credentialsSecret`` names, as in examples/s3-job.yaml).
``kubectl`` comes from ``bash scripts/install-kube-tools.sh`` (``.tools/bin/kubectl``) or your PATH.

Each RayJob gets its own local Ray cluster with the logical CPUs of the pods it asks for
(``spec.cluster``; between this machine's cores and four times them), or ``--num-cpus``; the
cluster's dashboard is the job's ``status.dashboardURL``. Nothing listens beyond loopback, and nothing outlives the playground.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from clipforge_operator.emulator import KubeAPIEmulator, kube_tool, kuberay_crds
from clipforge_operator.kuberay_standin import (
    KubeRayStandIn,
    _free_ports,
    _no_proxy_get,
    fate_sharing,
)

__all__ = ["Playground", "main"]

log = logging.getLogger(__name__)

DEFAULT_KUBECONFIG = pathlib.Path(tempfile.gettempdir()) / "clipforge-playground" / "kubeconfig"


class OperatorError(RuntimeError):
    """The operator subprocess exited or never became live."""


class Playground:
    """
    The emulator, the KubeRay stand-in and the operator, started and stopped together.

    Also what the end-to-end tests run. ``operator_log``: a file for the operator's output
    (default: this process's stdout/stderr). ``progress_interval``: the operator's progress poll
    (CLIPFORGE_PROGRESS_INTERVAL), short here so that progress shows while a job runs.
    """

    def __init__(
            self,
            *,
            kubeconfig: str | os.PathLike[str] | None = None,
            workdir: str | os.PathLike[str] | None = None,
            num_cpus: float | None = None,
            port: int = 0,
            progress_interval: float = 2.0,
            operator_log: str | os.PathLike[str] | None = None,
            operator_verbose: bool = False,
            keep_ray_logs: bool = False,
    ) -> None:
        self.kubeconfig_path = pathlib.Path(kubeconfig or DEFAULT_KUBECONFIG).resolve()
        self.workdir = pathlib.Path(workdir or os.getcwd()).resolve()
        self.num_cpus = num_cpus
        self.port = port
        self.progress_interval = progress_interval
        self.operator_log = pathlib.Path(operator_log).resolve() if operator_log else None
        self.operator_verbose = operator_verbose
        self.keep_ray_logs = keep_ray_logs
        self.emulator: KubeAPIEmulator | None = None
        self.standin: KubeRayStandIn | None = None
        self.operator: subprocess.Popen[bytes] | None = None
        self.liveness_url = ""

    def __enter__(self) -> Playground:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- start and stop

    def start(self, timeout: float = 90.0) -> Playground:
        from clipforge_operator.crd import crd

        try:
            self.emulator = KubeAPIEmulator(port=self.port, crds=[crd(), *kuberay_crds()]).start()
            self.emulator.write_kubeconfig(self.kubeconfig_path)
            self.standin = KubeRayStandIn(self.emulator.kubeconfig(), num_cpus=self.num_cpus, workdir=self.workdir,
                                          keep_temp=self.keep_ray_logs).start()
            self._start_operator()
            self._wait_for_operator(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_operator(self) -> None:
        (port,) = _free_ports(1)
        self.liveness_url = f"http://127.0.0.1:{port}/healthz"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KUBERNETES_", "RAY_ADDRESS"))}
        env.update(KUBECONFIG=str(self.kubeconfig_path), CLIPFORGE_PROGRESS_INTERVAL=f"{self.progress_interval:g}",
                   PYTHONUNBUFFERED="1")
        command = [sys.executable, "-m", "clipforge_operator", "--all-namespaces", "--liveness", self.liveness_url,
                   "--metrics-port", "0", "--log-format", "text"]
        if self.operator_verbose:
            command.append("--verbose")
        output = open(self.operator_log, "ab") if self.operator_log else None  # noqa: SIM115 - the child owns it
        try:
            self.operator = subprocess.Popen(
                fate_sharing(command), cwd=self.workdir, env=env, stdin=subprocess.DEVNULL, stdout=output,
                stderr=subprocess.STDOUT if output else None,
                # Ctrl-C is the playground's to handle, in order; and the operator dies with it regardless.
                start_new_session=True,
            )
        finally:
            if output is not None:
                output.close()

    def _wait_for_operator(self, timeout: float) -> None:
        assert self.operator is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.operator.poll() is not None:
                raise OperatorError(f"the operator exited with {self.operator.returncode}{self._log_hint()}")
            try:
                _no_proxy_get(self.liveness_url, timeout=1.0)
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise OperatorError(f"the operator was not live after {timeout:g}s{self._log_hint()}")
            time.sleep(0.2)

    def _log_hint(self) -> str:
        if self.operator_log is None:
            return " (its output is above)"
        with contextlib.suppress(OSError):
            return ":\n" + "\n".join(self.operator_log.read_text(errors="replace").splitlines()[-30:])
        return ""

    def stop(self) -> None:
        """Stop the operator, then every Ray cluster, then the API server; safe to call twice."""
        if self.operator is not None:
            if self.operator.poll() is None:
                self.operator.send_signal(signal.SIGTERM)  # kopf shuts down cleanly on SIGTERM
                try:
                    self.operator.wait(20)
                except subprocess.TimeoutExpired:
                    self.operator.kill()
                    self.operator.wait(10)
            self.operator = None
        if self.standin is not None:
            self.standin.stop()
            self.standin = None
        if self.emulator is not None:
            self.emulator.stop()
            self.emulator = None

    # -- for people and tests

    def operator_alive(self) -> bool:
        return self.operator is not None and self.operator.poll() is None

    def instructions(self) -> str:
        kubectl = kube_tool("kubectl")
        kubectl_cmd = str(kubectl) if kubectl else "kubectl"
        assert self.emulator is not None
        return "\n".join([
            f"ClipForge playground: Kubernetes API on {self.emulator.url}, the operator and a KubeRay stand-in.",
            f"Jobs' relative paths are relative to {self.workdir}.",
            *([f"The operator logs to {self.operator_log}."] if self.operator_log else []),
            "",
            f"    export KUBECONFIG={self.kubeconfig_path}",
            f"    {kubectl_cmd} apply -f examples/cpu-job.yaml      # after `clipforge samples ./samples`",
            f"    {kubectl_cmd} get videocurationjobs -w",
            f"    {kubectl_cmd} get rayjobs,rayclusters",
            "",
            "Ctrl-C stops everything.",
        ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clipforge_operator.playground",
        description="Run the ClipForge operator against a local Kubernetes API emulator with a KubeRay stand-in.",
    )
    parser.add_argument("--kubeconfig", default=str(DEFAULT_KUBECONFIG), help="where to write the kubeconfig")
    parser.add_argument("--workdir", default=None, help="directory jobs' relative paths resolve in (default: here)")
    parser.add_argument("--port", type=int, default=0, help="API server port (default: a free one)")
    parser.add_argument("--num-cpus", type=float, default=None, help="logical CPUs of each local Ray cluster")
    parser.add_argument("--progress-interval", type=float, default=2.0, help="seconds between progress polls")
    parser.add_argument("--operator-log", default=None,
                        help="the operator's log file (default: operator.log beside the kubeconfig; - for the terminal)")
    parser.add_argument("--verbose", action="store_true", help="the operator logs at debug level")
    parser.add_argument("--keep-ray-logs", action="store_true", help="keep each Ray cluster's temp dir (logs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("clipforge_operator.emulator").setLevel(logging.WARNING)

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)  # also when started in the background, where SIGINT is ignored
    operator_log = None if args.operator_log == "-" else (
        args.operator_log or pathlib.Path(args.kubeconfig).resolve().parent / "operator.log")
    playground = Playground(kubeconfig=args.kubeconfig, workdir=args.workdir, num_cpus=args.num_cpus, port=args.port,
                            progress_interval=args.progress_interval, operator_log=operator_log,
                            operator_verbose=args.verbose, keep_ray_logs=args.keep_ray_logs)
    try:
        playground.start()
        print(playground.instructions(), flush=True)
        while playground.operator_alive():
            time.sleep(0.5)
        print("the operator exited; stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        playground.stop()


if __name__ == "__main__":
    sys.exit(main())
