"""Test network for the process kubelet: one Linux bridge on the host, one network namespace per pod.

Every pod gets its own address on the bridge, so Ray's fixed ports never collide between pods.
The control plane listens on the bridge's host address, which pods and host processes both reach.
Nothing routes off the machine: forwarding is switched off on the bridge, so a pod's default route
(Ray finds its node address through it) ends at the host.

Names: the kubelet keeps one hosts file current with Service and pod names
(`<svc>.<ns>.svc.cluster.local`). Pods see it as their /etc/hosts; host processes that must resolve
those names (the KubeRay operator polls the head Service) are started through `with_hosts_file`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

BRIDGE = "cfbr0"
HOST_IP = "10.200.0.1"
PREFIX_LEN = 16


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def ensure_bridge() -> None:
    """Create the bridge with the host address (idempotent); packets arriving on it are never forwarded."""
    if _ip("link", "show", BRIDGE, check=False).returncode != 0:
        _ip("link", "add", BRIDGE, "type", "bridge")
    addrs = _ip("-o", "-4", "addr", "show", "dev", BRIDGE).stdout
    if f" {HOST_IP}/" not in addrs:
        _ip("addr", "add", f"{HOST_IP}/{PREFIX_LEN}", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")
    Path(f"/proc/sys/net/ipv4/conf/{BRIDGE}/forwarding").write_text("0\n")


def with_hosts_file(argv: list[str], hosts: Path) -> list[str]:
    """`argv` run in a private mount namespace in which `hosts` is /etc/hosts (host network kept).

    The file is bind-mounted, so the kubelet must rewrite it in place (same inode) for changes to show.
    """
    script = 'mount --bind "$0" /etc/hosts && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(hosts), *argv]
