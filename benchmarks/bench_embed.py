"""Embed stage throughput: clips/s per embedder, on CPU and (when present) on CUDA.

Clips are synthetic H.264 clips (clipforge.samples: panning textures) of `--seconds` at
`--width`x`--height`. What is timed is EmbedStage.process on one chunk of `--clips` clips:
the model on the frames transcode hands over (in a job they come from transcode's decode of
the source; here from one decode of each clip, timed on its own as "decode").

    python benchmarks/bench_embed.py                                # efficientnet-lite0
    python benchmarks/bench_embed.py --models-uri /models --algorithms clip siglip cosmos-embed1-224p
    python benchmarks/bench_embed.py --tiny    # + tiny random CLIP/SigLIP: our overhead, not the models'
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from clipforge.frames import sample_encoded
from clipforge.samples import SampleVideo, Segment, write_video
from clipforge.spec import VideoCurationJobSpec
from clipforge.stages import embed as embed_stage
from clipforge.tasks import Clip, VideoTask


def make_clips(n: int, seconds: float, width: int, height: int, fps: int, directory: Path) -> VideoTask:
    clips = []
    for i in range(n):
        video = SampleVideo(f"c{i}", width, height, fps, (Segment(seconds, True, 100 + i),))
        data = write_video(video, directory / f"c{i}.mp4").read_bytes()
        frames = round(seconds * fps)
        clips.append(Clip(f"clip-{i}", "bench", 0, frames, 0.0, seconds, encoded=data, width=width,
                          height=height, framerate=fps, num_frames=frames, video_codec="h264"))
    return VideoTask(source="bench", relative_path="bench", clips=clips, num_clips_total=n)


def make_tiny(root: Path) -> None:
    """Tiny random CLIP and SigLIP checkpoints (as the tests build them) under root."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "pipeline"))
    from test_embed import make_tiny_clip, make_tiny_siglip  # noqa: PLC0415

    make_tiny_clip(root / "clip")
    make_tiny_siglip(root / "siglip")


def bench(spec: VideoCurationJobSpec, task: VideoTask, device: str, repeats: int) -> tuple[float, float, int]:
    """(clips/s, decode-only clips/s, dim)."""
    original = embed_stage._device
    embed_stage._device = lambda: device
    try:
        stage = embed_stage.EmbedStage(spec)
        stage.setup()
    finally:
        embed_stage._device = original
    request = embed_stage.EmbedStage.frame_request(spec)
    best_decode = float("inf")
    task = copy.deepcopy(task)
    for _ in range(repeats):
        start = time.perf_counter()
        for clip in task.clips:
            clip.frames = sample_encoded(clip.encoded, [request])
        best_decode = min(best_decode, time.perf_counter() - start)
    stage.process(copy.deepcopy(VideoTask(**{**task.__dict__, "clips": task.clips[:2]})))  # warm-up
    best = float("inf")
    dim = 0
    for _ in range(repeats):
        work = copy.deepcopy(task)
        start = time.perf_counter()
        stage.process(work)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
        dim = work.clips[0].embedding.shape[1]
    n = len(task.clips)
    return n / best, n / best_decode, dim


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--algorithms", nargs="*", default=["efficientnet-lite0"])
    parser.add_argument("--models-uri", help="models.uri for the embedders that need a model directory")
    parser.add_argument("--tiny", action="store_true", help="also time tiny random CLIP/SigLIP checkpoints")
    args = parser.parse_args()

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        task = make_clips(args.clips, args.seconds, args.width, args.height, args.fps, tmp)
        runs = [(a, args.models_uri) for a in args.algorithms]
        if args.tiny:
            make_tiny(tmp / "tiny")
            runs += [("clip", str(tmp / "tiny")), ("siglip", str(tmp / "tiny"))]
        print(f"{args.clips} clips of {args.seconds:g} s at {args.width}x{args.height} {args.fps} fps;"
              f" torch {torch.__version__}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")
        for algorithm, uri in runs:
            spec = VideoCurationJobSpec.model_validate(
                {"input": {"uri": "/in"}, "output": {"uri": "/out"}, "embeddings": {"algorithm": algorithm},
                 "models": {"uri": uri}}
            )
            label = algorithm + (" (tiny)" if uri and args.tiny and uri.endswith("tiny") else "")
            for device in devices:
                rate, decode_rate, dim = bench(spec, task, device, args.repeats)
                print(f"{label:28s} {device:5s} dim {dim:5d}: {rate:7.2f} clips/s"
                      f"  (decode alone {decode_rate:7.2f} clips/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
