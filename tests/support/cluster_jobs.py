"""Helpers for tests that run VideoCurationJobs on the real control plane (tests/harness).

One `Stack` per test module: the session's control plane, real nodes (with ClipForge's images) and
pod-reachable Ceph RGW, the operator as the Helm chart runs it (harness/operator_process.py), and a namespace of
the module's own that enforces the `restricted` Pod Security level. Jobs are tiny (two short
low-resolution videos, 5 s clips, pods limited to one CPU and 2 GiB); every wait fails with what to look at.
The host has no route to pods: Ray's state API is read inside the head pod (`kubectl exec`), logs
with `kubectl logs`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import time
import uuid
from pathlib import Path
from collections.abc import Iterator
from typing import Any, Callable

import pytest
import yaml

from clipforge.samples import write_samples
from harness.operator_process import DEFAULT_SETS, ChartOperator
from support.jobs import decode_clip, small_samples

REPO = Path(__file__).resolve().parents[2]
TERMINAL = ("Succeeded", "Failed", "Cancelled")
# A quarter CPU requested, so a head, four workers and KubeRay's submitter fit a 2-CPU node beside
# CoreDNS and KubeRay; Ray counts the limit's one CPU. 2 GiB is above the 1.25 GiB a worker peaks
# at, and enforced.
POD = {"requests": {"cpu": "250m", "memory": "2Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}}
# One worker of a quarter CPU per stage (at most two): every stage's workers fit two one-CPU pods.
SMALL_STAGES = {s: {"cpus": 0.25, "minWorkers": 1, "maxWorkers": 2}
                for s in ("probe", "split", "transcode", "motion", "embed", "preview", "write")}
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
SECRET = "clipforge-s3"  # the name the chart's jobPolicy admits by default
# Our handlers' error for a refused call, kopf's for its own calls, and RBAC's Status message.
FORBIDDEN = re.compile(r'API error 403|APIForbiddenError|User ".*" cannot \w+ resource')


def refused_calls(log: str) -> list[str]:
    """The lines of an operator log that say RBAC refused one of its calls."""
    return [line for line in log.splitlines() if FORBIDDEN.search(line)]


@contextlib.contextmanager
def never_refused(operator: ChartOperator) -> Iterator[None]:
    """Whatever `operator` logs inside the block has no 403 in it: the chart's RBAC sufficed."""
    start = len(operator.log_text())
    yield
    refused = refused_calls(operator.log_text()[start:])
    assert not refused, "the operator was refused by RBAC:\n" + "\n".join(refused[:10])


class Stack:
    """What a module's jobs run on, and the reads and waits its tests make."""

    def __init__(self, cp, nodes, s3, operator: ChartOperator, namespace: str):  # noqa: ANN001
        self.cp, self.nodes, self.s3, self.operator, self.ns = cp, nodes, s3, operator, namespace
        self.s3_client = s3.client()

    def close(self) -> None:
        """Deletes the module's jobs (their clusters with them) while the operator still runs, then stops it."""
        self.kubectl("delete", "videocurationjobs", "--all", "--timeout=120s", check=False)
        self.operator.stop()

    # -- kubectl

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True):  # noqa: ANN201
        return self.cp.kubectl("-n", self.ns, *args, input=stdin, check=check)

    def get(self, kind: str, name: str) -> dict | None:
        done = self.kubectl("get", kind, name, "-o", "json", check=False)
        if done.returncode != 0:
            assert "NotFound" in done.stderr, done.stderr
            return None
        return json.loads(done.stdout)

    def list(self, kind: str, selector: str | None = None) -> list[dict]:
        args = ["get", kind, "-o", "json"] + (["-l", selector] if selector else [])
        return json.loads(self.kubectl(*args).stdout)["items"]

    def names(self, kind: str, selector: str | None = None) -> list[str]:
        return sorted(o["metadata"]["name"] for o in self.list(kind, selector))

    def status(self, job: str) -> dict:
        return (self.get("videocurationjob", job) or {}).get("status") or {}

    def ray_token(self, job: str) -> str:
        """The job's Ray token, from the Secret its status names (read as the test's admin, not the operator)."""
        secret = self.get("secret", self.status(job)["rayTokenSecret"])
        return base64.b64decode(secret["data"]["RAY_AUTH_TOKEN"]).decode()

    # -- jobs

    def upload_samples(self, tmp: Path, copies: int = 1) -> str:
        """A fresh bucket with small_samples() under raw/ (`copies` of each); returns the bucket."""
        bucket = self.s3.create_bucket(f"{self.ns}-{uuid.uuid4().hex[:10]}")
        videos = tmp / f"videos-{bucket}"
        write_samples(videos, small_samples())
        for path in sorted(videos.rglob("*.mp4")):
            for copy in range(copies):
                key = f"raw/{copy}/{path.relative_to(videos)}" if copies > 1 else f"raw/{path.relative_to(videos)}"
                self.s3_client.upload_file(str(path), bucket, key)
        return bucket

    def job_manifest(self, name: str, bucket: str, **spec: Any) -> dict:
        """examples/cpu-job.yaml pointed at the bucket, with a cluster sized for this machine."""
        doc = yaml.safe_load((REPO / "examples" / "cpu-job.yaml").read_text())
        doc["metadata"] = {"name": name, "namespace": self.ns}
        doc["spec"].update(
            input={"uri": f"s3://{bucket}/raw/"}, output={"uri": f"s3://{bucket}/out/"},
            storage={"endpoint": self.s3.endpoint, "region": self.s3.region, "credentialsSecret": SECRET},
            cluster={"head": {"resources": POD}, "cpuWorkers": {**doc["spec"]["cluster"]["cpuWorkers"], "resources": POD}},
            maxRetries=0, ttlSecondsAfterFinished=10,
        )
        doc["spec"]["execution"] = {**doc["spec"].get("execution", {}), "stages": json.loads(json.dumps(SMALL_STAGES))}
        for key, value in spec.items():
            doc["spec"][key] = value
        return doc

    def apply_job(self, doc: dict, tmp: Path) -> str:
        path = tmp / f"{doc['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        out = self.kubectl("apply", "-f", str(path)).stdout
        assert f"videocurationjob.clipforge.dev/{doc['metadata']['name']} created" in out, out
        return doc["metadata"]["name"]

    # -- waiting

    def wait(self, check: Callable[[], Any], timeout: float, what: str, job: str | None = None,
             interval: float = 1.0, operator: ChartOperator | None = None) -> Any:
        """Polls `check` until truthy; fails at once if `operator` (the stack's own by default) dies."""
        operator = operator or self.operator
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline or not operator.alive():
                state = "the operator died" if not operator.alive() else f"timed out after {timeout:g}s"
                pytest.fail(f"{state} waiting for {what}\n{self.diagnostics(job, operator)}")
            time.sleep(interval)

    def wait_phase(self, job: str, phases: tuple[str, ...], timeout: float, seen: list[str] | None = None,
                   on_poll: Callable[[], None] | None = None) -> dict:
        """Polls the job until its phase is one of `phases`; `seen` collects the phases on the way."""
        seen = [] if seen is None else seen

        def reached() -> dict | None:
            status = self.status(job)
            phase = status.get("phase")
            if phase and (not seen or seen[-1] != phase):
                seen.append(phase)
            if on_poll is not None:
                on_poll()
            return status if phase in phases else None

        return self.wait(reached, timeout, f"job {job} to reach {'/'.join(phases)} (phases seen: {seen})", job)

    def wait_gone(self, kind: str, selector: str, timeout: float, job: str | None = None) -> None:
        self.wait(lambda: not self.list(kind, selector), timeout, f"every {kind} with {selector} to be deleted", job)

    def diagnostics(self, job: str | None, operator: ChartOperator | None = None) -> str:
        parts = []
        if job:
            parts.append(f"job status: {json.dumps(self.status(job), indent=1)[-3000:]}")
        parts.append(self.kubectl("get", "videocurationjobs,rayjobs,rayclusters,jobs,pods", "-o", "wide",
                                  check=False).stdout)
        parts.append(self.kubectl("get", "events", "--sort-by=.lastTimestamp", check=False).stdout[-4000:])
        for (pod, container), log in sorted(self.pod_logs().items()):
            parts.append(f"--- {pod}/{container} ---\n{log[-1500:]}")
        parts.append(f"--- operator log ---\n{(operator or self.operator).log_text()[-4000:]}")
        return "\n".join(parts)

    # -- logs

    def logs(self, pod: str, container: str) -> str:
        """The container's log as `kubectl logs` has it ("" once the pod is gone)."""
        return self.kubectl("logs", pod, "-c", container, check=False).stdout

    def pod_logs(self, selector: str | None = None) -> dict[tuple[str, str], str]:
        """The logs of every container of the namespace's pods (with `selector`), by (pod, container)."""
        return {(p["metadata"]["name"], c["name"]): self.logs(p["metadata"]["name"], c["name"])
                for p in self.list("pods", selector) for c in p["spec"]["containers"]}

    # -- what KubeRay made

    def pods_of(self, job: str, group: str | None = None) -> list[dict]:
        selector = f"clipforge.dev/job={job}" + (f",clipforge.dev/group={group}" if group else "")
        return self.list("pods", selector)

    def check_sample_clips(self, bucket: str) -> None:
        """upload_samples()' outputs under out/ as job_manifest's settings make them: 5 s clips, three
        passed and the static scene's filtered, each a decodable 320x180 H.264, and a preview of each."""
        clips = [k for k in self.s3_keys(bucket, "out/clips/") if k.endswith(".mp4")]
        filtered = [k for k in self.s3_keys(bucket, "out/filtered_clips/") if k.endswith(".mp4")]
        previews = [k for k in self.s3_keys(bucket, "out/previews/") if k.endswith(".webp")]
        assert (len(clips), len(filtered), len(previews)) == (3, 1, 4)
        for key in clips + filtered:
            frames, codec, width, height = decode_clip(self.s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())
            assert frames > 0 and codec == "h264" and (width, height) == (320, 180), key

    def s3_keys(self, bucket: str, prefix: str) -> list[str]:
        keys = []
        for page in self.s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys += [item["Key"] for item in page.get("Contents", [])]
        return keys


# Run in the head's Ray container: the token comes on stdin, so it is in no process's arguments.
STATE_API = r"""
import sys, urllib.request
request = urllib.request.Request(f"http://127.0.0.1:8265/api/v0/{sys.argv[1]}?detail=1&limit=10000&timeout=20",
                                 headers={"Authorization": f"Bearer {sys.stdin.read()}"})
with urllib.request.urlopen(request, timeout=30) as resp:
    sys.stdout.write(resp.read().decode())
"""


def ray_state(stack: Stack, head_pod: str, resource: str, token: str) -> list[dict]:
    """Ray's state API (`ray list nodes|actors --detail`) at the head pod's dashboard (through its
    gate), with the job's token; OSError when the dashboard does not answer."""
    done = stack.kubectl("exec", "-i", head_pod, "-c", "ray-head", "--", "python", "-c", STATE_API, resource,
                         stdin=token, check=False)
    if done.returncode != 0:
        raise OSError(f"the state API in {head_pod} failed: {done.stderr.strip()[-500:]}")
    body = json.loads(done.stdout)
    assert body.get("result"), body
    return body["data"]["result"]["result"]


def make_stack(control_plane, nodes, pod_s3_server, workdir: Path, namespace: str,  # noqa: ANN001
               sets: tuple[str, ...] = ()) -> Stack:
    """The chart's operator (with these `--set` values) started, and `namespace` created with the
    `restricted` Pod Security level."""
    operator = ChartOperator(control_plane, workdir, sets=(*DEFAULT_SETS, *sets))
    operator.start()
    if control_plane.kubectl("get", "namespace", namespace, check=False).returncode != 0:
        control_plane.create_namespace(namespace)
    control_plane.kubectl("label", "--overwrite", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    stack = Stack(control_plane, nodes, pod_s3_server, operator, namespace)
    stack.cp.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET, "namespace": namespace},
                    "type": "Opaque", "stringData": pod_s3_server.env()})
    return stack
