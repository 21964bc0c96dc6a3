"""Whole jobs through the CLI with the in-process executor: layout, ids, reruns, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from clipforge.cli import main
from clipforge.tasks import clip_uuid
from support.jobs import FIVE_SECOND_CLIPS, decode_clip, forget_resume_state, load_json, manifest, tree, write_manifest


def expected_spans(samples_dir: Path) -> dict[str, tuple[str, int, int]]:
    """uuid -> (relative path, start, end) for 5 s fixed-stride clips of small_samples()."""
    spans = {
        "moving_then_static.mp4": [(0, 120), (120, 240)],  # 24 fps, 10 s
        "sub/three_scenes.mp4": [(0, 125), (125, 250)],  # 25 fps, 11 s: the 1 s tail is dropped
    }
    return {
        clip_uuid(str(samples_dir / rel), start, end): (rel, start, end)
        for rel, pairs in spans.items()
        for start, end in pairs
    }


def run_job(tmp_path: Path, input_uri: str, output: Path, *extra: str, **spec) -> int:
    spec.setdefault("splitting", FIVE_SECOND_CLIPS)
    spec.setdefault("execution", {"executor": "local", "clipsPerChunk": 1})
    job = write_manifest(tmp_path / "job.yaml", manifest(input_uri, str(output), **spec))
    return main(["run", str(job), "--no-progress", *extra])


def test_local_job_writes_the_dataset_layout(tmp_path, samples_dir):
    out = tmp_path / "out"
    assert run_job(tmp_path, str(samples_dir), out) == 0

    expected = expected_spans(samples_dir)
    static_clip = clip_uuid(str(samples_dir / "moving_then_static.mp4"), 120, 240)
    assert {p.stem for p in (out / "clips").glob("*.mp4")} == set(expected) - {static_clip}
    assert {p.stem for p in (out / "filtered_clips").glob("*.mp4")} == {static_clip}
    assert {p.stem for p in (out / "previews").glob("*.webp")} == set(expected)
    assert {p.stem for p in (out / "metas" / "v0").glob("*.json")} == set(expected)

    for clip_id, (rel, start, end) in expected.items():
        meta = load_json(out / "metas" / "v0" / f"{clip_id}.json")
        assert meta["span_uuid"] == clip_id
        assert meta["source_video"] == str(samples_dir / rel)
        assert meta["span_frames"] == [start, end]
        assert meta["num_frames"] == end - start
        assert meta["valid"] is True and meta["errors"] == {}
        folder = "filtered_clips" if clip_id == static_clip else "clips"
        assert meta["clip_location"] == f"{folder}/{clip_id}.mp4"  # relative to the output root
        clip_path = out / meta["clip_location"]
        assert clip_path.exists() and clip_path.stat().st_size == meta["num_bytes"]
        frames, codec, width, height = decode_clip(clip_path)
        assert (frames, codec, width, height) == (end - start, "h264", 320, 180)
        assert meta["motion_score"]["global_mean"] is not None

    record = load_json(out / "processed_videos" / "sub" / "three_scenes.mp4.json")
    assert record["errors"] == {} and record["num_clips"] == 2 and record["num_chunks"] == 2
    assert record["metadata"]["num_frames"] == 275 and record["metadata"]["framerate"] == 25
    chunk = load_json(out / "processed_clip_chunks" / "moving_then_static.mp4_1.json")
    assert chunk["filtered_clips"] == [static_clip] and chunk["clips"] == []

    summary = load_json(out / "summary.json")
    assert summary["state"] == "succeeded"
    assert summary["videos"] == {"total": 2, "done": 2, "failed": 0, "skipped": 0, "unmatched": 1}
    assert summary["clips"] == {"passed": 3, "filtered": 1, "failed": 0}
    assert summary["videoSecondsProcessed"] == pytest.approx(21.0, abs=0.1)
    assert load_json(out / "progress.json")["state"] == "succeeded"


def test_rerun_skips_processed_videos_and_overwrite_reproduces_ids(tmp_path, samples_dir):
    out = tmp_path / "out"
    assert run_job(tmp_path, str(samples_dir), out) == 0
    first = tree(out)
    assert run_job(tmp_path, str(samples_dir), out) == 0
    assert load_json(out / "summary.json")["videos"]["skipped"] == 2
    assert tree(out) == first
    # --overwrite redoes every chunk: a clip lost since the first run is written again.
    next(out.glob("clips/*.mp4")).unlink()
    assert run_job(tmp_path, str(samples_dir), out, "--overwrite") == 0
    assert load_json(out / "summary.json")["videos"]["skipped"] == 0
    assert set(tree(out)) == set(first)


@pytest.mark.parametrize("mode", ["encode", "copy"])
def test_no_stage_decodes_a_clip_again(mode, tmp_path, samples_dir, monkeypatch):
    """Motion, previews and embeddings take their frames from transcode's decode of the source:
    in encode mode no clip's bytes are opened for reading at all; stream copy, which decodes
    nothing to cut, decodes each copied clip exactly once."""
    import io

    import av

    opened_clips = []
    real_open = av.open

    def recording_open(file, mode="r", *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if mode == "r" and isinstance(file, io.BytesIO):
            opened_clips.append(file)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(av, "open", recording_open)
    out = tmp_path / "out"
    assert run_job(tmp_path, str(samples_dir), out, transcoding={"mode": mode, "preset": "ultrafast"}) == 0
    metas = [load_json(p) for p in (out / "metas" / "v0").glob("*.json")]
    assert len(metas) == 4 and all(m["valid"] and m["motion_score"]["global_mean"] is not None for m in metas)
    assert len(list((out / "previews").glob("*.webp"))) == 4
    passed = {m["span_uuid"] for m in metas if m["filtered_by"] is None}
    assert {p.stem for p in (out / "efficientnet-lite0_embd").glob("*.pickle")} == passed
    assert len(opened_clips) == (0 if mode == "encode" else 4)


def test_vp9_clips_pass_and_fail_the_motion_filter_like_h264(tmp_path, samples_dir):
    """VP9's decoder exports no motion vectors: scored from them, every VP9 clip was unscorable and
    filtered. Scored from the source's frames, the same clips pass as with libx264."""
    out = tmp_path / "out"
    vp9 = {"encoder": "libvpx-vp9", "crf": 40, "preset": "8"}
    assert run_job(tmp_path, str(samples_dir), out, transcoding=vp9) == 0
    assert load_json(out / "summary.json")["clips"] == {"passed": 3, "filtered": 1, "failed": 0}
    static_clip = clip_uuid(str(samples_dir / "moving_then_static.mp4"), 120, 240)
    assert {p.stem for p in (out / "filtered_clips").glob("*.mp4")} == {static_clip}
    for meta in (out / "metas" / "v0").glob("*.json"):
        meta = load_json(meta)
        assert meta["video_codec"] == "vp9" and meta["errors"] == {} and meta["valid"]


def test_rerun_under_other_settings_redoes_what_changed(tmp_path, samples_dir):
    """Chunk and video records carry the settings that decided their clips: a rerun with other
    splitting or another chunk size redoes the videos and leaves none of the old clips behind."""
    out = tmp_path / "out"
    assert run_job(tmp_path, str(samples_dir), out) == 0
    record = load_json(out / "processed_clip_chunks" / "moving_then_static.mp4_0.json")
    assert record["settings"]["splitting"]["fixedStride"]["clipLengthS"] == 5
    assert record["settings"]["clipsPerChunk"] == 1
    four_seconds = {"algorithm": "fixed-stride", "fixedStride": {"clipLengthS": 4, "strideS": 4, "minClipLengthS": 2}}
    assert run_job(tmp_path, str(samples_dir), out, splitting=four_seconds,
                   execution={"executor": "local", "clipsPerChunk": 2}) == 0
    assert load_json(out / "summary.json")["videos"]["skipped"] == 0
    # 10 s at 24 fps: [0, 96), [96, 192), [192, 240); 11 s at 25 fps: [0, 100), [100, 200), [200, 275).
    expected = {clip_uuid(str(samples_dir / rel), s, e) for rel, spans in (
        ("moving_then_static.mp4", [(0, 96), (96, 192), (192, 240)]),
        ("sub/three_scenes.mp4", [(0, 100), (100, 200), (200, 275)])) for s, e in spans}
    metas = {p.stem for p in (out / "metas" / "v0").glob("*.json")}
    written = {p.stem for d in ("clips", "filtered_clips") for p in (out / d).glob("*.mp4")}
    assert metas == written == {p.stem for p in (out / "previews").glob("*.webp")} == expected
    assert {p.stem for p in (out / "efficientnet-lite0_embd").glob("*.pickle")} <= expected
    # Two chunks of two clips each now, where there were two of one: no third record is left.
    assert sorted(p.name for p in (out / "processed_clip_chunks").rglob("*.json")) == [
        "moving_then_static.mp4_0.json", "moving_then_static.mp4_1.json",
        "three_scenes.mp4_0.json", "three_scenes.mp4_1.json"]
    # The same settings again: nothing to redo.
    assert run_job(tmp_path, str(samples_dir), out, splitting=four_seconds,
                   execution={"executor": "local", "clipsPerChunk": 2}) == 0
    assert load_json(out / "summary.json")["videos"]["skipped"] == 2


def test_bad_inputs_are_reported_and_the_rest_completes(tmp_path, samples_dir, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    good = samples_dir / "moving_then_static.mp4"
    (inputs / "good.mp4").write_bytes(good.read_bytes())
    (inputs / "empty.mp4").write_bytes(b"")
    (inputs / "notes.mp4").write_text("these are not video frames\n" * 50)
    data = good.read_bytes()
    (inputs / "corrupt.mp4").write_bytes(data[:1024] + bytes(len(data) - 1024))

    out = tmp_path / "out"
    assert run_job(tmp_path, str(inputs), out) == 1

    summary = load_json(out / "summary.json")
    assert summary["state"] == "failed"
    assert summary["videos"]["failed"] == 3 and summary["videos"]["done"] == 1
    failures = {Path(f["video"]).name: f["errors"] for f in summary["failures"]}
    assert set(failures) == {"empty.mp4", "notes.mp4", "corrupt.mp4"}
    assert "empty file" in failures["empty.mp4"]["probe"]
    assert "not a readable video" in failures["notes.mp4"]["probe"]
    printed = capsys.readouterr().out
    for name in failures:
        assert f"FAILED {inputs / name}: probe:" in printed
    # The good video is complete: both clips, their metadata, its record without errors.
    assert len(list((out / "metas" / "v0").glob("*.json"))) == 2
    assert load_json(out / "processed_videos" / "good.mp4.json")["errors"] == {}
    assert load_json(out / "processed_videos" / "empty.mp4.json")["errors"]["probe"]


def test_failed_videos_are_retried_on_rerun(tmp_path, samples_dir):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "late.mp4").write_bytes(b"")
    out = tmp_path / "out"
    assert run_job(tmp_path, str(inputs), out) == 1
    # The upload finishes later: a rerun picks the video up instead of skipping its failure.
    (inputs / "late.mp4").write_bytes((samples_dir / "moving_then_static.mp4").read_bytes())
    assert run_job(tmp_path, str(inputs), out) == 0
    assert load_json(out / "summary.json")["videos"] == {"total": 1, "done": 1, "failed": 0, "skipped": 0, "unmatched": 0}


def test_missing_input_prefix_is_an_error_naming_it(tmp_path, capsys):
    missing = tmp_path / "no-such-dir"
    assert run_job(tmp_path, str(missing), tmp_path / "out") == 2
    assert f"input {missing} does not exist" in capsys.readouterr().err


def test_invalid_manifest_lists_every_problem_before_any_work(tmp_path, capsys):
    document = manifest("", str(tmp_path / "out"))
    document["spec"]["splitting"] = {"algorithm": "magic"}
    document["spec"]["transcoding"] = {"crf": 99}
    job = write_manifest(tmp_path / "job.yaml", document)
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    for path in ("spec.input.uri", "spec.splitting.algorithm", "spec.transcoding.crf"):
        assert path in err
    assert not (tmp_path / "out").exists()


def test_validate_command(tmp_path, capsys):
    job = write_manifest(tmp_path / "job.yaml", manifest("in", "out"))
    assert main(["validate", str(job)]) == 0
    assert "valid VideoCurationJob test-job" in capsys.readouterr().out


@pytest.mark.parametrize("algorithm", ["transnetv2", "scenedetect"])
def test_scene_splitting_cuts_clips_inside_scenes(tmp_path, samples_dir, algorithm):
    """Clips never straddle a known cut, and each scene yields its cropped clip."""
    out = tmp_path / "out"
    splitting = {"algorithm": algorithm, algorithm: {"minLengthS": 1, "maxLengthS": 10, "cropS": 0.5}}
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "three_scenes.mp4").write_bytes((samples_dir / "sub" / "three_scenes.mp4").read_bytes())
    assert run_job(tmp_path, str(inputs), out, splitting=splitting) == 0

    spans = sorted(load_json(p)["span_frames"] for p in (out / "metas" / "v0").glob("*.json"))
    # three_scenes: 25 fps, scenes [0,100) [100,200) [200,275); 0.5 s (12 frames) cropped each side.
    expected = [(0, 100), (100, 200), (200, 275)]
    assert len(spans) == 3
    for (start, end), (scene_start, scene_end) in zip(spans, expected):
        assert abs(start - (scene_start + 12)) <= 2 and abs(end - (scene_end - 12)) <= 2
    record = load_json(out / "processed_videos" / "three_scenes.mp4.json")
    assert record["split_algorithm"] == algorithm and record["num_clips"] == 3


def test_local_job_writes_clip_embeddings_and_per_video_parquet(tmp_path, samples_dir):
    import pickle

    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq

    out = tmp_path / "out"
    assert run_job(tmp_path, str(samples_dir), out) == 0  # embeddings are on by default
    expected = expected_spans(samples_dir)
    static_clip = clip_uuid(str(samples_dir / "moving_then_static.mp4"), 120, 240)
    embedded = set(expected) - {static_clip}  # a clip the motion filter moved aside is not embedded
    pickles = {p.stem: p for p in (out / "efficientnet-lite0_embd").glob("*.pickle")}
    assert set(pickles) == embedded
    for clip_id, path in pickles.items():
        with path.open("rb") as f:
            embedding = pickle.load(f)
        assert isinstance(embedding, np.ndarray) and embedding.dtype == np.float16 and embedding.shape == (1, 1280)
        meta = load_json(out / "metas" / "v0" / f"{clip_id}.json")
        location = str(path.relative_to(out))  # relative to the output root
        assert meta["embedding"] == {"algorithm": "efficientnet-lite0", "dim": 1280, "location": location}

    parquet_root = out / "efficientnet-lite0_embd_parquet"
    for rel in ("moving_then_static.mp4", "sub/three_scenes.mp4"):
        path = parquet_root / f"{rel}.parquet"
        table = pq.read_table(path)
        assert table.column_names == ["id", "embedding", "source_video", "span_start", "span_end"]
        frame = pd.read_parquet(path)
        ids = {i for i, (r, _s, _e) in expected.items() if r == rel} & embedded
        assert set(frame["id"]) == ids
        for row in frame.itertuples():
            assert row.source_video == str(samples_dir / rel)
            _rel, start, end = expected[row.id]
            fps = 24 if rel.startswith("moving") else 25
            assert (row.span_start, row.span_end) == pytest.approx((start / fps, end / fps))
            with pickles[row.id].open("rb") as f:
                assert np.allclose(np.asarray(row.embedding), pickle.load(f)[0].astype(np.float32))

    # A rerun that finds a video's chunks done rebuilds its parquet from the written pickles.
    before = pd.read_parquet(parquet_root / "sub/three_scenes.mp4.parquet")
    (parquet_root / "sub/three_scenes.mp4.parquet").unlink()
    (out / "processed_videos" / "sub" / "three_scenes.mp4.json").unlink()
    forget_resume_state(out)
    assert run_job(tmp_path, str(samples_dir), out) == 0
    after = pd.read_parquet(parquet_root / "sub/three_scenes.mp4.parquet")
    pd.testing.assert_frame_equal(before, after)


def test_stream_copied_vp8_clips_are_matroska_named_mkv_everywhere(tmp_path):
    """MP4 cannot carry VP8: stream copy writes Matroska, and every place that names the clip
    says .mkv (its file, metas, the index, the report's links, the export's members)."""
    import tarfile

    import pyarrow.parquet as pq
    from clipforge.samples import SampleVideo, Segment, write_video

    source = write_video(SampleVideo("vp8", 160, 96, 24, (Segment(10, True, 7),)), tmp_path / "in" / "vp8.webm",
                         codec="libvpx", gop=24)
    out = tmp_path / "out"
    assert run_job(tmp_path, str(source.parent), out, transcoding={"mode": "copy"},
                   motionFilter={"mode": "disable"}) == 0
    clips = sorted((out / "clips").iterdir())
    assert len(clips) == 2 and all(p.suffix == ".mkv" for p in clips)
    for clip in clips:
        assert decode_clip(clip.read_bytes())[1] == "vp8"
        assert load_json(out / "metas" / "v0" / f"{clip.stem}.json")["clip_location"] == f"clips/{clip.name}"
    index = pq.read_table(out / "index" / "clips").to_pylist()
    assert sorted(row["clip_location"] for row in index) == [f"clips/{p.name}" for p in clips]
    report_rows = "".join(p.read_text() for p in (out / "report").rglob("*.js*"))
    assert all(f"../clips/{p.name}" in report_rows for p in clips) and ".mp4" not in report_rows
    assert main(["export", str(out), str(tmp_path / "shards"), "--format", "webdataset"]) == 0
    with tarfile.open(tmp_path / "shards" / "shard-000000.tar") as tar:
        assert sorted(m.name for m in tar.getmembers() if m.name.endswith((".mp4", ".mkv"))) == [p.name for p in clips]


def test_progress_tells_the_phase_and_counts_a_videos_clips_as_its_chunks_end(tmp_path, samples_dir):
    # The bar sat at 0 while Ray started, and a long video's clips showed only when all of it ended.
    from clipforge import runner
    from clipforge.spec import load_job

    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "long.mp4").write_bytes((samples_dir / "moving_then_static.mp4").read_bytes())  # two 5 s clips
    job = load_job(write_manifest(tmp_path / "job.yaml", manifest(
        str(inputs), str(tmp_path / "out"), splitting=FIVE_SECOND_CLIPS, motionFilter={"mode": "disable"},
        execution={"executor": "local", "clipsPerChunk": 1})))
    seen = []
    runner.run_job(job, on_progress=lambda s: seen.append((s.phase, s.done, s.clips_passed, s.clips_passed_unfinished)))
    assert [phase for phase, *_ in seen][:2] == [runner.LISTING, runner.CURATING]
    assert (runner.CURATING, 0, 0, 1) in seen  # the first chunk's clip, its video not done
    assert seen[-1] == (runner.CURATING, 1, 2, 0)
