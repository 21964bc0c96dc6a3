"""Waiting for controllers: they act asynchronously, so tests poll for the state they expect."""

from __future__ import annotations

import time
from typing import Any, Callable


def eventually(check: Callable[[], Any], what: str, timeout: float = 60.0, interval: float = 0.2) -> Any:
    """check()'s first truthy result; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
