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

import fcntl
import ipaddress
import os
import shutil
import subprocess
import threading
from pathlib import Path

BRIDGE = "cfbr0"
HOST_IP = "10.200.0.1"
PREFIX_LEN = 16
POD_CIDR = ipaddress.ip_network(f"{HOST_IP}/{PREFIX_LEN}", strict=False)
# One lock file per pod address, machine-wide: a process holds the flock while its pod uses the
# address, so kubelets of concurrent test sessions never hand out the same one, and the kernel
# releases the addresses of a process that died.
ADDRESS_LOCKS = Path("/run/clipforge-pod-addresses")
NETNS_DIR = Path("/run/netns")
NSENTER = shutil.which("nsenter") or "nsenter"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done


def ensure_bridge() -> None:
    """Create the bridge with the host address (idempotent); packets arriving on it are never forwarded."""
    # check=False, then look: a concurrent test session may have just added them.
    if _ip("link", "show", BRIDGE, check=False).returncode != 0:
        _ip("link", "add", BRIDGE, "type", "bridge", check=False)
        _ip("link", "show", BRIDGE)
    if f" {HOST_IP}/" not in _ip("-o", "-4", "addr", "show", "dev", BRIDGE).stdout:
        _ip("addr", "add", f"{HOST_IP}/{PREFIX_LEN}", "dev", BRIDGE, check=False)
        if f" {HOST_IP}/" not in _ip("-o", "-4", "addr", "show", "dev", BRIDGE).stdout:
            raise RuntimeError(f"cannot give bridge {BRIDGE} the address {HOST_IP}/{PREFIX_LEN}")
    _ip("link", "set", BRIDGE, "up")
    Path(f"/proc/sys/net/ipv4/conf/{BRIDGE}/forwarding").write_text("0\n")


def with_hosts_file(argv: list[str], hosts: Path) -> list[str]:
    """`argv` run in a private mount namespace in which `hosts` is /etc/hosts (host network kept).

    The file is bind-mounted, so the kubelet must rewrite it in place (same inode) for changes to show.
    """
    script = 'mount --bind "$0" /etc/hosts && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(hosts), *argv]


def lock_address(address: str) -> int | None:
    """A descriptor holding `address`'s flock, or None when another live process holds it."""
    ADDRESS_LOCKS.mkdir(parents=True, exist_ok=True)
    fd = os.open(ADDRESS_LOCKS / address, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class PodNetwork:
    """One pod's network namespace, joined to the bridge by a veth pair, with its own address.

    Inside: `lo`, and `eth0` with the address (its MAC derived from it, so a reused address never
    meets a stale ARP entry) and a default route via HOST_IP. `enter(argv)` runs argv in it.
    """

    _cursor = int(POD_CIDR.network_address) + 256  # 10.200.1.0: the first /24 is the host's
    _cursor_lock = threading.Lock()

    def __init__(self, address: str, lock_fd: int):
        self.address = address
        self._lock_fd = lock_fd
        low = int(ipaddress.ip_address(address)) & 0xFFFF
        self.netns = "cf-" + address.replace(".", "-")
        self.veth = f"cfv{low:04x}"  # interface names are at most 15 characters
        self.mac = f"02:cf:c8:00:{low >> 8:02x}:{low & 0xFF:02x}"

    @classmethod
    def create(cls) -> PodNetwork:
        """A new pod network on a free address (round robin, so a freed address rests a while).

        The bridge must exist (ensure_bridge()).
        """
        network = cls._claim_address()
        try:
            _ip("netns", "add", network.netns)
            _ip("link", "add", network.veth, "type", "veth", "peer", "name", "eth0",
                "address", network.mac, "netns", network.netns)
            _ip("link", "set", network.veth, "master", BRIDGE, "up")
            inside = ["-n", network.netns]
            _ip(*inside, "addr", "add", f"{network.address}/{PREFIX_LEN}", "dev", "eth0")
            _ip(*inside, "link", "set", "eth0", "up")
            _ip(*inside, "link", "set", "lo", "up")
            # Ray finds its node address through the default route; the host never forwards.
            _ip(*inside, "route", "add", "default", "via", HOST_IP)
        except BaseException:
            network.delete()
            raise
        return network

    @classmethod
    def _claim_address(cls) -> PodNetwork:
        first, last = int(POD_CIDR.network_address) + 256, int(POD_CIDR.broadcast_address) - 1
        with cls._cursor_lock:
            for _ in range(last - first + 1):
                candidate = cls._cursor
                cls._cursor = first if candidate >= last else candidate + 1
                address = str(ipaddress.ip_address(candidate))
                if address.endswith((".0", ".255")):
                    continue
                fd = lock_address(address)
                if fd is None:
                    continue
                network = cls(address, fd)
                network._remove_links()  # left by a process that died holding this address
                return network
        raise RuntimeError(f"no free pod address left in {POD_CIDR}")

    def enter(self, argv: list[str]) -> list[str]:
        """argv run inside this network namespace (nothing else of the host changes)."""
        return [NSENTER, f"--net={NETNS_DIR / self.netns}", "--", *argv]

    def delete(self) -> None:
        """Removes the namespace and veth pair and frees the address (idempotent)."""
        self._remove_links()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = -1

    def _remove_links(self) -> None:
        _ip("link", "del", self.veth, check=False)
        _ip("netns", "del", self.netns, check=False)


def remove_stale_pod_networks() -> list[str]:
    """Deletes pod namespaces whose address no live process holds (a killed test session's); returns them."""
    removed = []
    for path in sorted(NETNS_DIR.glob("cf-*")):
        try:
            address = str(ipaddress.ip_address(path.name[3:].replace("-", ".")))
        except ValueError:
            continue
        if ipaddress.ip_address(address) not in POD_CIDR:
            continue
        fd = lock_address(address)
        if fd is None:
            continue
        PodNetwork(address, fd).delete()
        removed.append(path.name)
    return removed
