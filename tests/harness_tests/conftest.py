"""Fixtures of the harness's own tests."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def namespace(control_plane) -> str:  # noqa: ANN001
    """A fresh namespace per test, deleted (without waiting) afterwards."""
    name = control_plane.create_namespace(f"t-{uuid.uuid4().hex[:8]}")
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false")
