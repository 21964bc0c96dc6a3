"""Test-only faults in real Ray worker processes: this directory goes on PYTHONPATH.

CLIPFORGE_TEST_FAULTS is a comma-separated list of `<crash|hang>:<file name>:<stage>[:<chunk>]`.
In Ray worker processes only (the driver and Ray's own services are left alone), when that
stage's code opens that input file (for that chunk), the process kills itself with SIGKILL, as
the kernel's OOM killer would, or sleeps for good, as a decoder stuck in native code would.
Python imports sitecustomize at every interpreter start; nothing of this is in the product.
"""

from __future__ import annotations

import os
import signal
import sys
import time

FAULTS = os.environ.get("CLIPFORGE_TEST_FAULTS", "")


def _calling_task(stage: str):  # noqa: ANN202
    """The task the given stage's code is working on up the stack, or None if not called from it."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_globals.get("__name__") == f"clipforge.stages.{stage}" and "task" in frame.f_locals:
            return frame.f_locals["task"]
        frame = frame.f_back
    return None


def _install() -> None:
    from clipforge import storage

    faults = []
    for entry in FAULTS.split(","):
        kind, name, stage, *chunk = entry.split(":")
        faults.append((kind, name, stage, int(chunk[0]) if chunk else None))
    open_read = storage.Storage.open_read

    def faulty_open_read(self, uri: str):  # noqa: ANN001, ANN202
        for kind, name, stage, chunk in faults:
            if os.path.basename(uri) != name:
                continue
            task = _calling_task(stage)
            if task is None or (chunk is not None and task.chunk_index != chunk):
                continue
            if kind == "crash":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(3600)
        return open_read(self, uri)

    storage.Storage.open_read = faulty_open_read


if FAULTS and sys.argv and sys.argv[0].endswith("default_worker.py"):
    _install()
