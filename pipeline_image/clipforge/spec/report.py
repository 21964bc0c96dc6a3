"""The run report: what a pipeline run leaves at its output root for people and the operator.

The runner rewrites `progress.json` (PROGRESS_FILE) at least every PROGRESS_INTERVAL_S while the
run lasts and writes `summary.json` (SUMMARY_FILE) once at its end, also when it fails; the
summary adds the failed videos, the output and, for a run that failed on its data, why. Both
are a `RunReport` in camelCase JSON: the pipeline writes them from this model and the operator
parses them with it. Only pydantic here: the operator image has none of the pipeline's
dependencies.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

PROGRESS_FILE = "progress.json"
SUMMARY_FILE = "summary.json"
# How often the runner rewrites progress.json: it stays fresh while a long video is in flight.
PROGRESS_INTERVAL_S = 5.0


class RunState(StrEnum):
    """A run's `state`. The CLI's exit status follows the last four, and the operator reads them
    to tell a run whose inputs failed from one whose infrastructure did."""

    starting = "starting"  # checking the output and listing the inputs
    running = "running"
    succeeded = "succeeded"
    # Every video was processed and the failed videos and clips are within execution.failures' limits.
    completed_with_failures = "completed-with-failures"
    failed = "failed"
    # The input matched no file: nothing to curate, which is never a success (a wrong path or pattern).
    no_input = "no-input"


# summary.json's `reason` when a run failed because of its inputs: a retry would fail the same way.
TOO_MANY_VIDEOS_FAILED = "TooManyVideosFailed"
# ... and when too many failed only counting those the environment failed (clipforge.failures):
# a retry may succeed.
TOO_MANY_VIDEOS_FAILED_RETRYABLE = "TooManyVideosFailedRetryable"
# ... and when more of the clips made than execution.failures.maxFailedFraction failed (the input's).
TOO_MANY_CLIPS_FAILED = "TooManyClipsFailed"
# progress.json's `reason` when a run ended before any work (its inputs could not be listed or read).
NOT_STARTED = "NotStarted"
# summary.json's `reason` for the state no-input.
NO_INPUT_VIDEOS = "NoInputVideos"
# The reasons of a run that failed on its inputs: the operator fails the job without retries.
FAILED_ON_INPUTS = (TOO_MANY_VIDEOS_FAILED, TOO_MANY_CLIPS_FAILED, NO_INPUT_VIDEOS)


class ReportModel(BaseModel):
    # Fields a newer pipeline adds are ignored: a job's image may be newer than its operator.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class VideoCounts(ReportModel):
    total: int = Field(0, ge=0, description="Input videos of the run.")
    done: int = Field(0, ge=0, description="Videos finished, including those skipped as done by an earlier run.")
    failed: int = Field(0, ge=0, description="Videos that failed in at least one stage.")
    skipped: int = Field(0, ge=0, description="Videos an earlier run had finished under the same settings.")
    unmatched: int = Field(0, ge=0, description="Files under the input that no pattern matched: not taken as videos.")


class ClipCounts(ReportModel):
    """The clips of every video done, those an earlier run did included (as videos.done counts them)."""

    passed: int = Field(0, ge=0, description="Clips written to the dataset.")
    filtered: int = Field(0, ge=0, description="Clips moved aside by the filters.")
    failed: int = Field(0, ge=0, description="Clips a stage failed on.")


class VideoFailure(ReportModel):
    video: str = Field(description="The input video.")
    errors: dict[str, str] = Field(description="Stage (with [chunk N] for a chunked video) -> what went wrong.")
    retryable: bool = Field(False, description="The environment failed (storage, memory, an encoder, a killed"
                                               " worker), not the input: every rerun tries the video again. Otherwise"
                                               " only `clipforge run --retry-failed` does.")
    earlier: bool = Field(False, description="Recorded by an earlier run and not tried again by this one.")


class RunReport(ReportModel):
    state: RunState
    run_id: str | None = Field(None, description="This run's id, also in every record it wrote (clipforge.provenance).")
    job: str | None = Field(None, description="The VideoCurationJob's namespace/name ('-' for no namespace).")
    updated_at: datetime = Field(description="When the runner wrote this report (RFC 3339, UTC).")
    elapsed_seconds: float = Field(0.0, ge=0, description="Wall time since the run started.")
    videos: VideoCounts = Field(default_factory=VideoCounts)
    clips: ClipCounts = Field(default_factory=ClipCounts)
    video_seconds_processed: float = Field(0.0, ge=0, description="Seconds of the videos curated so far.")
    throughput_video_seconds_per_second: float = Field(0.0, ge=0, description="Video seconds per wall second.")
    clips_per_second: float = Field(0.0, ge=0, description="Clips passed or filtered per wall second.")
    # The run's end: reason and message in its last progress.json too, the rest only in summary.json.
    reason: str | None = Field(None, description="Why a run ended as it did, one CamelCase word (TooManyVideosFailed,"
                                                 " TooManyVideosFailedRetryable, TooManyClipsFailed, NoInputVideos,"
                                                 " NotStarted).")
    message: str | None = Field(None, description="The failure in words, with `reason`.")
    output: str | None = Field(None, description="The run's output.uri.")
    failures: list[VideoFailure] | None = Field(None, description="Every failed video with its reasons.")
    dedup: dict[str, Any] | None = Field(
        None, description="Semantic dedup's counts (clipforge.dedup), or {error} when it failed; once it ran."
    )

    def to_json(self) -> dict[str, Any]:
        """The JSON document: camelCase, without the fields this report does not have."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
