"""One long video against the same video-seconds as separate files, in the same run.

The inputs are 1080p: `--videos` parts (default: one per core) of moving scenes, and one long
video that is exactly those parts end to end (their packets concatenated, so every frame is the
same). The default pipeline (bench_pipeline's job, with one transcode worker per part)
curates the parts, then the long video, on one local Ray. A long video whose chunks all went
to one worker would take about as long as its parts one after another; the ratio is the long
video's throughput over the parts' (1.0: a long video keeps every core as busy as separate
videos do).

    python benchmarks/bench_long_video.py                         # 10 minutes of 1080p
    python benchmarks/bench_long_video.py --minutes 2 --clips-per-chunk 4
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import av

from bench_pipeline import job_document, run_pipeline
from clipforge.samples import SampleVideo, Segment, write_video
from clipforge.spec import RunReport

SCENE_SECONDS = 10


def write_parts(directory: Path, minutes: float, parts: int, fps: int, preset: str,
                size: tuple[int, int] = (1920, 1080)) -> list[Path]:
    """`parts` videos (1080p unless `size` says otherwise) of moving scenes, `minutes` in all, each
    starting on a keyframe."""
    full, rest = divmod(minutes * 60 / parts, SCENE_SECONDS)
    lengths = [SCENE_SECONDS] * int(full) + ([rest] if rest else [])
    paths = []
    for i in range(parts):
        scenes = tuple(Segment(length, True, 1000 * i + n) for n, length in enumerate(lengths))
        video = SampleVideo(f"part_{i:02d}", *size, fps, scenes)
        paths.append(write_video(video, directory / f"{video.name}.mp4", gop=2 * fps, preset=preset))
    return paths


def concatenate(parts: list[Path], path: Path, repeat: int = 1) -> Path:
    """One video of the parts' packets end to end (`repeat` times): the same frames, no re-encode.

    The parts come from one encoder with the same settings, so they share their parameter sets,
    and each starts on a keyframe with closed GOPs: the stream decodes straight through.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        template = None
        offset = 0
        for part in parts * repeat:
            with av.open(str(part)) as source:
                stream = source.streams.video[0]
                if template is None:
                    template = out.add_stream_from_template(stream)
                last_end = offset
                for packet in source.demux(stream):
                    if packet.dts is None:  # the demuxer's end-of-stream marker
                        continue
                    last_end = max(last_end, offset + packet.pts + packet.duration)
                    packet.pts += offset
                    packet.dts += offset
                    packet.stream = template
                    out.mux(packet)
                offset = last_end
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="video minutes in each case")
    parser.add_argument("--videos", type=int, default=os.cpu_count() or 1, help="separate videos (default: cores)")
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--clips-per-chunk", type=int, default=None,
                        help="execution.clipsPerChunk (default: the spec's); short runs need small chunks to have several")
    parser.add_argument("--input-preset", default="ultrafast", help="libx264 preset of the generated inputs")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each case, alternating (separate, long, long, separate, ...); the fastest counts")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="clipforge-bench-long-") as tmp:
        separate, long_dir = Path(tmp) / "separate", Path(tmp) / "long"
        print(f"generating {args.minutes:g} min of 1080p as {args.videos} videos and as one ...", flush=True)
        parts = write_parts(separate, args.minutes, args.videos, args.fps, args.input_preset)
        concatenate(parts, long_dir / "long.mp4")

        def run(input_dir: Path, output_dir: Path) -> tuple[float, RunReport]:
            document = job_document(input_dir, output_dir, "ray", stages=True, copy=False)
            execution = document["spec"]["execution"]
            # One transcoder per separate video: the separate case keeps them all busy, and so
            # must the long one (transcode is where the time goes).
            execution["stages"] = {"transcode": {"minWorkers": args.videos, "maxWorkers": args.videos}}
            if args.clips_per_chunk:
                execution["clipsPerChunk"] = args.clips_per_chunk
            return run_pipeline(document, "ray")

        # Untimed: Ray's first workers import torch and PyAV; later runs reuse those processes.
        run(write_parts(Path(tmp) / "warm_up", SCENE_SECONDS / 60, 1, args.fps, args.input_preset)[0].parent,
            Path(tmp) / "out_warm_up")
        results: dict[str, tuple[float, RunReport]] = {}
        cases = [("separate", separate), ("long", long_dir)]
        for repeat in range(args.repeats):
            for name, input_dir in cases if repeat % 2 == 0 else cases[::-1]:
                elapsed, summary = run(input_dir, Path(tmp) / f"out_{name}_{repeat}")
                assert summary.videos.failed == 0, summary.failures
                print(f"  {name}: {elapsed:.2f} s", flush=True)
                if name not in results or elapsed < results[name][0]:
                    results[name] = (elapsed, summary)

    for name, (elapsed, summary) in results.items():
        seconds = summary.video_seconds_processed
        clips = summary.clips.passed + summary.clips.filtered
        print(f"{name:>8}: {summary.videos.done} videos, {seconds:.0f} video-s, {clips} clips"
              f" in {elapsed:7.2f} s  {seconds / elapsed:6.2f} video-s/s")
    (long_s, long_summary), (separate_s, separate_summary) = results["long"], results["separate"]
    long_rate = long_summary.video_seconds_processed / long_s
    separate_rate = separate_summary.video_seconds_processed / separate_s
    print(f"ratio long/separate: {long_rate / separate_rate:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
