"""README.md's "Install on a cluster", run as a cluster user runs it, on the harness's cluster.

The section's shell blocks are read from README.md and run in order with bash, the real helm,
kubectl, aws and clipforge on PATH, against the session's control plane and real nodes (which
run ClipForge's images: tests/harness/node_cluster.py) and the pod-reachable Ceph RGW. Nothing
is re-typed here: a README edit changes what runs. Three things cannot run here, and are checked
in their place:
- the variables block runs as written, then the harness's values follow it: `REGISTRY=docker.io`
  (the kind path the README gives), this cluster's namespace, the Ceph endpoint and a fresh bucket;
- `skopeo copy ... docker://$REGISTRY/...` needs a registry, and none runs here: the lines record
  the archive they would push, which must be the archive the nodes imported (`kind load`'s part);
- `helm repo add kuberay` / `helm install kuberay-operator` need the internet: the harness runs
  KubeRay's operator from its Go module instead, and the README must name that version.
The CRD is deleted first, since a fresh cluster has none and `helm install` must create it; the
release keeps it on uninstall (helm.sh/resource-policy: keep), so the modules after this one find it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
import tomllib
import uuid
from pathlib import Path

import pytest

from harness.control_plane import KUBECTL
from clipforge.samples import write_samples
from harness.node_cluster import KUBERAY_NAMESPACE, image_archives
from harness.operator_process import HELM
from support.jobs import small_samples

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
SECTION = "## Install on a cluster"
NAMESPACE = "videos"
JOB = "s3-demo"
RELEASE, RELEASE_NAMESPACE = "clipforge", "clipforge-system"
CRD = "videocurationjobs.clipforge.dev"
PUSH = re.compile(r"^skopeo copy oci-archive:(\$\w+) docker://\S+$", re.M)
KUBERAY_INSTALL = re.compile(r"^helm (repo add kuberay|install kuberay-operator) .*$", re.M)
WATCH = "kubectl get vcj --namespace $NAMESPACE -w"


def section_blocks() -> list[str]:
    """The ```sh blocks of the README's cluster section, in order."""
    text = (REPO / "README.md").read_text()
    start = text.index(SECTION + "\n")
    end = text.index("\n## ", start + len(SECTION))
    return re.findall(r"^```sh\n(.*?)^```$", text[start:end], re.M | re.S)


@pytest.fixture(scope="module")
def user(control_plane, nodes, pod_s3_server, tmp_path_factory):  # noqa: ANN001, ANN201
    """A shell like the user's: PATH with helm, kubectl and this environment's aws and clipforge;
    KUBECONFIG at the cluster; the bucket's keys exported."""
    home = tmp_path_factory.mktemp("readme-user")
    tools = home / "bin"
    tools.mkdir()
    (tools / "kubectl").symlink_to(KUBECTL)
    (tools / "helm").symlink_to(HELM)
    env = {
        **os.environ, **pod_s3_server.env(),
        "PATH": f"{tools}:{os.environ['PATH']}", "KUBECONFIG": str(control_plane.kubeconfig),
        **{f"HELM_{kind}_HOME": str(home / "helm" / kind.lower()) for kind in ("CACHE", "CONFIG", "DATA")},
        # Debian's Ceph RGW refuses the CRC checksums newer AWS CLIs send (README says so too).
        "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required", "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
    }
    harness_values = "\n".join(f"{name}={shlex.quote(value)}" for name, value in {
        "REGISTRY": "docker.io", "NAMESPACE": NAMESPACE, "S3_ENDPOINT": pod_s3_server.endpoint,
        "S3_REGION": pod_s3_server.region, "BUCKET": f"readme-{uuid.uuid4().hex[:10]}",
        "VIDEOS": str(home / "samples"),
    }.items())

    def clean_cluster(wait: bool) -> None:
        # Jobs left by other modules lost their operator: their finalizers would hold the CRD forever.
        listed = control_plane.kubectl("get", "vcj", "-A", "-o", "jsonpath={range .items[*]}{.metadata.namespace}"
                                       " {.metadata.name}{'\\n'}{end}", check=False).stdout
        for namespace, name in (line.split() for line in listed.splitlines() if line.strip()):
            control_plane.kubectl("patch", "vcj", name, "-n", namespace, "--type=merge",
                                  "-p", '{"metadata":{"finalizers":null}}', check=False)
        control_plane.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--timeout=180s",
                              f"--wait={str(wait).lower()}")

    clean_cluster(wait=True)  # the README creates the namespace
    control_plane.kubectl("delete", "crd", CRD, "--ignore-not-found", "--timeout=120s")
    # The videos: the e2e tests' two short ones (the README's `clipforge samples` set is three
    # times longer, minutes of a 2-core cluster, and shows nothing more here).
    write_samples(home / "samples", small_samples())
    user = ClusterUser(section_blocks(), harness_values, env, home)
    yield user
    # The job goes while its operator still runs (its cluster and finalizer with it), then the release.
    control_plane.kubectl("delete", "vcj", "--all", "-n", NAMESPACE, "--timeout=120s", check=False)
    subprocess.run([str(HELM), "uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE,
                    "--wait"], env=env, capture_output=True, timeout=300)
    clean_cluster(wait=False)  # no later module uses the job's namespace: its pods end on their own
    # The release's namespace is every stack's operator namespace (harness.operator_process): gone first.
    control_plane.kubectl("delete", "namespace", RELEASE_NAMESPACE, "--ignore-not-found", "--timeout=180s")


class ClusterUser:
    """Runs README blocks in bash, each after the variables block and the harness's values."""

    def __init__(self, blocks: list[str], harness_values: str, env: dict[str, str], home: Path):
        self.blocks, self.env, self.home = blocks, env, home
        self.prelude = f"{blocks[0]}\n{harness_values}\n"
        self.values = dict(line.split("=", 1) for line in harness_values.splitlines())

    def start(self, block: str, cwd: Path = REPO) -> subprocess.Popen:
        return subprocess.Popen(["bash", "-euo", "pipefail", "-c", self.prelude + block], cwd=cwd, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run(self, block: str, cwd: Path = REPO, timeout: float = 600) -> str:
        done = self.start(block, cwd)
        out, err = done.communicate(timeout=timeout)
        assert done.returncode == 0, f"README block failed ({done.returncode}):\n{block}\n{out}\n{err}"
        return out


def test_the_readme_install_path_gets_a_job_to_its_clips(user, control_plane):  # noqa: ANN001
    blocks = user.blocks
    assert len(blocks) == 8, "the cluster section's blocks changed: variables, images, helm, namespace and bucket," \
        " job, watch, wait, outputs; update this test with them"
    variables, images, helm, bucket, job, watch, wait, outputs = blocks

    version = re.search(r"^VERSION=(\S+)$", variables, re.M).group(1)
    assert version == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]

    # The images: built (cached: the session built them), and the archives the README pushes are
    # the ones the nodes run.
    pushed = user.home / "pushed"
    pushes = PUSH.findall(images)
    assert len(pushes) == 2, images
    user.run(PUSH.sub(lambda m: f'echo "{m.group(1)}" >> {pushed}', images), timeout=900)
    archives = image_archives()
    assert pushed.read_text().split() == [str(archives[f"clipforge/operator:{version}"]),
                                          str(archives[f"clipforge/pipeline:{version}"])]
    wanted = {f"docker.io/clipforge/operator:{version}", f"docker.io/clipforge/pipeline:{version}"}

    def node_images() -> dict[str, set[str]]:  # the kubelets report their images every 30 s or so
        items = json.loads(control_plane.kubectl("get", "nodes", "-o", "json").stdout)["items"]
        return {n["metadata"]["name"]: {name for i in n["status"].get("images", []) for name in i["names"]}
                for n in items}

    deadline = time.monotonic() + 120
    while not all(wanted <= names for names in node_images().values()):
        assert time.monotonic() < deadline, node_images()
        time.sleep(5)

    # KubeRay: the harness runs the version the README installs (as its binary reports it), in the
    # namespace it names.
    kuberay_lines = KUBERAY_INSTALL.findall(helm)
    assert kuberay_lines == ["repo add kuberay", "install kuberay-operator"], helm
    running = control_plane.versions["kuberay-operator"].removeprefix("v")
    assert f"--version {running} --namespace {KUBERAY_NAMESPACE} " in helm
    assert f"kuberay.namespace={KUBERAY_NAMESPACE}" in helm
    out = user.run(KUBERAY_INSTALL.sub("", helm), timeout=400)
    assert f"NAMESPACE: {RELEASE_NAMESPACE}" in out and "STATUS: deployed" in out, out
    control_plane.kubectl("wait", "--for=condition=Established", f"crd/{CRD}", "--timeout=60s")

    user.run(bucket)
    user.run(job)

    # The watch runs beside the wait, as in two terminals; Ctrl-C ends it (here SIGINT, after the wait).
    assert watch.strip() == WATCH, watch
    watcher = user.start("exec " + watch.strip())
    waiter = user.start(wait)
    try:
        while waiter.poll() is None:  # a failed job would keep `kubectl wait` waiting for its 2 hours
            phase = control_plane.kubectl("get", "vcj", JOB, "-n", NAMESPACE, "-o", "jsonpath={.status.phase}").stdout
            if phase in ("Failed", "Cancelled"):
                pytest.fail(f"the job ended {phase}:\n" + control_plane.kubectl(
                    "describe", "vcj", JOB, "-n", NAMESPACE, check=False).stdout)
            time.sleep(5)
        assert waiter.returncode == 0, waiter.communicate()
    finally:
        waiter.kill()
        watcher.send_signal(signal.SIGINT)
        watched = watcher.communicate(timeout=30)[0]
    phases = [line.split()[1] for line in watched.splitlines()[1:] if line.startswith(JOB + " ")]
    assert phases and phases[-1] == "Succeeded", watched
    assert "Running" in phases[:-1], watched  # seen on its way, not only at the end

    # The outputs block, a command at a time (as typed), each printing what the README says it shows.
    lines = outputs.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith("kubectl get vcj") and lines[2].startswith("aws s3 cp s3://"), outputs
    bucket_name = user.values["BUCKET"]
    where = json.loads(user.run(lines[0]))
    assert where == {"summary": f"s3://{bucket_name}/out/summary.json", "index": f"s3://{bucket_name}/out/index/",
                     "report": f"s3://{bucket_name}/out/report/index.html"}, where
    clips = [line.split()[-1] for line in user.run(lines[1]).splitlines() if line.endswith(".mp4")]
    summary = json.loads(user.run(lines[2]))
    # samples.json (the samples' cut index) is uploaded too: a file no pattern matches.
    assert summary["state"] == "succeeded" and summary["videos"] == {
        "total": 2, "done": 2, "failed": 0, "skipped": 0, "unmatched": 1}, summary
    assert summary["clips"]["failed"] == 0 and summary["clips"]["passed"] > 0, summary
    assert len(clips) == summary["clips"]["passed"] and all(c.startswith("out/clips/") for c in clips), clips
    user.run(lines[3], cwd=user.home)
    page = (user.home / "report" / "index.html").read_text()
    assert "<title>ClipForge report</title>" in page and f"s3://{bucket_name}/out" in page, page[:500]
