"""What one decode shared by scene detection and transcode could save: the most it could win.

With TransNetV2 splitting, every frame is decoded twice: split decodes the video (to 48x27
RGB for the model), then transcode decodes the clips' spans again to encode them. A pipeline
that decoded once would save at most split's decode (and its 48x27 conversion). This measures,
in this process on one thread, CPU seconds of:

    decode     split's decode of every frame to 48x27 RGB (what one decode would save)
    split      TransNetV2's whole split (the decode above plus the model)
    transcode  transcode of the resulting clips (decode of their spans, libx264 encode)

and prints `ratio decode/transcode: X`, what one decode could save at best where the model runs
on a GPU (its CPU time then near nothing), and `ratio decode/(split+transcode): Y`, the same on
CPU only; both before what buffering frames across a whole scene would cost.

    python benchmarks/bench_scene_decode.py                 # 1080p, 30 s, 3 runs
    python benchmarks/bench_scene_decode.py --height 720 --seconds 60
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av

from clipforge.samples import SampleVideo, Segment, write_video
from clipforge.scenes import TRANSNET_HEIGHT, TRANSNET_WIDTH, TransNetV2Detector, _decoded, _video_stream
from clipforge.spec import VideoCurationJobSpec
from clipforge.stages.probe import probe_container
from clipforge.stages.transcode import TranscodeStage
from clipforge.tasks import Clip, VideoTask, clip_uuid

SCENE_SECONDS = 10


def cpu_seconds(work: Callable[[], object]) -> float:
    started = time.process_time()
    work()
    return time.process_time() - started


def split_decode(path: Path) -> None:
    with av.open(str(path)) as container:
        stream = _video_stream(container, threads=1)
        for _ in _decoded(container, stream, lambda w, h: (TRANSNET_WIDTH, TRANSNET_HEIGHT), "rgb24"):
            pass


def transcode_task(spec: VideoCurationJobSpec, path: Path, spans: list[tuple[int, int]]) -> VideoTask:
    with av.open(str(path)) as container:
        meta = probe_container(container, path.stat().st_size, spec.execution.limits)
    fps = meta.framerate
    clips = [Clip(clip_uuid(str(path), s, e), str(path), s, e, s / fps, e / fps) for s, e in spans]
    return VideoTask(source=str(path), relative_path=path.name, meta=meta, clips=clips)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    width = args.height * 16 // 9
    scenes = tuple(Segment(SCENE_SECONDS, True, n) for n in range(args.seconds // SCENE_SECONDS))
    spec = VideoCurationJobSpec(input={"uri": "-"}, output={"uri": "-"},
                                splitting={"algorithm": "transnetv2"},
                                execution={"stages": {"transcode": {"cpus": 1}}})
    detector = TransNetV2Detector(spec.splitting.transnetv2, threads=1)
    transcode = TranscodeStage(spec, (TranscodeStage,))
    with tempfile.TemporaryDirectory() as tmp:
        path = write_video(SampleVideo("scenes", width, args.height, 30, scenes), Path(tmp) / "scenes.mp4")
        spans = detector.detect(str(path)).spans
        print(f"input: {width}x{args.height}, {args.seconds} s, {len(scenes)} scenes -> {len(spans)} clips")
        figures: dict[str, list[float]] = {"decode": [], "split": [], "transcode": []}
        for _ in range(args.runs):  # interleaved: drift in the machine's speed hits all alike
            figures["decode"].append(cpu_seconds(lambda: split_decode(path)))
            figures["split"].append(cpu_seconds(lambda: detector.detect(str(path))))
            figures["transcode"].append(cpu_seconds(lambda: transcode.process(transcode_task(spec, path, spans))))
    median = {name: statistics.median(values) for name, values in figures.items()}
    for name, value in median.items():
        print(f"{name}: {value:.2f} CPU s (median of {args.runs})")
    print(f"ratio decode/transcode: {median['decode'] / median['transcode']:.3f}")
    print(f"ratio decode/(split+transcode): {median['decode'] / (median['split'] + median['transcode']):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
