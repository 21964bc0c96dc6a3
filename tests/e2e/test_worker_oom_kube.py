"""A Ray worker over its pod's memory limit on a real node is killed; the run records it and goes on.

One job with the e2e job's settings (tests/support/cluster_jobs.py: pods limited to 2 GiB), but for
two: clips keep their source's size (transcoding.maxHeight unset, the default), and transcode runs in
a worker group of its own (on the logical GPU node, as in the autoscaler test). Its input is the two
small samples and one 15360x8640 video (ten frames, 2 MB). Measured locally (each stage in a fresh
process, peak RSS): x264 encoding the 16K frames at full size needs 7.4 GiB, 3.7 times the limit,
while transcode peaks at 123 MiB on the samples (embed, with its model, at 723 MiB; the others
at 93-106 MiB). So each attempt at the big video goes over the pod's limit, and nothing else comes near.

Two things race to kill the worker; either may win, and both may go for the same worker (all three
were seen here):
- the kernel's memcg OOM killer, at the limit: Ray gives its workers oom_score_adj 1000, so it kills
  the worker, never the raylet (the container's main process), and counts the kill in the container's
  memory cgroup (`oom_kill` in memory.oom_control); Ray sees only the worker's connection drop;
- Ray's memory monitor, at 95 % of the limit, sampled every 250 ms: it SIGKILLs the leased worker it
  picks and says so in the worker's exit detail.
Transcode has a pod of its own so that either way the only worker there to kill is the one that
overran (the kernel picks the largest process, but Ray's monitor the newest lease). The executor's
ledger counts each death as an attempt and, after execution.failures.taskRetries retries, records the
video as failed (WORKER_DIED); the samples' clips are written and the run ends Succeeded with failures.
"""

from __future__ import annotations

import json
import time
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest

from clipforge.executors.ray_data import WORKER_DIED
from support.cluster_jobs import GPU_NODE_SELECTOR, GPU_TOLERATION, POD, ray_state

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]  # the first test starts everything

NS = "worker-oom"  # the namespace of the module's stack (tests/conftest.py)
JOB = "oom"
STAGE = "transcode"
GROUP = f"gpu-{STAGE}"
OVERSIZED = "oversized/sixteen_k.mp4"  # under raw/
WIDTH, HEIGHT, FPS, FRAMES = 15360, 8640, 4, 10  # one 2.5 s clip
TASK_RETRIES = 1
LIMIT = 2 * 1024**3  # POD's memory limit
# Ray's exit types for a worker that died unasked (the kernel's kill: Ray only sees its connection
# drop) and for one its memory monitor killed, which says so in the exit's detail.
UNEXPECTED_EXITS = ("SYSTEM_ERROR", "NODE_OUT_OF_MEMORY")
RAY_KILL_DETAIL = "killed due to the node running low on memory"
# The container's memory cgroup (v1), as runc mounts it into the container.
CGROUP = "/sys/fs/cgroup/memory"
READ_CGROUP = f"cat {CGROUP}/memory.oom_control {CGROUP}/memory.max_usage_in_bytes {CGROUP}/memory.limit_in_bytes"


def write_oversized(path: Path) -> Path:
    """A 16K video whose picture moves (a horizontal ramp panning over a vertical one): tiny to store,
    and cheap to make (one frame buffer; samples.py's textures would take gigabytes at this size)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ramp_x = (np.arange(WIDTH) * 256 // WIDTH).astype(np.uint8)
    ramp_y = (np.arange(HEIGHT) * 256 // HEIGHT).astype(np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.options = {"preset": "ultrafast", "crf": "30"}
        picture = np.empty((HEIGHT, WIDTH, 3), np.uint8)
        picture[..., 1], picture[..., 2] = ramp_y[:, None], 128
        for index in range(FRAMES):
            picture[..., 0] = np.roll(ramp_x, 64 * index)[None, :]
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def cgroup_memory(stack, pod: dict) -> dict | None:  # noqa: ANN001
    """The Ray container's memory cgroup: OOM kills so far, peak usage and limit (None once it is gone)."""
    done = stack.kubectl("exec", pod["metadata"]["name"], "-c", pod["spec"]["containers"][0]["name"], "--",
                         "sh", "-c", READ_CGROUP, check=False)
    if done.returncode != 0:
        return None
    lines = done.stdout.split("\n")
    counters = dict(line.split() for line in lines[:3])
    return {"oom_kill": int(counters["oom_kill"]), "max_usage": int(lines[3]), "limit": int(lines[4])}


@pytest.fixture(scope="module")
def run(stack, tmp_path_factory):
    """The job run to its end; every Ray pod's memory cgroup read while it ran, and at the end the
    pods and Ray's record of its workers (the cluster stays a minute after the end for that)."""
    tmp = tmp_path_factory.mktemp("oom-job")
    bucket = stack.upload_samples(tmp)
    stack.s3_client.upload_file(str(write_oversized(tmp / OVERSIZED)), bucket, f"raw/{OVERSIZED}")
    doc = stack.job_manifest(JOB, bucket, ttlSecondsAfterFinished=60)
    del doc["spec"]["transcoding"]["maxHeight"]  # the default: clips keep their source's size
    execution = doc["spec"]["execution"]
    execution["failures"] = {"taskRetries": TASK_RETRIES}
    execution["stages"][STAGE] = {"cpus": 0.25, "gpus": 1, "minWorkers": 1, "maxWorkers": 1}
    doc["spec"]["cluster"]["gpuWorkers"] = {STAGE: {
        "gpus": 1, "resources": POD, "nodeSelector": GPU_NODE_SELECTOR, "tolerations": [GPU_TOLERATION]}}
    stack.apply_job(doc, tmp)

    pods: dict[str, dict] = {}  # name -> the pod as last listed
    memory: dict[str, dict] = {}  # name -> its cgroup as last read
    read_at = [0.0]

    def read_pods() -> None:
        for pod in stack.list("pods", f"clipforge.dev/job={JOB},ray.io/cluster"):
            name = pod["metadata"]["name"]
            if pod["status"].get("phase") == "Running":
                pods[name] = pod
                memory[name] = cgroup_memory(stack, pod) or memory.get(name)
        read_at[0] = time.monotonic()

    def sample() -> None:  # the CPU group's second pod may go idle and away before the end
        if time.monotonic() - read_at[0] > 10:
            read_pods()

    status = stack.wait_phase(JOB, ("Succeeded", "Failed", "Cancelled"), timeout=900, on_poll=sample)
    read_pods()
    (head,) = [name for name, pod in pods.items() if pod["metadata"]["labels"]["clipforge.dev/group"] == "head"]
    token = stack.ray_token(JOB)

    def ray_workers() -> list[dict] | None:
        try:
            return ray_state(stack, head, "workers", token)
        except OSError:
            return None  # the dashboard is busy; the next poll tries again

    workers = stack.wait(ray_workers, 60, "Ray's state API to list the workers", JOB)
    return SimpleNamespace(bucket=bucket, status=status, pods=pods, memory=memory, workers=workers)


def in_group(run, group: str) -> list[str]:  # noqa: ANN001
    return [name for name, pod in run.pods.items() if pod["metadata"]["labels"]["clipforge.dev/group"] == group]


def killed_workers(run, pod: str) -> list[dict]:  # noqa: ANN001
    """Ray's record of the workers that died unexpectedly in `pod` (Ray names a node by its pod's IP)."""
    ip = run.pods[pod]["status"]["podIP"]
    return [w for w in run.workers if w["ip"] == ip and not w["is_alive"]
            and w["exit_type"] in UNEXPECTED_EXITS]


def test_the_run_ends_with_the_oversized_video_failed_and_the_others_done(stack, run):
    status = run.status
    assert status["phase"] == "Succeeded", stack.diagnostics(JOB)
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["CompletedWithFailures"]["status"] == "True", conditions
    assert {k: v for k, v in status["progress"].items() if k not in ("throughputVideoSecondsPerSecond", "updatedAt")} \
        == {"videosDone": 2, "videosFailed": 1, "videosSkipped": 0, "videosTotal": 3,
            "clipsPassed": 3, "clipsFiltered": 1}
    assert status["retries"] == 0  # the run went on: no job-level retry


def test_the_video_is_recorded_as_failed_because_its_worker_died(stack, run):
    def read_json(key: str) -> dict:
        return json.loads(stack.s3_client.get_object(Bucket=run.bucket, Key=key)["Body"].read())

    # One death per attempt; the attempt after the last retry records the failure instead of running.
    errors = {STAGE: f"gave up after {TASK_RETRIES + 1} attempts: {WORKER_DIED}"}
    summary = read_json("out/summary.json")
    assert summary["state"] == "completed-with-failures"
    assert summary["videos"] == {"total": 3, "done": 2, "failed": 1, "skipped": 0}
    assert summary["failures"] == [{"video": f"s3://{run.bucket}/raw/{OVERSIZED}", "errors": errors}]
    record = read_json(f"out/processed_videos/{OVERSIZED}.json")
    assert record["errors"] == errors and record["num_clips"] == 1
    assert (record["metadata"]["width"], record["metadata"]["height"]) == (WIDTH, HEIGHT)
    report = stack.s3_client.get_object(Bucket=run.bucket, Key="out/report/index.html")["Body"].read().decode()
    assert "Failed videos (1)" in report and f"{STAGE}: {errors[STAGE]}" in report


def test_the_small_videos_clips_are_in_the_bucket(stack, run):
    stack.check_sample_clips(run.bucket)  # as in the e2e job: 320x180 is their own size


def test_each_attempt_was_killed_for_memory_in_the_transcode_pod_whose_container_lived(run):
    (pod,) = in_group(run, GROUP)
    memory = run.memory[pod]
    assert memory["limit"] == LIMIT and memory["max_usage"] >= 0.95 * LIMIT, memory
    killed = killed_workers(run, pod)
    assert len(killed) == TASK_RETRIES + 1, killed
    # Every death Ray's memory monitor does not claim is one the kernel's OOM killer counted here (it
    # may count more: both can go for the same worker), and the kernel killed no other process.
    unclaimed = [w for w in killed if RAY_KILL_DETAIL not in w["exit_detail"]]
    assert len(unclaimed) <= memory["oom_kill"] <= len(killed), (killed, memory)
    (container,) = run.pods[pod]["status"]["containerStatuses"]
    assert container["restartCount"] == 0 and "running" in container["state"], container


def test_nothing_else_was_killed(run):
    others = [name for name in run.pods if name not in in_group(run, GROUP)]
    assert {run.pods[n]["metadata"]["labels"]["clipforge.dev/group"] for n in others} == {"head", "cpu"}
    for name in others:
        assert run.memory[name]["oom_kill"] == 0 and not killed_workers(run, name), (name, run.memory[name])
        assert all(c["restartCount"] == 0 for c in run.pods[name]["status"]["containerStatuses"]), name
