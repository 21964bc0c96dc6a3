"""What counts as an input: patterns ignore case, other files are counted, and an input that
matches nothing is never a success."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from clipforge import layout
from clipforge.cli import main
from clipforge.clip_index import read_table
from clipforge.spec import InputSpec
from clipforge.storage import Storage
from pydantic import ValidationError
from support.jobs import FIVE_SECOND_CLIPS, load_json, manifest, run_in_process, sample_copies, write_manifest

EXIT_OK, EXIT_NO_INPUT = 0, 4


def run(tmp_path, inputs) -> int:  # noqa: ANN001
    return run_in_process(tmp_path, inputs, tmp_path / "out", splitting=FIVE_SECOND_CLIPS,
                          execution={"executor": "local"})


def test_camera_names_in_capitals_are_curated_and_other_files_counted(tmp_path, samples_dir, capsys):
    inputs = sample_copies(samples_dir, tmp_path / "DCIM", "IMG_0001.MOV", "CLIP.MP4")
    (inputs / "notes.txt").write_text("not a video")
    assert run(tmp_path, inputs) == EXIT_OK
    summary = load_json(tmp_path / "out" / "summary.json")
    assert summary["videos"] == {"total": 2, "done": 2, "failed": 0, "skipped": 0, "unmatched": 1}
    assert sorted(p.name for p in (tmp_path / "out" / "processed_videos").iterdir()) == [
        "CLIP.MP4.json", "IMG_0001.MOV.json"]
    assert "(1 other files matched no pattern)" in capsys.readouterr().out


def test_an_input_that_matches_nothing_is_its_own_end_state(tmp_path, capsys):
    inputs = tmp_path / "wrong-folder"
    inputs.mkdir()
    (inputs / "readme.txt").write_text("no videos here")
    assert run(tmp_path, inputs) == EXIT_NO_INPUT
    out = tmp_path / "out"
    summary = load_json(out / "summary.json")
    assert summary["state"] == "no-input" and summary["reason"] == "NoInputVideos"
    assert summary["message"] == (f"input {inputs} holds 1 files, none matching input.patterns"
                                  " (*.mp4, *.mov, *.mkv, *.webm, *.avi, *.m4v)")
    assert load_json(out / "progress.json")["state"] == "no-input"
    assert f"nothing to curate: input {inputs} holds 1 files" in capsys.readouterr().out

    (inputs / "readme.txt").unlink()
    assert run(tmp_path, inputs) == EXIT_NO_INPUT
    assert "holds no file matching input.patterns" in load_json(out / "summary.json")["message"]


@pytest.mark.parametrize("kind", ["parquet", "csv", "jsonl"])
def test_a_manifest_names_the_videos_and_its_columns_reach_the_index(tmp_path, samples_dir, kind):
    videos = sample_copies(samples_dir, tmp_path / "anywhere", "a.mp4", "b.mp4")
    rows = [{"uri": str(videos / "a.mp4"), "licence": "cc-by", "shot": 1},
            {"uri": str(videos / "b.mp4"), "licence": "cc0", "shot": 2}]
    path = tmp_path / f"videos.{kind}"
    if kind == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif kind == "csv":
        path.write_text("uri,licence,shot\n" + "".join(f"{r['uri']},{r['licence']},{r['shot']}\n" for r in rows))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    document = manifest(str(videos), str(out), splitting=FIVE_SECOND_CLIPS, execution={"executor": "local"})
    document["spec"]["input"] = {"manifest": str(path)}
    assert main(["run", str(write_manifest(tmp_path / "job.yaml", document)), "--no-progress"]) == EXIT_OK
    # Records are named after the URI without its scheme.
    record = load_json(out / "processed_videos" / f"{str(videos / 'b.mp4').lstrip('/')}.json")
    assert json.loads(record["input_columns"]) == {"licence": "cc0", "shot": 2}
    clips = read_table(Storage(), str(out), layout.CLIP_INDEX, ["source_video", "input_columns"]).to_pylist()
    assert len(clips) == 4
    assert {c["source_video"]: json.loads(c["input_columns"])["licence"] for c in clips} == {
        str(videos / "a.mp4"): "cc-by", str(videos / "b.mp4"): "cc0"}


def test_a_manifest_without_a_uri_column_is_refused_naming_it(tmp_path, capsys):
    path = tmp_path / "videos.csv"
    path.write_text("path\n/x.mp4\n")
    document = manifest("-", str(tmp_path / "out"), execution={"executor": "local"})
    document["spec"]["input"] = {"manifest": str(path)}
    assert main(["run", str(write_manifest(tmp_path / "job.yaml", document)), "--no-progress"]) == 2
    assert f"input.manifest {path} has no column `uri` (columns: path)" in capsys.readouterr().err


def test_input_needs_exactly_one_of_uri_and_manifest():
    with pytest.raises(ValidationError, match="give one of input.uri"):
        InputSpec(uri="/videos", manifest="/videos.csv")
    with pytest.raises(ValidationError, match="give one of input.uri"):
        InputSpec()


def test_a_run_that_cannot_list_its_input_leaves_a_final_progress_saying_why(tmp_path, capsys):
    assert run(tmp_path, tmp_path / "no-such-folder") == 2
    progress = load_json(tmp_path / "out" / "progress.json")
    assert progress["state"] == "failed" and progress["reason"] == "NotStarted"
    assert progress["message"] == f"input {tmp_path / 'no-such-folder'} does not exist"
    assert not (tmp_path / "out" / "leases").exists() or not list((tmp_path / "out" / "leases").iterdir())
