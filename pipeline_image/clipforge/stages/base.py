"""The stage contract shared by every executor.

A stage declares, on its class, what it needs and what it makes: the model directories it loads
(`models`, checked by clipforge.preflight before a run), the frames of each clip it looks at
(`frame_request`, sampled by transcode) and the outputs each clip must then have
(`missing_outputs`, recorded by the writer). A stage module imports this one and no other stage.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, ClassVar

from clipforge.failures import RETRY_BACKOFF_S, environmental
from clipforge.spec import StageResources, VideoCurationJobSpec, stage_enabled, stage_resources
from clipforge.tasks import Clip, VideoTask

if TYPE_CHECKING:  # annotations only: the executor's own actors need neither PyAV nor storage
    from clipforge.frames import FrameRequest
    from clipforge.models import ModelRequirement

log = logging.getLogger(__name__)


class Stage(ABC):
    """One pipeline step.

    `setup()` runs once per worker (actor) and loads what is expensive; `process()` maps one
    task to zero or more tasks and touches nothing but that task (and, for the writer, storage).
    """

    name: ClassVar[str]

    def __init__(self, spec: VideoCurationJobSpec, pipeline: Sequence[type[Stage]] = ()):
        self.spec = spec
        # The job's stages in order (clipforge.stages.pipeline_stages): the stages that serve
        # the others (transcode, write) read their declarations from it.
        self.pipeline = tuple(pipeline)

    @classmethod
    def enabled(cls, spec: VideoCurationJobSpec) -> bool:
        return stage_enabled(spec, cls.name)

    @classmethod
    def execution(cls, spec: VideoCurationJobSpec) -> StageResources:
        return stage_resources(spec, cls.name)

    # models, frame_request and missing_outputs are asked only of the stages a job runs
    # (spec.stage_enabled), so they need not check that themselves.

    @classmethod
    def models(cls, spec: VideoCurationJobSpec) -> list[ModelRequirement]:
        """The model directories this stage loads under `spec`."""
        return []

    @classmethod
    def frame_request(cls, spec: VideoCurationJobSpec) -> FrameRequest | None:
        """The frames of each clip this stage looks at, which transcode hands it (frames.py)."""
        return None

    @classmethod
    def missing_outputs(cls, spec: VideoCurationJobSpec, clip: Clip) -> list[str]:
        """What this stage should have made for `clip` (a clip with a file) and did not."""
        return []

    @property
    def threads(self) -> int:
        """Threads this stage's codecs and models run: the CPUs its workers reserve (at least 1).

        Pinned, never sized to the machine, so that a worker uses what it asked for and the
        output (x264's in particular) is the same wherever it runs.
        """
        return max(1, math.floor(self.execution(self.spec).cpus))

    @contextlib.contextmanager
    def torch_threads(self) -> Iterator[None]:
        """torch's intra-op threads set to `threads` while inside (the local executor runs every
        stage in one process, so each stage sets its own around its work)."""
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    def time_limit(self, task: VideoTask) -> tuple[float, str]:
        """Seconds this stage may work on `task` (executors/ray_data.py enforces them), and the
        settings that make them, for the failure reason."""
        execution = self.execution(self.spec)
        hints = getattr(self.spec.execution.stages, self.name)
        source = (f"execution.stages.{self.name}.timeoutSeconds" if hints.timeout_seconds is not None
                  else "execution.failures.taskTimeoutSeconds")
        minutes = task.video_seconds / 60
        seconds = execution.timeout_seconds + execution.timeout_seconds_per_minute * minutes
        if execution.timeout_seconds_per_minute and minutes:
            source += (f" + {execution.timeout_seconds_per_minute:g} s x {minutes:.1f} min of video"
                       f" (execution.stages.{self.name}.timeoutSecondsPerMinute)")
        return seconds, source

    def setup(self) -> None:
        """Load models and open clients; called once per worker before any process()."""

    @abstractmethod
    def process(self, task: VideoTask) -> list[VideoTask]:
        ...

    def run(self, task: VideoTask) -> list[VideoTask]:
        """process() with the failure contract (clipforge.failures): a broken video is recorded,
        never raised; an environment failure is raised, for the executor to retry the task.

        A video that already failed passes through untouched so the writer can report it.
        """
        if task.failed:
            return [task]
        try:
            return self.process(task)
        except Exception as exc:  # noqa: BLE001 - any failure of one video must not stop the run
            if environmental(exc):
                raise
            # info: the run's summary lists the failure (a FAILED line); once is enough.
            log.info("%s failed on %s: %s", self.name, task.source, exc)
            log.debug("%s", traceback.format_exc())
            task.errors[self.name] = f"{type(exc).__name__}: {exc}"
            return [task]


def run_attempts(stage: Stage, task: VideoTask, retries: int, fresh: Callable[[], VideoTask]) -> list[VideoTask]:
    """stage.run(task). Environment failures are retried `retries` times after growing waits,
    each time on `fresh()`, an untouched copy of the task (a failed attempt may have changed
    its own); then the task fails, retryable, with the reasons of its attempts."""
    reasons: list[str] = []
    for attempt in range(retries + 1):
        if attempt:
            task = fresh()
        try:
            return stage.run(task)
        except Exception as exc:  # noqa: BLE001 - Stage.run raises environment failures only
            reasons.append(f"{type(exc).__name__}: {exc}")
            # info: the outcome is what counts, and is reported: the last attempt's result, or
            # the summary's FAILED line with every attempt's reason.
            log.info("%s of %s chunk %d, attempt %d of %d: %s", stage.name, task.relative_path,
                        task.chunk_index, attempt + 1, retries + 1, reasons[-1])
            if attempt < retries:
                time.sleep(RETRY_BACKOFF_S * 2 ** attempt)
    task = fresh()
    task.errors[stage.name] = f"gave up after {retries + 1} attempts: {'; '.join(dict.fromkeys(reasons))}"
    task.retryable = True
    return [task]
