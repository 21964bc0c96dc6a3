"""Whole jobs on real Ray: the streaming executor, worker loss, interrupted runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from harness.processes import descendants
from support.jobs import FIVE_SECOND_CLIPS, clipforge, decode_clip, load_json, manifest, tree, write_manifest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

@pytest.fixture(scope="module")
def many_videos(tmp_path_factory, samples_dir) -> Path:
    """Enough videos (and chunks) that a run can be interrupted half way."""
    directory = tmp_path_factory.mktemp("many")
    for i in range(6):
        for src in samples_dir.rglob("*.mp4"):
            shutil.copy(src, directory / f"{i}_{src.name}")
    return directory


def job_file(tmp_path: Path, input_uri: str, output: Path, executor: str, name: str = "job.yaml", **execution) -> Path:
    spec = {"splitting": FIVE_SECOND_CLIPS, "execution": {"executor": executor, "clipsPerChunk": 1, **execution}}
    spec["embeddings"] = {"enabled": False}  # a quicker run; test_embed.py runs the embed stage on Ray
    return write_manifest(tmp_path / name, manifest(input_uri, str(output), **spec))


def assert_complete(out: Path, expected_clips: int) -> None:
    """Every expected clip exactly once, every clip file decodes, every video recorded."""
    metas = [load_json(p) for p in (out / "metas" / "v0").glob("*.json")]
    assert len(metas) == expected_clips
    passed = {p.stem for p in (out / "clips").glob("*.mp4")}
    filtered = {p.stem for p in (out / "filtered_clips").glob("*.mp4")}
    assert not passed & filtered
    assert passed | filtered == {m["span_uuid"] for m in metas}
    for meta in metas:
        frames, codec, _, _ = decode_clip(out / meta["clip_location"])
        assert frames == meta["num_frames"] and codec == "h264"


@pytest.mark.parametrize("allocator", ["rayData", "throughput"])
def test_ray_job_writes_the_same_dataset_as_the_local_executor(tmp_path, samples_dir, allocator):
    """Byte for byte: codecs and models run the threads their stage reserves on both executors, so
    clips, previews, embeddings and scores do not depend on where (or next to what) they ran, nor
    on which allocator sized the stages (the local executor has none)."""
    outputs = {}
    for executor in ("ray", "local"):
        outputs[executor] = tmp_path / executor
        spec = {"splitting": FIVE_SECOND_CLIPS,
                "execution": {"executor": executor, "clipsPerChunk": 1, "allocator": allocator}}
        job = write_manifest(tmp_path / f"{executor}.yaml", manifest(str(samples_dir), str(outputs[executor]), **spec))
        result = clipforge("run", str(job), "--no-progress")
        assert result.returncode == 0, result.stderr[-3000:]
        assert "clips: 3 passed, 1 filtered, 0 failed" in result.stdout
    ray_out, local_out = outputs["ray"], outputs["local"]
    assert set(tree(ray_out)) == set(tree(local_out))
    compared = 0
    for relative in tree(local_out):
        if relative.split("/")[0] in ("index", "report"):
            continue  # rebuilt from the records at the end of every run
        ray_bytes, local_bytes = (ray_out / relative).read_bytes(), (local_out / relative).read_bytes()
        if relative.endswith(".json"):  # records name their output's location
            ray_bytes = ray_bytes.replace(str(ray_out).encode(), b"<out>")
            local_bytes = local_bytes.replace(str(local_out).encode(), b"<out>")
        if relative.startswith(("processed_videos/", "processed_clip_chunks/")):
            # Which run wrote them, and when, differ; nothing else.
            ray_record, local_record = ({k: v for k, v in json.loads(doc).items() if k not in ("run_id", "processed_at")}
                                        for doc in (ray_bytes, local_bytes))
            assert ray_record == local_record, relative
        else:
            assert ray_bytes == local_bytes, relative
        compared += 1
    kinds = {r.split("/")[0] for r in tree(local_out)}
    assert {"clips", "filtered_clips", "previews", "metas", "efficientnet-lite0_embd",
            "efficientnet-lite0_embd_parquet", "processed_clip_chunks"} <= kinds and compared >= 20
    for meta in (local_out / "metas" / "v0").glob("*.json"):
        assert load_json(meta)["motion_score"]["global_mean"] is not None
    assert_complete(ray_out, 4)


def test_killing_ray_workers_mid_run_loses_no_clip(tmp_path, many_videos):
    import ray
    from clipforge.cli import main

    out = tmp_path / "out"
    # Transcode is pinned to nodes advertising its resource, as on the operator's worker groups.
    job = job_file(tmp_path, str(many_videos), out, "ray", stages={"transcode": {"pinned": True}})
    killed: list[int] = []
    chunks_at_kill: list[int] = []
    transcode_resource_free: list[float] = []

    def kill_workers_once_work_is_written() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list((out / "processed_clip_chunks").glob("*.json")):
            time.sleep(0.1)
        chunks_at_kill.append(len(list((out / "processed_clip_chunks").glob("*.json"))))
        transcode_resource_free.append(ray.available_resources().get("clipforge_transcode", 0))
        # Ray titles each actor's process `ray::<class>...`; Ray Data's stage actors are MapWorkers.
        # Only this test's own Ray (started by this process) is touched, never another run's.
        for pid in descendants(os.getpid()):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if title.startswith("ray::") and "MapWorker" in title:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    ray.init(num_cpus=4, include_dashboard=False, resources={"clipforge_transcode": 100})
    try:
        killer = threading.Thread(target=kill_workers_once_work_is_written)
        killer.start()
        assert main(["run", str(job), "--no-progress"]) == 0
        killer.join()
    finally:
        ray.shutdown()
    assert killed and chunks_at_kill[0] < 24, "the run finished before the test could interrupt it"
    assert transcode_resource_free[0] < 100, "the pinned transcode actors did not hold their resource"
    summary = load_json(out / "summary.json")
    assert summary["videos"]["done"] == 12 and summary["videos"]["failed"] == 0
    assert_complete(out, 24)


def test_interrupted_run_then_rerun_completes_without_duplicates(tmp_path, many_videos):
    out = tmp_path / "out"
    job = job_file(tmp_path, str(many_videos), out, "local")
    process = subprocess.Popen(
        [sys.executable, "-m", "clipforge.cli", "run", str(job), "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((out / "processed_clip_chunks").glob("*.json"))) < 3:
        time.sleep(0.05)
    process.kill()
    process.wait()
    chunks_before = len(list((out / "processed_clip_chunks").glob("*.json")))
    assert 3 <= chunks_before < 24, "the run was not interrupted half way"
    assert load_json(out / "progress.json")["state"] == "running"

    result = clipforge("run", str(job), "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_complete(out, 24)
    assert len(list((out / "processed_clip_chunks").glob("*.json"))) == 24
    assert len(list((out / "processed_videos").glob("*.json"))) == 12
    assert load_json(out / "summary.json")["videos"]["failed"] == 0
