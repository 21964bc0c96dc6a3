"""Shared pytest fixtures."""

from __future__ import annotations

import uuid

import pytest

# --- S3: a real S3 server (Ceph RADOS gateway on loopback, see tests/s3_server.py) -----------


@pytest.fixture(scope="session")
def s3_server():
    """One throwaway Ceph cluster for the whole session; fails (never skips) when it can't start."""
    from s3_server import CephS3Gateway

    with CephS3Gateway() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh, uniquely named, empty bucket on the session's S3 server."""
    return s3_server.create_bucket(f"test-{uuid.uuid4().hex[:16]}")


# --- end of S3 fixtures ----------------------------------------------------------------------
