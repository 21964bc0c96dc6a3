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
from clipforge import clip_index, layout
from clipforge.cli import main
from clipforge.samples import write_samples
from clipforge.clip_index import CLIP_SCHEMA, VIDEO_SCHEMA
from clipforge.clip_outputs import recorded_clip_ids
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


def index_files(out: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under out/index, relative: (mtime in ns, bytes)."""
    return {p.relative_to(out / "index").as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
            for p in (out / "index").rglob("*") if p.is_file()}


def recorded_files(out: Path) -> set[str]:
    """The index files the output's chunk and video records call for, relative to out/index."""
    chunks = [load_json(p) for p in (out / "processed_clip_chunks").rglob("*.json")]
    videos = [load_json(p) for p in (out / "processed_videos").rglob("*.json")]
    return ({layout.index_chunk("", c["relative_path"], c["chunk_index"]).removeprefix("index/") for c in chunks}
            | {layout.index_video("", v["relative_path"]).removeprefix("index/") for v in videos})


def recorded_clips(out: Path) -> set[str]:
    return {clip_id for p in (out / "processed_clip_chunks").rglob("*.json") for clip_id in recorded_clip_ids(load_json(p))}


def test_a_run_commits_one_file_per_chunk_record_and_video_record(curated):
    assert set(index_files(curated)) == recorded_files(curated)
    assert len([name for name in index_files(curated) if name.startswith("clips/")]) == 4  # clipsPerChunk 1


def test_a_rebuild_covers_what_is_there_now(curated_copy, caplog):
    out = curated_copy
    clips_dir = out / "index" / "clips"
    # Stale files: an older ClipForge's shard, and the file of a chunk no record names.
    some_file = next(clips_dir.iterdir()).read_bytes()
    (clips_dir / "part-00000.parquet").write_bytes(some_file)
    (out / layout.index_chunk("", "gone.mp4", 0)).write_bytes(some_file)
    assert not clip_index.is_current(Storage(), str(out))
    # What the output holds now: one clip's metas gone, one torn (not JSON), and the metas of a
    # clip no chunk record names (a chunk that failed part way): that one is not in the dataset.
    metas = sorted((out / "metas" / "v0").glob("*.json"))
    metas[0].unlink()
    metas[1].write_text("{not json")
    orphan = json.loads(metas[2].read_text()) | {"span_uuid": "orphan"}
    (out / "metas" / "v0" / "orphan.json").write_text(json.dumps(orphan))

    result = clip_index.write_index(Storage(), str(out))
    assert (result.clips, result.videos) == (2, 3)
    assert sorted(result.unreadable) == [str(metas[0]), str(metas[1])]
    assert f"{metas[1]} is missing or not JSON" in caplog.text
    assert set(index_files(out)) == recorded_files(out)  # the stale files are gone
    assert set(pd.read_parquet(clips_dir).span_uuid) == {p.stem for p in metas[2:]}
    assert clip_index.is_current(Storage(), str(out))


def test_report_reads_the_committed_index_and_rebuilds_it_only_when_asked(curated_copy, capsys):
    committed = index_files(curated_copy)
    assert main(["report", str(curated_copy)]) == 0
    assert index_files(curated_copy) == committed  # not rewritten
    assert "--rebuild-index rebuilds it" in capsys.readouterr().out
    assert main(["report", str(curated_copy), "--rebuild-index"]) == 0
    assert "index: rebuilt, 4 clips, 3 videos" in capsys.readouterr().out
    rebuilt = index_files(curated_copy)
    # Rewritten from the records, to the bytes the run's commits wrote.
    assert {name: data for name, (_, data) in rebuilt.items()} == {name: data for name, (_, data) in committed.items()}
    assert all(rebuilt[name][0] != committed[name][0] for name in committed)


def curate(samples: Path, out: Path, job: Path, *, limit: int = 0, splitting: dict = FIVE_SECOND_CLIPS) -> None:
    document = manifest(str(samples), str(out), input={"uri": str(samples), "limit": limit},
                        splitting=splitting, transcoding={"preset": "ultrafast"},
                        embeddings={"enabled": False}, previews={"enabled": False},
                        execution={"executor": "local", "clipsPerChunk": 1})
    assert main(["run", str(write_manifest(job, document)), "--no-progress"]) == 0


def no_rebuild(*_: object) -> None:
    raise AssertionError("the index was rebuilt from the records")


def test_an_added_video_adds_its_files_and_rewrites_none(tmp_path, monkeypatch):
    samples, out = tmp_path / "samples", tmp_path / "out"
    write_samples(samples, small_samples())
    curate(samples, out, tmp_path / "job.yaml", limit=1)
    assert set(pd.read_parquet(out / "index" / "videos").relative_path) == {"moving_then_static.mp4"}
    first = index_files(out)

    monkeypatch.setattr(clip_index, "write_index", no_rebuild)  # nothing at the end of a run re-reads the records
    curate(samples, out, tmp_path / "job.yaml")  # the first video is skipped as done
    assert load_json(out / "summary.json")["videos"]["skipped"] == 1
    now = index_files(out)
    assert {name: now[name] for name in first} == first  # same bytes, same mtimes
    assert set(now) - set(first) and set(now) == recorded_files(out)
    assert set(pd.read_parquet(out / "index" / "videos").relative_path) == {"moving_then_static.mp4",
                                                                           "sub/three_scenes.mp4"}
    assert set(pd.read_parquet(out / "index" / "clips").span_uuid) == set(metas_of(out)) == recorded_clips(out)
    assert len(metas_of(out)) == 4


def test_a_redone_chunk_replaces_its_rows(tmp_path, monkeypatch):
    samples, out = tmp_path / "samples", tmp_path / "out"
    write_samples(samples, small_samples())
    curate(samples, out, tmp_path / "job.yaml")
    before = index_files(out)
    old_clips = recorded_clips(out)
    assert len([name for name in before if name.startswith("clips/")]) == 4  # two chunks a video

    # Other settings redo both videos: 10 s clips, one chunk each. Their chunk 0 files are
    # replaced, their chunk 1 files deleted with the chunk records split removes.
    monkeypatch.setattr(clip_index, "write_index", no_rebuild)
    ten_seconds = {"algorithm": "fixed-stride", "fixedStride": {"clipLengthS": 10, "strideS": 10, "minClipLengthS": 2}}
    curate(samples, out, tmp_path / "job.yaml", splitting=ten_seconds)
    after = index_files(out)
    assert set(after) == recorded_files(out)
    chunk_files = {name for name in after if name.startswith("clips/")}
    assert len(chunk_files) == 2 and chunk_files < set(before)
    assert all(after[name][1] != before[name][1] for name in chunk_files)
    clips = pd.read_parquet(out / "index" / "clips")
    assert set(clips.span_uuid) == recorded_clips(out) and not set(clips.span_uuid) & old_clips
    assert len(clips) == 2 and set(clips.duration_s) == {10.0}


# A committer killed mid-commit: it replaces one chunk's file over and over with one of two
# versions (a chunk redone), each large enough that a commit takes a while.
COMMITTER = """
import json, sys
from clipforge import clip_index, layout
from clipforge.storage import Storage

root, record, versions = sys.argv[1], json.loads(sys.argv[2]), json.load(open(sys.argv[3]))
print("committing", flush=True)
n = 0
while True:
    clip_index.commit_chunk(Storage(), root, record["relative_path"], record["chunk_index"], versions[n % 2])
    n += 1
"""


def test_a_commit_killed_with_sigkill_leaves_a_consistent_index(curated_copy, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    import duckdb

    out = curated_copy
    record = load_json(next((out / "processed_clip_chunks").rglob("*.json")))
    meta = load_json(out / "metas" / "v0" / f"{record['clips'][0] if record['clips'] else record['filtered_clips'][0]}.json")
    # Large files (a long caption a clip), so that a commit spends its time writing.
    versions = [[meta | {"span_uuid": f"{tag}-{i:06d}", "windows": [{"caption": os.urandom(200).hex()}]}
                 for i in range(size)] for tag, size in (("a", 30_000), ("b", 20_000))]
    (tmp_path / "versions.json").write_text(json.dumps(versions))
    chunk_file = out / layout.index_chunk("", record["relative_path"], record["chunk_index"])
    clip_index.commit_chunk(Storage(), str(out), record["relative_path"], record["chunk_index"], versions[1])
    others = {name: data for name, data in index_files(out).items() if (out / "index" / name) != chunk_file}
    other_rows = sum(pd.read_parquet(out / "index" / name).shape[0] for name in others if name.startswith("clips/"))

    def check() -> None:
        """Every reader sees the other chunks' rows and one whole version of this chunk's."""
        ids = pd.read_parquet(out / "index" / "clips").span_uuid
        ours = ids[ids.str.match(r"[ab]-")].str[:2].value_counts().to_dict()
        assert ours in ({"a-": 30_000}, {"b-": 20_000}) and len(ids) - sum(ours.values()) == other_rows, ours
        clips = f"{out}/index/clips/*.parquet"
        total = duckdb.sql(f"SELECT count(*) FROM read_parquet('{clips}')").fetchone()[0]
        assert total - other_rows in (30_000, 20_000)
        assert pl.read_parquet(clips).height == total

    killed_mid_commit = 0
    for _ in range(20):
        child = subprocess.Popen([sys.executable, "-c", COMMITTER, str(out), json.dumps(record),
                                  str(tmp_path / "versions.json")], stdout=subprocess.PIPE, env=os.environ)
        assert child.stdout.readline() == b"committing\n"
        reading = time.monotonic() + 1
        while time.monotonic() < reading:  # readers while commits go on
            check()
        # Then the kill, as soon as a commit's temporary file is there (or a little after).
        while not any(entry.name.startswith(".") for entry in os.scandir(chunk_file.parent)):
            assert child.poll() is None
        child.send_signal(signal.SIGKILL)
        child.wait()
        leftovers = [p for p in chunk_file.parent.iterdir() if p.name.startswith(".")]
        killed_mid_commit += bool(leftovers)
        check()
        for leftover in leftovers:
            leftover.unlink()
        if killed_mid_commit >= 2:
            break
    assert killed_mid_commit >= 2  # killed while writing, its temporary file left behind, at least twice
    assert {name: data for name, data in index_files(out).items() if (out / "index" / name) != chunk_file} == others
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



@pytest.mark.s3
def test_commits_on_s3_replace_or_add_whole_objects_and_touch_no_other(curated, s3_server, s3_bucket, s3_env, upload):
    client = s3_server.client()
    for part in ("metas", "processed_clip_chunks", "processed_videos", "index"):
        upload(client, curated / part, s3_bucket, f"out/{part}")
    output = f"s3://{s3_bucket}/out"
    storage = Storage(endpoint=s3_server.endpoint, region=s3_server.region)
    assert clip_index.is_current(storage, output)

    def objects() -> dict[str, str]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket, Prefix="out/index/")
        return {item["Key"]: item["ETag"] for page in pages for item in page["Contents"]}

    before = objects()
    record = load_json(next((curated / "processed_clip_chunks").rglob("*.json")))
    meta = load_json(curated / "metas" / "v0" / f"{recorded_clip_ids(record)[0]}.json")
    redone = clip_index.commit_chunk(storage, output, record["relative_path"], record["chunk_index"],
                                     [meta | {"span_uuid": "redone"}])
    video = load_json(next((curated / "processed_videos").rglob("*.json"))) | {"relative_path": "added.mp4"}
    added = clip_index.commit_video(storage, output, video)
    after = objects()
    redone_key, added_key = (uri.removeprefix(f"s3://{s3_bucket}/") for uri in (redone, added))
    assert set(after) == set(before) | {added_key} and after[redone_key] != before[redone_key]
    assert {key: tag for key, tag in after.items() if key not in (redone_key, added_key)} == \
        {key: tag for key, tag in before.items() if key != redone_key}
    clips = clip_index.read_table(storage, output, layout.CLIP_INDEX, ["span_uuid"]).column("span_uuid").to_pylist()
    assert "redone" in clips and not set(clips) & set(recorded_clip_ids(record))
    assert len(clips) == 4 - len(recorded_clip_ids(record)) + 1


def test_status_outputs_name_what_the_run_wrote(curated):
    """The URIs the operator puts in status.outputs, for this real run's output."""
    from clipforge.spec import JobOutputs

    outputs = JobOutputs.under(str(curated))
    assert load_json(Path(outputs.summary))["output"] == str(curated)
    assert pd.read_parquet(outputs.index + "clips").shape[0] == 4
    assert pd.read_parquet(outputs.index + "videos").shape[0] == 3
    assert Path(outputs.report).read_text().startswith("<!doctype html>")
