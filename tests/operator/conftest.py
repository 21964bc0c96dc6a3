"""Fixtures of the operator tests: a job in the in-memory API (`h`), and, on the real control plane, a check
that the chart's RBAC sufficed."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.cluster_jobs import never_refused
from support.operator_fakes import Harness


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    """The job `demo` (local input and output on a claim its pods mount) in an in-memory API."""
    return Harness(tmp_path)


@pytest.fixture
def never_forbidden(stack):  # noqa: ANN001 - the module's own Stack
    """Whatever the module's operator logged during the test has no 403 in it: the chart's RBAC sufficed."""
    with never_refused(stack.operator):
        yield
