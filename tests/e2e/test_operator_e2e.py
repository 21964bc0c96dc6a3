"""End to end: `kubectl apply` a VideoCurationJob, get clips, with no cluster.

The same pieces as `python -m clipforge_operator.playground`: the Kubernetes API emulator (with
the real CRD), the operator as a subprocess (`python -m clipforge_operator`), the KubeRay
stand-in running each RayJob on a real local Ray cluster, the real `kubectl` binary
(scripts/install-kube-tools.sh) and the tests' Ceph RADOS gateway (tests/s3_server.py) for S3.

Every process started here dies with the module's fixture, or with pytest itself should it be
killed (the operator and each `ray start` get SIGTERM from the kernel when their parent goes).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from clipforge.samples import write_samples
from clipforge_operator.emulator import kube_tool
from clipforge_operator.kuberay_standin import (
    MARKER_ENV,
    Proc,
    _process_table,
    wait_procs,
)
from clipforge_operator.playground import Playground
from jobs import decode_clip, manifest, small_samples

pytestmark = [pytest.mark.s3, pytest.mark.slow]

NS = "default"
VCJ = "videocurationjobs"
RAYJOBS, RAYCLUSTERS = "ray.io/v1/rayjobs", "ray.io/v1/rayclusters"
TERMINAL = ("Succeeded", "Failed", "Cancelled")
FIVE_SECOND_CLIPS = {"algorithm": "fixed-stride", "fixedStride": {"clipLengthS": 5, "strideS": 5}}
# One CPU per pod: the operator starts as many pods as the stages' minimum workers need, and the
# stand-in's one local node gets their CPUs (a handful: these tests run on two cores).
SMALL_CLUSTER = {"cpuWorkers": {"resources": {"requests": {"cpu": 1, "memory": "2Gi"},
                                              "limits": {"cpu": 1, "memory": "2Gi"}}}}


# ---------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def playground(tmp_path_factory):
    if kube_tool("kubectl") is None:
        pytest.fail("kubectl is missing: run `bash scripts/install-kube-tools.sh`")
    root = tmp_path_factory.mktemp("playground")
    pg = Playground(kubeconfig=root / "kubeconfig", workdir=root, progress_interval=1.0,
                    operator_log=root / "operator.log", operator_verbose=True)
    pg.start()
    standin = pg.standin
    try:
        yield pg
    finally:
        pg.stop()
    # Nothing of any local Ray cluster outlives the playground.
    temp_dirs = {e["temp_dir"] for e in standin.history if e["event"] == "cluster-starting"}
    markers = {f"{MARKER_ENV}={d}".encode() for d in temp_dirs}
    left = []
    for pid, (_, start) in _process_table().items():
        try:
            environ = set(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if environ & markers:
            left.append(Proc(pid, start).cmdline())
    assert not left, f"processes of the stand-in's Ray clusters outlived it: {left}"


def kubectl(pg: Playground, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(kube_tool("kubectl")), "--kubeconfig", str(pg.kubeconfig_path), *args],
                            input=stdin, capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result


def apply(pg: Playground, *documents: dict, check: bool = True) -> subprocess.CompletedProcess:
    text = yaml.safe_dump_all(list(documents), sort_keys=False)
    return kubectl(pg, "apply", "-f", "-", stdin=text, check=check)


def diagnostics(pg: Playground, name: str) -> str:
    """What to look at when a job does not do what a test expects."""
    k8s = pg.emulator
    parts = [f"job: {json.dumps(k8s.get_or_none(VCJ, name, namespace=NS), indent=1)[-3000:]}"]
    for rayjob in k8s.list(RAYJOBS, namespace=NS):
        parts.append(f"rayjob {rayjob['metadata']['name']}: {json.dumps(rayjob.get('status'))}")
    parts.append(f"stand-in: {json.dumps(pg.standin.history[-15:], default=str)}" if pg.standin else "")
    for cluster in pg.standin.local_clusters() if pg.standin else []:
        parts.append(f"ray start log: {cluster.log_tail()}")
    log = pg.operator_log.read_text(errors="replace").splitlines()[-40:] if pg.operator_log else []
    parts.append("operator log:\n" + "\n".join(log))
    return "\n".join(parts)


def wait_for_job(pg: Playground, name: str, predicate, timeout: float, what: str) -> tuple[dict, list[str]]:
    """Poll the job until predicate(job); returns it and the phases seen on the way."""
    phases: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        job = pg.emulator.get_or_none(VCJ, name, namespace=NS)
        phase = ((job or {}).get("status") or {}).get("phase")
        if phase and (not phases or phases[-1] != phase):
            phases.append(phase)
        if job is not None and predicate(job):
            return job, phases
        if time.monotonic() > deadline or not pg.operator_alive():
            pytest.fail(f"job {name} did not reach {what} in {timeout:g}s (phases {phases})\n{diagnostics(pg, name)}")
        time.sleep(0.2)


def wait_gone(pg: Playground, resource: str, name: str, timeout: float = 60) -> None:
    pg.emulator.wait_for(resource, name, lambda obj: obj is None, namespace=NS, timeout=timeout, interval=0.2)


def s3_keys(client, bucket: str, prefix: str) -> list[str]:
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return keys


# ------------------------------------------------------------------------- (a) a job on S3, secrets


@pytest.fixture(scope="module")
def s3_job(playground, s3_server, tmp_path_factory):
    """A job reading and writing the tests' Ceph RGW, credentials from a Secret, run to its end."""
    pg = playground
    bucket = s3_server.create_bucket(f"e2e-{uuid.uuid4().hex[:12]}")
    client = s3_server.client()
    videos = tmp_path_factory.mktemp("videos")
    write_samples(videos, small_samples())
    for path in videos.rglob("*.mp4"):
        client.upload_file(str(path), bucket, f"raw/{path.relative_to(videos)}")
    name = "s3-e2e"
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "e2e-s3", "namespace": NS},
              "type": "Opaque", "stringData": s3_server.env()}
    job = manifest(f"s3://{bucket}/raw/", f"s3://{bucket}/curated/", name=name,
                   storage={"endpoint": s3_server.endpoint, "region": s3_server.region, "credentialsSecret": "e2e-s3"},
                   splitting=FIVE_SECOND_CLIPS, execution={"clipsPerChunk": 1}, cluster=SMALL_CLUSTER,
                   maxRetries=0, ttlSecondsAfterFinished=0)
    job["metadata"]["namespace"] = NS
    started = time.monotonic()
    applied = apply(pg, secret, job)
    assert f"videocurationjob.clipforge.dev/{name} created" in applied.stdout
    final, phases = wait_for_job(pg, name, lambda j: (j.get("status") or {}).get("phase") in TERMINAL,
                                 timeout=300, what="a terminal phase")
    return SimpleNamespace(name=name, bucket=bucket, client=client, job=final, phases=phases,
                           seconds=time.monotonic() - started, secret=s3_server.secret_key,
                           access_key=s3_server.access_key)


def test_s3_job_succeeds_with_real_counts_and_decodable_clips(playground, s3_job):
    status = s3_job.job["status"]
    assert status["phase"] == "Succeeded", diagnostics(playground, s3_job.name)
    # Provisioning while "KubeRay" starts the cluster, Running while the pipeline runs.
    assert [p for p in s3_job.phases if p in ("Provisioning", "Running", "Succeeded")] == [
        "Provisioning", "Running", "Succeeded"], s3_job.phases
    assert status["progress"] | {"throughputVideoSecondsPerSecond": 0, "updatedAt": None} == {
        "videosDone": 2, "videosFailed": 0, "videosSkipped": 0, "videosTotal": 2,
        "clipsPassed": 3, "clipsFiltered": 1, "throughputVideoSecondsPerSecond": 0, "updatedAt": None}
    assert status["progress"]["throughputVideoSecondsPerSecond"] > 0
    assert status["rayJobName"] == s3_job.name and status["rayClusterName"].startswith(f"{s3_job.name}-")
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["Succeeded"] == "True" and conditions["Submitted"] == "True"

    clips = [k for k in s3_keys(s3_job.client, s3_job.bucket, "curated/clips/") if k.endswith(".mp4")]
    filtered = [k for k in s3_keys(s3_job.client, s3_job.bucket, "curated/filtered_clips/") if k.endswith(".mp4")]
    assert (len(clips), len(filtered)) == (3, 1)
    for key in clips + filtered:
        body = s3_job.client.get_object(Bucket=s3_job.bucket, Key=key)["Body"].read()
        frames, codec, width, height = decode_clip(body)
        assert frames > 0 and codec == "h264" and (width, height) == (320, 180), key
    summary = json.loads(s3_job.client.get_object(Bucket=s3_job.bucket, Key="curated/summary.json")["Body"].read())
    assert summary["videos"]["done"] == 2 and summary["clips"]["passed"] == 3


def test_rayjob_followed_kuberay_and_its_cluster_was_shut_down(playground, s3_job):
    pg, name = playground, s3_job.name
    rayjob = pg.emulator.get(RAYJOBS, name, namespace=NS)
    status = rayjob["status"]
    assert status["jobDeploymentStatus"] == "Complete" and status["jobStatus"] == "SUCCEEDED"
    assert status["jobId"].startswith(f"{name}-") and status["startTime"] <= status["endTime"]
    assert status["rayJobInfo"]["startTime"] and status["succeeded"] == 1 and status["failed"] == 0
    assert status["dashboardURL"].startswith("127.0.0.1:")
    # KubeRay's sequence: (jobDeploymentStatus, jobStatus) as the stand-in wrote them.
    seen = [(e["jobDeploymentStatus"], e["jobStatus"]) for e in pg.standin.events(name, "status")]
    assert seen[:2] == [("Initializing", ""), ("Running", "")], seen
    assert seen[-1] == ("Complete", "SUCCEEDED") and ("Running", "RUNNING") in seen, seen
    # shutdownAfterJobFinishes with ttlSecondsAfterFinished 0: the RayCluster goes, and its Ray with it.
    wait_gone(pg, RAYCLUSTERS, status["rayClusterName"], timeout=60)
    deadline = time.monotonic() + 60
    while pg.standin.local_cluster(NS, status["rayClusterName"]) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pg.standin.local_cluster(NS, status["rayClusterName"]) is None
    assert pg.standin.events(name, "cluster-stopped")


def test_the_secret_appears_nowhere_but_in_the_secret(playground, s3_job):
    pg, name = playground, s3_job.name
    secret, access_key = s3_job.secret, s3_job.access_key
    encoded = base64.b64encode(secret.encode()).decode()
    events = pg.emulator.list("events", namespace=NS)
    assert any(e["involvedObject"]["name"] == name and e["reason"] == "Succeeded" for e in events), events
    places = {
        "RayJob": json.dumps(pg.emulator.get(RAYJOBS, name, namespace=NS)),
        "VideoCurationJob": json.dumps(pg.emulator.get(VCJ, name, namespace=NS)),
        "ConfigMap": json.dumps(pg.emulator.list("configmaps", namespace=NS)),
        "events": json.dumps(events) + json.dumps(pg.emulator.list("events.k8s.io/v1/events", namespace=NS)),
        "operator log": pg.operator_log.read_text(errors="replace"),
        "stand-in history": json.dumps(pg.standin.history, default=str),
    }
    # Every write anyone made to the API, except to Secrets: no RayJob, status or event ever had it.
    places["API writes"] = "\n".join(r.text or "" for r in pg.emulator.requests
                                     if r.resource is None or r.resource.plural != "secrets")
    assert "Succeeded" in places["VideoCurationJob"] and len(places["operator log"]) > 1000
    for where, text in places.items():
        for value in (secret, encoded, access_key):
            assert value not in text, f"a credential appears in the {where}"
    # The RayJob refers to the Secret by name, which is how the pods get it.
    refs = json.dumps(pg.emulator.get(RAYJOBS, name, namespace=NS)["spec"])
    assert '"secretKeyRef": {"name": "e2e-s3", "key": "AWS_SECRET_ACCESS_KEY"}' in refs


# ------------------------------------------------------------------------------ (b) kubectl get


def test_kubectl_get_shows_the_printer_columns_with_real_values(playground, s3_job):
    out = kubectl(playground, "get", VCJ, s3_job.name).stdout.splitlines()
    assert out[0].split() == ["NAME", "PHASE", "DONE", "TOTAL", "CLIPS", "AGE"], out
    assert out[1].split()[:5] == [s3_job.name, "Succeeded", "2", "2", "3"], out
    wide = kubectl(playground, "get", "vcj", s3_job.name, "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "PHASE", "DONE", "TOTAL", "CLIPS", "FAILED", "RETRIES", "RAYJOB", "AGE"], wide
    assert wide[1].split()[:8] == [s3_job.name, "Succeeded", "2", "2", "3", "0", "0", s3_job.name], wide
    rayjobs = kubectl(playground, "get", "rayjobs", s3_job.name).stdout.splitlines()
    assert rayjobs[1].split()[:3] == [s3_job.name, "SUCCEEDED", "Complete"], rayjobs


# --------------------------------------------------------------------- (c) invalid manifests


@pytest.mark.parametrize(("spec", "messages"), [
    ({"splitting": {"algorithm": "bogus"}},
     ['spec.splitting.algorithm: Unsupported value: "bogus"', '"fixed-stride"', '"transnetv2"', '"scenedetect"']),
    ({"transcoding": {"crf": 99}, "maxRetries": -1},
     ["spec.transcoding.crf: Invalid value: 99", "spec.maxRetries: Invalid value: -1"]),
], ids=["unknown-algorithm", "out-of-range"])
def test_kubectl_apply_rejects_an_invalid_manifest_with_the_schema_message(playground, spec, messages):
    name = f"invalid-{uuid.uuid4().hex[:6]}"
    job = manifest("s3://in/", "s3://out/", name=name, **spec)
    result = apply(playground, job, check=False)
    assert result.returncode != 0
    assert f'The VideoCurationJob "{name}" is invalid' in result.stderr, result.stderr
    for message in messages:
        assert message in result.stderr, result.stderr
    assert playground.emulator.get_or_none(VCJ, name, namespace=NS) is None


def test_kubectl_apply_rejects_a_manifest_without_its_required_fields(playground):
    result = apply(playground, {"apiVersion": "clipforge.dev/v1alpha1", "kind": "VideoCurationJob",
                                "metadata": {"name": "no-output"}, "spec": {"input": {"uri": "s3://in/"}}}, check=False)
    assert result.returncode != 0 and "spec.output: Required value" in result.stderr, result.stderr


# ------------------------------------------------------------------- (d) deleting a running job


def test_deleting_a_running_job_stops_its_ray_job_and_removes_its_children(playground, tmp_path):
    pg = playground
    videos = pg.workdir / "many"
    write_samples(videos, small_samples())
    for i in range(4):  # enough work that the job is still running when it is deleted
        for src in list(videos.glob("*.mp4")):
            shutil.copy(src, videos / f"{i}_{src.name}")
    name = "delete-me"
    # Relative paths: the stand-in's Ray "pods" and the operator run in the playground's workdir.
    job = manifest("./many", "./deleted-out", name=name, splitting=FIVE_SECOND_CLIPS, cluster=SMALL_CLUSTER,
                   execution={"clipsPerChunk": 1}, maxRetries=0)
    apply(pg, job)
    wait_for_job(pg, name, lambda j: (j.get("status") or {}).get("phase") == "Running", timeout=240, what="Running")
    rayjob = pg.emulator.get(RAYJOBS, name, namespace=NS)
    assert rayjob["status"]["jobStatus"] == "RUNNING"
    cluster_name = rayjob["status"]["rayClusterName"]
    local = pg.standin.local_cluster(NS, cluster_name)
    assert local is not None and local.alive()
    processes = local.processes()
    drivers = [p for p in processes if "clipforge run" in " ".join(p.cmdline())]
    assert drivers, [p.cmdline() for p in processes]
    # The driver runs in the workdir, as the job's relative paths say: its output appears there.
    deadline = time.monotonic() + 120
    while not (pg.workdir / "deleted-out").is_dir() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (pg.workdir / "deleted-out").is_dir()
    assert pg.emulator.get(RAYJOBS, name, namespace=NS)["status"]["jobStatus"] == "RUNNING"  # not done yet
    configmap = pg.emulator.list("configmaps", namespace=NS, label_selector=f"clipforge.dev/job={name}")
    assert len(configmap) == 1

    deleted = kubectl(pg, "delete", VCJ, name, "--timeout=90s")
    assert f'videocurationjob.clipforge.dev "{name}" deleted' in deleted.stdout
    assert pg.emulator.get_or_none(VCJ, name, namespace=NS) is None  # kubectl waited for the finalizers
    wait_gone(pg, RAYJOBS, name)
    wait_gone(pg, "configmaps", configmap[0]["metadata"]["name"])
    wait_gone(pg, RAYCLUSTERS, cluster_name)
    stopped = pg.standin.events(name, "job-stopped")
    assert [e["status"] for e in stopped] == ["STOPPED"], pg.standin.events(name)
    # The cluster's processes, the driver first, are gone. The driver was stopped before the
    # end: no summary, or (when its exit handler got to write one) a summary that did not succeed.
    alive = wait_procs(processes, timeout=60)
    assert not alive, [p.cmdline() for p in alive]
    summary = pg.workdir / "deleted-out" / "summary.json"
    assert not summary.exists() or json.loads(summary.read_text())["state"] != "succeeded"
    deadline = time.monotonic() + 30
    while Path(local.temp_dir).exists() and time.monotonic() < deadline:  # removed after its processes
        time.sleep(0.2)
    assert not Path(local.temp_dir).exists()
