"""How ClipForge logs: one level for the CLI's process and every Ray worker it starts.

The level set here is the `clipforge` loggers'; other libraries' loggers stay at warning or
above (a debug run is not flooded by urllib3 and botocore). Ray workers run in other processes,
maybe on other machines, and configure themselves before any spec reaches them: the driver's
level travels in their environment (worker_env(), which executors/ray_data.py hands to the
processes of a private Ray by inheritance and puts in a joined cluster's runtime env), and
configure_worker() reads it there.
"""

from __future__ import annotations

import logging
import os

LEVELS = ("debug", "info", "warning", "error")
DEFAULT_LEVEL = "warning"
LEVEL_ENV = "CLIPFORGE_LOG_LEVEL"
FORMAT = "%(levelname)s %(name)s: %(message)s"


def configure(level: str | int) -> None:
    """Logs `clipforge.*` from `level` (a name of LEVELS or a logging level) and everything else
    from warning (or `level`, when higher) to stderr."""
    level = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    logging.basicConfig(format=FORMAT)  # the handler, once; the levels below are set every time
    logging.getLogger().setLevel(max(level, logging.WARNING))
    logging.getLogger("clipforge").setLevel(level)


def worker_env() -> dict[str, str]:
    """The environment that gives a Ray worker this process's level."""
    return {LEVEL_ENV: logging.getLevelName(logging.getLogger("clipforge").getEffectiveLevel()).lower()}


def configure_worker() -> None:
    configure(os.environ.get(LEVEL_ENV, DEFAULT_LEVEL))
