"""Semantic dedup: exact pairs on synthetic embeddings, Ray and in-process agree, the outputs, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.jobs import load_json, manifest, write_manifest

from clipforge.cli import main
from clipforge import dedup
from clipforge.dedup import deduplicate, normalize
from clipforge.spec import VideoCurationJobSpec
from clipforge.storage import Storage

DIM = 64
EPS = 0.05  # threshold 0.95


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _at_similarity(rng: np.random.Generator, base: np.ndarray, similarity: float) -> np.ndarray:
    """A unit vector whose cosine similarity to `base` is exactly `similarity`."""
    base = _unit(base)
    other = rng.standard_normal(base.shape)
    other = _unit(other - other @ base * base)
    return similarity * base + np.sqrt(1 - similarity**2) * other


def synthetic(seed: int = 7, distinct: int = 400) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """(ids, embeddings, expected duplicate -> kept id). Ids are shuffled so index order is not id order."""
    rng = np.random.default_rng(seed)
    vectors = [rng.standard_normal(DIM) for _ in range(distinct)]
    names = [f"distinct-{i:04d}" for i in range(distinct)]
    expected: dict[str, str] = {}

    def add(name: str, vector: np.ndarray) -> None:
        names.append(name)
        vectors.append(vector)

    # Exact duplicates: the same embedding, and the same one scaled (cosine ignores the norm).
    add("a-exact-0", vectors[0]), add("a-exact-1", vectors[0].copy()), add("a-exact-2", 3.5 * vectors[0])
    expected.update({"a-exact-1": "a-exact-0", "a-exact-2": "a-exact-0", "distinct-0000": "a-exact-0"})
    # Near duplicates on either side of the threshold (0.95), by 0.001 to 0.01.
    for i, similarity in enumerate([0.999, 0.96, 0.951, 0.949, 0.94, 0.9]):
        base = vectors[10 + i]
        add(f"near-{i}-{similarity}", _at_similarity(rng, base, similarity))
        if similarity >= 1 - EPS:
            expected[f"near-{i}-{similarity}"] = names[10 + i]
    # A chain: b ~ c and c ~ d at 0.975, b and d only about 0.90: one group, kept as "b-chain-0".
    b = _unit(vectors[20])
    c = _at_similarity(rng, b, 0.975)
    d = _at_similarity(rng, c, 0.975)
    while not 0.85 < float(_unit(d) @ b) < 0.94:  # keep the far end of the chain below the threshold
        d = _at_similarity(rng, c, 0.975)
    vectors[20] = b
    names[20] = "b-chain-0"
    add("b-chain-1", c), add("b-chain-2", d)
    expected.update({"b-chain-1": "b-chain-0", "b-chain-2": "b-chain-0"})

    order = rng.permutation(len(names))
    return np.array(names, dtype=object)[order], np.array(vectors, dtype=np.float32)[order], expected


def brute_force_groups(ids: np.ndarray, vectors: np.ndarray, eps: float) -> dict[str, str]:
    """duplicate -> kept id from all n^2 similarities, groups by union-find: the reference."""
    unit = normalize(vectors)
    sims = unit @ unit.T
    parent = {name: name for name in ids}

    def root(x: str) -> str:
        while parent[x] != x:
            x = parent[x]
        return x

    for i, j in zip(*np.nonzero(np.triu(sims >= np.float32(1 - eps), k=1))):
        a, b = sorted((root(ids[i]), root(ids[j])))
        parent[b] = a
    return {name: root(name) for name in ids if root(name) != name}


def found(ids: np.ndarray, result) -> dict[str, str]:  # noqa: ANN001
    return dict(zip(ids[result.duplicate], ids[result.duplicate_of]))


@pytest.mark.parametrize("n_clusters", [None, 1, 12])
def test_finds_exactly_the_duplicates(n_clusters):
    ids, vectors, expected = synthetic()
    result = deduplicate(ids, vectors, EPS, n_clusters=n_clusters, distributed=False)
    assert found(ids, result) == expected == brute_force_groups(ids, vectors, EPS)
    assert result.clusters == (n_clusters or round(np.sqrt(len(ids))))
    assert len(result.kept) == len(ids) - len(expected)
    # Similarity to the kept clip: 1 for exact copies, the planted value for near ones,
    # and below the threshold for the chain's far end (linked through its middle).
    sims = dict(zip(ids[result.duplicate], result.similarity))
    assert sims["a-exact-1"] == pytest.approx(1.0, abs=1e-6) and sims["a-exact-2"] == pytest.approx(1.0, abs=1e-6)
    assert sims["near-2-0.951"] == pytest.approx(0.951, abs=1e-5)
    assert sims["b-chain-1"] == pytest.approx(0.975, abs=1e-5) and sims["b-chain-2"] < 1 - EPS


def test_eps_moves_the_threshold():
    ids, vectors, _ = synthetic()
    strict = found(ids, deduplicate(ids, vectors, 1e-4, distributed=False))
    assert set(strict) == {"a-exact-1", "a-exact-2", "distinct-0000"}  # exact copies only
    loose = found(ids, deduplicate(ids, vectors, 0.065, distributed=False))
    assert "near-4-0.94" in loose and "near-5-0.9" not in loose
    assert loose == brute_force_groups(ids, vectors, 0.065)


def test_degenerate_sets():
    assert deduplicate(np.array([], dtype=object), np.zeros((0, 8), np.float32), EPS).n == 0
    one = deduplicate(np.array(["x"], dtype=object), np.ones((1, 8), np.float32), EPS)
    assert one.kept.tolist() == [0] and len(one.duplicate) == 0
    two = deduplicate(np.array(["b", "a"], dtype=object), np.ones((2, 8), np.float32), EPS, n_clusters=5)
    assert two.duplicate.tolist() == [0] and two.duplicate_of.tolist() == [1]  # "a" < "b" is kept


def test_a_pair_split_over_two_clusters_is_still_found():
    """k-means puts the two halves of a near-identical pair in different clusters (each nearer
    its own centroid); the border pass compares them anyway."""
    rng = np.random.default_rng(5)
    c1, c2 = _unit(rng.standard_normal(DIM)), _unit(rng.standard_normal(DIM))
    members = [_at_similarity(rng, c, 0.9) for c in (c1, c2) for _ in range(50)]
    middle = _unit(c1 + c2)
    step = 0.03 * _unit(c1 - c2)
    a, b = _unit(middle + step), _unit(middle - step)  # a nearer c1, b nearer c2
    assert a @ b > 0.99
    ids = np.array([f"m{i:03d}" for i in range(100)] + ["pair-a", "pair-b"], dtype=object)
    vectors = np.array(members + [a, b], dtype=np.float32)
    result = deduplicate(ids, vectors, 0.01, n_clusters=2, distributed=False)
    assert result.cluster_of[100] != result.cluster_of[101]  # the pair is split
    assert found(ids, result) == {"pair-b": "pair-a"}


@pytest.fixture(scope="module")
def ray_cluster():
    import os

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.ray
def test_ray_and_in_process_agree(ray_cluster):
    rng = np.random.default_rng(3)
    ids, vectors, _ = synthetic(seed=11, distinct=3000)
    # Clustered data (as real embeddings are) with many near copies spread over the clusters.
    centres = rng.standard_normal((40, DIM))
    vectors = (centres[rng.integers(0, 40, len(ids))] + 0.6 * rng.standard_normal((len(ids), DIM))).astype(np.float32)
    copies = rng.choice(len(ids), 300, replace=False)
    vectors[copies[150:]] = vectors[copies[:150]] + 0.05 * rng.standard_normal((150, DIM)).astype(np.float32)

    local = deduplicate(ids, vectors, EPS, distributed=False)
    distributed = deduplicate(ids, vectors, EPS, distributed=True)
    assert distributed.distributed and not local.distributed
    assert len(local.duplicate) >= 150
    for name in ("cluster_of", "duplicate", "duplicate_of", "similarity"):
        np.testing.assert_array_equal(getattr(local, name), getattr(distributed, name))
    # Ray initialised and a large set: the default picks Ray.
    threshold, dedup.RAY_MIN_CLIPS = dedup.RAY_MIN_CLIPS, 1000
    try:
        assert deduplicate(ids, vectors, EPS).distributed
    finally:
        dedup.RAY_MIN_CLIPS = threshold


def test_each_comparison_batch_holds_its_clusters_members_and_their_border_visitors_only():
    """What lets no process hold every embedding: a part's clips are dealt out by cluster, each
    clip a member of exactly one batch and a visitor only in the batch of its second cluster."""
    ids, vectors, _ = synthetic(seed=5, distinct=2000)
    unit = normalize(vectors)
    k = 30
    centroids = dedup.fit_centroids(ids, unit, k)
    cluster, second = dedup.assign(unit, centroids, EPS)
    batch_of = np.arange(k) % 4
    part = dedup.ArrayPart(pa.table({"id": pa.array(ids.tolist(), pa.string())}), vectors)
    meta, *batches = dedup.assign_part(part, 1000, centroids, EPS, batch_of)
    assert meta.column("cluster").to_pylist() == cluster.tolist() and len(batches) == 4
    members = np.concatenate([rows.index[rows.member] for rows in batches])
    assert sorted(members.tolist()) == list(range(1000, 1000 + len(ids)))  # offset by the part's first row
    for number, rows in enumerate(batches):
        assert set(batch_of[rows.cluster].tolist()) == {number}
        visitors = rows.index[~rows.member] - 1000
        np.testing.assert_array_equal(second[visitors], rows.cluster[~rows.member])
        np.testing.assert_array_equal(rows.unit, unit[rows.index - 1000])
        assert int(rows.member.sum()) < len(ids) / 2
    assert sum(int((~rows.member).sum()) for rows in batches) == int((second >= 0).sum()) > 0


@pytest.mark.ray
def test_many_parts_and_batches_on_ray_give_the_in_process_result(ray_cluster, tmp_path, monkeypatch):
    """Files read in parts of 40 rows by Ray tasks, compared in 8 batches: the same dataset as one
    in-process pass, which finds exactly the planted duplicates."""
    ids, vectors, expected = synthetic(distinct=600)
    write_embeddings(tmp_path / "out", ids, vectors)
    spec = VideoCurationJobSpec.model_validate({"input": {"uri": "/in"}, "output": {"uri": str(tmp_path / "out")},
                                                "embeddings": {"enabled": True}, "dedup": {"enabled": True, "eps": EPS}})
    written = {}
    for distributed in (False, True):
        monkeypatch.setattr(dedup, "PART_ROWS", 40 if distributed else 100_000)
        summary = dedup.dedup_output(spec, Storage(), distributed=distributed)
        assert summary["distributed"] is distributed and summary["duplicates"] == len(expected)
        written[distributed] = [(tmp_path / "out" / "dedup" / name).read_bytes()
                                for name in (dedup.DUPLICATES_FILE, dedup.KEPT_FILE)]
    assert written[True] == written[False]
    duplicates = pq.read_table(tmp_path / "out" / "dedup" / dedup.DUPLICATES_FILE).to_pydict()
    assert dict(zip(duplicates["id"], duplicates["duplicate_of"])) == expected


# ---------------------------------------------------------------------------------------------
# The dataset: embedding parquet files in, dedup/*.parquet and summary.json out.


def write_embeddings(root: Path, ids: np.ndarray, vectors: np.ndarray, algo: str = "efficientnet-lite0") -> None:
    """The embed stage's per-video files: <algo>_embd_parquet/<video>.parquet, 5 clips per video."""
    for first in range(0, len(ids), 5):
        video = f"videos/v{first // 5:03d}.mp4"
        rows = range(first, min(first + 5, len(ids)))
        table = pa.table({
            "id": [str(ids[i]) for i in rows],
            "embedding": pa.array([vectors[i].tolist() for i in rows],
                                  pa.list_(pa.float32())),
            "source_video": [f"/in/{video}" for _ in rows],
            "span_start": [5.0 * (i - first) for i in rows],
            "span_end": [5.0 * (i - first) + 5 for i in rows],
        })
        path = root / f"{algo}_embd_parquet" / f"{video}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)


def dedup_job(tmp_path: Path, output: Path, **dedup) -> Path:
    return write_manifest(
        tmp_path / "job.yaml", manifest("/in", str(output), dedup={"enabled": True, "eps": EPS, **dedup}),
    )


def test_cli_dedup_writes_parquet_that_loads_as_is(tmp_path, capsys):
    ids, vectors, expected = synthetic()
    out = tmp_path / "out"
    write_embeddings(out, ids, vectors)
    (out / "summary.json").write_text(json.dumps({"state": "succeeded", "clips": {"passed": len(ids)}}))

    assert main(["dedup", str(dedup_job(tmp_path, out))]) == 0
    assert f"{len(ids)} clips, {len(ids) - len(expected)} kept, {len(expected)} duplicates" in capsys.readouterr().out

    duplicates = pd.read_parquet(out / "dedup" / "duplicates.parquet")
    assert list(duplicates.columns) == ["id", "duplicate_of", "cosine_similarity", "cluster"]
    assert dict(zip(duplicates["id"], duplicates["duplicate_of"])) == expected
    assert list(duplicates["id"]) == sorted(expected)
    kept = pq.read_table(out / "dedup" / "kept.parquet")
    assert kept.column_names == ["id", "source_video", "span_start", "span_end", "cluster", "num_duplicates"]
    assert set(kept.column("id").to_pylist()) == set(ids) - set(expected)
    assert dict(zip(*kept.select(["id", "num_duplicates"]).to_pydict().values()))["a-exact-0"] == 3
    row = kept.to_pandas().set_index("id").loc["near-3-0.949"]
    assert row["source_video"].startswith("/in/videos/v") and row["span_end"] - row["span_start"] == 5

    summary = json.loads((out / "summary.json").read_text())
    assert summary["state"] == "succeeded"  # the run's own counts stay
    assert {k: summary["dedup"][k] for k in ("clips", "kept", "duplicates", "eps", "clusters")} == {
        "clips": len(ids), "kept": len(ids) - len(expected), "duplicates": len(expected), "eps": EPS,
        "clusters": round(np.sqrt(len(ids))),
    }


def test_cli_dedup_reads_input_uri_and_names_missing_embeddings(tmp_path, capsys):
    ids, vectors, expected = synthetic(distinct=50)
    source, out = tmp_path / "earlier", tmp_path / "out"
    write_embeddings(source, ids, vectors)
    assert main(["dedup", str(dedup_job(tmp_path, out, inputUri=str(source)))]) == 0
    assert len(pd.read_parquet(out / "dedup" / "duplicates.parquet")) == len(expected)
    assert json.loads((out / "summary.json").read_text())["dedup"]["duplicates"] == len(expected)

    capsys.readouterr()
    assert main(["dedup", str(dedup_job(tmp_path, tmp_path / "empty"))]) == 2
    err = capsys.readouterr().err
    assert f"no parquet files under {tmp_path / 'empty' / 'efficientnet-lite0_embd_parquet'}" in err

    write_embeddings(tmp_path / "ce1", ids, vectors, algo="ce1")
    assert main(["dedup", str(dedup_job(tmp_path, tmp_path / "ce1"))]) == 2
    assert "found ce1_embd_parquet: is embeddings.algorithm right?" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# End to end: a local job with EfficientNet-Lite0 embeddings finds re-encoded and resized copies.

# Recommended eps for efficientnet-lite0 (see docs in clipforge.dedup): copies measured here
# score 0.978-0.995, distinct synthetic scenes up to about 0.95.
EFFICIENTNET_EPS = 0.03


def _copy_video(src: Path, dst: Path, crf: int, size: tuple[int, int] | None = None) -> None:
    """A transcoded copy of src: decoded, optionally resized, encoded again at `crf`."""
    from fractions import Fraction

    import av

    dst.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(src)) as source, av.open(str(dst), "w") as out:
        video = source.streams.video[0]
        width, height = size or (video.codec_context.width, video.codec_context.height)
        stream = out.add_stream("libx264", rate=Fraction(video.average_rate))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.options = {"preset": "ultrafast", "crf": str(crf)}
        for frame in source.decode(video):
            rgb = frame.to_ndarray(width=width, height=height, format="rgb24")
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode(None))


@pytest.mark.slow
def test_local_job_with_embeddings_finds_the_copies_and_nothing_else(tmp_path):
    from clipforge.samples import SampleVideo, Segment, write_video

    inputs = tmp_path / "in"
    # Four videos of two distinct 5 s scenes each; above EfficientNet's 224 px input.
    for i in range(4):
        write_video(
            SampleVideo(f"v{i}", 480, 272, 12, (Segment(5, True, 100 + 10 * i), Segment(5, True, 101 + 10 * i))),
            inputs / f"v{i}.mp4",
        )
    _copy_video(inputs / "v0.mp4", inputs / "copies" / "v0_crf36.mp4", crf=36)
    _copy_video(inputs / "v1.mp4", inputs / "copies" / "v1_400x226.mp4", crf=23, size=(400, 226))
    _copy_video(inputs / "v2.mp4", inputs / "copies" / "v2_320x180.mp4", crf=23, size=(320, 180))

    out = tmp_path / "out"
    job = write_manifest(tmp_path / "job.yaml", manifest(
        str(inputs), str(out),
        splitting={"algorithm": "fixed-stride", "fixedStride": {"clipLengthS": 5, "strideS": 5, "minClipLengthS": 2}},
        transcoding={"preset": "ultrafast"}, motionFilter={"mode": "disable"}, previews={"enabled": False},
        dedup={"enabled": True, "eps": EFFICIENTNET_EPS}, execution={"executor": "local", "clipsPerChunk": 2},
    ))
    assert main(["run", str(job), "--no-progress"]) == 0

    embedded = pd.concat(pd.read_parquet(p) for p in (out / "efficientnet-lite0_embd_parquet").rglob("*.parquet"))
    assert len(embedded) == 14
    clip = {row.id: (Path(row.source_video).stem.split("_")[0], row.span_start) for row in embedded.itertuples()}
    duplicates = pd.read_parquet(out / "dedup" / "duplicates.parquet")
    pairs = {frozenset((a, b)) for a, b in zip(duplicates["id"], duplicates["duplicate_of"])}
    # Each copy's clip pairs with the original's clip of the same span, and nothing else pairs.
    same_span: dict[tuple, set] = {}
    for clip_id, key in clip.items():
        same_span.setdefault(key, set()).add(clip_id)
    expected = {frozenset(ids) for ids in same_span.values() if len(ids) == 2}
    assert len(expected) == 6 and pairs == expected
    assert all(kept < dup for dup, kept in zip(duplicates["id"], duplicates["duplicate_of"]))  # smallest id kept
    assert (duplicates["cosine_similarity"] >= 1 - EFFICIENTNET_EPS).all()
    summary = load_json(out / "summary.json")
    assert summary["state"] == "succeeded"
    assert {k: summary["dedup"][k] for k in ("clips", "kept", "duplicates")} == {"clips": 14, "kept": 8, "duplicates": 6}
    assert len(pd.read_parquet(out / "dedup" / "kept.parquet")) == 8


def test_cli_dedup_on_s3(tmp_path, monkeypatch, capsys, s3_server, s3_bucket):
    import io

    ids, vectors, expected = synthetic(distinct=60)
    local = tmp_path / "earlier"
    write_embeddings(local, ids, vectors)
    client = s3_server.client()
    for path in local.rglob("*.parquet"):
        client.upload_file(str(path), s3_bucket, f"earlier/{path.relative_to(local)}")
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    storage = {"endpoint": s3_server.endpoint, "region": s3_server.region}

    def job(**dedup) -> Path:
        return write_manifest(tmp_path / "s3.yaml", manifest(
            "/in", f"s3://{s3_bucket}/out", storage=storage, dedup={"enabled": True, "eps": EPS, **dedup}))

    assert main(["dedup", str(job(inputUri=f"s3://{s3_bucket}/earlier"))]) == 0
    body = client.get_object(Bucket=s3_bucket, Key="out/dedup/duplicates.parquet")["Body"].read()
    duplicates = pd.read_parquet(io.BytesIO(body))
    assert dict(zip(duplicates["id"], duplicates["duplicate_of"])) == expected
    summary = json.loads(client.get_object(Bucket=s3_bucket, Key="out/summary.json")["Body"].read())
    assert summary["dedup"]["duplicates"] == len(expected)

    capsys.readouterr()
    assert main(["dedup", str(job())]) == 2  # out/ has no embeddings of its own
    assert f"no parquet files under s3://{s3_bucket}/out/efficientnet-lite0_embd_parquet" in capsys.readouterr().err
