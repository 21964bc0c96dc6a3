"""Where the real etcd, Kubernetes control plane and KubeRay operator binaries are, and which versions they are.

scripts/build-kube-binaries.sh builds them from their Go modules into a cache directory named by
the versions in kube-versions.env; this module asks the script for that directory (one rule), and
runs it to build what is missing.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-kube-binaries.sh"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kuberay-operator")
# The test node's (harness/node.py), built with `--node` into a directory of their own.
NODE_BINARIES = ("kubelet", "kube-proxy", "pause", "containerd", "containerd-shim-runc-v2", "ctr", "coredns",
                 "kube-router")


class KubeBinariesError(RuntimeError):
    """The binaries could not be built or do not run; the message carries the build's output."""


def binary_dir(*, node: bool = False) -> Path:
    """The cache directory for the pinned versions (the binaries may not be built yet)."""
    done = subprocess.run(["bash", str(BUILD_SCRIPT), "--print-dir", *(["--node"] if node else [])],
                          capture_output=True, text=True, check=True)
    return Path(done.stdout.strip())


def built(*, node: bool = False) -> Path | None:
    """The cache directory if every binary (and KubeRay's manifests: CRDs, ClusterRole) is in it, else None."""
    d = binary_dir(node=node)
    complete = all((d / f"{b}.ok").is_file() for b in (NODE_BINARIES if node else (*BINARIES, "kuberay-manifests")))
    return d if complete else None


def ensure_built(*, node: bool = False) -> Path:
    """The cache directory, building the binaries first if needed (tens of minutes on a fresh machine)."""
    d = built(node=node)
    if d is not None:
        return d
    done = subprocess.run(["bash", str(BUILD_SCRIPT), *(["--node"] if node else [])],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0:
        tail = "\n".join(lines[-40:])
        raise KubeBinariesError(f"{BUILD_SCRIPT} failed with status {done.returncode}:\n{tail}")
    return Path(lines[-1])


def binary_versions(d: Path) -> dict[str, str]:
    """What each built binary says its version is (read from the binaries, not from kube-versions.env)."""

    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    # `Kubernetes v1.36.3`; `etcd Version: 3.6.16`; KubeRay has no version flag, but Go records the
    # module it built in the binary (`mod github.com/ray-project/kuberay/ray-operator v1.5.0 h1:...`).
    kube = run(str(d / "kube-apiserver"), "--version").split()[-1]
    etcd = re.search(r"etcd Version: (\S+)", run(str(d / "etcd"), "--version"))
    kuberay = re.search(r"^\s*mod\s+github\.com/ray-project/kuberay/ray-operator\s+(\S+)",
                        run("go", "version", "-m", str(d / "kuberay-operator")), re.MULTILINE)
    if etcd is None or kuberay is None:
        raise KubeBinariesError(f"cannot read the etcd or KubeRay version from the binaries in {d}")
    return {"kube-apiserver": kube, "etcd": etcd.group(1), "kuberay-operator": kuberay.group(1)}
