"""The host side of the test network: one Linux bridge on the host, and machine-wide address locks.

The bridge `cfbr0` carries the host address HOST_IP, where the API server and the test S3 server
listen, and the real nodes' addresses (node.py: 10.200.254.<slot>). The host never forwards
packets arriving on it: nothing a node or pod sends leaves the machine.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import subprocess
from pathlib import Path

BRIDGE = "cfbr0"
HOST_IP = "10.200.0.1"
PREFIX_LEN = 16
BRIDGE_CIDR = ipaddress.ip_network(f"{HOST_IP}/{PREFIX_LEN}", strict=False)
# One lock file per address, machine-wide: a process holds the flock while its node uses the
# address, so concurrent test sessions never take the same one, and the kernel releases the
# addresses of a process that died.
ADDRESS_LOCKS = Path("/run/clipforge-pod-addresses")


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
