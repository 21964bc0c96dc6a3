"""Semantic deduplication of clip embeddings (the SemDeDup scheme NeMo Curator uses), on faiss.

1. Every clip embedding under `<output>/<algo>_embd_parquet/` is read and L2-normalised.
2. Spherical k-means (faiss) puts similar clips in the same cluster; k is `dedup.nClusters`
   or about sqrt(number of clips).
3. Within each cluster, all pairwise cosine similarities are computed in blocks (matrix
   products, memory O(block x cluster size)); a pair is a duplicate when its similarity is
   at least 1 - eps.
4. Duplicate pairs link clips into groups (connected components); each group keeps the clip
   with the smallest id and every other member is recorded as `duplicate_of` it. The rule
   depends on neither cluster order nor worker count, so reruns give the same dataset.

Like NeMo Curator's, this is exact within a cluster and approximate across clusters: two
near-identical clips that k-means puts in different clusters are not compared. Near-identical
vectors almost always share their nearest centroid; more clusters make a split more likely.

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


def embeddings_dir_name(algorithm: str) -> str:
    """`<algo>_embd_parquet`: cosmos-embed1 (every resolution) writes `ce1_embd_parquet`."""
    prefix = "ce1" if algorithm.startswith("cosmos-embed1") else algorithm
    return f"{prefix}_embd_parquet"


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


def kmeans_clusters(vectors: np.ndarray, k: int, seed: int = KMEANS_SEED) -> np.ndarray:
    """Cluster of each (unit) vector under spherical k-means with k centroids."""
    n, dim = vectors.shape
    k = max(1, min(k, n))
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    import faiss

    kmeans = faiss.Kmeans(
        dim, k, niter=KMEANS_ITERATIONS, seed=seed, spherical=True, verbose=False,
        min_points_per_centroid=1,  # small sets are fine; faiss would only warn
    )
    kmeans.train(vectors)
    _, assignment = kmeans.index.search(vectors, 1)
    return assignment[:, 0].astype(np.int64)


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


def dedup_cluster(vectors: np.ndarray, members: np.ndarray, threshold: float) -> tuple[np.ndarray, ...]:
    """(duplicates, their representatives, similarities) among `members`, as indices into vectors.

    `members` must be sorted by clip id: the representative of a group is its first member.
    """
    m = len(members)
    empty = np.empty(0, dtype=np.int64)
    if m < 2:
        return empty, empty, np.empty(0, dtype=np.float32)
    x = vectors[members]
    threshold32 = np.float32(threshold)
    lefts, rights = [], []
    for start in range(0, m, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, m)
        # Rows [start, stop) against columns [start, m): the upper triangle, blockwise.
        sims = x[start:stop] @ x[start:].T
        rows, cols = np.nonzero(sims >= threshold32)
        upper = cols > rows
        lefts.append(rows[upper] + start)
        rights.append(cols[upper] + start)
    left, right = np.concatenate(lefts), np.concatenate(rights)
    if not len(left):
        return empty, empty, np.empty(0, dtype=np.float32)
    labels = _components(m, left, right)
    local = np.flatnonzero(labels != np.arange(m))
    reps = labels[local]
    similarity = np.einsum("ij,ij->i", x[local], x[reps]).astype(np.float32)
    return members[local], members[reps], similarity


def _dedup_clusters(vectors: np.ndarray, groups: list[np.ndarray], threshold: float) -> tuple[np.ndarray, ...]:
    parts = [dedup_cluster(vectors, members, threshold) for members in groups]
    if not parts:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def _batches(groups: list[np.ndarray], count: int) -> list[list[np.ndarray]]:
    """Clusters dealt into at most `count` batches of about equal pairwise cost (size squared)."""
    order = sorted(range(len(groups)), key=lambda i: -len(groups[i]))
    batches: list[list[np.ndarray]] = [[] for _ in range(max(1, min(count, len(groups))))]
    load = [0] * len(batches)
    for i in order:
        target = load.index(min(load))
        batches[target].append(groups[i])
        load[target] += len(groups[i]) ** 2
    return [b for b in batches if b]


def _pairwise_on_ray(vectors: np.ndarray, groups: list[np.ndarray], threshold: float) -> tuple[np.ndarray, ...]:
    import ray

    remote = ray.remote(num_cpus=1, max_retries=3)(_dedup_clusters)
    vectors_ref = ray.put(vectors)  # one copy in the object store, read zero-copy by each task
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    refs = [remote.remote(vectors_ref, batch, threshold) for batch in _batches(groups, 4 * cpus)]
    parts = ray.get(refs)
    if not parts:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


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
    unit = normalize(vectors) if n else np.zeros((0, vectors.shape[1]), dtype=np.float32)
    k = max(1, min(n_clusters or default_clusters(n), max(n, 1)))

    started = time.perf_counter()
    cluster_of = kmeans_clusters(unit, k) if n else np.zeros(0, dtype=np.int64)
    kmeans_s = time.perf_counter() - started

    # Members of each cluster, sorted by clip id (a stable sort of the id order).
    by_id = np.argsort(ids, kind="stable") if n else np.zeros(0, dtype=np.int64)
    sorted_clusters = cluster_of[by_id]
    order = np.argsort(sorted_clusters, kind="stable")
    members_sorted = by_id[order]
    bounds = np.flatnonzero(np.diff(sorted_clusters[order])) + 1
    groups = [g for g in np.split(members_sorted, bounds) if len(g) > 1] if n else []

    started = time.perf_counter()
    threshold = 1.0 - eps
    if distributed:
        dup, rep, sim = _pairwise_on_ray(unit, groups, threshold)
    else:
        dup, rep, sim = _dedup_clusters(unit, groups, threshold)
    pairwise_s = time.perf_counter() - started

    order = np.argsort(ids[dup], kind="stable") if len(dup) else np.zeros(0, dtype=np.int64)
    return DedupResult(
        n=n, clusters=int(len(np.unique(cluster_of))) if n else 0, eps=eps, cluster_of=cluster_of,
        duplicate=dup[order], duplicate_of=rep[order], similarity=sim[order],
        kmeans_s=kmeans_s, pairwise_s=pairwise_s, distributed=distributed,
    )


# ---------------------------------------------------------------------------------------------
# Dataset: the job's embedding parquet files in, dedup/*.parquet and summary counts out.


def _read_table(storage: Storage, uri: str) -> pa.Table:
    try:
        return pq.read_table(pa.BufferReader(storage.read_bytes(uri)))
    except (OSError, pa.ArrowInvalid) as exc:
        raise DedupError(f"cannot read embeddings {uri}: {exc}") from None


def load_embeddings(storage: Storage, root: str, algorithm: str) -> tuple[pa.Table, np.ndarray]:
    """(id and metadata columns, float32 embeddings) of every clip under root's `<algo>_embd_parquet/`."""
    location = join(root, embeddings_dir_name(algorithm))
    try:
        files = storage.list_files(location, ["*.parquet"])
    except StorageError:
        files = []
    if not files:
        others = _other_embedding_dirs(storage, root, embeddings_dir_name(algorithm))
        hint = f"; found {', '.join(others)}: is embeddings.algorithm right?" if others else (
            "; run the job with embeddings enabled first"
        )
        raise DedupError(f"no {algorithm} embeddings to deduplicate: no parquet files under {location}{hint}")
    with ThreadPoolExecutor(max_workers=16) as pool:
        tables = list(pool.map(lambda f: _read_table(storage, f[0]), files))
    columns = ["id", "embedding", *META_COLUMNS]
    for (uri, _rel, _size), table in zip(files, tables):
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
        "input": join(source, embeddings_dir_name(algorithm)),
        "distributed": result.distributed,
        "seconds": {"kmeans": round(result.kmeans_s, 3), "pairwise": round(result.pairwise_s, 3)},
    }
    log.info("dedup: %s", summary)
    return summary
