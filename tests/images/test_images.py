"""The images scripts/build-images.sh builds, checked as a user's tooling sees them.

skopeo reads the operator's archive through both transports a loader uses (OCI and
docker-archive); both archives name their image for containerd and docker load, and carry the
config below. The images then run as pods on the session's real nodes (which imported the same
archives): the image's own user, a read-only root filesystem, emptyDir volumes at the paths
docs/images.md lists as written at run time. Building is scripts/test.sh's step before pytest;
here it runs again and must rebuild nothing.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import tarfile
import tomllib
import uuid
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from harness.waiting import eventually

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
def test_archive_names_its_image_and_carries_its_config(archives, name, user, entrypoint, cmd):
    archive = archives[name]
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))
        docker_manifest = json.load(tar.extractfile("manifest.json"))
        [entry] = index["manifests"]
        manifest = json.load(tar.extractfile(blob_path(entry["digest"])))
        image = json.load(tar.extractfile(blob_path(manifest["config"]["digest"])))
    # containerd (kind load, ctr import) names the image by this annotation; docker load by RepoTags.
    assert entry["annotations"]["io.containerd.image.name"] == f"docker.io/{name}"
    assert docker_manifest[0]["RepoTags"] == [name]
    assert image["architecture"] == ARCH
    assert len(manifest["layers"]) == len(image["rootfs"]["diff_ids"]) == len(docker_manifest[0]["Layers"])
    assert image["config"]["User"] == user  # numeric, so the kubelet can verify runAsNonRoot
    assert int(user.split(":")[0]) != 0
    assert image["config"].get("Entrypoint") == entrypoint
    assert image["config"]["Cmd"] == cmd


def test_the_operator_archive_reads_as_oci_and_docker_archive(archives):
    # skopeo unpacks and hashes an archive it reads: the pipeline's (6.7 GB) took it 35 s, and it is
    # the same writer's. The nodes' containerd imports both archives as OCI.
    archive = archives[OPERATOR]
    with tarfile.open(archive) as tar:
        [entry] = json.load(tar.extractfile("index.json"))["manifests"]
    oci = skopeo_inspect("oci-archive", archive)
    docker = skopeo_inspect("docker-archive", archive)
    image = skopeo_inspect("oci-archive", archive, config=True)
    assert oci["Digest"] == entry["digest"]
    assert oci["Architecture"] == docker["Architecture"] == ARCH
    # The same layers through both: docker-archive names them by their uncompressed digests.
    assert len(oci["Layers"]) == len(docker["Layers"])
    assert docker["Layers"] == image["rootfs"]["diff_ids"]
    assert image["config"]["User"] == "10001:10001"


def blob_path(digest: str) -> str:
    return "blobs/" + digest.replace(":", "/", 1)


def run_in_image(nodes, image: str, args: list[str], writable: tuple[str, ...]) -> str:  # noqa: ANN001
    """Runs `args` in the image as a pod on the CPU node, as its own user, its root filesystem
    read-only and `writable` on emptyDir volumes; returns the output."""
    cp = nodes.control_plane
    name = f"image-test-{uuid.uuid4().hex[:8]}"
    volumes = {path: f"scratch-{i}" for i, path in enumerate(writable)}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": {
        "nodeSelector": {"kubernetes.io/hostname": "cpu-node"}, "restartPolicy": "Never",
        "automountServiceAccountToken": False, "terminationGracePeriodSeconds": 1,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "main", "image": f"docker.io/{image}", "imagePullPolicy": "Never", "command": args,
                        "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [{"name": v, "mountPath": path} for path, v in volumes.items()]}],
        "volumes": [{"name": v, "emptyDir": {}} for v in volumes.values()]}}

    def ended() -> str | None:
        phase = json.loads(cp.kubectl("get", "pod", name, "-o", "json").stdout).get("status", {}).get("phase")
        return phase if phase in ("Succeeded", "Failed") else None

    cp.apply(pod)
    try:
        phase = eventually(ended, f"pod {name} to end", 300, interval=0.5)
        logs = cp.kubectl("logs", name).stdout
        assert phase == "Succeeded", logs
        return logs
    finally:
        cp.kubectl("delete", "pod", name, "--wait=false", check=False)


def test_operator_image_imports_the_operator_without_the_pipeline(nodes):
    out = run_in_image(nodes, OPERATOR, ["python", "-c", (
        "import importlib.util, os, sys, clipforge_operator.handlers;"
        "print(os.getuid(), os.getgid());"
        "print(sorted(m for m in ('torch', 'av', 'ray', 'pyarrow') if importlib.util.find_spec(m)))")],
        OPERATOR_WRITABLE)
    assert out.splitlines() == ["10001 10001", "[]"]


def test_pipeline_image_runs_ray_torch_and_clipforge_on_a_read_only_root(nodes):
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
    out = run_in_image(nodes, PIPELINE, ["python", "-c", script], PIPELINE_WRITABLE)
    assert out.splitlines()[-1] == "1000 100 49 4.0 2.60.0 2.13.0"


def test_pipeline_image_login_shell_finds_ray(nodes):
    """KubeRay with ENABLE_LOGIN_SHELL starts Ray with `bash -lc`, whose /etc/profile resets PATH."""
    out = run_in_image(nodes, PIPELINE, ["bash", "-lc", "command -v ray clipforge wget"], PIPELINE_WRITABLE)
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
