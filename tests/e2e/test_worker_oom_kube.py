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
- the kernel's memcg OOM killer, at the limit: Ray gives its workers oom_score_adj 1000 (its system
  processes have the pod's 916), so it kills the worker and logs the kill with the pod's cgroup;
- Ray's memory monitor, at 95 % of the limit, sampled every 250 ms: it SIGKILLs the leased worker it
  picks and says so in the worker's exit detail, which the GCS keeps.
Transcode has a pod of its own so that either way the only worker there to kill is the one that
overran (the kernel picks the largest process, but Ray's monitor the newest lease). After a kernel
kill the dead worker's 1.8 GiB can take a moment to be uncharged; an allocation in that moment has
the kernel kill a second process, a Ray system one (seen once in six runs: the dashboard agent, so
the raylet exited and the autoscaler replaced the pod). The run goes on either way: the executor's
ledger counts each death as an attempt and, after execution.failures.taskRetries retries, records the
video as failed (WORKER_DIED); the samples' clips are written and the run ends Succeeded with failures.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
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
# The limit the kernel enforces on the container: its memory cgroup (v1), as runc mounts it there.
CGROUP_LIMIT = "/sys/fs/cgroup/memory/memory.limit_in_bytes"
# The kernel's line for each OOM kill in a memory cgroup: the cgroup that hit its limit (a pod's, under
# the node's cgroup root) and the process killed.
KERNEL_OOM_KILL = re.compile(r"oom-kill:constraint=CONSTRAINT_MEMCG,.*oom_memcg=\S*/pod([-0-9a-f]+),.*task=(.+?),pid=")


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


def cgroup_limit(stack, pod: dict) -> int | None:  # noqa: ANN001
    """The Ray container's memory limit as its cgroup has it (None once the pod is gone)."""
    done = stack.kubectl("exec", pod["metadata"]["name"], "-c", pod["spec"]["containers"][0]["name"], "--",
                         "cat", CGROUP_LIMIT, check=False)
    return int(done.stdout) if done.returncode == 0 else None


@pytest.fixture(scope="module")
def run(stack, tmp_path_factory):
    """The job run to its end; every Ray pod and its memory cgroup's limit read while it ran, and at
    the end Ray's record of its workers (the cluster stays a minute after the end for that) and the
    kernel's of its OOM kills."""
    tmp = tmp_path_factory.mktemp("oom-job")
    bucket = stack.upload_samples(tmp)
    stack.s3_client.upload_file(str(write_oversized(tmp / OVERSIZED)), bucket, f"raw/{OVERSIZED}")
    doc = stack.job_manifest(JOB, bucket, ttlSecondsAfterFinished=60)
    del doc["spec"]["transcoding"]["maxHeight"]  # the default: clips keep their source's size
    execution = doc["spec"]["execution"]
    execution["failures"] = {"taskRetries": TASK_RETRIES}
    execution["limits"] = {"maxPixels": WIDTH * HEIGHT}  # over the default (8K): let it reach transcode
    execution["stages"][STAGE] = {"cpus": 0.25, "gpus": 1, "minWorkers": 1, "maxWorkers": 1}
    doc["spec"]["cluster"]["gpuWorkers"] = {STAGE: {
        "gpus": 1, "resources": POD, "nodeSelector": GPU_NODE_SELECTOR, "tolerations": [GPU_TOLERATION]}}
    stack.apply_job(doc, tmp)

    pods: dict[str, dict] = {}  # name -> the pod as last listed
    limits: dict[str, int | None] = {}  # name -> its cgroup's memory limit
    read_at = [0.0]

    def read_pods() -> None:
        for pod in stack.list("pods", f"clipforge.dev/job={JOB},ray.io/cluster"):
            name = pod["metadata"]["name"]
            if pod["status"].get("phase") == "Running":
                pods[name] = pod
                limits[name] = limits.get(name) or cgroup_limit(stack, pod)
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
    # The nodes share this machine's kernel: its log names every process it killed, and the pod's cgroup.
    kernel_kills = [m.groups() for m in KERNEL_OOM_KILL.finditer(
        subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout)]
    return SimpleNamespace(bucket=bucket, status=status, pods=pods, limits=limits, workers=workers,
                           kernel_kills=kernel_kills)


def in_group(run, group: str) -> list[str]:  # noqa: ANN001
    return [name for name, pod in run.pods.items() if pod["metadata"]["labels"]["clipforge.dev/group"] == group]


def killed_workers(run, pod: str) -> list[dict]:  # noqa: ANN001
    """Ray's record of the workers that died unexpectedly in `pod` (Ray names a node by its pod's IP)."""
    ip = run.pods[pod]["status"]["podIP"]
    return [w for w in run.workers if w["ip"] == ip and not w["is_alive"]
            and w["exit_type"] in UNEXPECTED_EXITS]


def kernel_kills(run, pod: str) -> list[str]:  # noqa: ANN001
    """The processes the kernel's OOM killer killed in `pod`."""
    return [task for uid, task in run.kernel_kills if uid == run.pods[pod]["metadata"]["uid"]]


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
    assert summary["videos"] == {"total": 3, "done": 2, "failed": 1, "skipped": 0, "unmatched": 0}
    # A worker out of memory is the environment's failure: every rerun tries the video again.
    assert summary["failures"] == [{"video": f"s3://{run.bucket}/raw/{OVERSIZED}", "errors": errors,
                                    "retryable": True, "earlier": False}]
    record = read_json(f"out/processed_videos/{OVERSIZED}.json")
    assert record["errors"] == errors and record["num_clips"] == 1 and record["retryable"] is True
    assert (record["metadata"]["width"], record["metadata"]["height"]) == (WIDTH, HEIGHT)
    report = stack.s3_client.get_object(Bucket=run.bucket, Key="out/report/index.html")["Body"].read().decode()
    assert "Failed videos (1)" in report
    # The reason in plain words, the raw message in its detail view.
    assert f"{STAGE}: the process working on it died (a crash, memory running out, or a kill)" in report
    assert f"<code>{html.escape(errors[STAGE])}</code>" in report


def test_the_small_videos_clips_are_in_the_bucket(stack, run):
    stack.check_sample_clips(run.bucket)  # as in the e2e job: 320x180 is their own size


def test_each_attempt_was_killed_for_memory_in_the_transcode_pod(run):
    pods = in_group(run, GROUP)  # one, or two where a second OOM took its raylet (the docstring)
    assert {run.limits[pod] for pod in pods} == {LIMIT}
    by_ray = [w for pod in pods for w in killed_workers(run, pod) if RAY_KILL_DETAIL in w["exit_detail"]]
    by_kernel = [task for pod in pods for task in kernel_kills(run, pod) if task.startswith("ray::MapWorker")]
    # Ray Data's actor processes are all MapWorkers; in this pod they are transcode's. Each attempt's
    # worker was killed by one or both.
    assert len(by_ray) + len(by_kernel) >= TASK_RETRIES + 1, (by_ray, by_kernel, [kernel_kills(run, p) for p in pods])


def test_nothing_else_was_killed(run):
    others = [name for name in run.pods if name not in in_group(run, GROUP)]
    assert {run.pods[n]["metadata"]["labels"]["clipforge.dev/group"] for n in others} == {"head", "cpu"}
    assert {run.limits[name] for name in others} == {LIMIT}  # enforced in every Ray container
    for name in others:
        assert not kernel_kills(run, name) and not killed_workers(run, name), name
        assert all(c["restartCount"] == 0 for c in run.pods[name]["status"]["containerStatuses"]), name
