"""Index and report over a large synthetic output, against just reading its records.

Writes an output of `--clips` clip records (metas/v0, as the writer writes them: captions,
embedding, scores; a tenth filtered, a hundredth failed) over `--videos` video records, then
times, in this process:

    baseline   listing metas/v0 and processed_videos and parsing every record (what any index
               over this layout must at least do)
    index      clip_index.write_index: the same reads, plus typed parquet shards
    report     report.write_report: reads the index, writes the page and its data files

The last line is the ratio of index + report to the baseline.

    python benchmarks/bench_index_report.py                 # 100k clips in a temporary folder
    python benchmarks/bench_index_report.py --clips 20000 --keep /tmp/bench-output
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from clipforge import clip_index, layout, report
from clipforge.storage import Storage
from clipforge.tasks import clip_uuid


def synthetic_meta(video: str, index: int, rng: random.Random) -> dict:
    start = index * 5
    clip_id = clip_uuid(video, start * 30, (start + 5) * 30)
    failed = rng.random() < 0.01
    filtered = not failed and rng.random() < 0.1
    return {
        "span_uuid": clip_id, "source_video": video, "duration_span": [float(start), start + 5.0],
        "span_frames": [start * 30, (start + 5) * 30], "keyframe_aligned": False,
        "width_source": 1920, "height_source": 1080, "framerate_source": 30.0,
        "width": None if failed else 1280, "height": None if failed else 720, "framerate": None if failed else 30.0,
        "num_frames": None if failed else 150, "video_codec": None if failed else "h264",
        "num_bytes": 0 if failed else rng.randrange(200_000, 4_000_000),
        "clip_location": None if failed else layout.clip_file("", clip_id, filtered, "mp4"),
        "preview_location": None if failed else layout.preview_file("", clip_id),
        "motion_score": {"global_mean": rng.random() * 0.01, "per_patch_min_256": rng.random() * 0.001},
        "filtered_by": "motion" if filtered else None,
        "aesthetic_score": rng.uniform(2, 7),
        "scores": {},
        "windows": [] if failed or filtered else [
            {"start_frame": 0, "end_frame": 150, "frames_used": 10, "caption": "a street at dusk " * rng.randrange(2, 8)}
        ],
        "embedding": None if failed or filtered else {
            "algorithm": "efficientnet-lite0", "dim": 1280,
            "location": layout.embedding_file("", "efficientnet-lite0", clip_id),
        },
        "text_match": None, "valid": not failed, "missing_outputs": [],
        "errors": {"transcode": "EncodeError: broken frame"} if failed else {},
    }


def synthetic_output(root: Path, clips: int, videos: int) -> None:
    storage, rng = Storage(), random.Random(0)
    per_video = -(-clips // videos)
    jobs = []
    for v in range(videos):
        relative = f"batch-{v % 10}/video-{v:05d}.mp4"
        video = f"s3://raw/{relative}"
        metas = [synthetic_meta(video, i, rng) for i in range(min(per_video, clips - v * per_video))]
        record = {
            "video": video, "relative_path": relative, "split_algorithm": "transnetv2", "num_chunks": 1,
            "metadata": {"container": "mov,mp4,m4a,3gp,3g2,mj2", "size_bytes": 10**8, "duration_s": 5.0 * len(metas),
                         "width": 1920, "height": 1080, "framerate": 30.0, "num_frames": 150 * len(metas),
                         "video_codec": "h264", "pix_fmt": "yuv420p", "bit_rate": 8 * 10**6, "has_audio": True},
            "num_clips": len(metas), "num_clips_passed": sum(m["filtered_by"] is None and m["clip_location"] is not None for m in metas),
            "num_clips_filtered": sum(m["filtered_by"] is not None for m in metas),
            "num_clips_failed": sum(m["clip_location"] is None for m in metas),
            "clip_chunks": [f"processed_clip_chunks/{relative}_0.json"], "errors": {}, "processed_at": "2026-01-01T00:00:00Z",
        }
        jobs += [(layout.clip_meta(str(root), m["span_uuid"]), m) for m in metas]
        # The chunk record names the video's clips: the index lists the clips chunk records name.
        chunk = {"clips": [m["span_uuid"] for m in metas if m["clip_location"] and m["filtered_by"] is None],
                 "filtered_clips": [m["span_uuid"] for m in metas if m["filtered_by"] is not None],
                 "failed_clips": {m["span_uuid"]: m["errors"] for m in metas if m["clip_location"] is None}}
        jobs.append((layout.chunk_record(str(root), relative, 0), chunk))
        jobs.append((layout.video_record(str(root), relative), record))
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda job: storage.write_json(*job), jobs))


def read_records(storage: Storage, root: str) -> int:
    parsed = 0
    with ThreadPoolExecutor(max_workers=clip_index.READ_THREADS) as pool:
        for directory in (layout.METAS, layout.PROCESSED_VIDEOS):
            listing = storage.list_files(layout.join(root, directory), ["*.json"], missing_ok=True)
            for raw in pool.map(storage.read_bytes, [listed.uri for listed in listing]):
                json.loads(raw)
                parsed += 1
    return parsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=100_000)
    parser.add_argument("--videos", type=int, default=2_000)
    parser.add_argument("--keep", help="write the output here and keep it (default: a temporary folder)")
    args = parser.parse_args()

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-index-"))
    started = time.perf_counter()
    synthetic_output(root, args.clips, args.videos)
    print(f"{args.clips} clip records over {args.videos} videos in {root}, {os.cpu_count()} cores "
          f"(written in {time.perf_counter() - started:.1f} s)")
    storage = Storage()
    try:
        started = time.perf_counter()
        parsed = read_records(storage, str(root))
        baseline = time.perf_counter() - started
        print(f"  baseline: {baseline:6.2f} s  list and parse {parsed} records")

        started = time.perf_counter()
        result = clip_index.write_index(storage, str(root))
        index_s = time.perf_counter() - started
        shards = len(clip_index.parts(storage, str(root), layout.CLIP_INDEX))
        size = sum(p.stat().st_size for p in (root / layout.INDEX).rglob("*.parquet"))
        print(f"     index: {index_s:6.2f} s  {result.clips} clips, {result.videos} videos;"
              f" {shards} clip shards, {size / 1e6:.1f} MB of parquet")

        started = time.perf_counter()
        report.write_report(storage, str(root))
        report_s = time.perf_counter() - started
        page = (root / layout.REPORT / "index.html").stat().st_size
        data = list((root / layout.REPORT / "data").iterdir())
        print(f"    report: {report_s:6.2f} s  index.html {page / 1e3:.1f} kB, {len(data)} data files of"
              f" at most {max(p.stat().st_size for p in data) / 1e3:.0f} kB")
        print(f"ratio index+report vs reading the records: {(index_s + report_s) / baseline:.2f}")
    finally:
        if not args.keep:
            shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
