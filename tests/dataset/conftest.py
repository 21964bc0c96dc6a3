"""Fixtures for the index, report and export tests: one real run's output, and copies of it on S3."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from clipforge.cli import main
from clipforge.samples import write_samples
from support.jobs import FIVE_SECOND_CLIPS, manifest, small_samples, write_manifest

# The caption tests' tiny random Qwen2.5-VL: real captions (garbage text) through the real stage.
from pipeline.test_caption import save_tiny_qwen_vl

BROKEN_VIDEO = "broken.mp4"


@pytest.fixture(scope="session")
def curated(tmp_path_factory) -> Path:
    """A real run's output (in-process executor): small_samples() cut into 5 s clips (3 pass, 1 is
    static and filtered), captioned by the tiny model, embedded by EfficientNet-Lite0, with previews;
    and a broken video that fails. Tests copy it before changing it."""
    root = tmp_path_factory.mktemp("curated")
    samples = root / "samples"
    write_samples(samples, small_samples())
    (samples / BROKEN_VIDEO).write_bytes(b"this is not a video\n" * 64)
    models = root / "models"
    save_tiny_qwen_vl(models / "qwen2.5-vl-7b-instruct")
    out = root / "out"
    document = manifest(
        str(samples), str(out),
        splitting=FIVE_SECOND_CLIPS,
        transcoding={"preset": "ultrafast"},
        models={"uri": str(models)},
        captions={"enabled": True, "windowSize": 48, "remainderThreshold": 20, "fps": 1, "maxNewTokens": 4},
        execution={"executor": "local", "clipsPerChunk": 1},
    )
    main(["run", str(write_manifest(root / "job.yaml", document)), "--no-progress"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clips"] == {"passed": 3, "filtered": 1, "failed": 0}
    assert summary["videos"]["failed"] == 1 and summary["videos"]["total"] == 3
    return out


@pytest.fixture
def curated_copy(curated, tmp_path) -> Path:
    """A copy of the curated output somewhere else (its locations are relative: they resolve in the copy)."""
    copy = tmp_path / "copy"
    shutil.copytree(curated, copy)
    return copy


@pytest.fixture(scope="session")
def upload():
    """upload(boto3 client, directory, bucket, prefix): every file under directory, keys by relative path."""

    def put(client, directory: Path, bucket: str, prefix: str) -> None:  # noqa: ANN001
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(directory).as_posix()}")

    return put


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> dict[str, str]:
    """The S3 server's credentials in this process's environment, as the CLI reads them."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    return {**os.environ}
