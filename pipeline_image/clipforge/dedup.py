"""Semantic deduplication of clip embeddings (the SemDeDup scheme NeMo Curator uses), on faiss.

1. Every clip embedding under `<output>/<algo>_embd_parquet/` is read and L2-normalised.
2. Spherical k-means (faiss) puts similar clips in the same cluster; k is `dedup.nClusters`
   or about sqrt(number of clips).
3. Within each cluster, all pairwise cosine similarities are computed in blocks (matrix
   products, memory O(block x cluster size)); a pair is a duplicate when its similarity is
   at least 1 - eps.
4. Duplicate pairs link clips into groups (connected components, across clusters); each group
   keeps the clip with the smallest id and every other member is recorded as `duplicate_of` it. The rule
   depends on neither cluster order nor worker count, so reruns give the same dataset.

NeMo Curator compares clips only within their cluster, so two near-identical clips that
k-means puts in different clusters are never compared. Here a clip near the border of its
cluster (its second-nearest centroid no farther than the nearest plus the distance a
duplicate can be away, 2 sqrt(2 eps)) is also compared with the members of that second
cluster. That catches nearly all such splits; a duplicate pair split over clusters that are
not each other's nearest two is still missed.

Choosing eps depends on the embedder. For efficientnet-lite0 (the default), measured on the
synthetic samples (tests/pipeline/test_dedup.py, 480x272 sources): copies re-encoded at crf 36
score 0.993-0.995 against their originals, copies resized to 400x226 or 320x180 score
0.978-0.990, and distinct scenes score up to about 0.95. The spec's default eps 0.01
(similarity >= 0.99) finds the re-encodes but misses most resized copies; eps 0.03 (>= 0.97)
finds them all with a margin to distinct content, and is what we recommend for it. Sources
smaller than the embedder's 224 px input lose more when resized (a 160x96 copy of a 320x192
video scored only 0.89), so such copies are out of reach for any eps that spares distinct clips.

Step 3 runs as Ray tasks (clusters grouped into batches of similar cost, the embeddings
shared through the object store) when Ray is initialised and the set is large, in-process
otherwise; both run the same function on the same clusters, so the results are identical.

Outputs under `<output>/dedup/`: duplicates.parquet (id, duplicate_of, cosine_similarity,
cluster) and kept.parquet (id, source_video, span_start, span_end, cluster, num_duplicates).
"""

from __future__ import annotations

import io
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clipforge import layout
from clipforge.spec import VideoCurationJobSpec
from clipforge.storage import Storage, StorageError, join

log = logging.getLogger(__name__)

DEDUP_DIR = "dedup"
DUPLICATES_FILE = "duplicates.parquet"
KEPT_FILE = "kept.parquet"
# Sets at least this large are deduplicated on Ray when Ray is initialised.
RAY_MIN_CLIPS = 20_000
# Rows of the similarity matrix computed at once: memory is BLOCK_ROWS x cluster size floats.
BLOCK_ROWS = 1024
KMEANS_ITERATIONS = 20
KMEANS_SEED = 1234
META_COLUMNS = ("source_video", "span_start", "span_end")


class DedupError(RuntimeError):
    """Nothing to deduplicate, or embeddings that cannot be read; the message names the location."""


# ---------------------------------------------------------------------------------------------
# Core: arrays in, duplicate groups out.


@dataclass
class DedupResult:
    n: int
    clusters: int
    eps: float
    cluster_of: np.ndarray  # (n,) cluster of each clip
    duplicate: np.ndarray  # indices of the clips that are duplicates, sorted by id
    duplicate_of: np.ndarray  # index of the clip each duplicate is a duplicate of
    similarity: np.ndarray  # cosine similarity of each duplicate to the clip it duplicates
    kmeans_s: float = 0.0
    pairwise_s: float = 0.0
    distributed: bool = False

    @property
    def kept(self) -> np.ndarray:
        mask = np.ones(self.n, dtype=bool)
        mask[self.duplicate] = False
        return np.flatnonzero(mask)


def normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(norms)):
        raise DedupError(f"{int(np.sum((norms == 0) | ~np.isfinite(norms)))} embeddings are zero or not finite")
    return vectors / norms


def kmeans_clusters(vectors: np.ndarray, k: int, eps: float = 0.0, seed: int = KMEANS_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(cluster of each unit vector under spherical k-means with k centroids, second cluster or -1).

    The second cluster is the next nearest centroid when the vector lies near the border
    between the two: a duplicate of it (cosine >= 1 - eps, so within sqrt(2 eps)) may then have
    landed there, and the vector is also compared with that cluster's members.
    """
    n, dim = vectors.shape
    k = max(1, min(k, n))
    if k == 1:
        return np.zeros(n, dtype=np.int64), np.full(n, -1, dtype=np.int64)
    import faiss

    kmeans = faiss.Kmeans(
        dim, k, niter=KMEANS_ITERATIONS, seed=seed, spherical=True, verbose=False,
        min_points_per_centroid=1,  # small sets are fine; faiss would only warn
    )
    kmeans.train(vectors)
    squared, nearest = kmeans.index.search(vectors, 2)
    distance = np.sqrt(np.maximum(squared, 0))
    # A duplicate b of a lies within r = sqrt(2 eps) of a, so b can only be nearer to another
    # centroid than to a's own if a is within 2r of that centroid's border.
    border = distance[:, 1] <= distance[:, 0] + 2 * math.sqrt(2 * eps)
    second = np.where(border & (nearest[:, 1] >= 0), nearest[:, 1], -1)
    return nearest[:, 0].astype(np.int64), second.astype(np.int64)


def default_clusters(n: int) -> int:
    return max(1, round(math.sqrt(n)))


def _components(m: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Label of each of m nodes: the smallest node index of its connected component."""
    labels = np.arange(m)
    while True:
        new = labels.copy()
        np.minimum.at(new, left, labels[right])
        np.minimum.at(new, right, labels[left])
        while True:  # pointer jumping: follow labels to their roots
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, labels):
            return labels
        labels = new


_NO_EDGES = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))


def cluster_edges(
    vectors: np.ndarray, members: np.ndarray, queries: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Duplicate pairs (as indices into vectors) among `members`, and between `queries` (border
    clips of neighbouring clusters) and `members`: blocked matrix products, memory
    O(BLOCK_ROWS x len(members))."""
    x = vectors[members]
    threshold32 = np.float32(threshold)
    lefts, rights = [], []
    for start in range(0, len(members), BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, len(members))
        # Rows [start, stop) against columns [start, m): the upper triangle, blockwise.
        rows, cols = np.nonzero(x[start:stop] @ x[start:].T >= threshold32)
        upper = cols > rows
        lefts.append(members[rows[upper] + start])
        rights.append(members[cols[upper] + start])
    for start in range(0, len(queries), BLOCK_ROWS):
        block = queries[start:start + BLOCK_ROWS]
        rows, cols = np.nonzero(vectors[block] @ x.T >= threshold32)
        lefts.append(block[rows])
        rights.append(members[cols])
    if not lefts:
        return _NO_EDGES
    return np.concatenate(lefts), np.concatenate(rights)


def _cluster_edges_batch(vectors: np.ndarray, work: list[tuple[np.ndarray, np.ndarray]], threshold: float):
    parts = [cluster_edges(vectors, members, queries, threshold) for members, queries in work]
    if not parts:
        return _NO_EDGES
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _batches(work: list[tuple[np.ndarray, np.ndarray]], count: int) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Clusters dealt into at most `count` batches of about equal cost (pairs compared)."""
    cost = [len(m) * (len(m) + len(q)) for m, q in work]
    batches: list[list] = [[] for _ in range(max(1, min(count, len(work))))]
    load = [0] * len(batches)
    for i in sorted(range(len(work)), key=lambda i: -cost[i]):
        target = load.index(min(load))
        batches[target].append(work[i])
        load[target] += cost[i]
    return [b for b in batches if b]


def _edges_on_ray(vectors: np.ndarray, work: list, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    import ray

    remote = ray.remote(num_cpus=1, max_retries=3)(_cluster_edges_batch)
    vectors_ref = ray.put(vectors)  # one copy in the object store, read zero-copy by each task
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    parts = ray.get([remote.remote(vectors_ref, batch, threshold) for batch in _batches(work, 4 * cpus)])
    if not parts:
        return _NO_EDGES
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def deduplicate(
    ids: np.ndarray | list[str],
    vectors: np.ndarray,
    eps: float,
    n_clusters: int | None = None,
    distributed: bool | None = None,
) -> DedupResult:
    """Duplicate groups among clips `ids` with embeddings `vectors` (n x dim, any scale).

    distributed: True runs the per-cluster work as Ray tasks (Ray must be initialised), False
    in-process; None picks Ray when it is initialised and there are RAY_MIN_CLIPS clips or more.
    """
    ids = np.asarray(ids, dtype=object)
    n = len(ids)
    if vectors.ndim != 2 or vectors.shape[0] != n:
        raise DedupError(f"expected {n} embeddings as an (n, dim) array, got shape {vectors.shape}")
    if not 0 < eps < 1:
        raise DedupError(f"eps must be in (0, 1), got {eps}")
    if distributed is None:
        import sys

        ray = sys.modules.get("ray")  # initialised only if someone imported it
        distributed = bool(ray is not None and ray.is_initialized() and n >= RAY_MIN_CLIPS)
    if n == 0:
        empty = np.empty(0, dtype=np.int64)
        return DedupResult(0, 0, eps, empty, empty, empty, np.empty(0, dtype=np.float32), distributed=distributed)
    unit = normalize(vectors)
    k = max(1, min(n_clusters or default_clusters(n), n))

    started = time.perf_counter()
    cluster_of, second = kmeans_clusters(unit, k, eps)
    kmeans_s = time.perf_counter() - started

    # Per cluster: its members, and the border clips of other clusters to compare with them.
    members = np.split(*_grouped(cluster_of, np.arange(n), k))
    queries = np.split(*_grouped(second[second >= 0], np.flatnonzero(second >= 0), k))
    work = [(m, q) for m, q in zip(members, queries) if len(m) > 1 or (len(m) and len(q))]

    started = time.perf_counter()
    threshold = 1.0 - eps
    left, right = _edges_on_ray(unit, work, threshold) if distributed else _cluster_edges_batch(unit, work, threshold)

    # Groups: connected components over id ranks, so a group's label is its smallest id.
    by_id = np.argsort(ids, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[by_id] = np.arange(n)
    labels = _components(n, rank[left], rank[right]) if len(left) else np.arange(n)
    duplicate_ranks = np.flatnonzero(labels != np.arange(n))  # ascending rank: sorted by id
    duplicate, duplicate_of = by_id[duplicate_ranks], by_id[labels[duplicate_ranks]]
    similarity = np.einsum("ij,ij->i", unit[duplicate], unit[duplicate_of]).astype(np.float32)
    pairwise_s = time.perf_counter() - started
    return DedupResult(
        n=n, clusters=len(np.unique(cluster_of)), eps=eps, cluster_of=cluster_of,
        duplicate=duplicate, duplicate_of=duplicate_of, similarity=similarity,
        kmeans_s=kmeans_s, pairwise_s=pairwise_s, distributed=distributed,
    )


def _grouped(keys: np.ndarray, values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(values ordered by key, split points): np.split of them gives one array per key 0..k-1."""
    order = np.argsort(keys, kind="stable")
    return values[order], np.searchsorted(keys[order], np.arange(1, k))


# ---------------------------------------------------------------------------------------------
# Dataset: the job's embedding parquet files in, dedup/*.parquet and summary counts out.


def _read_table(storage: Storage, uri: str) -> pa.Table:
    try:
        return pq.read_table(pa.BufferReader(storage.read_bytes(uri)))
    except (OSError, pa.ArrowInvalid) as exc:
        raise DedupError(f"cannot read embeddings {uri}: {exc}") from None


def load_embeddings(storage: Storage, root: str, algorithm: str) -> tuple[pa.Table, np.ndarray]:
    """(id and metadata columns, float32 embeddings) of every clip under root's `<algo>_embd_parquet/`."""
    location = join(root, layout.embeddings_parquet_dir(algorithm))
    try:
        files = storage.list_files(location, ["*.parquet"])
    except StorageError:
        files = []
    if not files:
        others = _other_embedding_dirs(storage, root, layout.embeddings_parquet_dir(algorithm))
        hint = f"; found {', '.join(others)}: is embeddings.algorithm right?" if others else (
            "; run the job with embeddings enabled first"
        )
        raise DedupError(f"no {algorithm} embeddings to deduplicate: no parquet files under {location}{hint}")
    with ThreadPoolExecutor(max_workers=16) as pool:
        tables = list(pool.map(lambda f: _read_table(storage, f[0]), files))
    columns = ["id", "embedding", *META_COLUMNS]
    for (uri, *_), table in zip(files, tables):
        missing = [c for c in ("id", "embedding") if c not in table.column_names]
        if missing:
            raise DedupError(f"embeddings {uri} lack column(s) {', '.join(missing)}")
    tables = [t.select([c for c in columns if c in t.column_names]) for t in tables]
    table = pa.concat_tables(tables, promote_options="default")
    table = table.cast(table.schema.set(table.schema.get_field_index("id"), pa.field("id", pa.string())))
    for name in META_COLUMNS:  # older or foreign files: keep the output schema fixed
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(len(table), pa.string() if name == "source_video" else pa.float64()))
    embedding = table.column("embedding").combine_chunks()
    table = table.drop_columns(["embedding"])
    if len(table) == 0:
        return table, np.zeros((0, 1), dtype=np.float32)
    lengths = pc.list_value_length(embedding).to_numpy(zero_copy_only=False)
    if lengths.min() != lengths.max():
        raise DedupError(f"embeddings under {location} have different lengths ({lengths.min()}..{lengths.max()})")
    vectors = embedding.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(table), -1)
    ids = table.column("id").to_numpy(zero_copy_only=False)
    _, first = np.unique(ids, return_index=True)
    if len(first) != len(ids):  # the same clip twice (for example a copied parquet file): count it once
        log.warning("%d clip ids appear more than once under %s; using the first of each", len(ids) - len(first), location)
        first.sort()
        table, vectors = table.take(pa.array(first)), vectors[first]
    return table, vectors


def _other_embedding_dirs(storage: Storage, root: str, wanted: str) -> list[str]:
    import pyarrow.fs as pafs

    fs, path = storage.resolve(root)
    try:
        entries = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError:
        return []
    return sorted(e.base_name for e in entries if e.base_name.endswith("_embd_parquet") and e.base_name != wanted)


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def result_tables(meta: pa.Table, result: DedupResult) -> tuple[pa.Table, pa.Table]:
    """(duplicates, kept) as written to dedup/."""
    ids = meta.column("id")
    duplicates = pa.table({
        "id": ids.take(pa.array(result.duplicate, pa.int64())),
        "duplicate_of": ids.take(pa.array(result.duplicate_of, pa.int64())),
        "cosine_similarity": pa.array(result.similarity, pa.float32()),
        "cluster": pa.array(result.cluster_of[result.duplicate], pa.int32()),
    })
    kept_index = result.kept
    kept_index = kept_index[np.argsort(ids.to_numpy(zero_copy_only=False)[kept_index], kind="stable")]
    counts = np.bincount(result.duplicate_of, minlength=result.n) if result.n else np.zeros(0, dtype=np.int64)
    kept = meta.select(["id", *META_COLUMNS]).take(pa.array(kept_index, pa.int64()))
    kept = kept.append_column("cluster", pa.array(result.cluster_of[kept_index], pa.int32()))
    kept = kept.append_column("num_duplicates", pa.array(counts[kept_index], pa.int32()))
    return duplicates, kept


def dedup_output(spec: VideoCurationJobSpec, storage: Storage, distributed: bool | None = None) -> dict:
    """Deduplicates the embeddings of `dedup.inputUri` (or the job's output) into <output>/dedup/.

    Returns the summary counts (what summary.json holds under `dedup`).
    """
    source = spec.dedup.input_uri or spec.output.uri
    algorithm = spec.embeddings.algorithm
    meta, vectors = load_embeddings(storage, source, algorithm)
    result = deduplicate(
        meta.column("id").to_numpy(zero_copy_only=False), vectors, spec.dedup.eps,
        n_clusters=spec.dedup.n_clusters, distributed=distributed,
    )
    duplicates, kept = result_tables(meta, result)
    out = join(spec.output.uri, DEDUP_DIR)
    storage.write_bytes(join(out, DUPLICATES_FILE), _parquet_bytes(duplicates))
    storage.write_bytes(join(out, KEPT_FILE), _parquet_bytes(kept))
    summary = {
        "clips": result.n,
        "kept": len(kept),
        "duplicates": len(duplicates),
        "eps": result.eps,
        "clusters": result.clusters,
        "algorithm": algorithm,
        "input": join(source, layout.embeddings_parquet_dir(algorithm)),
        "distributed": result.distributed,
        "seconds": {"kmeans": round(result.kmeans_s, 3), "pairwise": round(result.pairwise_s, 3)},
    }
    log.info("dedup: %s", summary)
    return summary
