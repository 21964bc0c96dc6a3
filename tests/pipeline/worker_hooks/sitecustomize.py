"""Test-only hooks in real Ray worker processes: this directory goes on PYTHONPATH.

CLIPFORGE_TEST_HOOKS is a comma-separated list of `<kind>:<file name>:<stage>[:<chunk>]`. In Ray
worker processes only (the driver and Ray's own services are left alone), when that stage's
code opens that input file (for that chunk):
  crash  the process kills itself with SIGKILL, as the kernel's OOM killer would;
  hang   it sleeps for good in native code holding the GIL, as a stuck decoder may: no Python
         thread of the process runs again;
  trace  it appends "<pid> <chunk index>" to the file named by CLIPFORGE_TEST_TRACE, then waits
         (up to a minute) until another process has traced too: while one worker holds on to
         its task, the rest can only go to other workers, however fast each happens to start.
Python imports sitecustomize at every interpreter start; nothing of this is in the product.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

HOOKS = os.environ.get("CLIPFORGE_TEST_HOOKS", "")


def _calling_task(stage: str):  # noqa: ANN202
    """The task the given stage's code is working on up the stack, or None if not called from it."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_globals.get("__name__") == f"clipforge.stages.{stage}" and "task" in frame.f_locals:
            return frame.f_locals["task"]
        frame = frame.f_back
    return None


def _trace(path: str, chunk: int) -> None:
    with open(path, "a") as trace:
        trace.write(f"{os.getpid()} {chunk}\n")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with open(path) as trace:
            if len({line.split()[0] for line in trace if line.strip()}) > 1:
                return
        time.sleep(0.1)


def _install() -> None:
    from clipforge import storage

    hooks = []
    for entry in HOOKS.split(","):
        kind, name, stage, *chunk = entry.split(":")
        hooks.append((kind, name, stage, int(chunk[0]) if chunk else None))
    open_read = storage.Storage.open_read

    def hooked_open_read(self, uri: str):  # noqa: ANN001, ANN202
        for kind, name, stage, chunk in hooks:
            if os.path.basename(uri) != name:
                continue
            task = _calling_task(stage)
            if task is None or (chunk is not None and task.chunk_index != chunk):
                continue
            if kind == "crash":
                os.kill(os.getpid(), signal.SIGKILL)
            elif kind == "hang":
                ctypes.PyDLL(None).sleep(3600)  # PyDLL: called with the GIL held
            elif kind == "trace":
                _trace(os.environ["CLIPFORGE_TEST_TRACE"], task.chunk_index)
        return open_read(self, uri)

    storage.Storage.open_read = hooked_open_read


if HOOKS and sys.argv and sys.argv[0].endswith("default_worker.py"):
    _install()
