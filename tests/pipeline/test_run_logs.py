"""What a run logs: one line per failure unless more is asked for, the level reaching Ray's
workers, no warnings of Ray's own or escape codes in a file, and workers that end without
crashing."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
from datetime import datetime
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


# The one line at error level every Ray run prints: Ray's, on Ray Data's actors (README, Troubleshooting).
CONSTRUCTOR_ARGUMENTS = "has constructor arguments in the object store and max_restarts > 0"
# A line at warning level or above: Python's logging, Ray's Python loggers, Ray's C++ (`[... W pid tid]`).
ALARMING = re.compile(r"\b(WARNING|ERROR|CRITICAL|FATAL)\b|^\[[^]]* [WEF] \d+ \d+\]")
FATAL = re.compile(r"Fatal Python error|SIGSEGV")
# When opencensus's harvester thread, which Ray starts in a worker's disconnect, first wakes.
HARVESTER_WAKE_S = 5.0


class StageWorkerEnds:
    """Polls this machine's processes while a run lasts: when each stage worker of the Ray whose
    RAY_TMPDIR is `ray_dir` was last seen alive."""

    def __init__(self, ray_dir: Path):
        self.marker = f"RAY_TMPDIR={ray_dir}\0".encode()
        self.last_seen: dict[int, float] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        ours: set[int] = set()
        while not self.done.wait(0.02):
            for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
                try:
                    if pid not in ours and (not open(f"/proc/{pid}/cmdline", "rb").read().startswith(b"ray::MapWorker")
                                            or self.marker not in open(f"/proc/{pid}/environ", "rb").read()):
                        continue
                except OSError:  # gone, or not ours to read
                    continue
                ours.add(pid)
                if os.path.exists(f"/proc/{pid}"):
                    self.last_seen[pid] = time.time()

    def __enter__(self) -> StageWorkerEnds:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        deadline = time.time() + 60  # the last ones leave as the run ends
        while any(os.path.exists(f"/proc/{pid}") for pid in self.last_seen) and time.time() < deadline:
            time.sleep(0.1)
        self.done.set()
        self.thread.join()


def _disconnected_at(log: Path) -> float | None:
    """When the core worker whose log is `log` told its raylet it was leaving (Ray's local time)."""
    for line in log.read_text(errors="replace").splitlines():
        if "Sending disconnect message" in line:
            return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


@pytest.mark.ray
@pytest.mark.slow
def test_clean_ray_runs_warn_of_nothing_and_their_workers_end_without_crashing(tmp_path, samples_dir, monkeypatch):
    """Ray 2.60 starts a metrics thread in each worker as it leaves, which wakes 5 s later and
    may then crash a teardown still going (SIGSEGV, "Fatal Python error" in the worker's log,
    about one run in six). The crash itself is rare; that no stage worker outlives the wake is not."""
    for chosen_by_clipforge in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_COLOR_PREFIX"):
        monkeypatch.delenv(chosen_by_clipforge, raising=False)  # an earlier run in this process set them
    spec = {"splitting": FIVE_SECOND_CLIPS, "embeddings": {"enabled": False}, "execution": {"executor": "ray"}}
    for run in range(2):
        ray_dir = Path(tempfile.mkdtemp(prefix="cf-ray-"))  # Ray's socket paths must fit in 107 bytes
        try:
            job = write_manifest(tmp_path / "job.yaml", manifest(str(samples_dir), str(tmp_path / f"out{run}"), **spec))
            with StageWorkerEnds(ray_dir) as ends:
                result = clipforge("run", str(job), "--no-progress", env={"RAY_TMPDIR": str(ray_dir)}, timeout=300)
            assert result.returncode == 0, result.stderr
            assert [line for line in result.stderr.splitlines()
                    if ALARMING.search(line) and CONSTRUCTOR_ARGUMENTS not in line] == []
            logs = next(ray_dir.glob("ray/session_2*/logs"))
            assert [p.name for p in logs.rglob("*") if p.is_file() and FATAL.search(p.read_text(errors="replace"))] == []
            assert ends.last_seen, "no stage worker seen"
            lived = {pid: seen - _disconnected_at(next(logs.glob(f"python-core-worker-*_{pid}.log")))
                     for pid, seen in ends.last_seen.items()}
            assert all(seconds < HARVESTER_WAKE_S for seconds in lived.values()), lived
        finally:
            shutil.rmtree(ray_dir, ignore_errors=True)
