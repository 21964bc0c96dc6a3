"""Bad data is bounded: worker deaths and hangs are retried a few times, then recorded; partial
failure is not job failure (exit statuses 0, 3 and 1, and summary.json's state and reason)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.jobs import (
    FIVE_SECOND_CLIPS, clipforge, decode_clip, load_json, manifest, run_in_process, sample_copies, worker_hooks, write_manifest,
)

def run_local(tmp_path: Path, inputs: Path, out: Path, **failures) -> int:
    return run_in_process(tmp_path, inputs, out, splitting=FIVE_SECOND_CLIPS, embeddings={"enabled": False},
                          execution={"executor": "local", "failures": failures})


@pytest.fixture
def one_broken_of_three(tmp_path, samples_dir) -> Path:
    inputs = sample_copies(samples_dir, tmp_path / "inputs", "a.mp4", "b.mp4")
    (inputs / "broken.mp4").write_bytes(b"\x00" * 4096)
    return inputs


def test_failed_videos_within_the_limits_complete_the_run_with_failures(tmp_path, one_broken_of_three, capsys):
    out = tmp_path / "out"
    assert run_local(tmp_path, one_broken_of_three, out) == 3
    summary = load_json(out / "summary.json")
    assert summary["state"] == "completed-with-failures" and "reason" not in summary
    assert summary["videos"] == {"total": 3, "done": 2, "failed": 1, "skipped": 0, "unmatched": 0}
    assert [Path(f["video"]).name for f in summary["failures"]] == ["broken.mp4"]
    assert load_json(out / "progress.json")["state"] == "completed-with-failures"
    printed = capsys.readouterr().out
    assert f"FAILED {one_broken_of_three / 'broken.mp4'}: probe:" in printed
    assert "completed with failures: 1 of 3 videos, 0 clips failed" in printed


@pytest.mark.parametrize("limits", [{"maxFailedVideos": 0}, {"maxFailedFraction": 0.2}])
def test_more_failed_videos_than_the_spec_allows_fail_the_job(tmp_path, one_broken_of_three, capsys, limits):
    out = tmp_path / "out"
    assert run_local(tmp_path, one_broken_of_three, out, **limits) == 1
    summary = load_json(out / "summary.json")
    assert summary["state"] == "failed" and summary["reason"] == "TooManyVideosFailed"
    limit = next(iter(limits))
    assert f"execution.failures.{limit}" in summary["message"]
    # The good videos are still curated and recorded: a failed job loses no finished work.
    assert summary["videos"]["done"] == 2
    assert f"job failed: {summary['message']}" in capsys.readouterr().out


@pytest.mark.ray
@pytest.mark.slow
def test_a_video_that_kills_its_worker_and_one_that_hangs_fail_alone(tmp_path, samples_dir):
    """Real Ray worker processes die (SIGKILL) on one chunk of one video and hang on another video.

    tests/pipeline/worker_hooks/sitecustomize.py does it, in Ray's worker processes only: the
    crash hits transcode of crash.mp4's second chunk every time, the hang probe of hang.mp4, in
    native code holding the GIL (no Python thread of the worker can stop it).
    """
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("good_1.mp4", "good_2.mp4", "crash.mp4", "hang.mp4"):
        shutil.copy(samples_dir / "moving_then_static.mp4", inputs / name)  # 2 clips, 1 per chunk
    out = tmp_path / "out"
    spec = {"splitting": FIVE_SECOND_CLIPS, "embeddings": {"enabled": False},
            "execution": {"executor": "ray", "clipsPerChunk": 1, "stages": {"probe": {"timeoutSeconds": 10}},
                          "failures": {"taskRetries": 1, "taskTimeoutSeconds": 15, "maxFailedFraction": 1}}}
    job = write_manifest(tmp_path / "job.yaml", manifest(str(inputs), str(out), **spec))
    hooks = worker_hooks("crash:crash.mp4:transcode:1,hang:hang.mp4:probe")
    result = clipforge("run", str(job), "--no-progress", env=hooks, timeout=600)
    assert result.returncode == 3, result.stdout[-3000:] + result.stderr[-3000:]

    summary = load_json(out / "summary.json")
    assert summary["state"] == "completed-with-failures"
    assert summary["videos"] == {"total": 4, "done": 2, "failed": 2, "skipped": 0, "unmatched": 0}
    failures = {Path(f["video"]).name: f["errors"] for f in summary["failures"]}
    assert set(failures) == {"crash.mp4", "hang.mp4"}
    assert failures["crash.mp4"] == {
        "transcode[chunk 1]": "gave up after 2 attempts: its worker process died (crash, out of memory or killed)"
    }
    assert set(failures["hang.mp4"]) == {"probe"}
    # Each attempt's reason carries the stacks its worker's threads had when the limit stopped it.
    hang = failures["hang.mp4"]["probe"]
    reason = "ran past the time limit of 10 s (execution.stages.probe.timeoutSeconds); its threads then:\n"
    assert hang.startswith(f"gave up after 2 attempts: {reason}") and hang.count(reason) == 2, hang
    assert "clipforge/stages/probe.py" in hang and "in hooked_open_read" in hang, hang
    # A dead worker is the environment's (a rerun tries again); a file that hangs the decoder is final.
    assert {Path(f["video"]).name: f["retryable"] for f in summary["failures"]} == {"crash.mp4": True,
                                                                                    "hang.mp4": False}
    # Everything else is complete: the good videos' clips and crash.mp4's first chunk.
    metas = {m["span_uuid"]: m for m in map(load_json, (out / "metas" / "v0").glob("*.json"))}
    assert sorted(Path(m["source_video"]).name for m in metas.values()) == ["crash.mp4", "good_1.mp4", "good_1.mp4",
                                                                             "good_2.mp4", "good_2.mp4"]
    for meta in metas.values():
        frames, codec, _, _ = decode_clip(out / meta["clip_location"])
        assert frames == meta["num_frames"] == 120 and codec == "h264"
    chunks = sorted(p.name for p in (out / "processed_clip_chunks").glob("*.json"))
    assert chunks == ["crash.mp4_0.json", "good_1.mp4_0.json", "good_1.mp4_1.json", "good_2.mp4_0.json",
                      "good_2.mp4_1.json"]
    assert load_json(out / "processed_videos" / "crash.mp4.json")["errors"] == failures["crash.mp4"]
