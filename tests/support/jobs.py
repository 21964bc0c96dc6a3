"""Helpers for tests that run stages or whole jobs: manifests, output listings, clip decoding."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import yaml
from clipforge.samples import SampleVideo, Segment


def small_samples() -> list[SampleVideo]:
    """Short, low-resolution videos with cuts and a static scene: a full job runs in seconds."""
    return [
        SampleVideo("moving_then_static", 320, 180, 24, (Segment(5, True, 11), Segment(5, False, 12))),
        SampleVideo("sub/three_scenes", 320, 180, 25, (Segment(4, True, 13), Segment(4, True, 14), Segment(3, True, 15))),
    ]


# 5 s fixed-stride clips: small_samples() then has clips wholly inside its moving and static scenes.
FIVE_SECOND_CLIPS = {"algorithm": "fixed-stride", "fixedStride": {"clipLengthS": 5, "strideS": 5, "minClipLengthS": 2}}


def manifest(input_uri: str, output_uri: str, name: str = "test-job", **spec: object) -> dict:
    document = {
        "apiVersion": "clipforge.dev/v1alpha1",
        "kind": "VideoCurationJob",
        "metadata": {"name": name},
        "spec": {"input": {"uri": input_uri}, "output": {"uri": output_uri}},
    }
    for key, value in spec.items():
        document["spec"][key] = value
    return document


def write_manifest(path: Path, document: dict) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def run_in_process(tmp_path: Path, inputs: Path | str, out: Path | str, *args: str, **spec: object) -> int:
    """`clipforge run` of a manifest over inputs into out, in this process (so monkeypatches reach
    its stages with the local executor); returns its exit status."""
    from clipforge.cli import main

    job = write_manifest(tmp_path / "job.yaml", manifest(str(inputs), str(out), **spec))
    return main(["run", str(job), "--no-progress", *args])


def sample_copies(samples_dir: Path, directory: Path, *names: str) -> Path:
    """`directory` holding the moving-then-static sample (two 5 s clips) under each of `names`."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(samples_dir / "moving_then_static.mp4", directory / name)
    return directory


def forget_resume_state(out: Path) -> None:
    """Removes the output's resume state (resume/), as a test that edits or removes processed_videos/
    records must: the next run rebuilds it from those records, the source of truth."""
    shutil.rmtree(out / "resume")


def tree(root: Path) -> dict[str, int]:
    """Relative path -> size of every file under root, except progress/summary (timestamps) and
    the resume state's segments (each run that finishes a video adds one, named after the run)."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if rel not in ("progress.json", "summary.json") and not rel.startswith("resume/"):
                out[rel] = path.stat().st_size
    return out


def decode_clip(data_or_path) -> tuple[int, str, int, int]:  # noqa: ANN001
    """(frames decoded, codec, width, height) of a clip file or bytes."""
    import io

    source = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else str(data_or_path)
    with av.open(source) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return frames, stream.codec_context.name, stream.codec_context.width, stream.codec_context.height


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())


def run_stage(stage_cls, spec, task):  # noqa: ANN001
    """One stage on one task, as a worker would run it; the stage must pass the task on alone."""
    from clipforge.stages import pipeline_stages

    stage = stage_cls(spec, pipeline_stages(spec))
    stage.setup()
    assert stage.run(task) == [task]
    return task


def clipforge(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """`clipforge <args>` in a fresh process that starts its own local Ray (RAY_ADDRESS unset)."""
    env = {**os.environ, **(env or {})}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "clipforge.cli", *args], env=env, capture_output=True, text=True, **kwargs)


def worker_hooks(hooks: str, **env: str) -> dict:
    """Environment that puts tests/pipeline/worker_hooks (crash, hang, trace) in a run's Ray workers."""
    path = os.pathsep.join(filter(None, [str(Path(__file__).parents[1] / "pipeline" / "worker_hooks"), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "CLIPFORGE_TEST_HOOKS": hooks, **env}
