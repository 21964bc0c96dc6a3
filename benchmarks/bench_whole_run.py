"""Whole runs of `clipforge run` against the ffmpeg CLI floor, each a separate process, as a user runs them.

Inputs: three generated videos (two 1080p, one 720p, 30 fps, hard cuts, moving and static scenes),
`--seconds` long each (default 60), cached by their parameters under ~/.cache/clipforge/bench-inputs.

The floor: one decode and one libx264 encode (veryfast, crf 23) of every frame by the ffmpeg CLI,
two videos at a time (one per core on the 2-core machine this was written for). The profiles, each
`clipforge run` on a job file with fixed 10 s clips and the same encoder settings, started and ended
inside the timing (embedded Ray included):

    split      split + transcode, motion filter, previews and embeddings off
    default    the default stages (motion, previews, EfficientNet embeddings)
    copy       stream copy (nothing decoded or encoded), stages off

Every round runs the floor and each profile once, interleaved, so that a machine whose speed drifts
over minutes (other tenants) moves them alike; `--runs` rounds (default 3). Wall time is from start
to the command's exit. CPU seconds are a cpuacct cgroup's (cgroup v1, or cpu.stat on v2) made for
the run: everything the command starts inherits it, Ray's workers included. Its small parent makes
itself the child subreaper (orphaned descendants are re-parented to it) and waits for every
descendant to end before the cgroup is read. (The tree's RUSAGE_CHILDREN missed most of a default
run's CPU: a process that reaps nothing, or ignores SIGCHLD, drops its children's times.) Cores busy
is CPU / wall. A ratio is the median over rounds of profile / floor of the same round.

    python benchmarks/bench_whole_run.py                               # 3 rounds of 60 s videos
    nice -n 10 python benchmarks/bench_whole_run.py --runs 1 --seconds 5   # smoke run

ffmpeg comes from Debian (`apt-get install ffmpeg`): PyAV's bundled libraries carry no CLI.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from clipforge.samples import SampleVideo, Segment, write_samples

CACHE = Path.home() / ".cache" / "clipforge" / "bench-inputs"
PRESET, CRF = "veryfast", 23
FLOOR_PARALLEL = 2
PROFILES = ("split", "default", "copy")

# Joins the cgroup in $BENCH_CGROUP, runs COMMAND as the child subreaper's child, waits for the whole
# tree and prints, as its last line, the command's exit status and its wall seconds (to its exit).
# Descendants still alive GRACE_S after the command exits (a daemon that outlived its run) are
# killed, so that the cgroup is read once every process of the run has ended.
TREE_RUNNER = r"""
import ctypes, os, signal, subprocess, sys, time
GRACE_S = 30.0
PR_SET_CHILD_SUBREAPER = 36
with open(os.path.join(os.environ["BENCH_CGROUP"], "cgroup.procs"), "w") as procs:
    procs.write(str(os.getpid()))
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_CHILD_SUBREAPER) failed: the process tree's CPU cannot be collected")

def children():
    # Orphaned descendants are re-parented to this process: its children are all that is left.
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                if int(stat.read().rpartition(")")[2].split()[1]) == os.getpid():
                    found.append(int(entry))
        except (ValueError, OSError):
            continue
    return found

started = time.perf_counter()
status = subprocess.Popen(sys.argv[1:]).wait()
wall = time.perf_counter() - started
deadline, killed = time.monotonic() + GRACE_S, False
while True:
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        break
    if pid == 0:
        if time.monotonic() > deadline:
            for child in children():
                os.kill(child, signal.SIGKILL)
            if not killed:
                print(f"killed descendants alive {GRACE_S:.0f} s after the command ended", file=sys.stderr)
                killed = True
        time.sleep(0.05)
print(f"{status} {wall:.3f}")
"""
CGROUP_V1 = Path("/sys/fs/cgroup/cpuacct")
CGROUP_V2 = Path("/sys/fs/cgroup")


@contextlib.contextmanager
def cpu_cgroup() -> Iterator[tuple[Path, Callable[[], float]]]:
    """A fresh cgroup for one run, and a function that reads the CPU seconds spent in it."""
    name = f"clipforge-bench-{os.getpid()}"
    if (CGROUP_V1 / "cpuacct.usage").exists():
        path = CGROUP_V1 / name
        def read() -> float:
            return int((path / "cpuacct.usage").read_text()) / 1e9
    else:
        path = CGROUP_V2 / name
        def read() -> float:
            stat = dict(line.split() for line in (path / "cpu.stat").read_text().splitlines())
            return int(stat["usage_usec"]) / 1e6
    try:
        path.mkdir()
    except OSError as exc:
        raise SystemExit(f"cannot make the cgroup {path} that counts a run's CPU ({exc}): run as root") from exc
    try:
        yield path, read
    finally:
        path.rmdir()


@dataclass(frozen=True)
class Measurement:
    wall_s: float
    cpu_s: float

    @property
    def cores_busy(self) -> float:
        return self.cpu_s / self.wall_s


def inputs(seconds: float) -> list[SampleVideo]:
    """Two 1080p and one 720p video of `seconds` each, with hard cuts between moving and static scenes."""
    def scenes(seed: int) -> tuple[Segment, ...]:
        return tuple(Segment(seconds / 4, moving, seed + i) for i, moving in enumerate((True, False, True, True)))

    return [SampleVideo(f"fullhd_{i}", 1920, 1080, 30, scenes(10 * i + 1)) for i in range(2)] + [
        SampleVideo("hd", 1280, 720, 30, scenes(21))
    ]


def cached_inputs(samples: list[SampleVideo]) -> Path:
    """The folder holding `samples`, generated once per set of parameters."""
    key = hashlib.sha256(json.dumps([asdict(s) for s in samples], sort_keys=True).encode()).hexdigest()[:16]
    folder = CACHE / key
    if not folder.is_dir():
        print(f"generating {len(samples)} videos into {folder} ...", flush=True)
        CACHE.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=CACHE))
        write_samples(staging, samples)
        staging.rename(folder)  # whole or absent: an interrupted generation leaves no half set behind
    return folder


def job_document(input_dir: Path, output_dir: Path, profile: str) -> dict:
    spec = {
        "input": {"uri": str(input_dir)},
        "output": {"uri": str(output_dir)},
        "splitting": {"algorithm": "fixed-stride", "fixedStride": {"clipLengthS": 10.0, "strideS": 10.0}},
        "transcoding": {"encoder": "libx264", "preset": PRESET, "crf": CRF,
                        "mode": "copy" if profile == "copy" else "encode"},
    }
    if profile != "default":
        spec.update(motionFilter={"mode": "disable"}, previews={"enabled": False}, embeddings={"enabled": False})
    return {"apiVersion": "clipforge.dev/v1alpha1", "kind": "VideoCurationJob", "metadata": {"name": "bench"},
            "spec": spec}


def measure(command: list[str]) -> Measurement:
    with cpu_cgroup() as (cgroup, cpu_seconds):
        done = subprocess.run([sys.executable, "-c", TREE_RUNNER, *command], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "BENCH_CGROUP": str(cgroup)})
        cpu = cpu_seconds()
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{command[:4]} ...: the tree runner failed (exit {done.returncode})")
    status, wall = lines[-1].split()
    if status != "0":
        print("\n".join(lines[:-1][-40:]), file=sys.stderr)
        raise SystemExit(f"{' '.join(command[:6])} ... exited {status}")
    return Measurement(float(wall), float(cpu))


def floor_command(paths: list[Path], output_dir: Path) -> list[str]:
    """ffmpeg decoding and encoding every frame of each input, FLOOR_PARALLEL at a time."""
    encode = (f'exec ffmpeg -nostdin -v error -y -i "$1" -map 0:v:0 -c:v libx264 -preset {PRESET} -crf {CRF}'
              f' "{output_dir}/$(basename "$1")"')
    fan_out = f'printf "%s\\0" "$@" | xargs -0 -P {FLOOR_PARALLEL} -n 1 sh -c \'{encode}\' floor'
    return ["sh", "-c", fan_out, "floor", *map(str, paths)]


def clipforge_command(job_path: Path) -> list[str]:
    # The console script's own entry point, without the pyenv/venv shim in front of it.
    return [sys.executable, "-c", "import sys; from clipforge.cli import main; sys.exit(main())",
            "run", str(job_path), "--no-progress", "--quiet"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="interleaved rounds (floor and every profile once each)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each generated video")
    args = parser.parse_args()
    if args.runs < 1 or args.seconds <= 0:
        parser.error(f"--runs must be at least 1 and --seconds more than 0 (got {args.runs} and {args.seconds})")
    if shutil.which("ffmpeg") is None:
        print("ffmpeg (the floor) is not installed: apt-get install ffmpeg", file=sys.stderr)
        return 1
    samples = inputs(args.seconds)
    input_dir = cached_inputs(samples)
    paths = sorted(input_dir.glob("*.mp4"))
    video_seconds = sum(s.num_frames / s.fps for s in samples)
    print(f"input: {len(paths)} videos, {video_seconds:.0f} video-seconds; {args.runs} interleaved rounds", flush=True)

    results: dict[str, list[Measurement]] = {name: [] for name in ("floor", *PROFILES)}
    with tempfile.TemporaryDirectory(prefix="clipforge-bench-whole-") as tmp:
        for round_ in range(args.runs):
            for name in ("floor", *PROFILES):
                output_dir = Path(tmp) / f"{name}-{round_}"  # fresh each run: nothing resumed
                if name == "floor":
                    output_dir.mkdir()
                    command = floor_command(paths, output_dir)
                else:
                    job_path = Path(tmp) / f"{name}-{round_}.yaml"
                    job_path.write_text(json.dumps(job_document(input_dir, output_dir, name)))  # JSON is YAML
                    command = clipforge_command(job_path)
                result = measure(command)
                results[name].append(result)
                print(f"round {round_ + 1} {name:8s} wall {result.wall_s:7.2f} s  cpu {result.cpu_s:7.2f} s"
                      f"  cores busy {result.cores_busy:.2f}", flush=True)
                shutil.rmtree(output_dir, ignore_errors=True)

    for name, runs in results.items():
        print(f"{name:8s} median wall {statistics.median(r.wall_s for r in runs):7.2f} s"
              f"  cpu {statistics.median(r.cpu_s for r in runs):7.2f} s"
              f"  cores busy {statistics.median(r.cores_busy for r in runs):.2f}")
    ratios = {}  # profile: (wall, cpu), each the median over rounds of profile / the same round's floor
    for name in PROFILES:
        pairs = list(zip(results[name], results["floor"]))
        ratios[name] = (statistics.median(p.wall_s / f.wall_s for p, f in pairs),
                        statistics.median(p.cpu_s / f.cpu_s for p, f in pairs))
        print(f"ratio {name} wall/floor: {ratios[name][0]:.2f}")
        print(f"ratio {name} cpu/floor: {ratios[name][1]:.2f}")
    print(f"ratio split wall/floor: {ratios['split'][0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
