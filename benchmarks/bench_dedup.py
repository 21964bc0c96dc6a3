"""Semantic dedup on a large synthetic set: k-means and pairwise time, in-process against Ray.

Random 768-d embeddings (the worst case for k-means: no structure to find) with planted
near-duplicates: `--copies` clips are noisy copies (cosine similarity about 0.995) of others.
Random 768-d vectors are almost orthogonal (|cos| < 0.25), so the duplicates to find are
exactly the planted ones; the run checks that and prints recall and false positives.

    python benchmarks/bench_dedup.py                     # 100k x 768, in-process then Ray
    python benchmarks/bench_dedup.py --n 20000 --no-ray
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from clipforge.dedup import deduplicate


def planted(n: int, dim: int, copies: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """(ids, embeddings, copy index -> original index)."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    chosen = rng.choice(n, 2 * copies, replace=False)
    originals, copied = chosen[:copies], chosen[copies:]
    # noise of relative size 0.1: cosine similarity about 1 / sqrt(1 + 0.01) = 0.995
    vectors[copied] = vectors[originals] + 0.1 * rng.standard_normal((copies, dim), dtype=np.float32)
    ids = np.array([f"clip-{i:07d}" for i in range(n)], dtype=object)
    return ids, vectors, dict(zip(copied.tolist(), originals.tolist()))


def check(result, truth: dict[int, int]) -> str:  # noqa: ANN001
    found = {frozenset(p) for p in zip(result.duplicate.tolist(), result.duplicate_of.tolist())}
    expected = {frozenset(p) for p in truth.items()}
    return f"recall {len(found & expected)}/{len(expected)}, false positives {len(found - expected)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--copies", type=int, default=1000)
    parser.add_argument("--eps", type=float, default=0.01)
    parser.add_argument("--clusters", type=int, default=None, help="k-means k (default: about sqrt(n))")
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()

    started = time.perf_counter()
    ids, vectors, truth = planted(args.n, args.dim, args.copies)
    print(f"{args.n} x {args.dim} embeddings, {args.copies} planted copies, eps {args.eps}, "
          f"{os.cpu_count()} cores (generated in {time.perf_counter() - started:.1f} s)")

    runs = [("in-process", False)] + ([] if args.no_ray else [("ray", True)])
    results = {}
    for label, distributed in runs:
        if distributed:
            import ray

            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            ray.init(include_dashboard=False, log_to_driver=False)
        started = time.perf_counter()
        result = deduplicate(ids, vectors, args.eps, n_clusters=args.clusters, distributed=distributed)
        total = time.perf_counter() - started
        results[label] = result
        print(f"{label:>10}: k-means {result.kmeans_s:6.2f} s ({result.clusters} clusters), "
              f"pairwise {result.pairwise_s:6.2f} s, total {total:6.2f} s; "
              f"{len(result.duplicate)} duplicates: {check(result, truth)}")
    if len(results) == 2:
        a, b = results.values()
        same = np.array_equal(a.duplicate, b.duplicate) and np.array_equal(a.duplicate_of, b.duplicate_of)
        print(f"in-process and ray results identical: {same}")
        return 0 if same else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
