"""Restart over an output that holds many done videos: time to the first new video, driver memory.

Generates (never commits) an input of `--videos` tiny files in folders of 1,000 plus one new
video that lists last, and an output whose resume state says every one of the others is done
with this job's settings and models. The done state is written directly as resume segments of
100,000 videos each (what runs leave once compacted); no processed_videos/ records are written,
since a restart does not read them. `clipforge run` then starts in a fresh process (the local
executor) and the figure is the time from the process's start to the new video's hand-over to
the executor, with the process's peak RSS at that moment. The same again on Ceph RGW (tests/support/s3_server.py)
with `--rgw-videos` objects.

    python benchmarks/bench_dataset_scale.py                               # 1,000,000 local, 100,000 on RGW
    python benchmarks/bench_dataset_scale.py --videos 100000 --rgw-videos 10000
    python benchmarks/bench_dataset_scale.py --no-rgw --keep /tmp/bench-scale

Each figure is printed with its goal; the last line is `goals met: K of N`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

GOALS = {"local": 30.0, "rgw": 60.0}  # seconds to the first new video
RSS_GOAL_MIB = 1024
FOLDER_FILES = 1000
SEGMENT_VIDEOS = 100_000
HERE = Path(__file__).resolve().parent
STARTED = time.monotonic()  # the script's start: a restart's figure counts its imports too


def job_document(inputs: str, output: str, endpoint: str | None) -> dict:
    spec = {"input": {"uri": inputs}, "output": {"uri": output}, "execution": {"executor": "local"},
            "motionFilter": {"mode": "disable"}, "embeddings": {"enabled": False}, "previews": {"enabled": False}}
    if endpoint:
        spec["storage"] = {"endpoint": endpoint}
    return {"apiVersion": "clipforge.dev/v1alpha1", "kind": "VideoCurationJob", "metadata": {"name": "scale"},
            "spec": spec}


def write_done_state(job_path: Path, listed: list, output: str) -> None:
    """Resume segments saying every video of `listed` (storage.Listed) is done as this job makes it."""
    import pyarrow as pa
    from clipforge import preflight
    from clipforge.provenance import Provenance
    from clipforge.resume_state import SCHEMA, ResumeState
    from clipforge.runner import source_version
    from clipforge.spec import clip_settings, load_job
    from clipforge.storage import Storage

    spec = load_job(str(job_path)).spec
    storage = Storage.from_spec(spec.storage)
    provenance = Provenance.of_run("bench", storage, preflight.requirements(spec))
    settings = json.dumps(clip_settings(spec), sort_keys=True)
    models = json.dumps(provenance.models, sort_keys=True)
    state = ResumeState(storage, output, "be7c4")
    for start in range(0, len(listed), SEGMENT_VIDEOS):
        part = listed[start:start + SEGMENT_VIDEOS]
        n = len(part)
        table = pa.table({
            "relative_path": [f.relative for f in part], "video": [None] * n,  # named for failures only
            "source": [json.dumps(source_version(f), sort_keys=True) for f in part],
            "settings": [settings] * n,
            "models": [models] * n, "errors": ["{}"] * n, "retryable": [False] * n,
            "num_clips_passed": [3] * n, "num_clips_filtered": [1] * n, "num_clips_failed": [0] * n,
        }, schema=SCHEMA)
        state.write_segment(table)


def make_local(root: Path, videos: int, sample: Path) -> tuple[Path, str]:
    from clipforge.storage import Storage

    inputs, output = root / "in", root / "out"
    for start in range(0, videos, FOLDER_FILES):
        folder = inputs / f"d{start // FOLDER_FILES:05d}"
        folder.mkdir(parents=True)
        for n in range(start, min(start + FOLDER_FILES, videos)):
            path = folder / f"v{n:07d}.mp4"
            path.write_bytes(b"done before")
    job = root / "job.json"
    job.write_text(json.dumps(job_document(str(inputs), str(output), None)))
    write_done_state(job, Storage().list_files(str(inputs), ["*.mp4"]), str(output))
    (inputs / "zz").mkdir()
    shutil.copy(sample, inputs / "zz" / "new.mp4")
    return job, str(output)


def make_rgw(root: Path, videos: int, sample: Path, server) -> tuple[Path, str]:  # noqa: ANN001
    from clipforge.storage import Storage

    os.environ.update(server.env())  # for the done state this process writes there
    root.mkdir(parents=True)
    bucket = server.create_bucket("scale")
    client = server.client()

    def put(n: int) -> None:
        client.put_object(Bucket=bucket, Key=f"in/d{n // FOLDER_FILES:05d}/v{n:07d}.mp4", Body=b"done before")

    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(put, range(videos)))
    job = root / "job.json"
    job.write_text(json.dumps(job_document(f"s3://{bucket}/in", f"s3://{bucket}/out", server.endpoint)))
    listed = Storage(endpoint=server.endpoint).list_files(f"s3://{bucket}/in", ["*.mp4"])
    write_done_state(job, listed, f"s3://{bucket}/out")
    client.put_object(Bucket=bucket, Key="in/zz/new.mp4", Body=sample.read_bytes())
    return job, f"s3://{bucket}/out"


def peak_rss_mib() -> float:
    """This process's peak RSS: VmHWM, which starts afresh with the program (getrusage's ru_maxrss
    keeps the parent's peak from before the fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(job: str) -> None:
    """`clipforge run job`, stopped when the first video reaches the executor: prints the seconds
    since this process started and its peak RSS then."""
    from clipforge.executors import local
    from clipforge.runner import run_job
    from clipforge.spec import load_job

    real = local.run_local

    def first_dispatch(spec, tasks, stages):  # noqa: ANN001, ANN202
        for task in tasks:
            peak = peak_rss_mib()
            print(json.dumps({"seconds": time.monotonic() - STARTED, "rss_mib": peak, "video": task.relative_path}))
            sys.stdout.flush()
            os._exit(0)
        yield from real(spec, [], stages)

    local.run_local = first_dispatch
    run_job(load_job(job))
    print(json.dumps({"error": "no video was dispatched"}))


def measure(job: Path, env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", str(job)], capture_output=True, text=True,
                          env={**os.environ, **env}, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise SystemExit(f"the restart failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=1_000_000, help="done videos of the local output")
    parser.add_argument("--rgw-videos", type=int, default=100_000, help="done videos of the output on Ceph RGW")
    parser.add_argument("--no-rgw", action="store_true", help="the local figures only")
    parser.add_argument("--keep", type=Path, help="generate here and keep it (default: a temporary folder)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    sys.path.insert(0, str(HERE.parent / "tests"))
    from clipforge.samples import SampleVideo, Segment, write_video

    root = args.keep or Path(tempfile.mkdtemp(prefix="clipforge-bench-scale-"))
    results: list[tuple[str, float, float, bool]] = []
    try:
        sample = write_video(SampleVideo("new", 160, 90, 24, (Segment(2, True, 1),)), root / "new.mp4")
        began = time.monotonic()
        job, _ = make_local(root / "local", args.videos, sample)
        print(f"generated {args.videos:,} local done videos in {time.monotonic() - began:.0f} s")
        figures = measure(job, {})
        results += figure(f"restart over {args.videos:,} done videos (local)", figures, GOALS["local"])
        if not args.no_rgw:
            from support.s3_server import CephS3Gateway

            with CephS3Gateway(memstore_bytes=1 << 30) as server:
                began = time.monotonic()
                job, _ = make_rgw(root / "rgw", args.rgw_videos, sample, server)
                print(f"generated {args.rgw_videos:,} done videos on RGW in {time.monotonic() - began:.0f} s")
                figures = measure(job, server.env())
                results += figure(f"restart over {args.rgw_videos:,} done videos (Ceph RGW)", figures, GOALS["rgw"])
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"goals met: {sum(met for *_, met in results)} of {len(results)}")


def figure(what: str, figures: dict, goal_s: float) -> list[tuple[str, float, float, bool]]:
    seconds, rss = figures["seconds"], figures["rss_mib"]
    print(f"{what}: first new video ({figures['video']}) dispatched after {seconds:.1f} s (goal <= {goal_s:g} s)")
    print(f"{what}: driver peak RSS {rss:.0f} MiB (goal < {RSS_GOAL_MIB} MiB)")
    return [(what, seconds, goal_s, seconds <= goal_s), (what, rss, RSS_GOAL_MIB, rss < RSS_GOAL_MIB)]


if __name__ == "__main__":
    main()
