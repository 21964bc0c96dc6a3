"""The same job against real S3 (Ceph RADOS gateway on loopback): input and output in buckets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from clipforge.samples import write_samples
from support.jobs import FIVE_SECOND_CLIPS, decode_clip, manifest, small_samples, tree, write_manifest

pytestmark = pytest.mark.slow

SPEC = {
    "splitting": FIVE_SECOND_CLIPS,
    "execution": {"clipsPerChunk": 1},
}


def run(job: Path, env: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in {**os.environ, **env}.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, "-m", "clipforge.cli", "run", str(job), "--no-progress"],
                          env=env, capture_output=True, text=True)


def keys(client, bucket: str, prefix: str) -> dict[str, int]:
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"][len(prefix):]] = item["Size"]
    return found


def shape(layout: list[str], metas: dict[str, dict]) -> set[str]:
    """The layout with clip ids replaced by their spans: ids differ because sources differ."""
    names = set()
    for path in layout:
        stem = Path(path).stem
        if stem in metas:
            meta = metas[stem]
            span = f"{Path(meta['source_video']).name}@{meta['span_frames'][0]}-{meta['span_frames'][1]}"
            path = path.replace(stem, span)
        names.add(path)
    return names


@pytest.mark.ray
def test_s3_job_reads_and_writes_buckets_with_the_local_layout(tmp_path, s3_server, s3_bucket):
    local_in = tmp_path / "in"
    write_samples(local_in, small_samples())
    client = s3_server.client()
    for path in local_in.rglob("*.mp4"):
        client.upload_file(str(path), s3_bucket, f"raw/{path.relative_to(local_in)}")

    storage = {"endpoint": s3_server.endpoint, "region": s3_server.region}
    document = manifest(f"s3://{s3_bucket}/raw/", f"s3://{s3_bucket}/curated", storage=storage, **SPEC)
    s3_job = write_manifest(tmp_path / "s3.yaml", document)
    result = run(s3_job, s3_server.env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert "clips: 3 passed, 1 filtered, 0 failed" in result.stdout
    # No credential ever reaches the output.
    assert s3_server.secret_key not in result.stdout + result.stderr

    local_job = write_manifest(tmp_path / "local.yaml", manifest(str(local_in), str(tmp_path / "out"), **SPEC))
    assert run(local_job, {}).returncode == 0

    s3_layout = keys(client, s3_bucket, "curated/")
    local_layout = tree(tmp_path / "out")
    s3_metas = {Path(k).stem: json.loads(client.get_object(Bucket=s3_bucket, Key=f"curated/{k}")["Body"].read())
                for k in s3_layout if k.startswith("metas/v0/")}
    local_metas = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "out" / "metas" / "v0").glob("*.json")}
    # As tree() leaves them out: progress/summary (timestamps) and resume segments (named after their run).
    s3_files = [k for k in s3_layout
                if k not in ("progress.json", "summary.json") and not k.endswith("/") and not k.startswith("resume/")]
    assert shape(s3_files, s3_metas) == shape(list(local_layout), local_metas)

    for clip_id, meta in s3_metas.items():
        assert meta["source_video"].startswith(f"s3://{s3_bucket}/raw/")
        folder = "clips" if meta["filtered_by"] is None else "filtered_clips"
        assert meta["clip_location"] == f"{folder}/{clip_id}.mp4"  # relative to the output root, on S3 too
        body = client.get_object(Bucket=s3_bucket, Key=f"curated/{meta['clip_location']}")["Body"].read()
        assert len(body) == meta["num_bytes"]
        frames, codec, _, _ = decode_clip(body)
        assert frames == meta["num_frames"] and codec == "h264"
    summary = json.loads(client.get_object(Bucket=s3_bucket, Key="curated/summary.json")["Body"].read())
    assert summary["videos"] == {"total": 2, "done": 2, "failed": 0, "skipped": 0, "unmatched": 0}


def test_unreachable_storage_fails_fast_naming_the_output(tmp_path):
    job = write_manifest(tmp_path / "job.yaml", manifest(
        str(tmp_path), "s3://bucket/out", storage={"endpoint": "http://127.0.0.1:9"}, **SPEC))
    env = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "not-a-real-secret-value",
           "AWS_EC2_METADATA_DISABLED": "true"}
    result = run(job, env)
    assert result.returncode == 2
    assert "cannot write s3://bucket/out/leases/" in result.stderr  # its claim: the first object a run writes
    assert "not-a-real-secret-value" not in result.stdout + result.stderr


def test_missing_s3_prefix_is_an_error_naming_it(tmp_path, s3_server, s3_bucket):
    storage = {"endpoint": s3_server.endpoint}
    document = manifest(f"s3://{s3_bucket}/nothing-here/", f"s3://{s3_bucket}/out", storage=storage, **SPEC)
    job = write_manifest(tmp_path / "job.yaml", document)
    result = run(job, s3_server.env())
    assert result.returncode == 2
    assert f"input s3://{s3_bucket}/nothing-here/ does not exist" in result.stderr


def test_one_s3_client_serves_a_whole_run(tmp_path, s3_server, s3_bucket, monkeypatch):
    """Every storage call of a run (listing, probing, reading sources, writing clips and records)
    goes through one client per process, not one per call."""
    import pyarrow.fs as pafs

    from clipforge import storage as storage_module
    from clipforge.cli import main

    local_in = tmp_path / "in"
    write_samples(local_in, small_samples())
    client = s3_server.client()
    for path in local_in.rglob("*.mp4"):
        client.upload_file(str(path), s3_bucket, f"raw/{path.relative_to(local_in)}")
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    made = []
    real = pafs.S3FileSystem

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003
        made.append(kwargs.get("endpoint_override"))
        return real(*args, **kwargs)

    storage_module._s3_client.cache_clear()
    monkeypatch.setattr(storage_module.pafs, "S3FileSystem", counting)
    storage = {"endpoint": s3_server.endpoint, "region": s3_server.region}
    document = manifest(f"s3://{s3_bucket}/raw/", f"s3://{s3_bucket}/curated", storage=storage,
                        **{**SPEC, "execution": {"executor": "local", "clipsPerChunk": 1}})
    assert main(["run", str(write_manifest(tmp_path / "s3.yaml", document)), "--no-progress"]) == 0
    assert len(keys(client, s3_bucket, "curated/clips/")) == 3
    assert len(made) == 1
    storage_module._s3_client.cache_clear()
