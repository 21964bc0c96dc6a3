"""Semantic dedup of many embeddings on a local Ray: every process's peak memory, and the result
against brute force.

Generates `--clips` (default 1,000,000) embeddings of dimension 256 as the embed stage writes
them (one parquet file per video, `--per-file` clips each) under a temporary output: clips drawn
around 2,000 centres, 1 % of them near copies (cosine >= 0.995) of another clip. Then runs
`clipforge.dedup.dedup_output` on a private local Ray with 2 CPUs, sampling the peak resident set
(VmHWM) of every Ray worker twice a second, and compares the duplicate pairs it found among the
first 20,000 clips (whole files, so with the copies planted in them) with every pair of them at
cosine >= 1 - eps (brute force).

    python benchmarks/bench_dedup_scale.py                  # 1,000,000 clips (about 1 GiB on disk)
    python benchmarks/bench_dedup_scale.py --clips 100000   # a quicker look

Prints each figure with its goal; the last line is `goals met: K of N`.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench_worker_memory import PeakSampler  # every descendant's VmHWM, RssAnon and title
from clipforge import dedup, layout
from clipforge.spec import VideoCurationJobSpec
from clipforge.storage import Storage

DIM = 256
CENTRES = 2_000
COPY_SHARE = 0.01
EPS = 0.01
CHECK_SAMPLE = 20_000
WORKER_RSS_GOAL_MIB = 1536


def write_embeddings(root: Path, clips: int, per_file: int, rng: np.random.Generator) -> None:
    centres = rng.standard_normal((CENTRES, DIM)).astype(np.float32)
    folder = root / layout.embeddings_parquet_dir("efficientnet-lite0")
    folder.mkdir(parents=True)
    for first in range(0, clips, per_file):
        count = min(per_file, clips - first)
        vectors = centres[rng.integers(0, CENTRES, count)] + rng.standard_normal((count, DIM)).astype(np.float32)
        copies = rng.random(count) < COPY_SHARE
        originals = rng.integers(0, count, int(copies.sum()))
        vectors[copies] = vectors[originals] + 0.02 * rng.standard_normal((int(copies.sum()), DIM)).astype(np.float32)
        table = pa.table({
            "id": [f"clip-{first + i:08d}" for i in range(count)],
            "embedding": pa.FixedSizeListArray.from_arrays(vectors.reshape(-1), DIM).cast(pa.list_(pa.float32())),
            "source_video": [f"videos/v{first // per_file:06d}.mp4"] * count,
            "span_start": np.arange(count, dtype=np.float64) * 5,
            "span_end": np.arange(count, dtype=np.float64) * 5 + 5,
        })
        pq.write_table(table, folder / f"v{first // per_file:06d}.parquet")


def brute_force_pairs(ids: np.ndarray, unit: np.ndarray) -> set[tuple[str, str]]:
    """Every pair of the clips at cosine >= 1 - EPS, 2,000 rows of the matrix at a time."""
    pairs = set()
    for start in range(0, len(ids), 2_000):
        rows, cols = np.nonzero(unit[start:start + 2_000] @ unit.T >= np.float32(1 - EPS))
        pairs.update(tuple(sorted((ids[start + r], ids[c]))) for r, c in zip(rows, cols) if start + r < c)
    return pairs


def grouped_pairs(ids: np.ndarray, group: dict[str, str]) -> set[tuple[str, str]]:
    """Pairs of the clips that dedup put in one group."""
    members: dict[str, list[str]] = {}
    for clip in ids:
        members.setdefault(group[clip], []).append(clip)
    return {tuple(sorted((a, b))) for clips in members.values() for i, a in enumerate(clips) for b in clips[i + 1:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=1_000_000)
    parser.add_argument("--per-file", type=int, default=1_000, help="clips per embeddings parquet (one video's)")
    args = parser.parse_args()
    import ray

    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory(prefix="clipforge-bench-dedup-") as tmp:
        root = Path(tmp) / "out"
        started = time.perf_counter()
        write_embeddings(root, args.clips, args.per_file, rng)
        print(f"wrote {args.clips:,} embeddings (dim {DIM}) in {time.perf_counter() - started:.0f} s", flush=True)
        spec = VideoCurationJobSpec.model_validate({
            "input": {"uri": "/unused"}, "output": {"uri": str(root)},
            "embeddings": {"enabled": True}, "dedup": {"enabled": True, "eps": EPS},
        })
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            with PeakSampler() as peaks:
                started = time.perf_counter()
                summary = dedup.dedup_output(spec, Storage(), distributed=True)
                seconds = time.perf_counter() - started
        finally:
            ray.shutdown()
        driver_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"dedup: {summary['clips']:,} clips, {summary['duplicates']:,} duplicates, {summary['clusters']} clusters"
              f" in {seconds:.0f} s (k-means {summary['seconds']['kmeans']:.0f} s)")

        duplicates = pq.read_table(root / dedup.DEDUP_DIR / dedup.DUPLICATES_FILE).to_pydict()
        root_of = dict(zip(duplicates["id"], duplicates["duplicate_of"]))
        meta, vectors = dedup.embedding_rows(Storage(), dedup.embedding_files(Storage(), str(root), "efficientnet-lite0"))
        ids = meta.column("id").to_numpy(zero_copy_only=False)
        # Whole files: each holds its planted copies with their originals.
        ids, unit = ids[:CHECK_SAMPLE], dedup.normalize(vectors[:CHECK_SAMPLE])
        del vectors
        expected = brute_force_pairs(ids, unit)
        group = {i: root_of.get(i, i) for i in ids}
        found = grouped_pairs(ids, group)

    workers = [pid for pid, title in peaks.titles.items() if title.startswith("ray::")]
    worker_peak = max((peaks.peaks[pid] for pid in workers), default=0) / 2**20  # bytes
    private_peak = max((peaks.anon[pid] for pid in workers), default=0) / 2**20
    heaviest = peaks.titles[max(workers, key=peaks.peaks.get)] if workers else "none"
    results = [
        (f"peak RSS of the heaviest Ray worker ({heaviest}): {worker_peak:.0f} MiB (goal <= {WORKER_RSS_GOAL_MIB} MiB)",
         worker_peak <= WORKER_RSS_GOAL_MIB),
        (f"duplicate pairs in a {len(ids):,}-clip sample: {len(found)} found, {len(expected)} by brute force,"
         f" equal: {found == expected} (goal: equal)", found == expected),
    ]
    for line, _ in results:
        print(line)
    print(f"peak private memory (RssAnon) of the heaviest Ray worker: {private_peak:.0f} MiB (no goal; the rest"
          " of its peak RSS is object-store pages it mapped)")
    print(f"driver peak RSS: {driver_mib:.0f} MiB (no goal)")
    print(f"goals met: {sum(met for _, met in results)} of {len(results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
