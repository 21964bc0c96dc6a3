"""The clip index: rows agree with metas/v0 and processed_videos, and the tools people use read it
as it is (pandas, pyarrow.dataset, DuckDB, polars, Ray Data, Hugging Face datasets), from a folder
and from real S3."""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime
from pathlib import Path

import pandas as pd
import polars as pl
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest
from clipforge import clip_index
from clipforge.cli import main
from clipforge.samples import write_samples
from clipforge.clip_index import CLIP_SCHEMA, VIDEO_SCHEMA
from clipforge.storage import Storage
from support.jobs import FIVE_SECOND_CLIPS, load_json, manifest, small_samples, write_manifest

# The index's clip columns that are not fields of metas/v0 (clip_index.clip_row derives them).
DERIVED_CLIP_COLUMNS = ("status", "duration_s")


def as_meta(row: dict) -> dict:
    """An index row written back as its metas/v0 JSON: without the derived columns, dicts from their
    entries, and without the caption-window fields a window does not have (a struct has every field)."""
    meta = {k: v for k, v in row.items() if k not in DERIVED_CLIP_COLUMNS}
    meta["errors"] = clip_index.as_dict(meta["errors"])
    meta["scores"] = clip_index.as_dict(meta["scores"])
    if meta["text_match"] is not None:
        meta["text_match"] = {**meta["text_match"], "scores": clip_index.as_dict(meta["text_match"]["scores"])}
    meta["windows"] = [{k: v for k, v in w.items() if v is not None} for w in meta["windows"]]
    return meta


def as_record(row: dict) -> dict:
    record = {**row, "errors": clip_index.as_dict(row["errors"]), "settings": json.loads(row["settings"]),
              "models": json.loads(row["models"])}
    record["processed_at"] = row["processed_at"].isoformat().replace("+00:00", "Z")
    return record


def metas_of(out: Path) -> dict[str, dict]:
    return {p.stem: load_json(p) for p in (out / "metas" / "v0").glob("*.json")}


def records_of(out: Path) -> dict[str, dict]:
    return {str(p.relative_to(out / "processed_videos"))[: -len(".json")]: load_json(p)
            for p in (out / "processed_videos").rglob("*.json")}


def test_rows_agree_with_metas_and_video_records(curated):
    metas = metas_of(curated)
    clips = ds.dataset(curated / "index" / "clips").to_table()
    assert clips.schema == CLIP_SCHEMA
    rows = {row["span_uuid"]: row for row in clips.to_pylist()}
    assert set(rows) == set(metas) and len(rows) == clips.num_rows == 4
    for clip_id, meta in metas.items():
        row = rows[clip_id]
        assert as_meta(row) == meta
        assert row["duration_s"] == meta["duration_span"][1] - meta["duration_span"][0]
        assert row["status"] == ("passed" if meta["filtered_by"] is None else "filtered")
    # What this run's metas carry arrives typed: captions, embeddings, scores.
    passed = [r for r in rows.values() if r["status"] == "passed"]
    assert all(r["windows"] and r["windows"][0]["caption"] for r in passed)
    assert all(r["embedding"]["dim"] == 1280 for r in passed)
    assert all(isinstance(r["motion_score"]["global_mean"], float) for r in rows.values())

    records = records_of(curated)
    videos = ds.dataset(curated / "index" / "videos").to_table()
    assert videos.schema == VIDEO_SCHEMA
    assert {r["relative_path"]: as_record(r) for r in videos.to_pylist()} == records
    assert set(records) == {"moving_then_static.mp4", "sub/three_scenes.mp4", "broken.mp4"}


def test_schema_has_every_field_the_writer_writes(curated):
    """A field added to metas/v0 must be added to the index schema (it would be left out)."""
    columns = set(CLIP_SCHEMA.names) - set(DERIVED_CLIP_COLUMNS)
    window_fields = {f.name for f in CLIP_SCHEMA.field("windows").type.value_type}
    for meta in metas_of(curated).values():
        assert set(meta) == columns
        for window in meta["windows"]:
            assert set(window) <= window_fields
    for record in records_of(curated).values():
        assert set(record) == set(VIDEO_SCHEMA.names)


def test_pandas_duckdb_polars_read_the_local_index(curated):
    import duckdb

    metas = metas_of(curated)
    summary = load_json(curated / "summary.json")
    clips_dir, videos_dir = curated / "index" / "clips", curated / "index" / "videos"

    clips = pd.read_parquet(clips_dir)
    assert set(clips.span_uuid) == set(metas)
    assert clips.status.value_counts().to_dict() == {"passed": 3, "filtered": 1}
    assert str(clips.num_bytes.dtype) == "int64" and str(clips.duration_s.dtype) == "float64"
    assert dict(zip(clips.span_uuid, clips.num_bytes)) == {k: m["num_bytes"] for k, m in metas.items()}

    rows = duckdb.sql(
        f"SELECT span_uuid, status, motion_score.global_mean, filtered_by FROM read_parquet('{clips_dir}/*.parquet')"
    ).fetchall()
    assert {r[0]: (r[2], r[3]) for r in rows} == {
        k: (m["motion_score"]["global_mean"], m["filtered_by"]) for k, m in metas.items()
    }
    joined = duckdb.sql(
        f"SELECT v.relative_path, count(*) FROM read_parquet('{clips_dir}/*.parquet') c"
        f" JOIN read_parquet('{videos_dir}/*.parquet') v ON c.source_video = v.video GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert joined == [("moving_then_static.mp4", 2), ("sub/three_scenes.mp4", 2)]
    failed = duckdb.sql(
        f"SELECT relative_path, map_from_entries(errors) FROM read_parquet('{videos_dir}/*.parquet')"
        " WHERE len(errors) > 0"
    ).fetchall()
    assert [(path, set(errors)) for path, errors in failed] == [("broken.mp4", {"probe"})]

    frame = pl.read_parquet(clips_dir / "*.parquet")
    assert frame.height == len(metas)
    passed = frame.filter(pl.col("status") == "passed")
    assert passed.height == summary["clips"]["passed"]
    assert passed.select(pl.col("embedding").struct.field("dim")).to_series().to_list() == [1280] * 3
    assert set(pl.read_parquet(videos_dir / "*.parquet")["relative_path"]) == set(records_of(curated))


def hf_tables(data_files: dict[str, str], cache_dir: Path, **storage: object) -> tuple[list[dict], list[dict]]:
    """(clips, videos) rows as Hugging Face datasets loads them, with the features it inferred checked."""
    from datasets import List, Value, load_dataset

    # One dataset a table: a dataset's splits share one schema.
    loaded = {table: load_dataset("parquet", data_files=files, split="train", cache_dir=str(cache_dir), **storage)
              for table, files in data_files.items()}
    entries = List({"key": Value("string"), "value": Value("string")})
    assert loaded["clips"].features["errors"] == loaded["videos"].features["errors"] == entries
    assert loaded["clips"].features["scores"] == List({"key": Value("string"), "value": Value("float64")})
    assert loaded["videos"].features["processed_at"] == Value("timestamp[ms, tz=UTC]")
    return list(loaded["clips"]), list(loaded["videos"])


def test_hugging_face_datasets_loads_the_local_index(curated, tmp_path):
    clips, videos = hf_tables({table: str(curated / "index" / table / "*.parquet") for table in ("clips", "videos")},
                              tmp_path / "hf-cache")
    assert {row["span_uuid"]: as_meta(row) for row in clips} == metas_of(curated)
    assert {row["relative_path"]: as_record(row) for row in videos} == records_of(curated)


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=1, include_dashboard=False, logging_level=logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    if started:
        ray.shutdown()


@pytest.mark.ray
def test_ray_data_reads_the_local_index(curated, local_ray):
    dataset = local_ray.data.read_parquet(str(curated / "index" / "clips"))
    rows = dataset.take_all()
    assert {r["span_uuid"] for r in rows} == set(metas_of(curated))
    from ray.data.expressions import col

    assert dataset.filter(expr=col("status") == "passed").count() == 3


def test_shards_are_bounded_and_a_rebuild_covers_what_is_there_now(curated_copy, monkeypatch, caplog):
    out = curated_copy
    storage = Storage()
    monkeypatch.setattr(clip_index, "ROWS_PER_FILE", 3)
    result = clip_index.write_index(storage, str(out))
    assert (result.clips, result.videos) == (4, 3)
    assert sorted(p.name for p in (out / "index" / "clips").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert [pd.read_parquet(p).shape[0] for p in sorted((out / "index" / "clips").iterdir())] == [3, 1]
    assert pd.read_parquet(out / "index" / "clips").shape[0] == 4

    # What the output holds now: one clip's metas gone, one torn (not JSON), and the metas of a
    # clip no chunk record names (a chunk that failed part way): that one is not in the dataset.
    metas = sorted((out / "metas" / "v0").glob("*.json"))
    metas[0].unlink()
    metas[1].write_text("{not json")
    orphan = json.loads(metas[2].read_text()) | {"span_uuid": "orphan"}
    (out / "metas" / "v0" / "orphan.json").write_text(json.dumps(orphan))
    monkeypatch.setattr(clip_index, "ROWS_PER_FILE", 100)
    result = clip_index.write_index(storage, str(out))
    assert result.clips == 2 and sorted(result.unreadable) == [str(metas[0]), str(metas[1])]
    assert f"{metas[1]} is missing or not JSON" in caplog.text
    assert [p.name for p in (out / "index" / "clips").iterdir()] == ["part-00000.parquet"]  # part 1 removed
    assert set(pd.read_parquet(out / "index" / "clips").span_uuid) == {p.stem for p in metas[2:]}


def test_rebuild_of_unchanged_records_writes_the_same_bytes(curated_copy):
    index = curated_copy / "index"
    before = {p: p.read_bytes() for p in index.rglob("*.parquet")}
    assert main(["report", str(curated_copy)]) == 0
    assert {p: p.read_bytes() for p in index.rglob("*.parquet")} == before


def test_a_rerun_indexes_earlier_and_new_videos(tmp_path):
    samples = tmp_path / "samples"
    write_samples(samples, small_samples())
    out = tmp_path / "out"

    def run(limit: int) -> None:
        document = manifest(str(samples), str(out), input={"uri": str(samples), "limit": limit},
                            splitting=FIVE_SECOND_CLIPS, transcoding={"preset": "ultrafast"},
                            embeddings={"enabled": False}, previews={"enabled": False},
                            execution={"executor": "local", "clipsPerChunk": 2})
        assert main(["run", str(write_manifest(tmp_path / "job.yaml", document)), "--no-progress"]) == 0

    run(1)
    assert set(pd.read_parquet(out / "index" / "videos").relative_path) == {"moving_then_static.mp4"}
    run(0)  # the first video is skipped as done; the index still has its clips
    assert load_json(out / "summary.json")["videos"]["skipped"] == 1
    assert set(pd.read_parquet(out / "index" / "videos").relative_path) == {"moving_then_static.mp4",
                                                                           "sub/three_scenes.mp4"}
    assert set(pd.read_parquet(out / "index" / "clips").span_uuid) == set(metas_of(out))
    assert len(metas_of(out)) == 4


# ---------------------------------------------------------------------------------------- S3


@pytest.mark.ray
def test_every_reader_reads_the_index_from_s3(curated, s3_server, s3_bucket, s3_env, local_ray, upload, tmp_path,
                                             monkeypatch):
    import duckdb
    from duckdb_extension_httpfs import __file__ as httpfs_package

    client = s3_server.client()
    for part in ("metas", "processed_clip_chunks", "processed_videos"):
        upload(client, curated / part, s3_bucket, f"out/{part}")
    output = f"s3://{s3_bucket}/out"
    assert main(["report", output, "--endpoint", s3_server.endpoint]) == 0

    # Rows agree with the metas as they are in the bucket.
    metas = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket, Prefix="out/metas/v0/"):
        for item in page["Contents"]:
            metas[Path(item["Key"]).stem] = json.loads(client.get_object(Bucket=s3_bucket, Key=item["Key"])["Body"].read())
    host = s3_server.endpoint.removeprefix("http://")
    s3 = pafs.S3FileSystem(endpoint_override=host, scheme="http", access_key=s3_server.access_key,
                           secret_key=s3_server.secret_key, region=s3_server.region, force_virtual_addressing=False)
    table = ds.dataset(f"{s3_bucket}/out/index/clips", filesystem=s3).to_table()
    assert {r["span_uuid"]: as_meta(r) for r in table.to_pylist()} == metas

    clips_uri = f"{output}/index/clips"
    frame = pd.read_parquet(f"{s3_bucket}/out/index/clips", filesystem=s3)  # a pyarrow filesystem: no scheme
    assert set(frame.span_uuid) == set(metas) and (frame.status == "passed").sum() == 3

    con = duckdb.connect()
    con.sql(f"LOAD '{next(Path(httpfs_package).parent.rglob('httpfs.duckdb_extension'))}'")
    con.sql(f"CREATE SECRET (TYPE s3, KEY_ID '{s3_server.access_key}', SECRET '{s3_server.secret_key}',"
            f" ENDPOINT '{host}', URL_STYLE 'path', USE_SSL false, REGION '{s3_server.region}')")
    counts = con.sql(f"SELECT status, count(*) FROM read_parquet('{clips_uri}/*.parquet') GROUP BY 1 ORDER BY 1")
    assert counts.fetchall() == [("filtered", 1), ("passed", 3)]

    storage_options = {"aws_endpoint_url": s3_server.endpoint, "aws_access_key_id": s3_server.access_key,
                       "aws_secret_access_key": s3_server.secret_key, "aws_region": s3_server.region,
                       "aws_allow_http": "true"}
    polars_frame = pl.read_parquet(f"{clips_uri}/*.parquet", storage_options=storage_options)
    assert set(polars_frame["span_uuid"]) == set(metas)
    videos = pl.read_parquet(f"{output}/index/videos/*.parquet", storage_options=storage_options)
    assert set(videos["relative_path"]) == set(records_of(curated))

    dataset = local_ray.data.read_parquet(clips_uri, filesystem=s3)
    assert {r["span_uuid"] for r in dataset.take_all()} == set(metas)
    assert isinstance(videos["processed_at"][0], datetime)

    # Hugging Face datasets reads s3:// through s3fs, which takes the endpoint in client_kwargs. Importing
    # clipforge put this process in Hugging Face's offline mode (its models never come from the hub),
    # in which datasets refuses every remote path; a reader's own process is online.
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    s3fs_options = {"key": s3_server.access_key, "secret": s3_server.secret_key,
                    "client_kwargs": {"endpoint_url": s3_server.endpoint, "region_name": s3_server.region}}
    hf_clips, hf_videos = hf_tables({table: f"{output}/index/{table}/*.parquet" for table in ("clips", "videos")},
                                    tmp_path / "hf-cache", storage_options=s3fs_options)
    assert {row["span_uuid"]: as_meta(row) for row in hf_clips} == metas
    assert {row["relative_path"] for row in hf_videos} == set(records_of(curated))



def test_status_outputs_name_what_the_run_wrote(curated):
    """The URIs the operator puts in status.outputs, for this real run's output."""
    from clipforge.spec import JobOutputs

    outputs = JobOutputs.under(str(curated))
    assert load_json(Path(outputs.summary))["output"] == str(curated)
    assert pd.read_parquet(outputs.index + "clips").shape[0] == 4
    assert pd.read_parquet(outputs.index + "videos").shape[0] == 3
    assert Path(outputs.report).read_text().startswith("<!doctype html>")
