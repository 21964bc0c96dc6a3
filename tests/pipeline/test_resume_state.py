"""A restart reads what is done in a few large reads (clipforge.resume_state), the first video
starts while the inputs are still being listed, and a resume state that cannot be read stops the
run instead of redoing the dataset."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from clipforge import layout
from clipforge.resume_state import COMPACT_AT, ResumeState, live_segments
from clipforge.stages.probe import ProbeStage
from clipforge.storage import Storage
from support.jobs import FIVE_SECOND_CLIPS, load_json, run_in_process, sample_copies, tree

EXIT_OK, EXIT_INVALID = 0, 2
EARLIER_VIDEOS = 3000
SEGMENT_VIDEOS = 500  # so the earlier videos take several segments


def run(tmp_path: Path, inputs: Path, out: Path, *extra: str) -> int:
    return run_in_process(tmp_path, inputs, out, *extra, splitting=FIVE_SECOND_CLIPS,
                          execution={"executor": "local"}, motionFilter={"mode": "disable"},
                          embeddings={"enabled": False}, previews={"enabled": False})


def reads(monkeypatch) -> list[str]:  # noqa: ANN001
    """The URIs every Storage read opens, from now on."""
    opened: list[str] = []
    real = Storage.open_read

    def open_read(self, uri):  # noqa: ANN001
        opened.append(uri)
        return real(self, uri)

    monkeypatch.setattr(Storage, "open_read", open_read)
    return opened


def test_a_restart_over_many_done_videos_reads_one_object_per_segment(tmp_path, samples_dir, monkeypatch):
    inputs = sample_copies(samples_dir, tmp_path / "in", "a.mp4")
    out = tmp_path / "out"
    assert run(tmp_path, inputs, out) == EXIT_OK
    # Thousands more videos done as a.mp4 was: their files (never opened again), records and segments.
    done = load_json(out / "processed_videos" / "a.mp4.json")
    state = ResumeState(Storage(), str(out), "ea71e7")
    for n in range(EARLIER_VIDEOS):
        relative = f"v{n:05d}.mp4"
        (inputs / relative).write_bytes(b"done before")
        stat = os.stat(inputs / relative)
        record = {**done, "relative_path": relative, "video": str(inputs / relative),
                  "source": {"size": stat.st_size, "mtime": pafs.LocalFileSystem().get_file_info(
                      str(inputs / relative)).mtime.replace(microsecond=0).isoformat()}}
        (out / "processed_videos" / f"{relative}.json").write_text(json.dumps(record))
        state.add(record)
        if n % SEGMENT_VIDEOS == SEGMENT_VIDEOS - 1:
            state.flush()
    segments = live_segments(Storage(), str(out))
    assert len(segments) == 1 + EARLIER_VIDEOS // SEGMENT_VIDEOS

    sample_copies(samples_dir, inputs, "zz-new.mp4")
    opened = reads(monkeypatch)
    restart: list[str] = []  # what was read before the new video's first stage: the restart's reads
    real_process = ProbeStage.process

    def process(self, task):  # noqa: ANN001
        restart.extend(opened)
        return real_process(self, task)

    monkeypatch.setattr(ProbeStage, "process", process)
    assert run(tmp_path, inputs, out) == EXIT_OK
    summary = load_json(out / "summary.json")
    assert summary["videos"] == {"total": EARLIER_VIDEOS + 2, "done": EARLIER_VIDEOS + 2, "failed": 0,
                                 "skipped": EARLIER_VIDEOS + 1, "unmatched": 0}
    assert summary["clips"]["passed"] == 2 * done["num_clips_passed"] + EARLIER_VIDEOS * done["num_clips_passed"]
    # One read per segment, none per video done, before the new video starts.
    assert sorted(uri for uri in restart if f"/{layout.RESUME}/" in uri) == sorted(s.uri for s in segments)
    assert not [uri for uri in restart if f"/{layout.PROCESSED_VIDEOS}/" in uri]
    assert not [uri for uri in opened if uri.startswith(str(inputs)) and uri != str(inputs / "zz-new.mp4")]
    assert (out / "processed_videos" / "zz-new.mp4.json").exists()


def test_the_first_video_starts_while_the_listing_goes_on(tmp_path, samples_dir, monkeypatch):
    inputs = tmp_path / "in"
    sample_copies(samples_dir, inputs / "a", "first.mp4")
    sample_copies(samples_dir, inputs / "later", "second.mp4")
    probed = threading.Event()
    waited: list[bool] = []
    real_process = ProbeStage.process

    def process(self, task):  # noqa: ANN001
        probed.set()
        return real_process(self, task)

    class SlowListing:
        """The input's filesystem, whose listing of `later` (or of everything at once) waits for
        the first video to be probed, or 20 s."""

        def __init__(self, fs: pafs.FileSystem):
            self.fs = fs

        def get_file_info(self, what):  # noqa: ANN001
            if isinstance(what, pafs.FileSelector) and (what.recursive or what.base_dir.endswith("/later")):
                waited.append(probed.wait(20))
            return self.fs.get_file_info(what)

        def __getattr__(self, name: str):  # noqa: ANN204
            return getattr(self.fs, name)

    real_resolve = Storage.resolve

    def resolve(self, uri):  # noqa: ANN001
        fs, path = real_resolve(self, uri)
        return (SlowListing(fs) if str(uri).startswith(str(inputs)) else fs), path

    monkeypatch.setattr(ProbeStage, "process", process)
    monkeypatch.setattr(Storage, "resolve", resolve)
    assert run(tmp_path, inputs, tmp_path / "out") == EXIT_OK
    assert waited == [True]
    assert load_json(tmp_path / "out" / "summary.json")["videos"]["done"] == 2


def test_a_resume_state_that_cannot_be_read_stops_the_run_naming_it(tmp_path, samples_dir, capsys):
    inputs = sample_copies(samples_dir, tmp_path / "in", "a.mp4", "b.mp4")
    out = tmp_path / "out"
    assert run(tmp_path, inputs, out) == EXIT_OK
    before = tree(out)
    [segment] = live_segments(Storage(), str(out))
    Path(segment.uri).write_bytes(b"PAR1 torn")
    capsys.readouterr()
    assert run(tmp_path, inputs, out) == EXIT_INVALID
    error = capsys.readouterr().err
    assert f"the resume state segment {segment.uri} cannot be read" in error
    assert f"delete {layout.RESUME}/ to rebuild it from {layout.PROCESSED_VIDEOS}/" in error
    progress = load_json(out / "progress.json")
    assert progress["state"] == "failed" and progress["reason"] == "NotStarted"
    assert tree(out) == before  # nothing redone


def rows(n: int, start: int = 0) -> list[dict]:
    return [{"relative_path": f"v{i:05d}.mp4", "video": f"/in/v{i:05d}.mp4", "source": {"size": i, "mtime": "t"},
             "settings": {"s": 1}, "errors": {}, "retryable": False, "num_clips_passed": i % 3,
             "num_clips_filtered": 0, "num_clips_failed": 0} for i in range(start, start + n)]


@pytest.mark.parametrize("crash", ["writing the merged segment", "deleting the merged ones"])
def test_a_crash_mid_compaction_leaves_the_same_state(tmp_path, monkeypatch, crash):
    storage, root = Storage(retry_seconds=0), str(tmp_path / "out")
    state = ResumeState(storage, root, "a")
    for n in range(COMPACT_AT + 2):  # each segment supersedes the previous one's last video
        for record in rows(10, start=9 * n):
            state.add({**record, "num_clips_failed": n})
        state.flush()
    segments = live_segments(storage, root)
    assert len(segments) == COMPACT_AT + 2
    # Video i is in segment i // 9, and the last of segment n is the first of n + 1: the later one's row.
    expected = {f"v{i:05d}.mp4": min(i // 9, COMPACT_AT + 1) for i in range(9 * (COMPACT_AT + 2) + 1)}

    class Crash(Exception):
        pass

    def crash_after(method: str, calls: int):  # noqa: ANN202
        real, made = getattr(Storage, method), []

        def crashing(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
            if len(made) == calls:
                raise Crash(method)
            made.append(args[0])
            return real(self, *args, **kwargs)
        return crashing

    if crash == "writing the merged segment":
        monkeypatch.setattr(Storage, "write_bytes", crash_after("write_bytes", 0))
    else:
        monkeypatch.setattr(Storage, "delete", crash_after("delete", 3))
    with pytest.raises(Crash):
        ResumeState(storage, root, "c0").read()
    monkeypatch.undo()

    after = ResumeState(storage, root, "d0")
    table = after.read()
    assert {r["relative_path"]: r["num_clips_failed"] for r in table.to_pylist()} == expected
    assert len(after.segments) == 1  # the restart compacted (again, or for the first time)
    assert len(live_segments(storage, root)) == 1
    assert {r["relative_path"]: r["num_clips_failed"] for r in ResumeState(storage, root, "e0").read().to_pylist()} \
        == expected
