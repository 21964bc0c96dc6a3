"""Measures what each real stage costs per clip on this machine: the profile bench_scaling.py simulates.

Generates 1080p and 720p inputs (moving and static content), runs the real stages with the
local executor (one process, each stage at the threads it reserves) and records, per stage
and content: CPU seconds per task (process CPU time around `Stage.run`, all threads), wall
seconds, and the pickled size of what the stage passes on (the bytes Ray would move between
stages). Writes them, with the stage reservations they were taken at, to stage_profile.json:

    python benchmarks/measure_stage_profile.py            # rewrites benchmarks/stage_profile.json

The GPU stages (caption, and embed or aesthetic on a GPU) cannot run here: their entries in
the profile are marked `"source": "assumed"` and say what they were taken from.
"""

from __future__ import annotations

import json
import pickle
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from clipforge.samples import SampleVideo, Segment, write_samples
from clipforge.spec import parse_job, stage_resources
from clipforge.stages import Stage

PROFILE = Path(__file__).with_name("stage_profile.json")
PER_VIDEO = ("probe", "split")
SECONDS = 30  # per input: three 10 s clips (fixed stride), one chunk
# Content kind -> the input measured for it.
INPUTS = {
    "busy-1080p": SampleVideo("busy_1080p", 1920, 1080, 30, (Segment(SECONDS, True, 41),)),
    "static-1080p": SampleVideo("static_1080p", 1920, 1080, 30, (Segment(SECONDS, False, 42),)),
    "busy-720p": SampleVideo("busy_720p", 1280, 720, 30, (Segment(SECONDS, True, 43),)),
}
# What the GPU stages cost, per clip of 10 s, on one GPU (no GPU on the machine that measures).
ASSUMED_GPU = {
    "caption": {
        "gpuSecondsPerClip": 2.0,
        "cpus": 1.0, "gpus": 1.0,
        "passedBytesPerClip": 2_000,
        "why": "Qwen2.5-VL-7B, one 256-frame window per 10 s clip at 2 fps (about 1,400 visual tokens prefill,"
               " up to 512 generated), batched on one H100-class GPU: about 2 s per clip",
    },
    "embed": {
        "gpuSecondsPerClip": 0.05,
        "cpus": 1.0, "gpus": 0.25,
        "passedBytesPerClip": 2_500,
        "why": "EfficientNet-Lite0 or CLIP-class image encoder on a quarter of a GPU, the clip's sampled frames"
               " batched: tens of milliseconds per clip",
    },
}


class StageTimer:
    """Wraps Stage.run: CPU and wall seconds and output bytes per stage and input."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[dict]] = defaultdict(list)
        self._run = Stage.run

    def __enter__(self) -> StageTimer:
        timer = self

        def timed_run(stage: Stage, task):  # noqa: ANN001, ANN202
            clips_in = len(task.clips)
            cpu, wall = time.process_time(), time.perf_counter()
            out = timer._run(stage, task)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            timer.records[(stage.name, Path(task.relative_path).stem)].append({
                "cpu": cpu, "wall": wall, "clips_in": clips_in, "clips_out": sum(len(t.clips) for t in out),
                "bytes_out": sum(len(pickle.dumps(t, protocol=pickle.HIGHEST_PROTOCOL)) for t in out),
                "duration_s": task.meta.duration_s if task.meta else None,
            })
            return out

        Stage.run = timed_run
        return self

    def __exit__(self, *exc: object) -> None:
        Stage.run = self._run


def measure(input_dir: Path, output_dir: Path) -> dict:
    from clipforge.runner import run_job

    job = parse_job({"apiVersion": "clipforge.dev/v1alpha1", "kind": "VideoCurationJob", "metadata": {"name": "profile"},
                     "spec": {"input": {"uri": str(input_dir)}, "output": {"uri": str(output_dir)},
                              "execution": {"executor": "local"}}})
    with StageTimer() as timer:
        run_job(job, overwrite=True)
    names = {video.name: kind for kind, video in INPUTS.items()}
    stages: dict[str, dict] = {}
    for (stage, video), records in timer.records.items():
        kind = names[video]
        cpu, wall = sum(r["cpu"] for r in records), sum(r["wall"] for r in records)
        bytes_out = sum(r["bytes_out"] for r in records)
        # Probe and split work on whole videos: their cost is per video, the others' per clip.
        unit = "Video" if stage in PER_VIDEO else "Clip"
        count = len(records) if stage in PER_VIDEO else sum(r["clips_out"] for r in records)
        resources = stage_resources(job.spec, stage)
        entry = stages.setdefault(stage, {"cpus": resources.cpus, "gpus": resources.gpus, "source": "measured",
                                          "per": unit.lower(), "content": {}})
        entry["content"][kind] = {
            f"cpuSecondsPer{unit}": round(cpu / count, 4),
            f"wallSecondsPer{unit}": round(wall / count, 4),
            f"passedBytesPer{unit}": round(bytes_out / count),
        }
    return stages


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="clipforge-profile-") as tmp:
        input_dir, output_dir = Path(tmp) / "in", Path(tmp) / "out"
        print(f"generating {len(INPUTS)} inputs of {SECONDS} s ...", flush=True)
        write_samples(input_dir, list(INPUTS.values()))
        started = time.perf_counter()
        stages = measure(input_dir, output_dir)
        elapsed = time.perf_counter() - started
    for stage, entry in ASSUMED_GPU.items():
        stages[f"{stage}-gpu"] = {**entry, "source": "assumed"}
    profile = {
        "measured": {
            "how": "benchmarks/measure_stage_profile.py: the real stages, local executor, default spec"
                   " (libx264 crf 23 at its default preset, fixed stride 10 s, motion, EfficientNet-Lite0 on CPU,"
                   " previews), one 30 s input per content kind; CPU seconds are the process's CPU time around"
                   " Stage.run (all threads), per clip the stage passed on",
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "seconds": round(elapsed, 1),
        },
        "clipSeconds": 10.0,
        "stages": stages,
    }
    PROFILE.write_text(json.dumps(profile, indent=2) + "\n")
    for stage, entry in stages.items():
        unit = entry.get("per", "clip").capitalize()
        for kind, cost in entry.get("content", {}).items():
            print(f"{stage:10s} {kind:13s} {cost[f'cpuSecondsPer{unit}']:7.3f} cpu-s {cost[f'wallSecondsPer{unit}']:7.3f}"
                  f" wall-s {cost[f'passedBytesPer{unit}'] / 1e6:8.3f} MB passed on, per {unit.lower()}")
    print(f"wrote {PROFILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
