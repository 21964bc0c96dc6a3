"""The CLI itself: its version, its help, its logging options, how it reports a broken manifest."""

from __future__ import annotations

import argparse
import io
import logging
import re
import sys
from importlib import metadata

import pytest
import yaml
from tqdm import tqdm

from clipforge import logs
from clipforge.cli import build_parser, lines_above_the_bar, main

MANIFEST = {"apiVersion": "clipforge.dev/v1alpha1", "kind": "VideoCurationJob", "metadata": {"name": "j"},
            "spec": {"input": {"uri": "in"}, "output": {"uri": "out"}}}


def test_version_is_the_distributions(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"clipforge {metadata.version('clipforge')}\n"


def _arguments(parser: argparse.ArgumentParser, name: str = "clipforge"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield name, action
            for command, subparser in action.choices.items():
                yield from _arguments(subparser, f"{name} {command}")
        elif not isinstance(action, argparse._HelpAction):
            yield name, action


def test_every_argument_of_every_command_has_help():
    missing = [f"{name} {action.dest}" for name, action in _arguments(build_parser()) if not action.help]
    assert not missing


def test_export_format_has_a_default():
    assert build_parser().parse_args(["export", "out", "shards"]).format == "webdataset"


@pytest.mark.parametrize(("argv", "level"), [
    ([], "warning"),
    (["--log-level", "debug"], "debug"),
    (["--quiet"], "error"),
])
def test_the_log_level_reaches_the_loggers_and_the_workers_environment(tmp_path, argv, level, monkeypatch):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(MANIFEST))
    # Before the command and after it alike.
    for args in ([*argv, "validate", str(job)], ["validate", str(job), *argv]):
        logs.configure("info")
        assert main(args) == 0
        assert logging.getLogger("clipforge.stages").getEffectiveLevel() == logging.getLevelName(level.upper())
        assert logs.worker_env() == {logs.LEVEL_ENV: level}
    # What a Ray worker does with that environment (executors/ray_data.py, _StageWorker).
    logs.configure("info")
    monkeypatch.setenv(logs.LEVEL_ENV, level)
    logs.configure_worker()
    assert logging.getLogger("clipforge.stages").getEffectiveLevel() == logging.getLevelName(level.upper())


def test_a_broken_manifest_is_reported_with_its_file_line_and_closest_field(tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text("kind: VideoCurationJob\nspec: {input: {uri: in}\n")
    assert main(["validate", str(job)]) == 2
    assert f"error: {job}: invalid VideoCurationJob:\n  - line 3, column 1: not valid YAML" in capsys.readouterr().err
    job.write_text(yaml.safe_dump({**MANIFEST, "spec": {**MANIFEST["spec"], "previewz": {}}}))
    assert main(["validate", str(job)]) == 2
    assert "  - spec.previewz: unknown field; did you mean previews?" in capsys.readouterr().err


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_lines_written_while_the_bar_is_drawn_go_above_it(monkeypatch):
    # Ray prints its workers' lines to sys.stderr as they come, and log records go to stderr: both
    # landed inside the bar's line ("demo:  50%|#####     | 1/2 (pid=42) probe: ...").
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    console = logging.StreamHandler(terminal)
    console.setFormatter(logging.Formatter(logs.FORMAT))
    monkeypatch.setattr(logging.getLogger(), "handlers", [console])
    with lines_above_the_bar() as err:
        bar = tqdm(total=2, desc="demo", file=err)
        bar.update(1)
        print("(pid=42) probe: a worker's line", file=sys.stderr)
        logging.getLogger("clipforge.test").error("a log record")
        bar.update(1)
        bar.close()
    lines = re.split("[\r\n]", terminal.getvalue())
    assert "(pid=42) probe: a worker's line" in lines, lines
    assert [line for line in lines if "a log record" in line] == ["ERROR clipforge.test: a log record"], lines
    assert sys.stderr is terminal
