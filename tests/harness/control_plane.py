"""A real Kubernetes control plane and KubeRay operator for the tests, run as child processes.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the KubeRay operator, built from
their Go modules by scripts/build-kube-binaries.sh (see kube_binaries.py). Nothing is faked: real
TLS with a throwaway CA, client-certificate authentication, RBAC (and Node) authorization, the
default admission plugins (ServiceAccount and PodSecurity included), service-account tokens signed
by a real key. There are no nodes: pods stay Pending until nodes (node_cluster.py) register.

    with ControlPlane(workdir) as cp:
        cp.kubectl("get", "pods", "-A")
        cp.service_account_kubeconfig("ns", "sa")   # a token kubeconfig, for RBAC tests

The API server listens on the bridge's host address (netns.HOST_IP), so the nodes and their pods
reach it; everything else listens on loopback, on free ports, so several control planes can run
side by side. Its Service CIDR is SERVICE_CIDR. KubeRay runs as a process until nodes move it
into a pod (node_cluster.Nodes.start_kuberay): only from a pod does it reach the Ray dashboards.
Everything lives in the work directory: certificates, kubeconfigs, etcd's data, logs/<component>.log.

The daemons run in their own process groups, are killed by stop() and at interpreter exit, and
by the kernel (PR_SET_PDEATHSIG) when the thread that started them dies, so call start() from a
thread that lives as long as the control plane (the main thread, in pytest).

`python3 tests/harness/control_plane.py [--workdir DIR]` starts one in the foreground.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import datetime
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `harness` importable as in the tests
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from harness import kube_binaries, netns
from harness.processes import die_with_parent, free_port, log_tail

REPO_ROOT = Path(__file__).resolve().parents[2]
KUBECTL = REPO_ROOT / ".tools" / "bin" / "kubectl"
OUR_CRD = REPO_ROOT / "crds" / "videocurationjobs.yaml"
SERVICE_CIDR = "10.96.0.0/12"  # outside the pod bridge's 10.200.0.0/16
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kuberay-operator")


class ControlPlaneError(RuntimeError):
    """A component failed to start; the message names it and carries the tail of its log."""


class KubectlError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return f"{super().__str__()}\n{(self.stderr or '').strip()}"


# -- certificates ------------------------------------------------------------------------------

class _CertificateAuthority:
    """A throwaway CA that issues the serving and client certificates (EC P-256: fast to make)."""

    def __init__(self, pki: Path):
        self.pki = pki
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clipforge-test-ca")])
        self.cert = self._builder(name, name, self.key.public_key()).add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True,
        ).add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True,
        ).sign(self.key, hashes.SHA256())
        self.cert_path, self.key_path = self._write("ca", self.cert, self.key)

    def _builder(self, subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:  # noqa: ANN001
        now = datetime.datetime.now(datetime.timezone.utc)
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))

    def issue(self, name: str, common_name: str, *, groups: tuple[str, ...] = (),
              dns: tuple[str, ...] = (), ips: tuple[str, ...] = ()) -> tuple[Path, Path]:
        """A certificate for `common_name` (the user; `groups` become its organizations); with SANs a serving one."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
                            + [x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        serving = bool(dns or ips)
        builder = self._builder(subject, self.cert.subject, key.public_key()).add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True,
        ).add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True,
        ).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if serving else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        ).add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False,
        )
        if serving:
            sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return self._write(name, builder.sign(self.key, hashes.SHA256()), key)

    def _write(self, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
        cert_path, key_path = self.pki / f"{name}.crt", self.pki / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)
        return cert_path, key_path


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


# -- the control plane -------------------------------------------------------------------------

class ControlPlane:
    """Starts and stops the control plane and KubeRay; usable as a context manager (yields itself)."""

    def __init__(self, workdir: Path | str, *, start_timeout: float = 300.0):
        self.workdir = Path(workdir).resolve()
        self.start_timeout = start_timeout
        self.logs_dir = self.workdir / "logs"
        self.kubeconfig = self.workdir / "admin.kubeconfig"
        self.ca_path = self.workdir / "pki" / "ca.crt"
        self.host = netns.HOST_IP
        self.port: int | None = None
        self.server: str | None = None
        self.versions: dict[str, str] = {}
        self.start_seconds: float | None = None
        self._procs: dict[str, subprocess.Popen] = {}
        self._ca: _CertificateAuthority | None = None
        self._admin_cert: tuple[Path, Path] | None = None

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- public helpers ----------------------------------------------------------------------

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,  # noqa: A002 - subprocess's name
                kubeconfig: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        """The real kubectl against this control plane (as admin unless `kubeconfig` says otherwise)."""
        if not KUBECTL.is_file():
            raise ControlPlaneError(f"{KUBECTL} is missing: run scripts/install-kube-tools.sh")
        argv = [str(KUBECTL), f"--kubeconfig={kubeconfig or self.kubeconfig}",
                f"--cache-dir={self.workdir / 'kubectl-cache'}", *args]
        done = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise KubectlError(done.returncode, argv, done.stdout, done.stderr)
        return done

    def apply(self, *objects: dict) -> subprocess.CompletedProcess:
        """`kubectl apply` of manifests given as dicts."""
        return self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                  "items": list(objects)}))

    def create_namespace(self, name: str) -> str:
        """A new namespace, once its `default` ServiceAccount exists (pods are rejected before that)."""
        self.kubectl("create", "namespace", name)
        self._wait_for_default_service_account(name, time.monotonic() + 60)
        return name

    def client_kubeconfig(self, user: str, groups: tuple[str, ...] = ()) -> Path:
        """A kubeconfig that authenticates as `user` in `groups` with a client certificate from the CA."""
        assert self._ca is not None, "start() first"
        safe = user.replace(":", "-")
        cert, key = self._ca.issue(f"user-{safe}", user, groups=groups)
        return self._write_kubeconfig(safe, {"client-certificate-data": _b64(cert), "client-key-data": _b64(key)})

    def serving_certificate(self, name: str, common_name: str, *, ips: tuple[str, ...]) -> tuple[Path, Path]:
        """A serving certificate and key from the CA (a kubelet's, which the API server verifies)."""
        assert self._ca is not None, "start() first"
        return self._ca.issue(name, common_name, dns=(common_name,), ips=ips)

    def service_account_token(self, namespace: str, name: str, duration: str = "1h") -> str:
        """A token for the ServiceAccount from the TokenRequest API (what a pod's projected token is)."""
        return self.kubectl("create", "token", name, "-n", namespace, f"--duration={duration}").stdout.strip()

    def service_account_kubeconfig(self, namespace: str, name: str) -> Path:
        """A kubeconfig that authenticates as the ServiceAccount with a TokenRequest token."""
        return self._write_kubeconfig(f"sa-{namespace}-{name}", {"token": self.service_account_token(namespace, name)})

    def env(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.kubeconfig)}

    def pid(self, component: str) -> int:
        """The process id of a running component (one of COMPONENTS)."""
        return self._procs[component].pid

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> ControlPlane:
        if self._procs:
            return self
        began = time.monotonic()
        deadline = began + self.start_timeout
        bin_dir = kube_binaries.ensure_built()
        atexit.register(self.stop)
        try:
            self._start(bin_dir, deadline)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Kills every process group it started (idempotent); the work directory and its logs stay."""
        procs, self._procs = self._procs, {}
        for proc in reversed(procs.values()):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in procs.values():
            proc.wait()
        atexit.unregister(self.stop)

    def stop_kuberay(self) -> None:
        """Stops the KubeRay operator's process, for nodes that run it as a pod (node_cluster.py):
        the jobs' NetworkPolicies admit KubeRay's pods, not the host, to their dashboards."""
        proc = self._procs.pop("kuberay-operator", None)
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

    def _start(self, bin_dir: Path, deadline: float) -> None:
        netns.ensure_bridge()
        # A fresh cluster each start: old etcd data would hold objects signed by the old keys.
        for sub in ("etcd", "pki", "kubeconfigs", "kubectl-cache", "kube-controller-manager", "kube-scheduler"):
            shutil.rmtree(self.workdir / sub, ignore_errors=True)
        for sub in ("pki", "kubeconfigs", "logs"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)

        etcd_url = self._start_etcd(bin_dir, deadline)
        self._start_apiserver(bin_dir, etcd_url, deadline)
        kcm_port, scheduler_port = free_port(), free_port()
        self._spawn("kube-controller-manager", bin_dir, [
            f"--kubeconfig={self.client_kubeconfig('system:kube-controller-manager')}",
            "--bind-address=127.0.0.1", f"--secure-port={kcm_port}",
            f"--cert-dir={self.workdir / 'kube-controller-manager'}",
            "--leader-elect=false",
            # each controller acts with its own ServiceAccount's RBAC, as in a production cluster
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={self.workdir / 'pki' / 'service-account.key'}",
            f"--root-ca-file={self.ca_path}",
            f"--cluster-signing-cert-file={self.ca_path}",
            f"--cluster-signing-key-file={self.workdir / 'pki' / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
        ])
        self._spawn("kube-scheduler", bin_dir, [
            f"--kubeconfig={self.client_kubeconfig('system:kube-scheduler')}",
            "--bind-address=127.0.0.1", f"--secure-port={scheduler_port}",
            f"--cert-dir={self.workdir / 'kube-scheduler'}", "--leader-elect=false",
        ])
        self._install_kuberay_manifests(bin_dir, deadline)
        probe_port, metrics_port = free_port(), free_port()
        self._spawn("kuberay-operator", bin_dir, [
            "--enable-leader-election=false",
            f"--health-probe-bind-address=127.0.0.1:{probe_port}",
            f"--metrics-addr=127.0.0.1:{metrics_port}",
            "--log-stdout-encoder=console",
        ], env={"KUBECONFIG": str(self.client_kubeconfig("kuberay-operator"))})

        self._wait("kube-controller-manager", "/healthz",
                   lambda: self._https_ok(f"https://127.0.0.1:{kcm_port}/healthz", verify=False), deadline)
        self._wait("kube-scheduler", "/healthz",
                   lambda: self._https_ok(f"https://127.0.0.1:{scheduler_port}/healthz", verify=False), deadline)
        self._wait("kuberay-operator", "/healthz and /readyz",
                   lambda: all(self._http_json(f"http://127.0.0.1:{probe_port}/{p}") is not None
                               for p in ("healthz", "readyz")), deadline)
        self._wait_for_default_service_account("default", deadline)
        self.versions = {
            "kube-apiserver": self._api_json("/version")["gitVersion"],
            "etcd": self._http_json(f"{etcd_url}/version")["etcdserver"],
            "kuberay-operator": kube_binaries.binary_versions(bin_dir)["kuberay-operator"],
        }

    def _start_etcd(self, bin_dir: Path, deadline: float) -> str:
        client, peer = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
        self._spawn("etcd", bin_dir, [
            "--name=clipforge-test", f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=clipforge-test={peer}",
            # a throwaway store: losing it on a crash costs nothing, fsync costs seconds
            "--unsafe-no-fsync",
        ])
        self._wait("etcd", "/health", lambda: (self._http_json(f"{client}/health") or {}).get("health") == "true",
                   deadline)
        return client

    def _start_apiserver(self, bin_dir: Path, etcd_url: str, deadline: float) -> None:
        pki = self.workdir / "pki"
        self._ca = _CertificateAuthority(pki)
        first_service_ip = str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))
        serving_cert, serving_key = self._ca.issue(
            "kube-apiserver", "kube-apiserver", ips=(self.host, "127.0.0.1", first_service_ip),
            dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                 "kubernetes.default.svc.cluster.local"))
        sa_key = ec.generate_private_key(ec.SECP256R1())
        (pki / "service-account.key").write_bytes(sa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        (pki / "service-account.pub").write_bytes(sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        self._admin_cert = self._ca.issue("admin", "admin", groups=("system:masters",))
        # `kubectl logs/exec` go through the API server to a kubelet: it proves itself with this
        # certificate, checks the kubelet's against the CA, and dials the node's InternalIP.
        kubelet_client = self._ca.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                                        groups=("system:masters",))

        self.port = free_port(self.host)
        self.server = f"https://{self.host}:{self.port}"
        self._write_kubeconfig("admin", {"client-certificate-data": _b64(self._admin_cert[0]),
                                         "client-key-data": _b64(self._admin_cert[1])}, path=self.kubeconfig)
        self._spawn("kube-apiserver", bin_dir, [
            f"--etcd-servers={etcd_url}",
            f"--bind-address={self.host}", f"--advertise-address={self.host}", f"--secure-port={self.port}",
            f"--tls-cert-file={serving_cert}", f"--tls-private-key-file={serving_key}",
            f"--client-ca-file={self.ca_path}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki / 'service-account.pub'}",
            f"--service-account-signing-key-file={pki / 'service-account.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--kubelet-client-certificate={kubelet_client[0]}", f"--kubelet-client-key={kubelet_client[1]}",
            f"--kubelet-certificate-authority={self.ca_path}", "--kubelet-preferred-address-types=InternalIP",
            f"--cert-dir={pki}",
            "--profiling=false",
        ])
        self._wait("kube-apiserver", "/livez and /readyz",
                   lambda: self._api_ok("/livez") and self._api_ok("/readyz"), deadline)

    def _install_kuberay_manifests(self, bin_dir: Path, deadline: float) -> None:
        """The CRDs (KubeRay's and ours), served before KubeRay starts, and KubeRay's ClusterRole."""
        def kubectl(*args: str) -> str:
            return self.kubectl(*args, timeout=max(1.0, deadline - time.monotonic())).stdout

        crds = ("-f", str(bin_dir / "kuberay-crds"), "-f", str(OUR_CRD))
        try:
            # server-side: the RayCluster/RayJob CRDs exceed the client-side last-applied annotation limit
            names = kubectl("apply", "--server-side", "--field-manager=clipforge-tests", "-o", "name", *crds).split()
            # kubectl wait fails at once (".status.conditions accessor error") on a CRD whose status
            # the API server has not written yet, instead of waiting: ask again until the deadline.
            self._wait("kube-apiserver", "CRDs to be Established", lambda: self.kubectl(
                "wait", "--for=condition=Established", "--timeout=10s", *names, check=False, timeout=30,
            ).returncode == 0, deadline)
            # KubeRay acts with the ClusterRole its own deployment binds to it, and nothing more.
            kubectl("apply", "-f", str(bin_dir / "kuberay-role.yaml"))
            kubectl("create", "clusterrolebinding", "kuberay-operator", "--clusterrole=kuberay-operator",
                    "--user=kuberay-operator")
        except (KubectlError, subprocess.TimeoutExpired) as exc:
            raise self._error("kube-apiserver", f"installing KubeRay's CRDs and ClusterRole: {exc}") from None

    def _wait_for_default_service_account(self, namespace: str, deadline: float) -> None:
        self._wait("kube-controller-manager", f"the ServiceAccount {namespace}/default",
                   lambda: self._api_ok(f"/api/v1/namespaces/{namespace}/serviceaccounts/default"), deadline)

    # -- helpers -----------------------------------------------------------------------------

    def _write_kubeconfig(self, name: str, credentials: dict, path: Path | None = None) -> Path:
        path = path or self.workdir / "kubeconfigs" / f"{name}.kubeconfig"
        config = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "clipforge-test",
                          "cluster": {"server": self.server, "certificate-authority-data": _b64(self.ca_path)}}],
            "users": [{"name": name, "user": credentials}],
            "contexts": [{"name": name, "context": {"cluster": "clipforge-test", "user": name}}],
            "current-context": name,
        }
        path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML; every client reads it
        path.chmod(0o600)
        return path

    def _spawn(self, name: str, bin_dir: Path, args: list[str], *, env: dict[str, str] | None = None) -> None:
        argv = [str(bin_dir / name), *args]
        with open(self.logs_dir / f"{name}.log", "wb") as log:
            # Own process group: stop() kills it whole; Ctrl-C in a terminal reaches only this process.
            self._procs[name] = subprocess.Popen(
                die_with_parent(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})}, start_new_session=True)

    def _wait(self, component: str, what: str, ready, deadline: float) -> None:  # noqa: ANN001
        while True:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise self._error(name, f"exited with status {proc.returncode} while waiting for "
                                            f"{component}'s {what}")
            if ready():
                return
            if time.monotonic() > deadline:
                raise self._error(component, f"not ready after {self.start_timeout:.0f}s: waited for its {what}")
            time.sleep(0.1)

    def _error(self, component: str, message: str) -> ControlPlaneError:
        log = self.logs_dir / f"{component}.log"
        return ControlPlaneError(f"{component} failed to start: {message}\n--- last lines of {log} ---\n"
                                 f"{log_tail(log, 40)}")

    def _api_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        ctx.load_cert_chain(*map(str, self._admin_cert))
        return ctx

    def _api_ok(self, path: str) -> bool:
        return self._https_ok(f"{self.server}{path}", context=self._api_context())

    def _api_json(self, path: str) -> dict:
        with urllib.request.urlopen(f"{self.server}{path}", context=self._api_context(), timeout=10) as resp:
            return json.load(resp)

    @staticmethod
    def _https_ok(url: str, *, context: ssl.SSLContext | None = None, verify: bool = True) -> bool:
        if not verify:  # the component's own self-signed serving certificate, on loopback
            context = ssl._create_unverified_context()  # noqa: S323
        try:
            with urllib.request.urlopen(url, context=context, timeout=5) as resp:
                return resp.status == 200
        except OSError:  # HTTPError (not ready: 500) and URLError (not listening) are OSErrors
            return False

    @staticmethod
    def _http_json(url: str) -> dict | None:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                body = resp.read()
        except OSError:
            return None
        try:
            return json.loads(body)
        except ValueError:
            return {}


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the test control plane and KubeRay in the foreground.")
    parser.add_argument("--workdir", type=Path,
                        help="where certificates, kubeconfigs and logs go (default: a new temporary directory)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="clipforge-control-plane-"))
    # Ctrl-C, and SIGTERM too (SIGINT is ignored when started in the background), stops it cleanly.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.default_int_handler)
    try:
        with ControlPlane(workdir) as cp:
            print(f"control plane up in {cp.start_seconds:.1f}s: "
                  + ", ".join(f"{k} {v}" for k, v in cp.versions.items()))
            print(f"admin kubeconfig: {cp.kubeconfig}\nlogs: {cp.logs_dir}\n\nexport KUBECONFIG={cp.kubeconfig}\n")
            print("Ctrl-C stops it.", flush=True)
            signal.pause()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
