"""Small helpers shared by the test servers that run daemons as child processes (S3, control plane),
and by the tests and benchmarks that look at the processes a run started."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def die_with_parent(argv: list[str]) -> list[str]:
    """argv run under util-linux setpriv, which asks the kernel to SIGKILL it when this process dies.

    (PR_SET_PDEATHSIG survives exec. Setting it from a preexec_fn instead would run Python between
    fork and exec, which can deadlock once pyarrow, Ray or boto3 have started threads.)
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else argv


def log_tail(path: Path, lines: int = 25) -> str:
    """The last `lines` lines of a log file, indented, for error messages."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"    (no log: {exc})"
    return "\n".join("    " + line for line in text.splitlines()[-lines:]) or "    (empty)"


def descendants(root: int) -> list[int]:
    """The processes under `root` (its children, theirs, and so on), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # it ended meanwhile
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # after the name in (...), which may hold spaces
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
