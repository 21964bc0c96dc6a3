"""What counts as an input: patterns ignore case, other files are counted, and an input that
matches nothing is never a success."""

from __future__ import annotations

import shutil

from clipforge.cli import main
from support.jobs import FIVE_SECOND_CLIPS, load_json, manifest, write_manifest

EXIT_OK, EXIT_NO_INPUT = 0, 4


def run(tmp_path, inputs) -> int:  # noqa: ANN001
    document = manifest(str(inputs), str(tmp_path / "out"), splitting=FIVE_SECOND_CLIPS,
                        execution={"executor": "local"})
    return main(["run", str(write_manifest(tmp_path / "job.yaml", document)), "--no-progress"])


def test_camera_names_in_capitals_are_curated_and_other_files_counted(tmp_path, samples_dir, capsys):
    inputs = tmp_path / "DCIM"
    inputs.mkdir()
    shutil.copy(samples_dir / "moving_then_static.mp4", inputs / "IMG_0001.MOV")
    shutil.copy(samples_dir / "moving_then_static.mp4", inputs / "CLIP.MP4")
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
