"""The scaling benchmark's model of a 1,000-GPU cluster (benchmarks/bench_scaling.py), without Ray:
its optimum is the bottleneck bound of the measured profile, and its scaled actors keep it."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_scaling.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_scaling", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.mark.parametrize(("index", "binding"), [(0, "CPU"), (1, "CPU"), (2, "GPU")])
def test_the_optimum_is_the_bottleneck_resource_over_what_a_clip_takes_of_it(bench, index, binding):
    plan = bench.plan(bench.WORKLOAD)
    phase = bench.WORKLOAD.phases[index]
    seconds = {r: sum(c.clip_seconds(phase) * c.reserved(r) for c in plan.costs) for r in ("CPU", "GPU")}
    bounds = {r: bench.CLUSTER[r] / seconds[r] for r in seconds if seconds[r]}
    assert plan.optimum[index] == pytest.approx(min(bounds.values()))
    assert min(bounds, key=bounds.get) == binding  # transcode-bound, mixed (CPUs just first), caption-bound
    # At the optimum the workers use all of the binding resource.
    workers = plan.optimum_workers[index]
    assert sum(workers[c.stage] * c.reserved(binding) for c in plan.costs) == pytest.approx(bench.CLUSTER[binding])


def test_scaled_actors_keep_the_allocation_problem(bench):
    plan = bench.plan(bench.WORKLOAD)
    for c in plan.costs:
        k = plan.scale[c.stage]
        assert k >= 1  # an actor is at least one real worker
        if c.gpus:
            assert k * c.gpus <= 1 or math.isclose(k * c.gpus, round(k * c.gpus))  # Ray's whole GPUs
        # Whole actors hold (nearly: the largest stage is fitted to what the others leave) the
        # optimum's workers in the phase the stage needs most; a stage of one actor twice that.
        peak = max(w[c.stage] for w in plan.optimum_workers)
        assert plan.actors[c.stage] * k >= 0.9 * peak
        if plan.actors[c.stage] == 1 and peak >= 1:
            assert k == pytest.approx(bench.SPARE * peak, rel=0.02)  # GPU stages: whole GPUs
    assert max(plan.actors.values()) <= bench.GRANULARITY + 1
    assert sum(plan.actors.values()) <= 40  # actor processes this machine can start
    # Whole actors (and the single actors' spare) cost the optimum little: the allocators are
    # rated against the bottleneck bound, not against the simulation's rounding.
    for fractional, whole in zip(plan.optimum, plan.whole_actor):
        assert 0.93 * fractional <= whole <= fractional + 1e-6
