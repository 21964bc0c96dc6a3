"""What a run logs: one line per failure unless more is asked for, the level reaching Ray's
workers, and no warnings of Ray's own or escape codes in a file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.jobs import FIVE_SECOND_CLIPS, clipforge, manifest, write_manifest

from clipforge.cli import main

REASON = "not a readable video"  # what the probe says of broken.mp4


@pytest.fixture
def broken_input(tmp_path) -> Path:
    directory = tmp_path / "inputs"
    directory.mkdir()
    (directory / "broken.mp4").write_bytes(b"not a video" * 100)
    return directory


@pytest.mark.parametrize(("argv", "logged"), [([], False), (["--log-level", "info"], True), (["--quiet"], False)])
def test_a_failure_is_one_line_unless_more_is_asked_for(tmp_path, broken_input, capsys, caplog, argv, logged):
    job = write_manifest(tmp_path / "job.yaml", manifest(str(broken_input), str(tmp_path / "out"),
                                                         execution={"executor": "local"}))
    main([*argv, "run", str(job), "--no-progress"])
    failed = [line for line in capsys.readouterr().out.splitlines() if REASON in line]
    assert len(failed) == 1 and failed[0].startswith(f"FAILED {broken_input / 'broken.mp4'}")
    assert any(REASON in r.getMessage() for r in caplog.records) == logged


@pytest.mark.ray
@pytest.mark.slow
def test_a_ray_run_logs_what_was_asked_for_without_escape_codes(tmp_path, samples_dir, broken_input, monkeypatch):
    """stderr is a pipe here, as in a file or CI. At info the worker's line of the failure comes
    through Ray's log forwarding (`(... pid=N)` prefix); Ray's own warnings stay away."""
    for chosen_by_clipforge in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_COLOR_PREFIX"):
        monkeypatch.delenv(chosen_by_clipforge, raising=False)  # an earlier run in this process set them
    for video in samples_dir.rglob("*.mp4"):
        shutil.copy(video, broken_input)
    spec = {"splitting": FIVE_SECOND_CLIPS, "embeddings": {"enabled": False}, "execution": {"executor": "ray"}}
    job = write_manifest(tmp_path / "job.yaml", manifest(str(broken_input), str(tmp_path / "out"), **spec))
    result = clipforge("--log-level", "info", "run", str(job), timeout=300)
    assert result.returncode == 3, result.stderr
    assert "\x1b[" not in result.stderr
    assert "Token authentication" not in result.stderr
    worker_lines = [line for line in result.stderr.splitlines() if REASON in line]
    assert len(worker_lines) == 1 and "pid=" in worker_lines[0] and " INFO clipforge." in worker_lines[0]
    assert sum(REASON in line for line in result.stdout.splitlines()) == 1
