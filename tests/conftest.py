"""Shared pytest fixtures."""

from __future__ import annotations

import logging
import subprocess
import uuid

import pytest

# support.markers: the kube/ray/s3/gpu markers, set and checked; pytester: tests/test_markers.py checks them.
pytest_plugins = ["support.markers", "pytester"]


@pytest.fixture(autouse=True)
def _log_levels():
    """clipforge.cli.main sets log levels (--log-level, --quiet): the next test starts without them."""
    root = logging.getLogger().level
    yield
    logging.getLogger().setLevel(root)
    logging.getLogger("clipforge").setLevel(logging.NOTSET)

# --- S3: a real S3 server (Ceph RADOS gateway on loopback, see tests/support/s3_server.py) ---


@pytest.fixture(scope="session")
def s3_server():
    """One throwaway Ceph cluster for the whole session; fails (never skips) when it can't start."""
    from support.s3_server import CephS3Gateway

    with CephS3Gateway() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh, uniquely named, empty bucket on the session's S3 server."""
    return s3_server.create_bucket(f"test-{uuid.uuid4().hex[:16]}")


@pytest.fixture(scope="session")
def pod_s3_server():
    """A Ceph RGW that pods reach: on the pod bridge's host address, where host processes reach it too."""
    from harness import netns
    from support.s3_server import CephS3Gateway

    netns.ensure_bridge()
    with CephS3Gateway(bind_address=netns.HOST_IP) as server:
        yield server


# --- end of S3 fixtures ----------------------------------------------------------------------


# --- Kubernetes: a real control plane and KubeRay operator (see tests/harness/control_plane.py) ----

_CONTROL_PLANE_RAN = pytest.StashKey[str]()
_KUBE_BUILD_FAILED = pytest.StashKey[Exception]()


def _versions_line(versions: dict[str, str]) -> str:
    return ", ".join(f"{name} {version}" for name, version in versions.items())


def pytest_report_header(config) -> list[str]:
    from harness.node_cluster import report_header

    return [_kube_binaries_header(), *report_header()]


def _kube_binaries_header() -> str:
    from harness import kube_binaries

    built = kube_binaries.built()
    if built is None:
        return "kube binaries: not built yet (the first test that needs them builds them)"
    try:
        versions = kube_binaries.binary_versions(built)
    except (OSError, subprocess.CalledProcessError, kube_binaries.KubeBinariesError) as exc:
        # a broken cache fails the tests that need it, not every test session
        return f"kube binaries: cannot read their versions ({exc})"
    return f"kube binaries: {_versions_line(versions)} ({built})"


def pytest_collection_finish(session) -> None:
    """Builds missing kube binaries before any test runs (outside the per-test timeout), if a test needs them."""
    fixtures = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    # The real nodes' tests (harness_tests/test_node.py) run a control plane of their own.
    for node, needed_by in ((False, {"control_plane", "real_nodes"}), (True, {"real_nodes"})):
        if not fixtures & needed_by:
            continue
        from harness import kube_binaries

        if kube_binaries.built(node=node) is None:
            reporter = session.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(f"building the {'node' if node else 'kube'} binaries from their Go modules"
                                    " (once per version) ...")
            try:
                kube_binaries.ensure_built(node=node)
            except kube_binaries.KubeBinariesError as exc:  # failed once: the tests that need them report it
                session.config.stash[_KUBE_BUILD_FAILED] = exc


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory, pytestconfig):
    """One real control plane (etcd, kube-apiserver, controller-manager, scheduler, KubeRay) per session."""
    from harness.control_plane import ControlPlane

    if (failed := pytestconfig.stash.get(_KUBE_BUILD_FAILED, None)) is not None:
        raise failed
    with ControlPlane(tmp_path_factory.mktemp("control-plane")) as plane:
        pytestconfig.stash[_CONTROL_PLANE_RAN] = (
            f"control plane that ran (started in {plane.start_seconds:.1f}s): {_versions_line(plane.versions)};"
            f" logs in {plane.logs_dir}")
        yield plane


def pytest_terminal_summary(terminalreporter, config) -> None:
    ran = config.stash.get(_CONTROL_PLANE_RAN, None)
    if ran is not None:
        terminalreporter.write_line(ran)


@pytest.fixture(scope="session")
def nodes(control_plane, tmp_path_factory):
    """Real nodes on the session's control plane: a CPU and a GPU node (tests/harness/node_cluster.py)
    with ClipForge's images (scripts/build-images.sh) imported and KubeRay's operator running as a pod."""
    from harness.node_cluster import Nodes

    with Nodes(control_plane, tmp_path_factory.mktemp("nodes")) as nodes:
        nodes.import_clipforge_images()
        nodes.start_kuberay()
        yield nodes


@pytest.fixture(scope="module")
def stack(request, control_plane, nodes, pod_s3_server, tmp_path_factory):
    """The operator as the chart deploys it and a `restricted` namespace of the test module's own
    (tests/support/cluster_jobs.py's Stack): the module names the namespace as NS and may add chart
    `--set` values as CHART_SETS."""
    from support.cluster_jobs import make_stack

    module = request.module
    stack = make_stack(control_plane, nodes, pod_s3_server, tmp_path_factory.mktemp(module.NS), module.NS,
                       getattr(module, "CHART_SETS", ()))
    yield stack
    stack.close()


# --- end of Kubernetes fixtures --------------------------------------------------------------
