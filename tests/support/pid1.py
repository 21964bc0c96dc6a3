"""A command as a container runs it: the init process (PID 1) of a PID namespace of its own.

PID 1 receives only the signals it has a handler for, so a container command that installs none
ignores the kubelet's SIGTERM and its pod waits out the whole grace period.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def sigterm_as_pid1(argv: list[str], ready: Callable[[], bool], env: dict[str, str], *, log: Path,
                    start_timeout: float = 120, stop_timeout: float = 30) -> int:
    """Runs `argv` as PID 1 until `ready()`, sends it SIGTERM as the kubelet does and returns its exit
    status; fails if it does not exit within `stop_timeout` seconds (it was then SIGKILLed)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", *argv], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + start_timeout
        while not ready():
            assert proc.poll() is None, f"{argv} exited with {proc.returncode} before it was ready:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"{argv} not ready after {start_timeout:.0f}s:\n{log.read_text()}"
            time.sleep(0.2)
        init = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])
        os.kill(init, signal.SIGTERM)
        try:
            return proc.wait(stop_timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{argv} ignored SIGTERM as PID 1 for {stop_timeout:.0f}s") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
