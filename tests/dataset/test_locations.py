"""Locations resolve wherever the output is: every location in metas, the index, the report and
export shards is relative to the output root, so a copied or moved output (or one read from
elsewhere) finds its files; outputs whose records name the run's own paths keep working."""

from __future__ import annotations

import json
import pickle
import shutil
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from clipforge import clip_index
from clipforge.cli import main
from clipforge.clip_index import CLIP_SCHEMA
from clipforge.samples import write_samples
from clipforge.storage import Storage
from support.jobs import FIVE_SECOND_CLIPS, decode_clip, load_json, manifest, small_samples, write_manifest


def row_locations(row: dict) -> list[str]:
    """Every location an index row gives."""
    found = [row["clip_location"], row["preview_location"], (row["embedding"] or {}).get("location")]
    found += [w["preview_location"] for w in row["windows"] or []]
    return [location for location in found if location]


def assert_locations_resolve_under(out: Path) -> int:
    """Every location of the index, resolved under `out` by the documented rule, opens as what it
    is: the clip decodes to its frames, the preview is a WebP, the embedding its (1, dim) array.
    Returns how many were opened."""
    opened = 0
    for row in pq.read_table(out / "index" / "clips").to_pylist():
        for location in row_locations(row):
            assert not Path(location).is_absolute() and not location.startswith(("./", "../")), location
            assert (out / location).is_file(), location
            opened += 1
        if row["clip_location"]:
            frames, _, _, _ = decode_clip(out / row["clip_location"])
            assert frames == row["num_frames"] and (out / row["clip_location"]).stat().st_size == row["num_bytes"]
        if row["preview_location"]:
            head = (out / row["preview_location"]).read_bytes()[:12]
            assert head[:4] == b"RIFF" and head[8:] == b"WEBP"
        if row["embedding"]:
            array = pickle.loads((out / row["embedding"]["location"]).read_bytes())
            assert array.shape == (1, row["embedding"]["dim"])
    return opened


def shard_records(dest: Path) -> dict[str, dict]:
    records = {}
    for shard in sorted(dest.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    records[member.name[: -len(".json")]] = json.loads(tar.extractfile(member).read())
    return records


def test_a_moved_copy_resolves_every_location_and_names_no_path_of_the_original(curated, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(curated, copy)
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    copy.rename(moved)
    assert main(["report", str(moved)]) == 0
    assert main(["export", str(moved), str(tmp_path / "shards")]) == 0

    # Clips, previews and embeddings of the 4 clips, all opened from the moved copy.
    assert assert_locations_resolve_under(moved) == 4 + 4 + 3
    original = str(curated).encode()
    written = [*(moved / "metas").rglob("*.json"), *(moved / "index").rglob("*.parquet"),
               *(moved / "report").rglob("*.js"), *(tmp_path / "shards").glob("*.tar")]
    assert [p for p in written if original in p.read_bytes()] == []

    # The shards' records give the same relative locations, which resolve under the output.
    records = shard_records(tmp_path / "shards")
    assert len(records) == 3
    for clip_id, record in records.items():
        assert record["clip_location"] == f"clips/{clip_id}.mp4" and (moved / record["clip_location"]).is_file()
        assert (moved / record["embedding"]["location"]).is_file()

    # The report's links, relative to the page, open the moved copy's files.
    rows = [json.loads(p.read_text().split(",", 2)[2].rsplit(")", 1)[0])
            for p in (moved / "report" / "data").glob("passed-*.js")]
    links = [link for part in rows for row in part for link in (row["clip"], row["preview"])]
    assert len(links) == 6 and all((moved / "report" / link).resolve().is_file() for link in links)


def as_older_record(meta: dict, written_for: Path, root: str) -> dict:
    """A metas/v0 record written for output `written_for` as ClipForge wrote it before locations
    were relative: under output.uri as the run was given it (`root`)."""

    def older(location: str) -> str:
        relative = Path(location).relative_to(written_for) if Path(location).is_absolute() else location
        return f"{root}/{relative}"

    old = json.loads(json.dumps(meta))
    for key in ("clip_location", "preview_location"):
        if old[key]:
            old[key] = older(old[key])
    for window in old["windows"]:
        if window.get("preview_location"):
            window["preview_location"] = older(window["preview_location"])
    if old["embedding"]:
        old["embedding"]["location"] = older(old["embedding"]["location"])
    return old


def rewrite_as_older(out: Path, written_for: Path, root: str) -> None:
    for path in (out / "metas" / "v0").glob("*.json"):
        older = as_older_record(load_json(path), written_for, root)
        path.write_text(json.dumps(older, indent=2, sort_keys=True) + "\n")


def write_older_index(out: Path) -> None:
    """index/clips as an older ClipForge wrote it: the records as they are, dicts as parquet maps."""
    schema = CLIP_SCHEMA
    for name in ("scores", "errors"):
        value = schema.field(name).type.value_type.field("value").type
        schema = schema.set(schema.get_field_index(name), pa.field(name, pa.map_(pa.string(), value)))
    text_match = pa.struct([("best", pa.string()), ("scores", pa.map_(pa.string(), pa.float64()))])
    schema = schema.set(schema.get_field_index("text_match"), pa.field("text_match", text_match))
    rows = []
    for path in sorted((out / "metas" / "v0").glob("*.json")):
        meta = load_json(path)
        rows.append({**meta, "status": clip_index.clip_status(meta),
                     "duration_s": meta["duration_span"][1] - meta["duration_span"][0]})
    for part in (out / "index" / "clips").glob("*.parquet"):
        part.unlink()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), out / "index" / "clips" / "part-00000.parquet")


def test_an_older_output_with_run_relative_locations_is_exported_and_indexed_by_the_layout(
        curated, curated_copy, tmp_path):
    # As the quick start's job (output.uri ./out) wrote them, read now from another folder.
    rewrite_as_older(curated_copy, curated, "./out")
    write_older_index(curated_copy)
    metas_before = {p: p.read_bytes() for p in (curated_copy / "metas" / "v0").glob("*.json")}

    # Export first: the older index is rebuilt before it is read.
    assert main(["export", str(curated_copy), str(tmp_path / "shards")]) == 0
    assert clip_index.is_current(Storage(), str(curated_copy))
    records = shard_records(tmp_path / "shards")
    assert len(records) == 3
    for clip_id, record in records.items():
        assert record["clip_location"] == f"clips/{clip_id}.mp4"
        assert record["preview_location"] == f"previews/{clip_id}.webp"
        assert record["embedding"]["location"] == f"efficientnet-lite0_embd/{clip_id}.pickle"

    assert main(["report", str(curated_copy)]) == 0
    assert assert_locations_resolve_under(curated_copy) == 11
    rows = {r["span_uuid"]: r for r in pq.read_table(curated_copy / "index" / "clips").to_pylist()}
    filtered = [r for r in rows.values() if r["status"] == "filtered"]
    assert [r["clip_location"] for r in filtered] == [f"filtered_clips/{filtered[0]['span_uuid']}.mp4"]
    # The records themselves are the run's: left as written.
    assert {p: p.read_bytes() for p in metas_before} == metas_before


def test_a_rerun_over_a_copy_of_an_older_output_leaves_the_original_alone(tmp_path):
    """A copy whose records still name the original's files, rerun under other settings: the
    chunks are redone in the copy and the original keeps every file."""
    samples = tmp_path / "samples"
    write_samples(samples, small_samples())
    original = tmp_path / "original"

    def run(out: Path, threshold: float) -> None:
        document = manifest(str(samples), str(out), splitting=FIVE_SECOND_CLIPS, transcoding={"preset": "ultrafast"},
                            embeddings={"enabled": False}, motionFilter={"globalMeanThreshold": threshold},
                            execution={"executor": "local", "clipsPerChunk": 2})
        assert main(["run", str(write_manifest(tmp_path / f"{out.name}.yaml", document)), "--no-progress"]) == 0

    run(original, 0.00098)
    rewrite_as_older(original, original, str(original))
    before = {p: p.read_bytes() for p in original.rglob("*") if p.is_file()}
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)

    run(copy, 0.0005)  # other settings: every chunk is redone, its earlier outputs removed first
    assert {p: p.read_bytes() for p in original.rglob("*") if p.is_file()} == before
    assert load_json(copy / "summary.json")["videos"]["skipped"] == 0
    assert assert_locations_resolve_under(copy) == 8  # 4 clips and their previews
    assert all(load_json(p)["clip_location"].startswith(("clips/", "filtered_clips/"))
               for p in (copy / "metas" / "v0").glob("*.json"))

