"""Fixtures of the operator tests that run on the real control plane."""

from __future__ import annotations

import pytest

from support.cluster_jobs import never_refused


@pytest.fixture
def never_forbidden(stack):  # noqa: ANN001 - the module's own Stack
    """Whatever the module's operator logged during the test has no 403 in it: the chart's RBAC sufficed."""
    with never_refused(stack.operator):
        yield
