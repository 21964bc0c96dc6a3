"""`clipforge export --format webdataset`: the webdataset package reads the shards back and finds
every passed clip exactly once, with its clip, record, captions and embedding; the shuffle is the
seed's; an interrupted export resumes and a rerun writes nothing; shards go to S3 too."""

from __future__ import annotations

import io
import json
import pickle
import random
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from clipforge import clip_index
from clipforge.cli import main
from clipforge.export import MANIFEST, ExportError, export_webdataset
from clipforge.storage import Storage
from support.jobs import load_json


def passed_metas(out: Path) -> dict[str, dict]:
    metas = (load_json(p) for p in (out / "metas" / "v0").glob("*.json"))
    return {m["span_uuid"]: m for m in metas if m["filtered_by"] is None and m["clip_location"]}


def read_shards(urls: list[str]) -> list[dict]:
    """Every sample of the shards, in order, as webdataset yields them (no decoding)."""
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def shard_files(dest: Path) -> list[str]:
    return [str(p) for p in sorted(dest.glob("shard-*.tar"))]


def export(out: Path, dest: Path | str, *extra: str) -> int:
    return main(["export", str(out), str(dest), "--format", "webdataset", *extra])


def test_webdataset_reads_every_passed_clip_exactly_once(curated, tmp_path):
    dest = tmp_path / "shards"
    assert export(curated, dest, "--shard-size", "60k", "--seed", "7") == 0
    metas = passed_metas(curated)
    samples = read_shards(shard_files(dest))
    assert sorted(s["__key__"] for s in samples) == sorted(metas)  # each clip once, nothing else
    for sample in samples:
        meta = metas[sample["__key__"]]
        assert set(sample) - {"__key__", "__url__", "__local_path__"} == {"mp4", "json", "txt", "npy"}
        assert sample["mp4"] == (curated / meta["clip_location"]).read_bytes()
        assert json.loads(sample["json"]) == meta
        assert sample["txt"].decode() == clip_index.caption_text(meta["windows"])
        embedding = np.load(io.BytesIO(sample["npy"]))
        stored = pickle.loads((curated / meta["embedding"]["location"]).read_bytes())
        assert embedding.dtype == np.float16 and np.array_equal(embedding, stored)
    manifest = load_json(dest / MANIFEST)
    assert manifest["complete"] and manifest["clips"] == 3 and manifest["seed"] == 7
    assert [s["name"] for s in manifest["shards"]] == [Path(p).name for p in shard_files(dest)]
    assert len(manifest["shards"]) > 1  # 60 KiB shards: the clips do not fit one
    # The brace pattern webdataset users pass names exactly these shards.
    assert len(read_shards(str(dest / manifest["pattern"]))) == 3

    decoded = next(iter(wds.WebDataset(shard_files(dest), shardshuffle=False, empty_check=False).decode()))
    assert decoded["json"]["span_uuid"] == decoded["__key__"] and decoded["npy"].shape == (1, 1280)


def test_the_seed_decides_the_order_and_the_bytes(curated, tmp_path):
    def order(dest: Path) -> list[str]:
        return [s["__key__"] for s in read_shards(shard_files(dest))]

    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert export(curated, tmp_path / name, "--seed", seed, "--shard-size", "1G") == 0
    assert (tmp_path / "a" / "shard-000000.tar").read_bytes() == (tmp_path / "b" / "shard-000000.tar").read_bytes()
    for name, seed in (("a", 0), ("c", 1)):
        expected = sorted(passed_metas(curated))  # the documented order: ids sorted, then shuffled
        random.Random(seed).shuffle(expected)
        assert order(tmp_path / name) == expected
    assert order(tmp_path / "a") != order(tmp_path / "c")
    with tarfile.open(tmp_path / "a" / "shard-000000.tar") as tar:
        assert {m.mtime for m in tar.getmembers()} == {0} and {m.uid for m in tar.getmembers()} == {0}


def test_an_interrupted_export_resumes_and_a_rerun_writes_nothing(curated, tmp_path, monkeypatch):
    dest = tmp_path / "shards"
    storage = Storage()
    real_write = Storage.write_bytes
    shards_written = []

    def crash_after_two_shards(self, uri, data, content_type=None):  # noqa: ANN001
        if uri.endswith(".tar"):
            if len(shards_written) == 2:
                raise KeyboardInterrupt  # the process dies here
            shards_written.append(uri)
        return real_write(self, uri, data, content_type)

    monkeypatch.setattr(Storage, "write_bytes", crash_after_two_shards)
    with pytest.raises(KeyboardInterrupt):
        export_webdataset(storage, str(curated), str(dest), shard_size=1, seed=0)  # one clip a shard
    monkeypatch.undo()
    assert len(shard_files(dest)) == 2 and not load_json(dest / MANIFEST)["complete"]
    before = {p: p.stat().st_mtime_ns for p in dest.glob("shard-*.tar")}

    result = export_webdataset(storage, str(curated), str(dest), shard_size=1, seed=0)
    assert (result.clips, len(result.shards), result.written) == (3, 3, 1)
    assert {p: p.stat().st_mtime_ns for p in before} == before  # the finished shards were kept
    assert sorted(s["__key__"] for s in read_shards(shard_files(dest))) == sorted(passed_metas(curated))

    files = {p: p.read_bytes() for p in dest.iterdir()}
    assert export_webdataset(storage, str(curated), str(dest), shard_size=1, seed=0).written == 0
    assert {p: p.read_bytes() for p in dest.iterdir()} == files

    # Another plan over the same DEST: every shard rewritten, the ones it lacks removed.
    result = export_webdataset(storage, str(curated), str(dest), shard_size=1 << 30, seed=0)
    assert (len(result.shards), result.written) == (1, 1)
    assert [Path(p).name for p in shard_files(dest)] == ["shard-000000.tar"]
    assert len(read_shards(shard_files(dest))) == 3


def test_a_missing_clip_file_is_named(curated_copy, tmp_path, capsys):
    victim = sorted(passed_metas(curated_copy))[0]
    (curated_copy / "clips" / f"{victim}.mp4").unlink()
    assert export(curated_copy, tmp_path / "shards") == 2
    assert f"clip {victim}" in capsys.readouterr().err
    with pytest.raises(ExportError, match=victim):
        export_webdataset(Storage(), str(curated_copy), str(tmp_path / "again"), 1 << 30, 0)


def test_a_folder_that_is_no_output_is_refused_and_nothing_is_written(tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a.mp4").write_bytes(b"not an output")
    for folder in (videos, tmp_path / "missing"):
        assert export(folder, tmp_path / "shards") == 2
        assert f"error: export: {folder} holds no processed_clip_chunks/ or processed_videos/ records: not a" \
               " ClipForge output" in capsys.readouterr().err
    assert not (tmp_path / "shards").exists() and not (tmp_path / "missing").exists()
    assert [p.name for p in videos.rglob("*")] == ["a.mp4"]


def test_an_output_without_an_index_gets_one(curated_copy, tmp_path):
    for part in (curated_copy / "index").rglob("*.parquet"):
        part.unlink()
    assert export(curated_copy, tmp_path / "shards") == 0
    assert list((curated_copy / "index" / "clips").glob("chunk-*.parquet"))
    assert len(read_shards(shard_files(tmp_path / "shards"))) == 3


@pytest.mark.s3
def test_export_to_s3_read_back_by_webdataset(curated, s3_server, s3_bucket, s3_env):
    dest = f"s3://{s3_bucket}/shards"
    assert export(curated, dest, "--shard-size", "60k", "--endpoint", s3_server.endpoint) == 0
    client = s3_server.client()
    manifest = json.loads(client.get_object(Bucket=s3_bucket, Key=f"shards/{MANIFEST}")["Body"].read())
    # webdataset's way to read object storage: a pipe: URL whose command streams the object.
    stream = ("import boto3, shutil, sys; shutil.copyfileobj(boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1')"
              ".get_object(Bucket=sys.argv[2], Key=sys.argv[3])['Body'], sys.stdout.buffer)")
    urls = [f"pipe:{sys.executable} -c \"{stream}\" {s3_server.endpoint} {s3_bucket} shards/{s['name']}"
            for s in manifest["shards"]]
    samples = read_shards(urls)
    assert sorted(s["__key__"] for s in samples) == sorted(passed_metas(curated))
    assert all(s["mp4"] == (curated / passed_metas(curated)[s["__key__"]]["clip_location"]).read_bytes() for s in samples)
    head = client.head_object(Bucket=s3_bucket, Key="shards/shard-000000.tar")
    assert head["ContentType"] == "application/x-tar"
