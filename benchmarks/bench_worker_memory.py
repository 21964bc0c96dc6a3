"""Peak memory of every Ray worker while the default pipeline curates one long video.

The input (default: one hour of 1080p) is a generated minute of moving scenes repeated end to end
(packets concatenated: a real long H.264 file, cheap to make). A sampler reads each process's
VmHWM (the kernel's peak resident set) from /proc for every process this run's local Ray
started, twice a second until the run ends; the resident set counts the pages of Ray's shared
object store a worker maps, so the largest private and shared parts seen are printed too. Prints each worker's peak, then the largest against
the 1.5 GiB each worker must stay under (memory must follow the chunk, not the video's length).

    python benchmarks/bench_worker_memory.py                  # 60 minutes, default stages
    python benchmarks/bench_worker_memory.py --minutes 10 --copy
    python benchmarks/bench_worker_memory.py --4k --clip-seconds 60 --minutes 16 --copy   # 4K 60-s clips
    ... --chunk-decoded-megabytes 1000000   # chunks by clip count alone, as before chunkDecodedMegabytes
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
from pathlib import Path

from bench_long_video import concatenate, write_parts
from bench_pipeline import job_document, run_pipeline
from clipforge.spec import parse_job

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from harness.processes import descendants  # noqa: E402 - the tests' helper, found through the line above

LIMIT_BYTES = 1.5 * 2**30
SAMPLE_INTERVAL_S = 0.5


def _memory(pid: int) -> dict[str, int]:
    """VmHWM (peak resident set), RssAnon (private now), RssShmem (shared now: Ray's object store) in bytes."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    fields = (line.split() for line in lines)
    return {f[0][:-1]: int(f[1]) * 1024 for f in fields if f and f[0] in ("VmHWM:", "RssAnon:", "RssShmem:")}


class PeakSampler:
    """Peak RSS of every process below this one (Ray's workers are the raylet's children)."""

    def __init__(self) -> None:
        self.peaks: dict[int, int] = {}
        # The largest private and shared parts seen: where a peak came from.
        self.anon: dict[int, int] = {}
        self.shmem: dict[int, int] = {}
        self.titles: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            for pid in descendants(os.getpid()):
                memory = _memory(pid)
                if "VmHWM" not in memory:
                    continue
                self.peaks[pid] = max(memory["VmHWM"], self.peaks.get(pid, 0))
                self.anon[pid] = max(memory.get("RssAnon", 0), self.anon.get(pid, 0))
                self.shmem[pid] = max(memory.get("RssShmem", 0), self.shmem.get(pid, 0))
                try:  # Ray titles a worker by what runs in it (ray::MapWorker(FlatMap(<Stage>Worker)) ...)
                    title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if title.startswith("ray::") or pid not in self.titles:
                    self.titles[pid] = title.strip()[:90]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=int, default=60, help="length of the input video")
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--copy", action="store_true", help="transcoding.mode copy (a faster run over the same input)")
    parser.add_argument("--clips-per-chunk", type=int, default=None, help="execution.clipsPerChunk (default: the spec's)")
    parser.add_argument("--chunk-decoded-megabytes", type=int, default=None,
                        help="execution.chunkDecodedMegabytes (default: the spec's)")
    parser.add_argument("--4k", dest="uhd", action="store_true", help="3840x2160 input instead of 1920x1080")
    parser.add_argument("--clip-seconds", type=float, default=None, help="fixed-stride clip length and stride"
                        " (default: the spec's)")
    args = parser.parse_args()
    size = (3840, 2160) if args.uhd else (1920, 1080)
    resolution = f"{size[1]}p"

    with tempfile.TemporaryDirectory(prefix="clipforge-bench-memory-") as tmp:
        print(f"generating {args.minutes} min of {resolution} ...", flush=True)
        minute = write_parts(Path(tmp) / "minute", 1, 1, args.fps, "ultrafast", size)
        concatenate(minute, Path(tmp) / "in" / "long.mp4", repeat=args.minutes)
        document = job_document(Path(tmp) / "in", Path(tmp) / "out", "ray", stages=True, copy=args.copy)
        spec = document["spec"]
        if args.clips_per_chunk:
            spec["execution"]["clipsPerChunk"] = args.clips_per_chunk
        if args.chunk_decoded_megabytes:
            spec["execution"]["chunkDecodedMegabytes"] = args.chunk_decoded_megabytes
        if args.clip_seconds:
            stride = {"clipLengthS": args.clip_seconds, "strideS": args.clip_seconds}
            spec["splitting"] = {"algorithm": "fixed-stride", "fixedStride": stride}
        with PeakSampler() as sampler:
            elapsed, summary = run_pipeline(document, "ray")
    assert summary.videos.done == 1, summary.failures

    clips = summary.clips.passed + summary.clips.filtered
    execution = parse_job(document).spec.execution
    print(f"input: {summary.video_seconds_processed / 60:.0f} min of {resolution}, {clips} clips in {elapsed:.0f} s"
          f" ({'copy' if args.copy else 'encode'}, clipsPerChunk {execution.clips_per_chunk},"
          f" chunkDecodedMegabytes {execution.chunk_decoded_megabytes})")
    workers = {pid: peak for pid, peak in sampler.peaks.items() if sampler.titles.get(pid, "").startswith("ray::")}
    for pid, peak in sorted(workers.items(), key=lambda item: -item[1]):
        print(f"  {peak / 2**20:7.0f} MiB (private up to {sampler.anon[pid] / 2**20:5.0f}, object store up to"
              f" {sampler.shmem[pid] / 2**20:5.0f})  pid {pid:<7} {sampler.titles[pid]}")
    others = {pid: peak for pid, peak in sampler.peaks.items() if pid not in workers}
    if others:
        pid = max(others, key=others.get)
        print(f"largest other process (Ray's own services): {others[pid] / 2**20:.0f} MiB, {sampler.titles.get(pid, '?')}")
    print(f"driver (this process): {_memory(os.getpid())['VmHWM'] / 2**20:.0f} MiB")
    private = max(sampler.anon[pid] for pid in workers)
    print(f"largest private part of a worker: {private / 2**20:.0f} MiB ({private / LIMIT_BYTES:.2f} of 1.5 GiB);"
          " the rest of a resident set is object-store pages it has read, shared by all")
    print(f"ratio peak worker RSS/1.5 GiB: {max(workers.values()) / LIMIT_BYTES:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
