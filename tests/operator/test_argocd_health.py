"""The Argo CD health check (integrations/argocd/...) run by a real Lua 5.1, as Argo CD's VM runs it,
on the cases of its health_test.yaml (Argo CD's own test layout)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from clipforge.spec import JobPhase, VideoCurationJobStatus

CHECK = Path(__file__).resolve().parents[2] / "integrations/argocd/clipforge.dev/VideoCurationJob"


def lua(value: object) -> str:
    """A Python value (from YAML) as a Lua table constructor."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a Lua string for what YAML holds here
    if isinstance(value, list):
        return "{" + ", ".join(lua(v) for v in value) + "}"
    return "{" + ", ".join(f"[{json.dumps(k)}] = {lua(v)}" for k, v in value.items()) + "}"


def health(obj: dict) -> dict:
    script = f"obj = {lua(obj)}\nlocal hs = dofile({json.dumps(str(CHECK / 'health.lua'))})\n" \
             "io.write(hs.status, '\\n', hs.message or '')"
    done = subprocess.run(["lua5.1", "-"], input=script, capture_output=True, text=True, check=True)
    status, _, message = done.stdout.partition("\n")
    return {"status": status, "message": message}


CASES = yaml.safe_load((CHECK / "health_test.yaml").read_text())["tests"]


@pytest.mark.parametrize("case", CASES, ids=[Path(c["inputPath"]).stem for c in CASES])
def test_each_case_gets_its_health(case):
    obj = yaml.safe_load((CHECK / case["inputPath"]).read_text())
    if "status" in obj:  # the cases hold statuses the operator can write
        VideoCurationJobStatus.model_validate(obj["status"])
    assert health(obj) == case["healthStatus"]


def test_every_phase_has_a_health():
    for phase in JobPhase:
        got = health({"status": {"phase": phase.value}})
        assert got["status"] in ("Healthy", "Progressing", "Degraded", "Suspended"), (phase, got)
        assert got["message"] == phase.value
