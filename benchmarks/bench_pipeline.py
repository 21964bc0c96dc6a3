"""Pipeline throughput against its floor, measured in the same run.

Generates a realistic input set (720p and 1080p, with hard cuts, moving and static scenes),
runs the whole pipeline on it, then measures the floor: one decode of every input plus one
encode of the kept frames with the same encoder settings, on all of this machine's cores, in
this process. Prints both and their ratio (pipeline throughput / floor throughput; 1.0 means
the pipeline costs no more than the unavoidable decode+encode).

The ratio is the steady state's, as on a dataset: each run pays a fixed start (a Python process
per stage worker importing Ray Data, PyAV and torch, and loading its model) that on 90
video-seconds weighs as much as a third of the work and on a dataset's hours nothing. So the
pipeline also runs on a start-up input (one 10 s clip) and its throughput is the difference:
the video-seconds the full input adds over the time they add. The whole run's ratio, start
included, is printed above it. Stream copy does so little per video-second that the start-up's
own variation would swamp 90 of them: its input holds each video `--copies` times (default 10).

On a shared machine the speed of everything drifts over minutes (other tenants of the host), so the
floor runs before the first pipeline run and after each one, each run is compared with the two
floors around it, and the median of `--repeats` such ratios (default 3) is the figure.

    python benchmarks/bench_pipeline.py                  # default stages: motion, previews, embeddings
    python benchmarks/bench_pipeline.py --stages off     # motion, previews and embeddings off
    python benchmarks/bench_pipeline.py --copy           # stream copy (nothing decoded), stages off
    python benchmarks/bench_pipeline.py --executor local --seconds 60
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from clipforge.codec.encode import ClipEncoder, output_size
from clipforge.samples import SampleVideo, Segment, write_samples
from clipforge.spec import RunReport, parse_job
from clipforge.stages.split import fixed_stride_spans
from clipforge.tasks import Clip


def inputs(seconds: float) -> list[SampleVideo]:
    third = seconds / 3
    return [
        SampleVideo(f"hd_{i}", 1280, 720, 30, (Segment(third, True, 10 * i + 1), Segment(third, False, 10 * i + 2),
                                             Segment(third, True, 10 * i + 3)))
        for i in range(2)
    ] + [
        SampleVideo("fullhd", 1920, 1080, 30, (Segment(seconds / 2, True, 31), Segment(seconds / 2, True, 32))),
    ]


def startup_input() -> SampleVideo:
    """One clip's worth of video: its run is the fixed start and one task through every stage."""
    return SampleVideo("startup", 1280, 720, 30, (Segment(10.0, True, 41),))


def job_document(input_dir: Path, output_dir: Path, executor: str, stages: bool, copy: bool) -> dict:
    spec = {
        "input": {"uri": str(input_dir)},
        "output": {"uri": str(output_dir)},
        "transcoding": {"encoder": "libx264", "preset": "veryfast", "mode": "copy" if copy else "encode"},
        "execution": {"executor": executor},
    }
    if not stages:
        spec.update(motionFilter={"mode": "disable"}, previews={"enabled": False}, embeddings={"enabled": False})
    return {"apiVersion": "clipforge.dev/v1alpha1", "kind": "VideoCurationJob", "metadata": {"name": "bench"},
            "spec": spec}


def cpu_seconds() -> float:
    """CPU time of this process so far (all its threads): less sensitive to a busy machine than
    wall time, and with the local executor it is the whole pipeline's work."""
    times = os.times()
    return times.user + times.system


def run_pipeline(document: dict, executor: str) -> tuple[float, RunReport]:
    """(seconds, summary) of one run. The seconds are the run's own, as its summary counts them:
    up to its end state, without the index and report written after it."""
    from clipforge.runner import run_job

    job = parse_job(document)
    if executor == "ray":
        from clipforge.executors.ray_data import start_ray

        # Started once and kept: the cluster's start is not part of the job's throughput, and
        # later runs reuse its workers.
        start_ray(job.spec, None)
    summary = run_job(job, executor=executor)
    return summary.elapsed_seconds, summary


def floor(document: dict, paths: list[Path]) -> tuple[float, float, int]:
    """(seconds, video seconds, clips): decode each input once, encode its kept frames once."""
    spec = parse_job(document).spec
    threads = os.cpu_count() or 1
    started = time.perf_counter()
    video_seconds, clips = 0.0, 0
    for path in paths:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            fps = stream.average_rate
            spans = fixed_stride_spans(stream.frames, float(fps), spec.splitting.fixed_stride)
            width, height = output_size(stream.codec_context.width, stream.codec_context.height,
                                        spec.transcoding.max_height)
            video_seconds += stream.frames / float(fps)
            clips += len(spans)
            encoders: dict[tuple[int, int], ClipEncoder] = {}
            for index, frame in enumerate(container.decode(stream)):
                for span in spans:
                    if span[0] <= index < span[1]:
                        if span not in encoders:
                            clip = Clip("floor", str(path), span[0], span[1], 0.0, 0.0)
                            encoders[span] = ClipEncoder.open(clip, spec.transcoding, Fraction(fps), width, height,
                                                              threads)
                        encoders[span].encode(index, frame.reformat(width, height, "yuv420p"))
                    if index == span[1] - 1 and span in encoders:
                        encoder = encoders.pop(span)
                        encoder.end_video()
                        encoder.finish(None, (0.0, 0.0))
    return time.perf_counter() - started, video_seconds, clips


@dataclass
class Run:
    """One repeat: the start-up run, the full run, and the floors measured before and after them."""

    startup_s: float
    pipeline_s: float
    pipeline_cpu: float
    floor_before: tuple[float, float, int]
    floor_after: tuple[float, float, int]
    floor_cpu: float
    summary: RunReport

    def ratios(self, input_seconds: float, startup_seconds: float) -> tuple[float, float]:
        """(whole run, steady state) throughput over the mean throughput of the floors around it."""
        floor_rate = statistics.mean(video_seconds / seconds for seconds, video_seconds, _ in
                                     (self.floor_before, self.floor_after))
        steady_rate = (input_seconds - startup_seconds) / (self.pipeline_s - self.startup_s)
        return input_seconds / self.pipeline_s / floor_rate, steady_rate / floor_rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each generated video")
    parser.add_argument("--executor", choices=["ray", "local"], default="ray")
    parser.add_argument("--stages", choices=["default", "off"], default="default",
                        help="default: motion, previews and EfficientNet embeddings; off: none of them")
    parser.add_argument("--copy", action="store_true", help="stream copy instead of re-encoding (stages off)")
    parser.add_argument("--copies", type=int, default=None,
                        help="each generated video is in the input this many times (default: 10 with --copy, else 1)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="pipeline runs, each between two floor runs; the median of their ratios counts")
    args = parser.parse_args()
    stages = args.stages == "default" and not args.copy
    copies = args.copies or (10 if args.copy else 1)

    with tempfile.TemporaryDirectory(prefix="clipforge-bench-") as tmp:
        input_dir, startup_dir, output_dir = Path(tmp) / "in", Path(tmp) / "startup", Path(tmp) / "out"
        print(f"generating {len(inputs(args.seconds))} videos of {args.seconds:.0f} s (720p, 1080p) ...", flush=True)
        paths = write_samples(input_dir, inputs(args.seconds))
        for path in paths:  # more of the same bytes under other names: other videos to the pipeline
            for copy in range(1, copies):
                os.link(path, path.with_name(f"{path.stem}_copy{copy}{path.suffix}"))
        startup = startup_input()
        write_samples(startup_dir, [startup])
        startup_seconds = sum(segment.seconds for segment in startup.segments)
        # The floor runs before the first pipeline run and after each, and each run's ratio is
        # taken against the two floors around it: on a shared machine (other tenants) the
        # speed of both drifts over minutes, and a ratio is only fair within one such stretch.
        floor_runs = [floor(job_document(input_dir, output_dir / "floor", args.executor, stages, args.copy), paths)]
        runs = []
        for repeat in range(args.repeats):
            # Each run writes a fresh folder: nothing is resumed from the run before.
            document = job_document(startup_dir, output_dir / f"startup-{repeat}", args.executor, stages, args.copy)
            startup_s = run_pipeline(document, args.executor)[0]
            document = job_document(input_dir, output_dir / str(repeat), args.executor, stages, args.copy)
            cpu = cpu_seconds()
            pipeline_s, summary = run_pipeline(document, args.executor)
            pipeline_cpu = cpu_seconds() - cpu
            cpu = cpu_seconds()
            floor_runs.append(floor(document, paths))
            floor_cpu = cpu_seconds() - cpu
            runs.append(Run(startup_s, pipeline_s, pipeline_cpu, floor_runs[-2], floor_runs[-1], floor_cpu, summary))

    input_seconds = runs[0].floor_after[1] * copies
    name = "stream copy" if args.copy else "pipeline"
    print(f"input: {input_seconds:.0f} video-seconds in {len(paths) * copies} videos; start-up input: {startup_seconds:.0f};"
          f" floor: {runs[0].floor_after[1]:.0f} video-seconds in {len(paths)} videos")
    print(f"floor before the first run (decode+encode): {floor_runs[0][0]:7.2f} s")
    ratios = []  # (whole run, steady state) of each run
    for repeat, run in enumerate(runs):
        summary, (floor_s, _, floor_clips) = run.summary, run.floor_after
        clips = summary.clips.passed + summary.clips.filtered
        print(f"run {repeat + 1}: {name} ({args.executor}) {run.pipeline_s:7.2f} s  {clips / run.pipeline_s:5.2f} clips/s"
              f" ({summary.clips.passed} passed, {summary.clips.filtered} filtered);"
              f" start-up input {run.startup_s:6.2f} s; floor after {floor_s:7.2f} s  {floor_clips / floor_s:5.2f} clips/s")
        if args.executor == "local":  # Ray's workers are other processes: their CPU time is not seen here
            print(f"       cpu seconds: pipeline {run.pipeline_cpu:.1f}, floor {run.floor_cpu:.1f}"
                  f" (floor/pipeline {run.floor_cpu / run.pipeline_cpu:.2f})")
        if run.pipeline_s <= run.startup_s:
            print(f"the input took no longer than the start-up input ({run.pipeline_s:.2f} s against {run.startup_s:.2f} s):"
                  " too little to measure a steady state; raise --seconds or --copies")
            return 1
        ratios.append(run.ratios(input_seconds, startup_seconds))
        print(f"       whole run {ratios[-1][0]:.2f}, steady state {ratios[-1][1]:.2f} of the floor's throughput")
    what = name if stages or args.copy else "pipeline (motion, previews, embeddings off)"
    whole, steady = (statistics.median(column) for column in zip(*ratios))
    print(f"ratio {what}/floor throughput, whole run (start included), median of {len(runs)}: {whole:.2f}")
    print(f"ratio {what}/floor throughput: {steady:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
