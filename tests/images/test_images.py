"""The images scripts/build-images.sh builds, checked as a user's tooling sees them.

skopeo reads each archive through both transports a loader uses (OCI and docker-archive); the
images then run under runc as Kubernetes runs them here: the image's own user, a read-only root
filesystem, emptyDir-like volumes at the paths docs/images.md lists as written at run time. Building
is scripts/test.sh's step before pytest; here it runs again and must rebuild nothing.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import tarfile
import tomllib
import uuid
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
BUILD = ["bash", str(ROOT / "scripts" / "build-images.sh")]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
OPERATOR = f"clipforge/operator:{VERSION}"
PIPELINE = f"clipforge/pipeline:{VERSION}"
ARCH = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()
# What the operator mounts as emptyDir volumes in every Ray container (docs/images.md).
PIPELINE_WRITABLE = ("/tmp", "/home/ray")
OPERATOR_WRITABLE = ("/tmp",)

# A first build of the pipeline image takes 15-25 minutes; scripts/test.sh builds before pytest.
pytestmark = pytest.mark.timeout(3600)


@pytest.fixture(scope="module")
def build_output() -> str:
    """The output of a build-images.sh run after the images exist (built now if they did not)."""
    subprocess.run(BUILD, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return subprocess.run(BUILD, check=True, cwd=ROOT, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def archives(build_output) -> dict[str, Path]:
    printed = subprocess.run([*BUILD, "--print-archives"], check=True, cwd=ROOT, capture_output=True, text=True)
    found = dict(line.split("=", 1) for line in printed.stdout.splitlines())
    assert sorted(found) == [OPERATOR, PIPELINE]
    return {name: Path(path) for name, path in found.items()}


def skopeo_inspect(transport: str, archive: Path, *, config: bool = False) -> dict:
    command = ["skopeo", "inspect", *(["--config"] if config else []), f"{transport}:{archive}"]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def test_a_second_build_rebuilds_nothing(build_output, archives):
    lines = build_output.splitlines()
    assert f"cached {OPERATOR}" in lines and f"cached {PIPELINE}" in lines
    assert not any(line.startswith(("built", "base")) for line in lines), build_output
    # The digest and size lines name the archives --print-archives prints, which exist.
    for name, archive in archives.items():
        assert archive.is_file()
        [line] = [line for line in lines if line.startswith(f"{name} sha256:")]
        assert line.endswith(f" {archive}")


@pytest.mark.parametrize("name, user, entrypoint, cmd", [
    (OPERATOR, "10001:10001", ["python", "-m", "clipforge_operator"], ["--all-namespaces"]),
    (PIPELINE, "1000:100", None, ["clipforge", "--help"]),
])
def test_archive_reads_as_oci_and_docker_archive(archives, name, user, entrypoint, cmd):
    archive = archives[name]
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))
        docker_manifest = json.load(tar.extractfile("manifest.json"))
    # containerd (kind load, ctr import) names the image by this annotation; docker load by RepoTags.
    [entry] = index["manifests"]
    assert entry["annotations"]["io.containerd.image.name"] == f"docker.io/{name}"
    assert docker_manifest[0]["RepoTags"] == [name]

    oci = skopeo_inspect("oci-archive", archive)
    docker = skopeo_inspect("docker-archive", archive)
    image = skopeo_inspect("oci-archive", archive, config=True)
    assert oci["Digest"] == entry["digest"]
    assert oci["Architecture"] == docker["Architecture"] == ARCH
    # The same layers through both: docker-archive names them by their uncompressed digests.
    assert len(oci["Layers"]) == len(docker["Layers"])
    assert docker["Layers"] == image["rootfs"]["diff_ids"]
    image_config = image["config"]
    assert image_config["User"] == user  # numeric, so the kubelet can verify runAsNonRoot
    assert int(user.split(":")[0]) != 0
    assert image_config.get("Entrypoint") == entrypoint
    assert image_config["Cmd"] == cmd


@pytest.fixture(scope="module")
def rootfs(archives, tmp_path_factory):
    """Each image unpacked (umoci, from the archive's OCI layout) into a runtime bundle."""
    unpacked = {}
    for name, archive in archives.items():
        work = tmp_path_factory.mktemp(name.split("/")[1].split(":")[0])
        with tarfile.open(archive) as tar:
            tar.extractall(work / "layout", filter="fully_trusted")
        subprocess.run(["umoci", "unpack", "--image", f"{work / 'layout'}:{VERSION}", str(work / "bundle")],
                       check=True, capture_output=True)
        shutil.rmtree(work / "layout")
        unpacked[name] = work / "bundle"
    yield unpacked
    for bundle in unpacked.values():
        shutil.rmtree(bundle)


def run_in_image(bundle: Path, args: list[str], writable: tuple[str, ...], tmp_path: Path) -> str:
    """Runs `args` in the image under runc as its own user, its root filesystem read-only and
    `writable` on emptyDir-like volumes; returns the output."""
    config = json.loads((bundle / "config.json").read_text())
    config["root"] = {"path": str(bundle / "rootfs"), "readonly": True}
    config["process"]["args"] = args
    config["process"]["terminal"] = False
    run_bundle = tmp_path / f"bundle-{uuid.uuid4().hex[:8]}"
    run_bundle.mkdir()
    for path in writable:
        # What the kubelet does for an emptyDir: a fresh host directory, mode 0777, bind-mounted.
        volume = run_bundle / "volumes" / path.strip("/").replace("/", "-")
        volume.mkdir(parents=True)
        volume.chmod(0o777)
        config["mounts"].append({"destination": path, "type": "bind", "source": str(volume),
                                 "options": ["rbind", "rw", "nosuid", "nodev"]})
    (run_bundle / "config.json").write_text(json.dumps(config))
    state = tmp_path / "runc-state"
    container = f"clipforge-image-test-{uuid.uuid4().hex[:12]}"
    try:
        done = subprocess.run(["runc", "--root", str(state), "run", "--bundle", str(run_bundle), container],
                              capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    finally:
        subprocess.run(["runc", "--root", str(state), "delete", "--force", container], capture_output=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_operator_image_imports_the_operator_without_the_pipeline(rootfs, tmp_path):
    out = run_in_image(rootfs[OPERATOR], ["python", "-c", (
        "import importlib.util, os, sys, clipforge_operator.handlers;"
        "print(os.getuid(), os.getgid());"
        "print(sorted(m for m in ('torch', 'av', 'ray', 'pyarrow') if importlib.util.find_spec(m)))")],
        OPERATOR_WRITABLE, tmp_path)
    assert out.splitlines() == ["10001 10001", "[]"]


def test_pipeline_image_runs_ray_torch_and_clipforge_on_a_read_only_root(rootfs, tmp_path):
    """Ray starts a local cluster and runs a task: its session directory, the caches and the
    temporary files all land on the writable mounts, or the read-only root refuses them."""
    script = (
        "import os, torch, av, ray, pyarrow, cv2, scenedetect, clipforge, clipforge.cli;"
        "ray.init(num_cpus=1, include_dashboard=False);"
        "square = ray.remote(lambda x: x * x);"
        "print(os.getuid(), os.getgid(), ray.get(square.remote(7)), torch.tensor([2.0]).square().item(),"
        " ray.__version__, torch.__version__.split('+')[0]);"
        "ray.shutdown()"
    )
    out = run_in_image(rootfs[PIPELINE], ["python", "-c", script], PIPELINE_WRITABLE, tmp_path)
    assert out.splitlines()[-1] == "1000 100 49 4.0 2.60.0 2.13.0"


def test_pipeline_image_login_shell_finds_ray(rootfs, tmp_path):
    """KubeRay with ENABLE_LOGIN_SHELL starts Ray with `bash -lc`, whose /etc/profile resets PATH."""
    out = run_in_image(rootfs[PIPELINE], ["bash", "-lc", "command -v ray clipforge wget"],
                       PIPELINE_WRITABLE, tmp_path)
    assert out.split() == ["/opt/venv/bin/ray", "/opt/venv/bin/clipforge", "/usr/bin/wget"]


def test_pipeline_requirements_follow_pyproject():
    """The image installs requirements.txt under constraints.txt: both must still be what
    scripts/images/lock_pipeline_requirements.py writes from pyproject.toml."""
    spec = importlib.util.spec_from_file_location("lock", ROOT / "scripts" / "images" / "lock_pipeline_requirements.py")
    lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lock)
    lines = lambda path: [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]  # noqa: E731
    assert lines(lock.REQUIREMENTS) == lock.requirements()
    pins = {canonicalize_name(Requirement(ln).name): Requirement(ln) for ln in lines(lock.CONSTRAINTS)}
    for wanted in map(Requirement, lock.requirements()):
        pinned = pins[canonicalize_name(wanted.name)]
        assert wanted.specifier.contains(next(iter(pinned.specifier)).version), (wanted, pinned)
