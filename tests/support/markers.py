"""Markers that say what a test starts, set or checked here so that they cannot drift from the tests.

- `kube` and `s3` go to every test that uses, directly or through other fixtures, a fixture that
  starts a control plane or a Ceph RADOS gateway (FIXTURE_MARKERS), and to every test of a module
  that makes one of its own (CONSTRUCTOR_MARKERS).
- `images` goes to every test that uses the built images (the `build_output` fixture of
  tests/images, which runs scripts/build-images.sh: minutes whenever an input changed).
- `ray` is declared by a test that starts Ray on this machine (ray.init, or a job on the ray
  executor, in the test's process or a child). A test marked neither `ray` nor `kube` runs with
  RAY_TMPDIR set to an empty directory of its own, and fails if Ray made a session there.
  (Tests on the control plane run Ray in pods: they are `kube`.)
- `gpu` is declared by a test that needs CUDA; it is skipped where torch sees no GPU.

The markers are registered in pyproject.toml; the fast lane that uses them is in docs/testing.md.
"""

from __future__ import annotations

import ast
import functools
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# fixture -> the marker of every test that uses it
FIXTURE_MARKERS = {"control_plane": "kube", "s3_server": "s3", "pod_s3_server": "s3", "build_output": "images"}
# class -> the marker of every test in a module that calls it
CONSTRUCTOR_MARKERS = {"ControlPlane": "kube", "CephS3Gateway": "s3"}
# The test's empty RAY_TMPDIR and the value it replaced.
_RAY_TMPDIR = pytest.StashKey[tuple[Path, "str | None"]]()


@functools.cache
def _constructed(module: Path) -> frozenset[str]:
    """The markers of the CONSTRUCTOR_MARKERS classes that the module's code calls."""
    calls = (node.func for node in ast.walk(ast.parse(module.read_text())) if isinstance(node, ast.Call))
    names = {f.id if isinstance(f, ast.Name) else f.attr for f in calls if isinstance(f, (ast.Name, ast.Attribute))}
    return frozenset(CONSTRUCTOR_MARKERS[n] for n in names & CONSTRUCTOR_MARKERS.keys())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    cuda = None
    for item in items:
        names = {FIXTURE_MARKERS[f] for f in getattr(item, "fixturenames", ()) if f in FIXTURE_MARKERS}
        if isinstance(item, pytest.Function):
            names |= _constructed(item.path)
        for name in sorted(names):
            item.add_marker(name)
        if item.get_closest_marker("gpu") is not None:
            if cuda is None:
                import torch  # only when a collected test needs CUDA

                cuda = torch.cuda.is_available()
            if not cuda:
                item.add_marker(pytest.mark.skip(reason="needs CUDA"))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("ray") is None and item.get_closest_marker("kube") is None:
        ray_tmp = Path(tempfile.mkdtemp(prefix="cf-ray-"))  # short: Ray's Unix sockets live under it
        item.stash[_RAY_TMPDIR] = (ray_tmp, os.environ.get("RAY_TMPDIR"))
        os.environ["RAY_TMPDIR"] = str(ray_tmp)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item):
    try:
        return (yield)
    finally:
        if _RAY_TMPDIR in item.stash:
            ray_tmp, replaced = item.stash[_RAY_TMPDIR]
            del item.stash[_RAY_TMPDIR]
            if replaced is None:
                os.environ.pop("RAY_TMPDIR", None)
            else:
                os.environ["RAY_TMPDIR"] = replaced
            sessions = sorted(p.name for p in (ray_tmp / "ray").glob("session_*"))
            shutil.rmtree(ray_tmp, ignore_errors=True)
            if sessions:
                pytest.fail(f"{item.nodeid} started Ray ({sessions[0]}) but is not marked `ray`:"
                            " mark it @pytest.mark.ray, so that the fast lane leaves it out", pytrace=False)
