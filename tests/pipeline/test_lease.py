"""One writer per output (clipforge.lease): a second run refuses to start and names the holder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clipforge import runner
from clipforge.cli import main
from clipforge.lease import EXPIRE_S, OutputLease, OutputLocked
from clipforge.spec import VideoCurationJob
from clipforge.stages.split import SplitStage
from clipforge.storage import Storage
from support.jobs import FIVE_SECOND_CLIPS, load_json, manifest, sample_copies, write_manifest

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


@pytest.fixture
def job_file(tmp_path, samples_dir) -> Path:
    inputs = sample_copies(samples_dir, tmp_path / "inputs", "a.mp4")
    document = manifest(str(inputs), str(tmp_path / "out"), splitting=FIVE_SECOND_CLIPS,
                        execution={"executor": "local"})
    return write_manifest(tmp_path / "job.yaml", document)


def job_with(output: str, uid: str | None = None) -> VideoCurationJob:
    metadata = {"name": "other-job", "namespace": "team-a", **({"uid": uid} if uid else {})}
    return VideoCurationJob.model_validate({"apiVersion": "clipforge.dev/v1alpha1", "kind": "VideoCurationJob",
                                            "metadata": metadata, "spec": {"input": {"uri": "/in"},
                                                                           "output": {"uri": output}}})


def claims(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "leases").glob("*.json")) if (out / "leases").exists() else []


def test_a_second_run_refuses_while_the_first_holds_the_output(tmp_path, job_file, capsys):
    out = tmp_path / "out"
    holder = OutputLease.acquire(Storage(), job_with(str(out)), "run-one")
    assert main(["run", str(job_file), "--no-progress"]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "is being written by run run-one (job team-a/other-job" in err and "--force-unlock" in err
    assert claims(out) == ["run-one.json"] and not (out / "progress.json").exists()  # wrote nothing else

    holder.release()
    assert main(["run", str(job_file), "--no-progress"]) == EXIT_OK
    assert claims(out) == []  # released at the end
    assert load_json(out / "summary.json")["state"] == "succeeded"


def test_an_output_given_as_a_relative_path_is_claimed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples/cpu-job.yaml writes to ./out
    lease = OutputLease.acquire(Storage(), job_with("./out"), "here")
    with pytest.raises(OutputLocked, match="run here"):
        OutputLease.acquire(Storage(), job_with(str(tmp_path / "out")), "there")
    lease.release()
    assert claims(tmp_path / "out") == []


def test_a_stale_claim_is_removed_and_force_unlock_removes_a_live_one(tmp_path, job_file):
    out = tmp_path / "out"
    dead = OutputLease.acquire(Storage(), job_with(str(out)), "dead-run")
    dead.holder["host"] = "elsewhere"  # not this host's: only its age tells it is stale
    dead.renew()
    stale = time.time() - EXPIRE_S - 60
    os.utime(out / "leases" / "dead-run.json", (stale, stale))
    assert main(["run", str(job_file), "--no-progress"]) == EXIT_OK
    assert claims(out) == []

    # A run killed on this host: its process is gone, so its claim is removed at once.
    killed = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = OutputLease.acquire(Storage(), job_with(str(out)), "killed-run")
    gone.holder["pid"] = int(killed.stdout)
    gone.renew()
    assert main(["run", str(job_file), "--no-progress"]) == EXIT_OK
    assert claims(out) == []

    OutputLease.acquire(Storage(), job_with(str(out)), "live-run")
    assert main(["run", str(job_file), "--no-progress"]) == EXIT_INVALID
    assert main(["run", str(job_file), "--no-progress", "--force-unlock"]) == EXIT_OK
    assert claims(out) == []


def test_a_retry_of_the_same_job_takes_over_and_another_job_does_not(tmp_path):
    out = str(tmp_path / "out")
    OutputLease.acquire(Storage(), job_with(out, uid="uid-1"), "attempt-0")
    retry = OutputLease.acquire(Storage(), job_with(out, uid="uid-1"), "attempt-1")
    assert claims(tmp_path / "out") == ["attempt-1.json"]
    with pytest.raises(OutputLocked, match="run attempt-1"):
        OutputLease.acquire(Storage(), job_with(out, uid="uid-2"), "other")
    assert claims(tmp_path / "out") == ["attempt-1.json"]
    retry.release()


def test_a_run_that_loses_its_claim_stops_writing(tmp_path, job_file, monkeypatch, capsys):
    monkeypatch.setattr(runner, "PROGRESS_INTERVAL_S", 0.05)
    monkeypatch.setattr(runner, "RENEW_S", 0.0)
    out = tmp_path / "out"
    real = SplitStage.spans

    def spans(self, task):  # noqa: ANN001 - someone unlocks the output while the video is split
        for claim in (out / "leases").glob("*.json"):
            claim.unlink()
        time.sleep(1)  # the progress thread's renewal notices
        return real(self, task)

    monkeypatch.setattr(SplitStage, "spans", spans)
    assert main(["run", str(job_file), "--no-progress"]) == EXIT_FAILED
    assert "claim on" in capsys.readouterr().err
    # No summary, no processed_videos record: the output is no longer this run's to write.
    assert not (out / "summary.json").exists() and not (out / "processed_videos").exists()
    assert load_json(out / "progress.json")["state"] in ("starting", "running")


def test_claims_on_s3(s3_server, s3_bucket, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    storage = Storage(endpoint=s3_server.endpoint, region=s3_server.region)
    out = f"s3://{s3_bucket}/out"
    first = OutputLease.acquire(storage, job_with(out), "first")
    with pytest.raises(OutputLocked, match="run first"):
        OutputLease.acquire(storage, job_with(out), "second")
    first.renew()
    assert not first.lost
    first.release()
    second = OutputLease.acquire(storage, job_with(out), "second")
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert [key for key in keys if not key.endswith("/")] == ["out/leases/second.json"]  # pyarrow leaves dir markers
    storage.delete(second.uri)
    second.renew()
    assert second.lost
