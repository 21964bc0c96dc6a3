"""Auto-scaling across stages against the optimum, simulated for a 1,000-GPU, 8,000-CPU cluster.

The real Ray executor (clipforge.executors.ray_data.run_ray) runs the real stage graph of each
workload's spec, with each stage's work replaced by a stand-in that sleeps for what the real
stage costs (benchmarks/stage_profile.json, measured by measure_stage_profile.py; GPU stages
assumed, as marked there), reserves the stage's CPUs and GPUs and passes on payloads sized
after the real ones. A local Ray advertises the cluster's logical resources; sleeping uses
no CPU. Each allocator runs the workload mixes one after the other (transcode-bound: long
static 1080p videos; mixed: short moving 1080p ones; caption-bound: short moving 720p ones), and
for each mix it prints the steady-state clips/s against the analytic optimum (the bottleneck
bound: the most clips/s the cluster's CPUs and GPUs allow with the profile's costs) and the time
to settle after the start or the change of mix, and writes workers per stage over time as an
SVG next to the figures (out/scaling/ by default).

Scale. One machine cannot start thousands of actor processes, so each simulated actor of
stage s stands for k_s real workers: it reserves k_s times a worker's CPUs and GPUs and
finishes a task in 1/k_s of a worker's time, so a stage's throughput per reserved CPU or
GPU, the quantity every allocation trades, is the real one. k_s is chosen per mix so that the
optimum needs a whole number of actors of every stage, at most GRANULARITY of the largest.
Time is dilated by D (every task takes D times its real cost) so that the whole cluster's task
rate fits this machine; clips/s are reported in real units (simulated rate times D). Split is
the real split stage (its fan-out into chunks); split, probe and the rest sleep their measured
cost. A simulated task stands for k_s real chunks and carries their bytes scaled by this
machine's object store over the cluster's (125 nodes, 200 GB each): the share of the store
that data in flight takes is the real one.

    python benchmarks/bench_scaling.py                  # both allocators, one after the other
    python benchmarks/bench_scaling.py --allocator throughput
    python benchmarks/bench_scaling.py --longer 3       # phases 3 times longer
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from clipforge.executors.allocation import HEADROOM
from clipforge.spec import STAGES, FixedStrideSpec, parse_job, stage_resource_name
from clipforge.stages import Stage, pipeline_stages
from clipforge.stages.split import SplitStage, fixed_stride_spans
from clipforge.tasks import VideoMeta, VideoTask

PROFILE = json.loads(Path(__file__).with_name("stage_profile.json").read_text())
CLUSTER = {"CPU": 8000.0, "GPU": 1000.0}
CLUSTER_OBJECT_STORE = 125 * 200e9  # 125 nodes of 8 GPUs and 64 CPUs; Ray caps a node's store at 200 GB
LOCAL_OBJECT_STORE = 1_000_000_000
GRANULARITY = 8  # actors of the largest stage at the optimum (each actor process costs this machine ~1.4 CPU-s to start)
TASK_RATE = 15.0  # stage tasks per second, all stages together, at the optimum: what 2 shared cores carry
# Shortest simulated task: Ray's own cost per task (tens of milliseconds on 2 shared cores) stays a
# few percent of it.
MIN_TASK_S = 0.5
SPARE = 2.0  # what a stage's single actor holds over the optimum's need
# What the actors of a stage that sets no bound hold over the optimum's need: the allocator's
# headroom and the spread of measured task times. With real workers that headroom costs a stage
# a fifth of its small share; the actors of k workers must cost the same, not a whole actor more.
LIGHT_ROOM = 1 + HEADROOM + 0.1
# Each stage's maxWorkers: twice what it needs at the optimum, as docs/scaling.md advises. Without a
# bound Ray Data sizes a pool to its backlog (probe, with every input queued, asks for hundreds).
MAX_WORKERS_FACTOR = 2
SAMPLE_S = 0.5  # how often workers per stage are read
STEADY_FROM, STEADY_TO = 0.4, 0.9  # the steady state: between these shares of a phase's clips done
RATE_WINDOW_S = 10.0  # clips/s over this window, for the time to settle
FPS = 30
# Content kind -> (width, height, whether its clips move: static ones are filtered by motion and
# skip embed and caption, as the real filter does).
CONTENT = {"busy-1080p": (1920, 1080, True), "static-1080p": (1920, 1080, False), "busy-720p": (1280, 720, True)}
# The reservations the profile's GPU figures were taken at (embed and caption then run on GPUs).
GPU_STAGES = {"embed": "embed-gpu", "caption": "caption-gpu"}


@dataclass(frozen=True)
class Phase:
    name: str
    content: str
    video_seconds: float
    seconds: float  # simulated seconds this phase is fed for, at the optimum

    @property
    def clips_per_video(self) -> int:
        frames = round(self.video_seconds * FPS)
        return len(fixed_stride_spans(frames, FPS, FixedStrideSpec()))


@dataclass(frozen=True)
class Mix:
    captions: bool
    phases: tuple[Phase, ...]


# One run per allocator goes through the workload mixes in turn: each is measured once the
# allocator has had its time, and each change of mix is a re-balance (the first, long static
# videos then short busy ones). One run also starts the actor processes once, not per mix.
WORKLOAD = Mix(True, (  # captions on; the work changes twice
    Phase("transcode-bound", "static-1080p", 600, 60),  # 10-minute static videos: filtered by motion, nothing to caption
    Phase("mixed", "busy-1080p", 120, 50),  # 2-minute moving 1080p: CPUs and GPUs both near their limit
    Phase("caption-bound", "busy-720p", 120, 50),  # 2-minute moving 720p: every clip captioned on the GPUs
))


# ------------------------------------------------------------------------------------------ costs


@dataclass(frozen=True)
class StageCost:
    """One real worker of a stage: what it reserves and how long it takes per clip or video."""

    stage: str
    cpus: float
    gpus: float
    per_video: bool
    seconds: dict[str, float]  # content -> seconds of one worker per unit (video or clip)
    passed_bytes: dict[str, float]  # content -> bytes passed on per clip (per video before split)
    only_moving: bool  # skips clips the motion filter moved aside

    def unit_seconds(self, content: str) -> float:
        if self.only_moving and not CONTENT[content][2]:
            return 0.0
        return self.seconds[content]

    def clip_seconds(self, phase: Phase) -> float:
        """One worker's seconds per clip of the phase's videos."""
        unit = self.unit_seconds(phase.content)
        return unit / phase.clips_per_video if self.per_video else unit

    def reserved(self, resource: str) -> float:
        return self.gpus if resource == "GPU" else self.cpus


def stage_costs(stages: list[str]) -> list[StageCost]:
    costs = []
    for stage in stages:
        entry = PROFILE["stages"][GPU_STAGES.get(stage, stage)]
        per = entry.get("per", "clip").capitalize()
        if "content" in entry:  # measured on CPUs: one worker's seconds are its CPU seconds over its CPUs
            seconds = {kind: c[f"cpuSecondsPer{per}"] / entry["cpus"] for kind, c in entry["content"].items()}
            passed = {kind: c[f"passedBytesPer{per}"] for kind, c in entry["content"].items()}
        else:  # assumed GPU figure: GPU seconds per clip
            seconds = {kind: entry["gpuSecondsPerClip"] / entry["gpus"] for kind in CONTENT}
            passed = {kind: entry["passedBytesPerClip"] for kind in CONTENT}
        costs.append(StageCost(stage, entry["cpus"], entry["gpus"], per == "Video", seconds, passed,
                               only_moving=stage in ("embed", "caption", "aesthetic")))
    return costs


def optimum(costs: list[StageCost], phase: Phase) -> tuple[float, dict[str, float]]:
    """The bottleneck bound: clips/s the cluster allows, and the workers per stage that reach it."""
    bound = math.inf
    for resource, capacity in CLUSTER.items():
        held = sum(c.clip_seconds(phase) * c.reserved(resource) for c in costs)  # resource-seconds per clip
        if held:
            bound = min(bound, capacity / held)
    return bound, {c.stage: bound * c.clip_seconds(phase) for c in costs}


def whole_actor_optimum(costs: list[StageCost], phase: Phase, scale: dict[str, float]) -> float:
    """The most clips/s with whole actors of k_s workers, every stage at least one (as the pools)."""
    rates = {c.stage: scale[c.stage] / c.clip_seconds(phase) if c.clip_seconds(phase) else math.inf for c in costs}

    def fits(clips_per_s: float) -> bool:
        actors = {s: max(1, math.ceil(clips_per_s / r - 1e-9)) for s, r in rates.items()}
        return all(sum(actors[c.stage] * scale[c.stage] * c.reserved(r) for c in costs) <= cap + 1e-6
                   for r, cap in CLUSTER.items())

    candidates = sorted({n * r for r in rates.values() if r < math.inf for n in range(1, 10 * GRANULARITY)})
    low, high = 0, len(candidates) - 1
    while low < high:  # the largest candidate that fits (fit is monotone in clips/s)
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(candidates[mid]) else (low, mid - 1)
    return candidates[low] if fits(candidates[low]) else 0.0


@dataclass
class Plan:
    """One mix as simulated: scale per stage, dilation, optimum per phase."""

    mix: Mix
    costs: list[StageCost]
    scale: dict[str, float]  # k_s: real workers per simulated actor
    actors: dict[str, int]  # simulated actors per stage at the optimum (of the phase it needs most in)
    dilation: float  # D
    optimum: list[float]  # clips/s per phase, real units
    optimum_workers: list[dict[str, float]]
    whole_actor: list[float]
    videos: list[int]  # videos fed per phase


def plan(mix: Mix) -> Plan:
    spec = parse_job(_document({"captions": {"enabled": mix.captions}})).spec
    costs = stage_costs([s.name for s in pipeline_stages(spec)])
    bounds = [optimum(costs, p) for p in mix.phases]
    chunk = spec.execution.clips_per_chunk
    # D: the whole pipeline's tasks per second at the optimum, brought down to TASK_RATE.
    rate = 0.0
    per_video = sum(1 for c in costs if c.per_video)
    for phase, (clips_per_s, _) in zip(mix.phases, bounds):
        videos_per_s = clips_per_s / phase.clips_per_video
        chunks_per_s = videos_per_s * math.ceil(phase.clips_per_video / chunk)
        rate = max(rate, videos_per_s * per_video + chunks_per_s * (len(costs) - per_video))
    dilation = rate / TASK_RATE
    peak = {c.stage: max(workers[c.stage] for _, workers in bounds) for c in costs}
    share = {c.stage: max(peak[c.stage] * c.reserved(r) / cap for r, cap in CLUSTER.items()) for c in costs}
    largest = max(share.values())
    # The stages that need the most of a resource in some phase: they set the bounds.
    binding = {max(users, key=lambda c: workers[c.stage] * c.reserved(r)).stage
               for _, workers in bounds for r in CLUSTER
               if (users := [c for c in costs if workers[c.stage] * c.reserved(r) > 0])}
    scale, actors = {}, {}
    for c in costs:
        # One real worker's task (a video, or an average chunk) in the phase the stage needs most.
        busiest = max(range(len(mix.phases)), key=lambda i: bounds[i][1][c.stage])
        ph = mix.phases[busiest]
        task_s = c.unit_seconds(ph.content) * (1 if c.per_video else ph.clips_per_video / math.ceil(ph.clips_per_video / chunk))
        wanted = max(1, round(GRANULARITY * share[c.stage] / largest),
                     math.ceil(peak[c.stage] * MIN_TASK_S / (task_s * dilation)) if task_s else 1)
        # A stage the optimum needs one actor of gets one with room to spare, so that neither
        # allocator needs a second actor process for it; the other light stages get the room an
        # allocator leaves them (LIGHT_ROOM).
        room = SPARE if wanted == 1 else 1.0 if c.stage in binding else LIGHT_ROOM
        k = max(1.0, peak[c.stage] / wanted * room)
        if c.gpus and k * c.gpus > 1:  # Ray takes GPU amounts above one in whole GPUs only
            k = round(k * c.gpus) / c.gpus
        scale[c.stage] = k
        actors[c.stage] = max(1, math.ceil(peak[c.stage] / k - 1e-9))
    fit_whole_actors(costs, bounds, scale, actors)
    # The last phase gets twice what it needs and is stopped on time: it is measured before the
    # pipeline drains.
    videos = [math.ceil(clips_per_s / dilation * p.seconds / p.clips_per_video * (2 if i == len(mix.phases) - 1 else 1))
              for i, (p, (clips_per_s, _)) in enumerate(zip(mix.phases, bounds))]
    return Plan(mix, costs, scale, actors, dilation, [b for b, _ in bounds], [w for _, w in bounds],
                [whole_actor_optimum(costs, p, scale) for p in mix.phases], videos)


def fit_whole_actors(costs: list[StageCost], bounds: list[tuple[float, dict[str, float]]], scale: dict[str, float],
                     actors: dict[str, int]) -> None:
    """Shrinks the actors of each binding resource's largest stage a little, so that its whole
    actors use exactly what the other stages' whole actors leave of the resource at the optimum:
    rounding then costs the optimum only the light stages' last part-used actors."""
    for resource in ("GPU", "CPU"):  # GPU stages hold CPUs too: settle them first
        for clips_per_s, workers in bounds:
            held = sum(workers[c.stage] * c.reserved(resource) for c in costs)
            if held < 0.999 * CLUSTER[resource]:
                continue  # not binding in this phase
            big = max(costs, key=lambda c: workers[c.stage] * c.reserved(resource))
            if workers[big.stage] < max(w[big.stage] for _, w in bounds) - 1e-9 or big.gpus and resource == "CPU":
                continue  # sized for another phase, or a GPU stage already fitted to the GPUs
            others = sum(max(1, math.ceil(workers[c.stage] / scale[c.stage] - 1e-9)) * scale[c.stage] * c.reserved(resource)
                         for c in costs if c is not big)
            k = (CLUSTER[resource] - others) / (actors[big.stage] * big.reserved(resource))
            if big.gpus and k * big.gpus > 1:
                k = math.floor(k * big.gpus) / big.gpus
            scale[big.stage] = max(1.0, min(scale[big.stage], k))


# ------------------------------------------------------------------------------------ stand-ins


def _content(task: VideoTask) -> str:
    return task.relative_path.split("/")[1]


class _Simulated:
    """Sleeps for the real stage's cost, scaled (k_s workers, dilation D), and sizes the payload."""

    cost: ClassVar[StageCost]
    scale: ClassVar[float]
    dilation: ClassVar[float]
    byte_scale: ClassVar[float]

    def setup(self) -> None:
        pass

    def work(self, task: VideoTask) -> None:
        content = _content(task)
        units = 1 if self.cost.per_video else sum(1 for c in task.clips if c.filtered_by is None or not self.cost.only_moving)
        time.sleep(units * self.cost.unit_seconds(content) / self.scale * self.dilation)
        for clip in task.clips:
            clip.encoded = bytes(int(self.cost.passed_bytes[content] * self.byte_scale))
            clip.frames = {}


class SimulatedProbe(_Simulated, Stage):
    name = "probe"

    def process(self, task: VideoTask) -> list[VideoTask]:
        self.work(task)
        width, height, _ = CONTENT[_content(task)]
        seconds = float(task.relative_path.split("/")[2].split("s-")[0])
        task.meta = VideoMeta("mp4", 0, seconds, width, height, FPS, round(seconds * FPS), "h264", "yuv420p", None, False)
        return [task]


class SimulatedSplit(_Simulated, SplitStage):
    def setup(self) -> None:
        SplitStage.setup(self)

    def process(self, task: VideoTask) -> list[VideoTask]:
        self.work(task)
        return SplitStage.process(self, task)


class SimulatedMotion(_Simulated, Stage):
    name = "motion"

    def process(self, task: VideoTask) -> list[VideoTask]:
        self.work(task)
        if not CONTENT[_content(task)][2]:
            for clip in task.clips:
                clip.filtered_by = self.name
        return [task]


class SimulatedWrite(_Simulated, Stage):
    name = "write"

    def process(self, task: VideoTask) -> list[VideoTask]:
        self.work(task)
        for clip in task.clips:
            clip.encoded = None  # the driver receives records, not clip bytes
        return [task]


class SimulatedStage(_Simulated, Stage):
    def process(self, task: VideoTask) -> list[VideoTask]:
        self.work(task)
        return [task]


SPECIAL = {"probe": SimulatedProbe, "split": SimulatedSplit, "motion": SimulatedMotion, "write": SimulatedWrite}


def stand_ins(p: Plan) -> list[type[Stage]]:
    out = []
    for cost in p.costs:
        base = SPECIAL.get(cost.stage, SimulatedStage)
        k = p.scale[cost.stage]
        out.append(type(f"Simulated{cost.stage.capitalize()}Stage", (base,), {
            "name": cost.stage, "cost": cost, "scale": k, "dilation": p.dilation,
            "byte_scale": k * LOCAL_OBJECT_STORE / CLUSTER_OBJECT_STORE,
        }))
    return out


# ---------------------------------------------------------------------------------------- run


def _document(spec: dict) -> dict:
    return {"apiVersion": "clipforge.dev/v1alpha1", "kind": "VideoCurationJob", "metadata": {"name": "scaling"},
            "spec": {"input": {"uri": "sim://"}, "output": {"uri": "sim://"}, **spec}}


def sim_spec(p: Plan, output: Path, allocator: str):
    stages = {}
    for cost in p.costs:
        k = p.scale[cost.stage]
        stages[cost.stage] = {"cpus": k * cost.cpus, "gpus": k * cost.gpus, "minWorkers": 1,
                              "maxWorkers": MAX_WORKERS_FACTOR * p.actors[cost.stage], "pinned": True}
    return parse_job(_document({"output": {"uri": str(output)}, "captions": {"enabled": p.mix.captions},
                                "execution": {"stages": stages, "allocator": allocator}})).spec


@dataclass
class Trace:
    done: list[tuple[float, int, int]] = field(default_factory=list)  # (time, phase, clips)
    workers: list[tuple[float, dict[str, int]]] = field(default_factory=list)  # (time, actors per stage)


ADVERTISED = 1_000_000.0  # of each stage's custom resource: never what limits a stage


def alive_actors(stages: list[str]) -> dict[str, int]:
    """Actors per stage, from the stage resources they hold (every stage is pinned here)."""
    from clipforge.executors.ray_data import PINNED_RESOURCE_AMOUNT
    import ray

    free = ray.available_resources()
    return {s: round((ADVERTISED - free.get(stage_resource_name(s), 0.0)) / PINNED_RESOURCE_AMOUNT) for s in stages}


def simulate(p: Plan, output: Path, allocator: str) -> Trace:
    from clipforge.executors.ray_data import run_ray

    spec = sim_spec(p, output, allocator)
    tasks = [VideoTask(source=f"sim://{i}/{phase.content}/{phase.video_seconds:g}s-{n}.mp4",
                       relative_path=f"{i}/{phase.content}/{phase.video_seconds:g}s-{n}.mp4")
             for i, (phase, count) in enumerate(zip(p.mix.phases, p.videos)) for n in range(count)]
    trace = Trace()
    stages = [c.stage for c in p.costs]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(SAMPLE_S):
            trace.workers.append((time.perf_counter() - started, alive_actors(stages)))

    started = time.perf_counter()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    results = run_ray(spec, tasks, stand_ins(p))
    last = len(p.mix.phases) - 1
    # Past this the mix has not kept up with even half the optimum: it ends where it is.
    deadline = 3 * sum(phase.seconds for phase in p.mix.phases) + 60
    last_started = None
    try:
        for task in results:
            now = time.perf_counter() - started
            phase = int(task.relative_path.split("/")[0])
            trace.done.append((now, phase, len(task.clips)))
            if phase == last and last_started is None:
                last_started = now
            if (last_started is not None and now - last_started > p.mix.phases[last].seconds) or now > deadline:
                break
    finally:
        results.close()
        stop.set()
        sampler.join()
    wait_for_actors_gone(stages)
    return trace


def wait_for_actors_gone(stages: list[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while any(alive_actors(stages).values()) and time.monotonic() < deadline:
        time.sleep(0.5)


# ------------------------------------------------------------------------------------ figures


@dataclass
class PhaseResult:
    steady: float  # clips/s, real units
    optimum: float
    whole_actor: float
    settled_s: float | None = None  # seconds until 90 % of the steady rate: from the start, or from the change


def results(p: Plan, trace: Trace) -> list[PhaseResult]:
    out = []
    for i in range(len(p.mix.phases)):
        done = [(t, n) for t, phase, n in trace.done if phase == i]
        # Steady state: from the phase's STEADY_FROM to its STEADY_TO share of clips done, past the
        # ramp (or the re-balance) and before its last videos drain out of the pipeline while the
        # next mix's fill it.
        total, counted = sum(n for _, n in done), 0
        start = end = None
        clips = 0
        for t, n in done:
            counted += n
            if start is None and counted >= STEADY_FROM * total:
                start, clips = t, 0
            elif start is not None:
                clips += n
            if counted >= STEADY_TO * total:
                end = t
                break
        steady = clips / (end - start) * p.dilation if start is not None and end and end > start else 0.0
        result = PhaseResult(steady, p.optimum[i], p.whole_actor[i])
        result.settled_s = settled_seconds(trace, i, 0.0 if i == 0 else done[0][0], steady / p.dilation)
        out.append(result)
    return out


def settled_seconds(trace: Trace, phase: int, since: float, steady: float) -> float | None:
    """Seconds from `since` until the phase's clips/s over RATE_WINDOW_S first reach 90 % of its steady rate."""
    times = [t for t, ph, n in trace.done if ph == phase for _ in range(n)]
    for i, t in enumerate(times):
        if t - RATE_WINDOW_S < since:
            continue
        recent = sum(1 for u in times[: i + 1] if u > t - RATE_WINDOW_S)
        if recent / RATE_WINDOW_S >= 0.9 * steady:
            return t - since
    return None


def svg(p: Plan, trace: Trace, path: Path, allocator: str) -> None:
    """Workers per stage over time (real-worker equivalents, share of the cluster's CPUs or GPUs)."""
    width, height, left, bottom = 760, 340, 60, 40
    end = max(t for t, _ in trace.workers) if trace.workers else 1.0
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf"]

    def x(t: float) -> float:
        return left + (width - left - 150) * t / end

    def y(share: float) -> float:
        return height - bottom - (height - bottom - 20) * share

    lines = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
             f'<text x="{left}" y="14">{allocator}: share of the cluster each stage holds'
             f' (its larger of CPUs and GPUs; dashed: at the optimum), and clips/s over the optimum</text>',
             f'<line x1="{left}" y1="{y(0)}" x2="{x(end)}" y2="{y(0)}" stroke="black"/>',
             f'<line x1="{left}" y1="{y(0)}" x2="{left}" y2="{y(1)}" stroke="black"/>']
    for share in (0.25, 0.5, 0.75, 1.0):
        lines.append(f'<text x="{left - 30}" y="{y(share) + 4}">{share:.0%}</text>')
    for tick in range(0, int(end) + 1, 10):
        lines.append(f'<text x="{x(tick) - 6}" y="{height - bottom + 14}">{tick}</text>')
    lines.append(f'<text x="{x(end / 2) - 60}" y="{height - 8}">simulated seconds</text>')
    for color, cost in zip(colors, p.costs):
        k = p.scale[cost.stage]
        share = max(k * cost.reserved(r) / cap for r, cap in CLUSTER.items())
        points = " ".join(f"{x(t):.1f},{y(w[cost.stage] * share):.1f}" for t, w in trace.workers)
        lines.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{points}"/>')
        for phase_workers in p.optimum_workers:
            best = max(phase_workers[cost.stage] * cost.reserved(r) / cap for r, cap in CLUSTER.items())
            lines.append(f'<line x1="{left}" x2="{x(end)}" y1="{y(best):.1f}" y2="{y(best):.1f}" stroke="{color}"'
                         ' stroke-dasharray="4 4" stroke-width="0.8"/>')
        index = p.costs.index(cost)
        lines.append(f'<text x="{width - 140}" y="{30 + 14 * index}" fill="{color}">{cost.stage}</text>')
    for phase in range(1, len(p.mix.phases)):  # where the work changed: the first clip of the next phase
        first = min((t for t, ph, _ in trace.done if ph == phase), default=None)
        if first is not None:
            lines.append(f'<line x1="{x(first):.1f}" x2="{x(first):.1f}" y1="{y(0)}" y2="{y(1)}" stroke="gray"'
                         ' stroke-dasharray="2 3"/>')
            lines.append(f'<text x="{x(first) + 3:.1f}" y="{y(1) + 12}" fill="gray">{p.mix.phases[phase].name}</text>')
    # Clips/s over the last RATE_WINDOW_S, as a share of the optimum of the phase finishing then.
    points = []
    for t, _ in trace.workers:
        recent = [(phase, n) for u, phase, n in trace.done if t - RATE_WINDOW_S < u <= t]
        if recent:
            rate = sum(n for _, n in recent) / RATE_WINDOW_S * p.dilation
            points.append(f"{x(t):.1f},{y(min(1.0, rate / p.optimum[max(ph for ph, _ in recent)])):.1f}")
    lines.append(f'<polyline fill="none" stroke="black" stroke-width="2" points="{" ".join(points)}"/>')
    lines.append(f'<text x="{width - 140}" y="{30 + 14 * len(p.costs)}">clips/s / optimum</text>')
    lines.append("</svg>")
    path.write_text("\n".join(lines) + "\n")


def timeline(p: Plan, trace: Trace, points: int = 8) -> str:
    """Actors per stage at a few moments, and clips done by then."""
    if not trace.workers:
        return "  (no samples)"
    step = max(1, len(trace.workers) // points)
    rows = ["  actors at  " + " ".join(f"{c.stage[:9]:>9s}" for c in p.costs) + "  clips done"]
    for t, workers in trace.workers[::step] + trace.workers[-1:]:
        done = sum(n for u, _, n in trace.done if u <= t)
        rows.append(f"  {t:6.1f} s  " + " ".join(f"{workers[c.stage]:9d}" for c in p.costs) + f"  {done:10d}")
    return "\n".join(rows)


def describe(p: Plan) -> str:
    rows = [f"  {c.stage:10s} k={p.scale[c.stage]:<8.3g} actors at the optimum {p.actors[c.stage]:3d}, workers "
            + ", ".join(f"{w[c.stage]:8.3g}" for w in p.optimum_workers) + " workers" for c in p.costs]
    return "\n".join(rows)


def start_ray() -> None:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if __name__ != "__main__":  # imported: the workers cannot import this file, so its stand-ins go by value
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=CLUSTER["CPU"], num_gpus=CLUSTER["GPU"], object_store_memory=LOCAL_OBJECT_STORE,
             resources={stage_resource_name(s): ADVERTISED for s in STAGES}, include_dashboard=False,
             logging_level="WARNING", log_to_driver=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plots", type=Path, default=Path(__file__).resolve().parents[1] / "out" / "scaling",
                        help="where the SVGs of workers per stage go")
    parser.add_argument("--allocator", choices=["rayData", "throughput"], action="append",
                        help="execution.allocator to run (repeatable; default both, Ray Data's first)")
    parser.add_argument("--longer", type=float, default=1.0,
                        help="phases this many times longer (Ray Data's pools take minutes to settle)")
    args = parser.parse_args()
    args.allocator = args.allocator or ["rayData", "throughput"]
    mix = Mix(WORKLOAD.captions, tuple(replace(p, seconds=p.seconds * args.longer) for p in WORKLOAD.phases))
    args.plots.mkdir(parents=True, exist_ok=True)
    started, load_at_start = time.perf_counter(), os.getloadavg()[0]
    start_ray()
    print(f"cluster: {CLUSTER['GPU']:.0f} GPUs, {CLUSTER['CPU']:.0f} CPUs (logical, on one local Ray); profile:"
          f" {Path(__file__).with_name('stage_profile.json').name}\n"
          "scale: a simulated actor of a stage stands for k of its real workers: it reserves k workers' CPUs and"
          " GPUs and takes 1/k of a worker's time per task, so each stage's throughput per reserved CPU or GPU"
          " (what an allocation trades) and the optimum are the real ones; time is dilated by D, clips/s are"
          " real ones", flush=True)
    worst = {a: math.inf for a in args.allocator}
    with tempfile.TemporaryDirectory(prefix="clipforge-scaling-") as tmp:
        p = plan(mix)
        print(f"\nworkload: {', '.join(f'{ph.name} ({ph.content}, {ph.video_seconds:g} s videos)' for ph in mix.phases)}"
              f"\n  time dilated {p.dilation:.1f}x; one simulated actor = k real workers:")
        print(describe(p), flush=True)
        for allocator in args.allocator:
            trace = simulate(p, Path(tmp) / allocator, allocator)
            figures = results(p, trace)
            svg(p, trace, args.plots / f"{allocator}.svg", allocator)
            print(f" allocator {allocator}:\n{timeline(p, trace)}", flush=True)
            for i, (phase, r) in enumerate(zip(mix.phases, figures)):
                ratio = r.steady / r.optimum
                worst[allocator] = min(worst[allocator], ratio)
                since = "the change" if i else "the start"
                change = (f", settled {r.settled_s:.0f} s after {since}" if r.settled_s is not None
                          else f", not settled after {since}")
                print(f"  {phase.name:15s} {r.steady:6.1f} clips/s, optimum {r.optimum:6.1f} (whole actors"
                      f" {r.whole_actor:6.1f}), ratio {ratio:.2f}{change}", flush=True)
    # The figures hold on a machine this benchmark has to itself: other work slows the starts of
    # actor processes (about 1.4 CPU-seconds each here) and Ray's own work per task.
    print(f"\nplots: {args.plots}; {time.perf_counter() - started:.0f} s in all; load average"
          f" {load_at_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end ({os.cpu_count()} cores)")
    for allocator, ratio in worst.items():
        print(f"ratio {allocator}/optimum: {ratio:.2f}  (the lowest of the mixes)")
    print(f"ratio autoscaled/optimum: {worst[args.allocator[-1]]:.2f}  ({args.allocator[-1]} allocator,"
          " the lowest of the mixes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
