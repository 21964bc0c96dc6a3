"""What is recorded for each class of failure (clipforge.failures), and what a rerun does with it.

The in-process executor runs the same retry code as the Ray executor's workers (run_attempts).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from clipforge.storage import Storage, StorageError
from support.jobs import FIVE_SECOND_CLIPS, forget_resume_state, load_json, run_in_process, sample_copies

EXIT_OK, EXIT_FAILED, EXIT_COMPLETED_WITH_FAILURES = 0, 1, 3


def run(tmp_path: Path, inputs: Path, out: Path, *extra: str, **spec) -> int:
    spec.setdefault("splitting", FIVE_SECOND_CLIPS)
    spec.setdefault("execution", {"executor": "local", "clipsPerChunk": 1, "failures": {"taskRetries": 1}})
    return run_in_process(tmp_path, inputs, out, *extra, **spec)


@pytest.fixture
def inputs(tmp_path, samples_dir) -> Path:
    """The moving-then-static sample (2 clips: one passes, one is filtered) as good.mp4."""
    return sample_copies(samples_dir, tmp_path / "inputs", "good.mp4")


def record(out: Path, name: str) -> dict:
    return load_json(out / "processed_videos" / f"{name}.json")


def test_a_corrupt_file_fails_for_good_until_it_changes_or_retry_failed(tmp_path, inputs, capsys):
    (inputs / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 500)
    out = tmp_path / "out"
    assert run(tmp_path, inputs, out) == EXIT_COMPLETED_WITH_FAILURES
    failed = record(out, "corrupt.mp4")
    assert failed["errors"] and failed["retryable"] is False
    assert failed["source"]["size"] == (inputs / "corrupt.mp4").stat().st_size
    written = (out / "processed_videos" / "corrupt.mp4.json").stat().st_mtime_ns

    # A plain rerun does not try it again, and still reports it (the dataset still lacks it).
    capsys.readouterr()
    assert run(tmp_path, inputs, out) == EXIT_COMPLETED_WITH_FAILURES
    assert (out / "processed_videos" / "corrupt.mp4.json").stat().st_mtime_ns == written
    summary = load_json(out / "summary.json")
    assert summary["videos"] == {"total": 2, "done": 1, "failed": 1, "skipped": 1, "unmatched": 0}
    assert [(f["video"], f["earlier"], f["retryable"]) for f in summary["failures"]] == [
        (str(inputs / "corrupt.mp4"), True, False)]
    assert "(recorded by an earlier run; --retry-failed tries it again)" in capsys.readouterr().out

    # --retry-failed tries it again (and it fails again, as content does).
    assert run(tmp_path, inputs, out, "--retry-failed") == EXIT_COMPLETED_WITH_FAILURES
    assert (out / "processed_videos" / "corrupt.mp4.json").stat().st_mtime_ns != written
    assert load_json(out / "summary.json")["failures"][0]["earlier"] is False

    # A record from before sources were recorded is taken as made from this version.
    recorded = record(out, "corrupt.mp4")
    legacy = {k: v for k, v in recorded.items() if k != "source"}
    (out / "processed_videos" / "corrupt.mp4.json").write_text(json.dumps(legacy))
    forget_resume_state(out)
    assert run(tmp_path, inputs, out) == EXIT_COMPLETED_WITH_FAILURES
    assert load_json(out / "summary.json")["failures"][0]["earlier"] is True
    (out / "processed_videos" / "corrupt.mp4.json").write_text(json.dumps(recorded))
    forget_resume_state(out)

    # A new version of the file (its size and mtime) is a new input: a plain rerun takes it.
    shutil.copy(inputs / "good.mp4", inputs / "corrupt.mp4")
    assert run(tmp_path, inputs, out) == EXIT_OK
    assert record(out, "corrupt.mp4")["errors"] == {}


def faulty_writes(monkeypatch, fails: callable) -> list[str]:  # noqa: ANN001
    """Storage.write_bytes raising StorageError (as after its own retries) where fails(uri, n) says so;
    returns the URIs it failed."""
    failed: list[str] = []
    real = Storage.write_bytes

    def write_bytes(self, uri, data, content_type=None):  # noqa: ANN001
        if uri.endswith(".mp4") and fails(uri, len(failed)):
            failed.append(uri)
            raise StorageError(f"cannot write {uri}: AWS Error NETWORK_CONNECTION: injected")
        return real(self, uri, data, content_type)

    monkeypatch.setattr(Storage, "write_bytes", write_bytes)
    return failed


def test_a_storage_fault_mid_chunk_is_retried_and_loses_nothing(tmp_path, inputs, monkeypatch, caplog):
    failed = faulty_writes(monkeypatch, lambda uri, n: n == 0 and "/filtered_clips/" in uri)  # the second clip
    out = tmp_path / "out"
    assert run(tmp_path, inputs, out, "--log-level", "info") == EXIT_OK  # attempts are logged at info
    assert len(failed) == 1
    assert any("write of good.mp4 chunk 1, attempt 1 of 2" in r.getMessage() for r in caplog.records)
    assert record(out, "good.mp4")["errors"] == {}
    assert load_json(out / "summary.json")["clips"] == {"passed": 1, "filtered": 1, "failed": 0}
    assert len(list((out / "clips").glob("*.mp4"))) == len(list((out / "filtered_clips").glob("*.mp4"))) == 1


def test_a_lasting_storage_fault_fails_the_video_retryable_and_a_rerun_redoes_it(tmp_path, inputs, monkeypatch):
    (inputs / "other.mp4").write_bytes((inputs / "good.mp4").read_bytes())
    failed = faulty_writes(monkeypatch, lambda uri, n: True)
    out = tmp_path / "out"
    # Both videos failed by their environment: too many, but a retry (the operator's too) may succeed.
    assert run(tmp_path, inputs, out) == EXIT_FAILED
    assert len(failed) == 8  # each video's two chunks, each tried twice (taskRetries 1)
    video = record(out, "good.mp4")
    assert video["retryable"] is True
    assert video["errors"]["write[chunk 0]"].startswith("gave up after 2 attempts: StorageError: cannot write")
    summary = load_json(out / "summary.json")
    assert summary["reason"] == "TooManyVideosFailedRetryable"
    assert all(f["retryable"] for f in summary["failures"])
    assert not list(out.glob("processed_clip_chunks/*.json"))  # no chunk recorded as done

    monkeypatch.undo()
    assert run(tmp_path, inputs, out) == EXIT_OK
    assert load_json(out / "summary.json")["videos"] == {"total": 2, "done": 2, "failed": 0, "skipped": 0, "unmatched": 0}


def test_an_encoder_that_cannot_open_is_the_environments_failure(tmp_path, inputs):
    """h264_nvenc without a GPU (this machine has none): retried, then failed as retryable, not
    recorded as the clips' failure; with a GPU the run would pass."""
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("NVENC may open here")
    out = tmp_path / "out"
    assert run(tmp_path, inputs, out, transcoding={"encoder": "h264_nvenc"}) == EXIT_FAILED
    video = record(out, "good.mp4")
    assert video["retryable"] is True and video["num_clips_failed"] == 0
    assert "gave up after 2 attempts: EnvironmentFailure: cannot open encoder h264_nvenc" in \
        video["errors"]["transcode[chunk 0]"]
    assert load_json(out / "summary.json")["reason"] == "TooManyVideosFailedRetryable"
