"""Semantic deduplication of clip embeddings (the SemDeDup scheme NeMo Curator uses), on faiss.

1. The clip embeddings under `<output>/<algo>_embd_parquet/` are read in parts of at most
   PART_ROWS rows and L2-normalised.
2. Spherical k-means (faiss) is fitted on a sample of them (SAMPLE_PER_CENTROID clips per
   centroid, chosen by a hash of the clip id, so the same clips whatever the order or the number
   of workers); k is `dedup.nClusters` or about sqrt(number of clips). Every clip then goes to its
   nearest centroid.
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

Choosing eps for an embedder: docs/dedup.md.

On Ray (when it is initialised and the set is large) steps 1-3 are tasks: each part is read
by a task that samples it, then by one that assigns its clips and deals them out by cluster
into batches of about equal cost (estimated from the sample); each comparison task then holds
only its batch's clusters, so no process ever holds every embedding. In-process, the same
functions run on the same parts in order, so both give identical results.

Outputs under `<output>/dedup/`: duplicates.parquet (id, duplicate_of, cosine_similarity,
cluster) and kept.parquet (id, source_video, span_start, span_end, cluster, num_duplicates).
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import time
from collections.abc import Callable, Sequence
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
# Clips k-means is fitted on, per centroid (faiss asks for 39 at least and uses 256 at most).
SAMPLE_PER_CENTROID = 128
# Rows one task reads at once, and clips (members) one comparison task holds, at most (1 KiB
# each at dim 256): a task's memory stays at a few times this whatever the number of clips.
PART_ROWS = 25_000
BATCH_ROWS = 50_000
# Comparison batches per CPU of the cluster, at least: one slow batch does not idle the rest.
BATCHES_PER_CPU = 4
META_COLUMNS = ("source_video", "span_start", "span_end")


class DedupError(RuntimeError):
    """Nothing to deduplicate, or embeddings that cannot be read; the message names the location."""


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


def default_clusters(n: int) -> int:
    return max(1, round(math.sqrt(n)))


# ---------------------------------------------------------------------------------------------
# Parts: where a task's rows come from.


@dataclass(frozen=True)
class FilePart:
    """Embedding parquet files, read by whichever process runs the task."""

    storage: Storage
    uris: tuple[str, ...]
    rows: int  # from the files' footers

    def load(self) -> tuple[pa.Table, np.ndarray]:
        return embedding_rows(self.storage, self.uris)


@dataclass(frozen=True)
class ArrayPart:
    """Rows already in memory: ids (and any metadata) with their embeddings."""

    meta: pa.Table
    vectors: np.ndarray

    def load(self) -> tuple[pa.Table, np.ndarray]:
        return self.meta, self.vectors


Part = FilePart | ArrayPart


def id_hashes(ids: pa.Array | np.ndarray | Sequence[str]) -> np.ndarray:
    """A stable 64-bit hash of each clip id: the sample depends on the ids alone."""
    values = ids.to_pylist() if isinstance(ids, (pa.Array, pa.ChunkedArray)) else list(ids)
    return np.array([int.from_bytes(hashlib.blake2b(str(v).encode(), digest_size=8).digest(), "little")
                     for v in values], dtype=np.uint64)


def sample_part(part: Part, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(ids, unit vectors) of the part's clips whose id hash falls in the first `fraction` of the range."""
    meta, vectors = part.load()
    ids = meta.column("id").to_numpy(zero_copy_only=False).astype(object)
    chosen = id_hashes(ids) < np.uint64(min(int(fraction * 2**64), 2**64 - 1)) if fraction < 1 else slice(None)
    chosen_vectors = vectors[chosen]
    del vectors  # the part's rows, when this task read them
    return ids[chosen], normalize(chosen_vectors) if len(ids) else np.zeros((0, chosen_vectors.shape[1]), np.float32)


def fit_centroids(ids: np.ndarray, unit: np.ndarray, k: int) -> np.ndarray:
    """k unit centroids of spherical k-means on the sample, taken in id order (any order of
    parts gives the same fit)."""
    if k == 1:
        centroid = unit.sum(axis=0)
        return (centroid / (np.linalg.norm(centroid) or 1.0))[None, :].astype(np.float32)
    import faiss

    order = np.argsort(ids, kind="stable")
    kmeans = faiss.Kmeans(
        unit.shape[1], k, niter=KMEANS_ITERATIONS, seed=KMEANS_SEED, spherical=True, verbose=False,
        min_points_per_centroid=1,  # small sets are fine; faiss would only warn
    )
    kmeans.train(np.ascontiguousarray(unit[order]))
    return kmeans.centroids.copy()


def assign(unit: np.ndarray, centroids: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(nearest centroid of each unit vector, second-nearest or -1).

    The second cluster is the next nearest centroid when the vector lies near the border
    between the two: a duplicate of it (cosine >= 1 - eps, so within sqrt(2 eps)) may then have
    landed there, and the vector is also compared with that cluster's members.
    """
    if len(centroids) == 1:
        return np.zeros(len(unit), dtype=np.int64), np.full(len(unit), -1, dtype=np.int64)
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(centroids)
    squared, nearest = index.search(unit, 2)
    distance = np.sqrt(np.maximum(squared, 0))
    # A duplicate b of a lies within r = sqrt(2 eps) of a, so b can only be nearer to another
    # centroid than to a's own if a is within 2r of that centroid's border.
    border = distance[:, 1] <= distance[:, 0] + 2 * math.sqrt(2 * eps)
    second = np.where(border & (nearest[:, 1] >= 0), nearest[:, 1], -1)
    return nearest[:, 0].astype(np.int64), second.astype(np.int64)


@dataclass(frozen=True)
class Rows:
    """Clips dealt to one comparison batch: their global row index, unit vector and cluster;
    `member` False for a border clip visiting from its own cluster."""

    index: np.ndarray
    unit: np.ndarray
    cluster: np.ndarray
    member: np.ndarray

    @staticmethod
    def concat(parts: Sequence[Rows]) -> Rows:
        return Rows(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("index", "unit", "cluster", "member")))


def assign_part(part: Part, offset: int, centroids: np.ndarray, eps: float,
                batch_of: np.ndarray) -> tuple[pa.Table, *tuple[Rows, ...]]:
    """The part's metadata with each clip's cluster, then one Rows per batch (batch_of: cluster -> batch)."""
    meta, vectors = part.load()
    unit = normalize(vectors) if len(meta) else np.zeros((0, centroids.shape[1]), np.float32)
    del vectors
    cluster, second = assign(unit, centroids, eps)
    rows = offset + np.arange(len(meta))
    visiting = np.flatnonzero(second >= 0)
    batches = []
    for batch in range(int(batch_of.max()) + 1):
        own = np.flatnonzero(batch_of[cluster] == batch)
        guests = visiting[batch_of[second[visiting]] == batch]
        batches.append(Rows(np.concatenate([rows[own], rows[guests]]), np.concatenate([unit[own], unit[guests]]),
                            np.concatenate([cluster[own], second[guests]]),
                            np.concatenate([np.ones(len(own), bool), np.zeros(len(guests), bool)])))
    return (meta.append_column("cluster", pa.array(cluster, pa.int32())), *batches)


_NO_EDGES = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))


def cluster_edges(x: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Duplicate pairs (as positions) among one cluster's members `x`: blocked matrix products,
    memory O(BLOCK_ROWS x len(x))."""
    threshold32 = np.float32(threshold)
    lefts, rights = [], []
    for start in range(0, len(x), BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, len(x))
        # Rows [start, stop) against columns [start, m): the upper triangle, blockwise.
        rows, cols = np.nonzero(x[start:stop] @ x[start:].T >= threshold32)
        upper = cols > rows
        lefts.append(rows[upper] + start)
        rights.append(cols[upper] + start)
    if not lefts:
        return _NO_EDGES
    return np.concatenate(lefts), np.concatenate(rights)


def batch_edges(rows: Rows, threshold: float) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
    """Duplicate pairs (global row indices) within the batch's clusters, with the unit vector of
    every clip in a pair (for the similarity to the clip its group keeps)."""
    order = np.lexsort((~rows.member, rows.cluster))  # per cluster: members, then visitors
    cluster = rows.cluster[order]
    starts = np.flatnonzero(np.r_[True, cluster[1:] != cluster[:-1]])
    lefts, rights = [], []
    for start, stop in zip(starts, np.r_[starts[1:], len(order)]):
        taken = order[start:stop]
        members, visitors = taken[rows.member[taken]], taken[~rows.member[taken]]
        if len(members) < 2 and not (len(members) and len(visitors)):
            continue
        x = rows.unit[members]
        left, right = cluster_edges(x, threshold)
        lefts.append(rows.index[members[left]])
        rights.append(rows.index[members[right]])
        for block in range(0, len(visitors), BLOCK_ROWS):
            guests = visitors[block:block + BLOCK_ROWS]
            g, m = np.nonzero(rows.unit[guests] @ x.T >= np.float32(threshold))
            lefts.append(rows.index[guests[g]])
            rights.append(rows.index[members[m]])
    if not lefts:
        return *_NO_EDGES, {}
    left, right = np.concatenate(lefts), np.concatenate(rights)
    paired = np.unique(np.concatenate([left, right]))
    position = {int(i): p for p, i in enumerate(rows.index)}
    return left, right, {int(i): rows.unit[position[int(i)]] for i in paired}


def _batch_plan(sample_clusters: np.ndarray, k: int, count: int) -> np.ndarray:
    """cluster -> batch: clusters dealt into `count` batches of about equal cost (pairs compared),
    estimated from the sample's cluster sizes."""
    size = np.bincount(sample_clusters, minlength=k) + 1
    batch_of = np.zeros(k, dtype=np.int64)
    load = np.zeros(max(1, min(count, k)), dtype=np.float64)
    for cluster in np.argsort(-size * size, kind="stable"):
        target = int(np.argmin(load))
        batch_of[cluster] = target
        load[target] += float(size[cluster]) ** 2
    return batch_of


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


# ---------------------------------------------------------------------------------------------
# The run: parts in, duplicate groups out, in this process or as Ray tasks.


class _InProcess:
    cpus = 1

    @staticmethod
    def map(fn: Callable, calls: list[tuple], num_returns: int = 1) -> list:
        return [fn(*args) for args in calls]

    @staticmethod
    def get(value):  # noqa: ANN001, ANN205 - a value in, the same value out
        return value


class _OnRay:
    def __init__(self):
        import ray

        self.ray = ray
        self.cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))

    def map(self, fn: Callable, calls: list[tuple], num_returns: int = 1) -> list:
        # Every return its own object: a comparison task fetches only its batch of each part.
        remote = self.ray.remote(num_cpus=1, max_retries=3, num_returns=num_returns)(fn)
        return [remote.remote(*args) for args in calls]

    def get(self, refs):  # noqa: ANN001, ANN201
        return self.ray.get(refs)


def deduplicate_parts(parts: Sequence[Part], eps: float, n_clusters: int | None = None,
                      distributed: bool = False) -> tuple[pa.Table, DedupResult]:
    """(every clip's metadata with its cluster, the duplicate groups) of the clips in `parts`."""
    if not 0 < eps < 1:
        raise DedupError(f"eps must be in (0, 1), got {eps}")
    run = _OnRay() if distributed else _InProcess()
    sizes = [len(p.meta) if isinstance(p, ArrayPart) else p.rows for p in parts]
    offsets = np.r_[0, np.cumsum(sizes)][:-1].tolist()
    n = int(sum(sizes))
    if n == 0:
        empty = pa.table({"id": pa.array([], pa.string()), "source_video": pa.array([], pa.string()),
                          "span_start": pa.array([], pa.float64()), "span_end": pa.array([], pa.float64())})
        return empty, _groups(None, [], eps, 0.0, 0.0, distributed)
    k = max(1, min(n_clusters or default_clusters(n), n))

    started = time.perf_counter()
    fraction = min(1.0, SAMPLE_PER_CENTROID * k / n)
    sampled = run.get(run.map(sample_part, [(part, fraction) for part in parts]))
    sample_ids = np.concatenate([ids for ids, _ in sampled])
    if not len(sample_ids):
        raise DedupError(f"no clip of {n} fell in the k-means sample")
    sample = np.concatenate([unit for _, unit in sampled])
    del sampled
    centroids = fit_centroids(sample_ids, sample, min(k, len(sample_ids)))
    batches = max(BATCHES_PER_CPU * run.cpus, math.ceil(n / BATCH_ROWS))
    batch_of = _batch_plan(assign(sample, centroids, 0.0)[0], len(centroids), batches)
    del sample
    assigned = run.map(assign_part, [(part, offset, centroids, eps, batch_of) for part, offset in zip(parts, offsets)],
                       num_returns=int(batch_of.max()) + 2)
    kmeans_s = time.perf_counter() - started

    started = time.perf_counter()
    batches = int(batch_of.max()) + 1
    compare = run.map(_compare_batch, [([a[1 + b] for a in assigned], 1.0 - eps) for b in range(batches)])
    meta = pa.concat_tables(run.get([a[0] for a in assigned]), promote_options="default")
    edges = run.get(compare)
    meta, edges = _first_of_each_id(meta, edges)
    return meta, _groups(meta, edges, eps, kmeans_s, started, distributed)


def _first_of_each_id(meta: pa.Table, edges: list) -> tuple[pa.Table, list]:
    """The same clip twice (for example a copied parquet file) counts once: its first row."""
    ids = meta.column("id").to_numpy(zero_copy_only=False)
    _, first = np.unique(ids, return_index=True)
    if len(first) == len(ids):
        return meta, edges
    log.warning("%d clip ids appear more than once; using the first of each", len(ids) - len(first))
    first.sort()
    new_index = np.full(len(ids), -1, dtype=np.int64)
    new_index[first] = np.arange(len(first))
    kept = []
    for left, right, vectors in edges:
        both = (new_index[left] >= 0) & (new_index[right] >= 0)
        kept.append((new_index[left[both]], new_index[right[both]],
                     {int(new_index[i]): v for i, v in vectors.items() if new_index[i] >= 0}))
    return meta.take(pa.array(first)), kept


def _compare_batch(rows: list, threshold: float):  # noqa: ANN202 - see batch_edges
    # On Ray the list holds object refs, which a task gets resolved only at the top level.
    if rows and not isinstance(rows[0], Rows):
        import ray

        rows = ray.get(rows)
    return batch_edges(Rows.concat(rows), threshold)


def _groups(meta: pa.Table | None, edges: list, eps: float, kmeans_s: float, started: float,
            distributed: bool) -> DedupResult:
    """Connected components over the pairs, by id rank so that a group keeps its smallest id."""
    if meta is None or len(meta) == 0:
        empty = np.empty(0, dtype=np.int64)
        return DedupResult(0, 0, eps, empty, empty, empty, np.empty(0, np.float32), distributed=distributed)
    n = len(meta)
    ids = meta.column("id").to_numpy(zero_copy_only=False).astype(object)
    left = np.concatenate([e[0] for e in edges]) if edges else _NO_EDGES[0]
    right = np.concatenate([e[1] for e in edges]) if edges else _NO_EDGES[1]
    vectors = {i: v for e in edges for i, v in e[2].items()}
    by_id = np.argsort(ids, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[by_id] = np.arange(n)
    labels = _components(n, rank[left], rank[right]) if len(left) else np.arange(n)
    duplicate_ranks = np.flatnonzero(labels != np.arange(n))  # ascending rank: sorted by id
    duplicate, duplicate_of = by_id[duplicate_ranks], by_id[labels[duplicate_ranks]]
    similarity = np.array([float(vectors[int(d)] @ vectors[int(o)]) for d, o in zip(duplicate, duplicate_of)],
                          dtype=np.float32)
    cluster_of = meta.column("cluster").to_numpy(zero_copy_only=False).astype(np.int64)
    return DedupResult(
        n=n, clusters=len(np.unique(cluster_of)), eps=eps, cluster_of=cluster_of,
        duplicate=duplicate, duplicate_of=duplicate_of, similarity=similarity,
        kmeans_s=kmeans_s, pairwise_s=time.perf_counter() - started, distributed=distributed,
    )


def _use_ray(distributed: bool | None, n: int) -> bool:
    if distributed is not None:
        return distributed
    import sys

    ray = sys.modules.get("ray")  # initialised only if someone imported it
    return bool(ray is not None and ray.is_initialized() and n >= RAY_MIN_CLIPS)


def deduplicate(
    ids: np.ndarray | list[str],
    vectors: np.ndarray,
    eps: float,
    n_clusters: int | None = None,
    distributed: bool | None = None,
) -> DedupResult:
    """Duplicate groups among clips `ids` with embeddings `vectors` (n x dim, any scale).

    distributed: True runs the work as Ray tasks (Ray must be initialised), False in-process;
    None picks Ray when it is initialised and there are RAY_MIN_CLIPS clips or more.
    """
    ids = np.asarray(ids, dtype=object)
    n = len(ids)
    if vectors.ndim != 2 or vectors.shape[0] != n:
        raise DedupError(f"expected {n} embeddings as an (n, dim) array, got shape {vectors.shape}")
    meta = pa.table({"id": pa.array(ids.tolist(), pa.string())})
    parts = [ArrayPart(meta.slice(start, PART_ROWS), vectors[start:start + PART_ROWS])
             for start in range(0, n, PART_ROWS)]
    return deduplicate_parts(parts, eps, n_clusters, _use_ray(distributed, n))[1]


# ---------------------------------------------------------------------------------------------
# Dataset: the job's embedding parquet files in, dedup/*.parquet and summary counts out.


def _read_table(storage: Storage, uri: str, columns: list[str] | None = None) -> pa.Table:
    try:
        return pq.read_table(pa.BufferReader(storage.read_bytes(uri)), columns=columns)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DedupError(f"cannot read embeddings {uri}: {exc}") from None


def _row_count(storage: Storage, uri: str) -> int:
    fs, path = storage.resolve(uri)
    try:
        with fs.open_input_file(path) as file:  # the footer only
            return pq.read_metadata(file).num_rows
    except (OSError, pa.ArrowInvalid) as exc:
        raise DedupError(f"cannot read embeddings {uri}: {exc}") from None


def _row_counts(storage: Storage, uris: Sequence[str]) -> list[int]:
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(lambda uri: _row_count(storage, uri), uris))


def embedding_files(storage: Storage, root: str, algorithm: str) -> list[str]:
    """Every `<algo>_embd_parquet/**.parquet` under root, sorted; DedupError naming the place when none."""
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
    return [listed[0] for listed in files]


def embedding_rows(storage: Storage, uris: Sequence[str]) -> tuple[pa.Table, np.ndarray]:
    """(id and metadata columns, float32 embeddings) of the clips in `uris`, in their order."""
    columns = ["id", "embedding", *META_COLUMNS]
    with ThreadPoolExecutor(max_workers=16) as pool:
        tables = list(pool.map(lambda uri: _read_table(storage, uri), uris))
    for uri, table in zip(uris, tables):
        missing = [c for c in ("id", "embedding") if c not in table.column_names]
        if missing:
            raise DedupError(f"embeddings {uri} lack column(s) {', '.join(missing)}")
    table = pa.concat_tables([t.select([c for c in columns if c in t.column_names]) for t in tables],
                             promote_options="default")
    table = table.cast(table.schema.set(table.schema.get_field_index("id"), pa.field("id", pa.string())))
    for name in META_COLUMNS:  # older or foreign files: keep the output schema fixed
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(len(table), pa.string() if name == "source_video" else pa.float64()))
    embedding = table.column("embedding")
    table = table.drop_columns(["embedding"])
    if len(table) == 0:
        return table, np.zeros((0, 1), dtype=np.float32)
    lengths = pc.list_value_length(embedding).to_numpy(zero_copy_only=False)
    if lengths.min() != lengths.max():
        raise DedupError(f"embeddings in {uris[0]} .. {uris[-1]} have different lengths ({lengths.min()}..{lengths.max()})")
    # One copy, chunk by chunk: the part's memory is what bounds a task's.
    values = [chunk.flatten().to_numpy(zero_copy_only=False) for chunk in embedding.chunks]
    del embedding, tables
    return table, np.concatenate(values, dtype=np.float32).reshape(len(table), -1)


def file_parts(storage: Storage, uris: Sequence[str], counts: Sequence[int]) -> list[FilePart]:
    """The files in consecutive groups of at most PART_ROWS rows (or one file, if larger)."""
    parts, group, rows = [], [], 0
    for uri, count in zip(uris, counts):
        if group and rows + count > PART_ROWS:
            parts.append(FilePart(storage, tuple(group), rows))
            group, rows = [], 0
        group.append(uri)
        rows += count
    if group:
        parts.append(FilePart(storage, tuple(group), rows))
    return parts


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
    uris = embedding_files(storage, source, algorithm)
    counts = _row_counts(storage, uris)
    if _use_ray(distributed, sum(counts)):
        meta, result = deduplicate_parts(file_parts(storage, uris, counts), spec.dedup.eps, spec.dedup.n_clusters, True)
    else:  # one read: every row is in this process anyway
        meta, vectors = embedding_rows(storage, uris)
        parts = [ArrayPart(meta.slice(start, PART_ROWS), vectors[start:start + PART_ROWS])
                 for start in range(0, len(meta), PART_ROWS)]
        meta, result = deduplicate_parts(parts, spec.dedup.eps, spec.dedup.n_clusters, False)
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
