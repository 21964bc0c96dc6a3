"""A run rides out an S3 outage (the Ceph RADOS gateway killed mid-run and started again 20 s
later) and a rotation of its credentials.

Its own gateway (not the session's): the tests take it down and change its user's keys. The
run's workers and driver both write while it is down; every storage call retries transient
failures (clipforge.storage).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clipforge.samples import SampleVideo, Segment, write_samples
from support.jobs import FIVE_SECOND_CLIPS, decode_clip, manifest, small_samples, write_manifest
from clipforge.storage import Storage
from support.s3_server import CephS3Gateway

OUTAGE_S = 20
SPEC = {"splitting": FIVE_SECOND_CLIPS, "execution": {"clipsPerChunk": 1}}
# Three videos, 8 clips of one chunk each: enough work left when the first chunk is recorded.
VIDEOS = [*small_samples(), SampleVideo("long_moving", 320, 180, 24, (Segment(20, True, 16),))]


@pytest.fixture(scope="module")
def gateway():
    gateway = CephS3Gateway()
    with gateway:
        yield gateway


def start_run(job: Path, env: dict) -> subprocess.Popen:
    env = {k: v for k, v in {**os.environ, **env}.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen([sys.executable, "-m", "clipforge.cli", "run", str(job), "--no-progress"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def objects(client, bucket: str, prefix: str) -> dict[str, bytes]:
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"][len(prefix):]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return found


def test_rotated_credentials_are_picked_up_by_a_client_already_made(gateway, monkeypatch):
    # What a web identity (IRSA) or a rotated Secret does to a long-running worker: its clients
    # must ask the AWS SDK's default chain again, not keep the keys they were made with.
    server = gateway.server
    bucket = server.create_bucket("rotation")
    first = gateway.add_key()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", first[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", first[1])
    storage = Storage(endpoint=server.endpoint, region=server.region, retry_seconds=0)
    storage.write_bytes(f"s3://{bucket}/before", b"first key")
    second = gateway.add_key()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", second[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", second[1])
    gateway.remove_key(first[0])
    storage.write_bytes(f"s3://{bucket}/after", b"second key")
    assert server.client().get_object(Bucket=bucket, Key="after")["Body"].read() == b"second key"


@pytest.mark.slow
@pytest.mark.ray
def test_a_run_completes_through_a_gateway_outage_losing_nothing(tmp_path, gateway):
    server = gateway.server
    client = server.client()
    bucket = server.create_bucket("outage")
    local_in = tmp_path / "in"
    write_samples(local_in, VIDEOS)
    for path in local_in.rglob("*.mp4"):
        client.upload_file(str(path), bucket, f"raw/{path.relative_to(local_in)}")
    storage = {"endpoint": server.endpoint, "region": server.region}

    job = write_manifest(tmp_path / "job.yaml", manifest(f"s3://{bucket}/raw/", f"s3://{bucket}/out",
                                                          storage=storage, **SPEC))
    run = start_run(job, server.env())
    first_chunk = time.monotonic() + 240
    while not client.list_objects_v2(Bucket=bucket, Prefix="out/processed_clip_chunks/").get("KeyCount"):
        assert run.poll() is None, run.stderr.read()[-3000:]
        assert time.monotonic() < first_chunk, "no chunk recorded in 240 s"
        time.sleep(0.2)
    gateway.kill_gateway()
    assert run.poll() is None, "the run ended before the outage: give it more work"
    time.sleep(OUTAGE_S)
    gateway.start_gateway()
    out, err = run.communicate(timeout=400)
    assert run.returncode == 0, err[-3000:]
    # The outage reached the run: its storage calls retried (and said so) rather than failing.
    assert "retrying in" in err
    assert "clips: 7 passed, 1 filtered, 0 failed" in out, out

    written = objects(client, bucket, "out/")
    summary = json.loads(written["summary.json"])
    assert summary["state"] == "succeeded" and summary["failures"] == []
    assert summary["videos"] == {"total": 3, "done": 3, "failed": 0, "skipped": 0, "unmatched": 0}
    assert json.loads(written["progress.json"])["state"] == "succeeded"
    for key, body in written.items():
        if key.startswith("processed_videos/"):
            assert json.loads(body)["errors"] == {}, key
    # Every clip whole: its metadata, and its file decoding to all of its frames; no file without them.
    metas = {Path(k).stem: json.loads(v) for k, v in written.items() if k.startswith("metas/v0/")}
    files = {k: v for k, v in written.items() if k.endswith(".mp4")}
    assert len(metas) == len(files) == 8
    for meta in metas.values():
        body = files[meta["clip_location"]]
        assert meta["valid"] and len(body) == meta["num_bytes"]
        assert decode_clip(body)[0] == meta["num_frames"] == meta["span_frames"][1] - meta["span_frames"][0]
