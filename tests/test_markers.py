"""tests/support/markers.py: what the fast lane leaves out is what the tests start, and cannot drift."""

from __future__ import annotations

import pytest

# Stand-ins with the real fixtures' names: the markers follow the names, not what the fixtures do.
CONFTEST = """
import pytest

@pytest.fixture(scope="session")
def control_plane():
    return "cp"

@pytest.fixture(scope="session")
def s3_server():
    return "s3"

@pytest.fixture(scope="session")
def pod_s3_server():
    return "pod-s3"

@pytest.fixture
def stack(control_plane, pod_s3_server):
    return (control_plane, pod_s3_server)

@pytest.fixture(scope="module")
def build_output():
    return "built"
"""


def selected(pytester: pytest.Pytester, expression: str) -> set[str]:
    result = pytester.runpytest("-p", "support.markers", "--collect-only", "-q", "-m", expression)
    return {line.split("::")[1] for line in result.outlines if "::" in line}


def test_tests_are_marked_by_the_fixtures_they_use_even_through_other_fixtures(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_uses="""
        import pytest

        def test_plane(control_plane): pass
        def test_bucket(s3_server): pass
        def test_stack(stack): pass
        @pytest.mark.usefixtures("stack")
        def test_used(): pass
        def test_images(build_output): pass
        def test_nothing(tmp_path): pass
    """)
    assert selected(pytester, "kube") == {"test_plane", "test_stack", "test_used"}
    assert selected(pytester, "s3") == {"test_bucket", "test_stack", "test_used"}
    assert selected(pytester, "images") == {"test_images"}
    assert selected(pytester, "not kube and not ray and not s3 and not images") == {"test_nothing"}


def test_a_module_that_makes_its_own_control_plane_or_gateway_is_marked(pytester):
    pytester.makepyfile(test_own_plane="""
        def make(ControlPlane): return ControlPlane("workdir")
        def test_one(): pass
    """, test_own_gateway="""
        import types
        support = types.SimpleNamespace(CephS3Gateway=object)
        def test_two(): support.CephS3Gateway()
    """, test_neither="""
        def test_three(): pass
    """)
    assert selected(pytester, "kube") == {"test_one"}
    assert selected(pytester, "s3") == {"test_two"}


def test_gpu_tests_are_skipped_without_cuda(pytester):
    import torch

    pytester.makepyfile("""
        import pytest

        @pytest.mark.gpu
        def test_on_cuda(): pass
    """)
    result = pytester.runpytest("-p", "support.markers", "-rs")
    if torch.cuda.is_available():
        result.assert_outcomes(passed=1)
    else:
        result.assert_outcomes(skipped=1)
        result.stdout.fnmatch_lines(["*needs CUDA*"])


def test_a_test_that_leaves_a_ray_session_without_the_marker_fails(pytester, monkeypatch):
    """Where Ray would put its session (RAY_TMPDIR/ray/session_*); the real Ray: the next test."""
    monkeypatch.setenv("RAY_TMPDIR", "/the/users/own")
    pytester.makepyfile("""
        import os, pathlib, pytest

        def make_session():
            pathlib.Path(os.environ["RAY_TMPDIR"], "ray", "session_2026").mkdir(parents=True)

        def test_unmarked(): make_session()
        def test_unmarked_without_ray(): pass
        @pytest.mark.ray
        def test_marked(): assert os.environ["RAY_TMPDIR"] == "/the/users/own"
        @pytest.mark.kube
        def test_on_the_control_plane(): assert os.environ["RAY_TMPDIR"] == "/the/users/own"
        def test_after(): assert os.environ["RAY_TMPDIR"] != "/the/users/own"
    """)
    result = pytester.runpytest("-p", "support.markers")
    result.assert_outcomes(passed=5, errors=1)
    result.stdout.fnmatch_lines(["*test_unmarked started Ray (session_2026) but is not marked `ray`*"])
    import os

    assert os.environ["RAY_TMPDIR"] == "/the/users/own"


@pytest.mark.ray
def test_an_unmarked_test_that_starts_ray_in_its_process_or_a_child_fails(pytester):
    pytester.makepyfile("""
        import subprocess, sys
        import pytest
        import ray

        def start_and_stop():
            ray.init(num_cpus=1, include_dashboard=False)
            ray.shutdown()

        def test_unmarked(): start_and_stop()
        def test_unmarked_child():
            subprocess.run([sys.executable, "-c", "import ray; ray.init(num_cpus=1, include_dashboard=False)"], check=True)
        @pytest.mark.ray
        def test_marked(): start_and_stop()
    """)
    result = pytester.runpytest("-p", "support.markers")
    result.assert_outcomes(passed=3, errors=2)
    result.stdout.fnmatch_lines(["*test_unmarked started Ray (session_*) but is not marked `ray`*",
                                 "*test_unmarked_child started Ray (session_*) but is not marked `ray`*"],
                                consecutive=False)
