"""The throughput allocator's decisions (execution.allocator: throughput), from given measurements.

Pure: each test feeds measured seconds per task and fan-outs and asserts the worker counts.
"""

from __future__ import annotations

import pytest
from clipforge.executors import allocation
from clipforge.executors.allocation import StageDemand, StageMeter, allocate, demands_from

CLUSTER = {"cluster": {"CPU": 100.0, "GPU": 0.0}}


def stage(name: str, seconds: float | None, cpus: float = 1.0, gpus: float = 0.0, per_input: float | None = 1.0,
          min_workers: int = 1, max_workers: int = 1000, current: int = 1, pool: str = "cluster") -> StageDemand:
    return StageDemand(name, cpus, gpus, min_workers, max_workers, current, seconds,
                       per_input if seconds is not None else None, pool)


def test_the_bottleneck_gets_what_the_cluster_allows_and_the_others_keep_up():
    # Per input: a 1 worker-second, b 10 (on 2 CPUs), c 3. b needs the most CPUs and sets the
    # rate; a and c keep 20 % over it. At 4 inputs/s: 5 (4.8) + 2 * 40 + 15 (14.4) = 100 CPUs.
    workers = allocate([stage("a", 1.0), stage("b", 10.0, cpus=2.0), stage("c", 3.0)], CLUSTER)
    assert workers == {"a": 5, "b": 40, "c": 15}


def test_what_is_left_becomes_headroom_for_the_stages_that_only_keep_up():
    # b is capped at 20 workers (2 inputs/s); a and c then need 2 and 4 and get up to 20 % more.
    workers = allocate([stage("a", 1.0), stage("b", 10.0, max_workers=20), stage("c", 2.0)], CLUSTER)
    assert workers == {"a": 3, "b": 20, "c": 5}


def test_fan_out_multiplies_the_work_of_the_stages_after_it():
    # 4 chunks per video: transcode's 10 s per chunk is 40 worker-seconds per video.
    snapshot = {"probe": (10, 5.0, 10), "split": (10, 1.0, 40), "transcode": (40, 400.0, 40)}
    settings = {s.name: s for s in (stage("probe", None), stage("split", None), stage("transcode", None))}
    demands = demands_from(snapshot, ["probe", "split", "transcode"], settings)
    assert [(d.seconds_per_task, d.tasks_per_input) for d in demands] == [(0.5, 1.0), (0.1, 1.0), (10.0, 4.0)]
    # 0.5 + 0.1 + 40 worker-seconds per input: 2.425 inputs/s fill the 100 CPUs.
    assert allocate(demands, CLUSTER) == {"probe": 2, "split": 1, "transcode": 97}


def test_gpu_stages_are_sized_by_gpus_and_their_cpus_count_against_the_cpus():
    cluster = {"cluster": {"CPU": 100.0, "GPU": 10.0}}
    # caption: 2 GPU-seconds per input on 1 GPU + 4 CPUs: 10 GPUs allow 5 inputs/s and hold 40 CPUs,
    # which leaves transcode (10 CPU-seconds on 1 CPU) 60 CPUs: 6 inputs/s, so GPUs bind.
    workers = allocate([stage("transcode", 10.0), stage("caption", 2.0, cpus=4.0, gpus=1.0)], cluster)
    assert workers == {"transcode": 60, "caption": 10}
    # Caption's CPUs grow to 8: it needs the most CPUs as well as the GPUs, the CPUs bind, and
    # transcode keeps 20 % over: at 3.5 inputs/s 42 (35 * 1.2) + 8 * 7 = 98 CPUs.
    workers = allocate([stage("transcode", 10.0), stage("caption", 2.0, cpus=8.0, gpus=1.0)], cluster)
    assert workers == {"transcode": 42, "caption": 7}


def test_when_the_work_changes_the_workers_follow():
    cluster = {"cluster": {"CPU": 100.0, "GPU": 10.0}}
    # Long static videos: nothing reaches the captioner, transcode takes what the GPU stage leaves.
    static = allocate([stage("transcode", 10.0), stage("caption", 0.001, gpus=1.0)], cluster)
    # Short busy ones: every clip is captioned, the GPUs bind at 5 inputs/s; transcode needs 20
    # workers for that and gets 20 % more.
    busy = allocate([stage("transcode", 4.0), stage("caption", 2.0, gpus=1.0)], cluster)
    assert static == {"transcode": 99, "caption": 1}
    assert busy == {"transcode": 24, "caption": 10}


def test_a_stage_without_measurements_keeps_its_workers_and_its_minimum_holds():
    workers = allocate([stage("a", None, current=3), stage("b", 1.0, min_workers=4), stage("c", 0.0, min_workers=2)],
                       {"cluster": {"CPU": 10.0, "GPU": 0.0}})
    # a keeps 3, c (no work) its minimum 2, b the 5 CPUs left.
    assert workers == {"a": 3, "b": 5, "c": 2}


def test_pinned_stages_share_only_their_own_group():
    cluster = {"cpu-group": {"CPU": 20.0, "GPU": 0.0}, "gpu-group": {"CPU": 16.0, "GPU": 8.0}}
    workers = allocate([stage("transcode", 5.0, pool="cpu-group"), stage("motion", 1.0, pool="cpu-group"),
                        stage("caption", 1.0, cpus=2.0, gpus=1.0, pool="gpu-group")], cluster)
    # The CPU group bounds the rate: 16 + 4 CPUs at 3.2 inputs/s. Caption needs 4 of the GPU
    # group's 8 GPUs for that, already 25 % over: the free GPUs are no reason to grow it.
    assert workers == {"transcode": 16, "motion": 4, "caption": 4}


def test_the_same_measurements_give_the_same_counts():
    stages = [stage(f"s{i}", 0.37 * (i + 1), cpus=0.25 * (i % 3 + 1)) for i in range(6)]
    assert len({tuple(sorted(allocate(stages, CLUSTER).items())) for _ in range(20)}) == 1


def test_the_meter_reports_the_window_and_keeps_the_last_known_task(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(allocation.time, "monotonic", lambda: now[0])
    meter = StageMeter()
    meter.record("transcode", 4.0, 1)
    now[0] += 10
    meter.record("transcode", 6.0, 1)
    meter.record("split", 0.5, 3)
    assert meter.snapshot(30.0) == {"transcode": (2, 10.0, 2), "split": (1, 0.5, 3)}
    now[0] += 25  # the first transcode task is now 35 s old
    assert meter.snapshot(30.0) == {"transcode": (1, 6.0, 1), "split": (1, 0.5, 3)}
    now[0] += 100  # nothing recent: the latest task of each stage stays, its last known rate
    assert meter.snapshot(30.0) == {"transcode": (1, 6.0, 1), "split": (1, 0.5, 3)}


@pytest.mark.parametrize("capacity", [{"cluster": {"CPU": 2.0, "GPU": 0.0}}])
def test_minimums_that_do_not_fit_are_kept(capacity):
    assert allocate([stage("a", 1.0, min_workers=2), stage("b", 1.0, min_workers=2)], capacity) == {"a": 2, "b": 2}
