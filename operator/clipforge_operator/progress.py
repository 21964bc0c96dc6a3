"""Reads the pipeline's progress.json / summary.json from the job's output URI.

The pipeline writes `<output>/progress.json` at least every 10 s while it runs and
`<output>/summary.json` when it ends (camelCase JSON; see the pipeline contract). Local paths
are read as files (useful in tests and on single-node clusters with shared volumes); s3:// URIs
through boto3. No pyarrow here: the operator image does not have it.

Credentials, when given, are used for the one client and never logged or stored.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from clipforge.spec import JobProgress, StorageSpec
from clipforge_operator.builders import parse_time

log = logging.getLogger(__name__)

PROGRESS_FILE = "progress.json"
SUMMARY_FILE = "summary.json"


class ProgressUnavailable(Exception):
    """The report could not be read (yet): missing, unreadable or not the expected JSON."""


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:  # never print the values, even by accident
        return "Credentials(<redacted>)"


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key.strip("/")


def _read_s3(uri: str, storage: StorageSpec, credentials: Credentials | None) -> bytes:
    import boto3  # only when a job writes to S3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    kwargs: dict[str, Any] = {"region_name": storage.region,
                              "config": Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2},
                                               connect_timeout=5, read_timeout=10)}
    if storage.endpoint:
        kwargs["endpoint_url"] = storage.endpoint
    if credentials is not None:
        kwargs.update(aws_access_key_id=credentials.access_key_id,
                      aws_secret_access_key=credentials.secret_access_key,
                      aws_session_token=credentials.session_token)
    bucket, key = _split_s3(uri)
    try:
        client = boto3.client("s3", **kwargs)
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        raise ProgressUnavailable(f"{uri}: {code}") from None
    except BotoCoreError as exc:
        raise ProgressUnavailable(f"{uri}: {type(exc).__name__}") from None


def _join(base: str, name: str) -> str:
    if base.startswith("s3://"):
        return base.rstrip("/") + "/" + name
    return os.path.join(os.path.expanduser(base), name)


def read_report(output_uri: str, name: str, storage: StorageSpec,
                credentials: Credentials | None = None) -> dict:
    """The parsed JSON report `name` (progress.json or summary.json) under the output URI."""
    uri = _join(output_uri, name)
    if uri.startswith("s3://"):
        raw = _read_s3(uri, storage, credentials)
    else:
        try:
            with open(uri, "rb") as fh:
                raw = fh.read()
        except OSError as exc:
            raise ProgressUnavailable(f"{uri}: {exc.strerror or type(exc).__name__}") from None
    try:
        report = json.loads(raw)
    except ValueError:
        raise ProgressUnavailable(f"{uri}: not JSON") from None
    if not isinstance(report, dict):
        raise ProgressUnavailable(f"{uri}: not a JSON object")
    return report


def progress_from_report(report: Mapping) -> JobProgress:
    """The status.progress block for a progress.json/summary.json report."""
    videos = report.get("videos") or {}
    clips = report.get("clips") or {}
    try:
        return JobProgress.model_validate({
            "videosDone": int(videos.get("done", 0)),
            "videosFailed": int(videos.get("failed", 0)),
            "videosSkipped": int(videos.get("skipped", 0)),
            "videosTotal": int(videos.get("total", 0)),
            "clipsPassed": int(clips.get("passed", 0)),
            "clipsFiltered": int(clips.get("filtered", 0)),
            "throughputVideoSecondsPerSecond": max(0.0, float(report.get("throughputVideoSecondsPerSecond") or 0.0)),
            "updatedAt": report.get("updatedAt"),
        })
    except (TypeError, ValueError) as exc:
        raise ProgressUnavailable(f"unexpected progress report: {exc.__class__.__name__}") from None


def read_progress(output_uri: str, storage: StorageSpec, credentials: Credentials | None = None,
                  final: bool = False) -> JobProgress:
    """Latest progress. With final=True, summary.json first (it has the end counts), else progress.json."""
    names = (SUMMARY_FILE, PROGRESS_FILE) if final else (PROGRESS_FILE,)
    error: ProgressUnavailable | None = None
    for name in names:
        try:
            return progress_from_report(read_report(output_uri, name, storage, credentials))
        except ProgressUnavailable as exc:
            error = exc
    assert error is not None
    raise error


@dataclass(frozen=True)
class RunOutcome:
    """How the pipeline says a run ended: summary.json's state, and why when it failed."""

    state: str
    reason: str
    message: str
    updated_at: datetime | None
    videos_failed: int
    videos_total: int
    failed_videos: tuple[str, ...]  # the inputs that failed, as the summary names them


def outcome_from_report(report: Mapping) -> RunOutcome:
    videos = report.get("videos") or {}
    try:
        return RunOutcome(
            state=str(report.get("state") or ""),
            reason=str(report.get("reason") or ""),
            message=str(report.get("message") or ""),
            updated_at=parse_time(report.get("updatedAt")),
            videos_failed=int(videos.get("failed", 0)),
            videos_total=int(videos.get("total", 0)),
            failed_videos=tuple(str(f.get("video", "")) for f in report.get("failures") or []),
        )
    except (AttributeError, TypeError, ValueError) as exc:
        raise ProgressUnavailable(f"unexpected summary: {exc.__class__.__name__}") from None


def read_outcome(output_uri: str, storage: StorageSpec, credentials: Credentials | None = None) -> RunOutcome:
    """The last run's summary.json under the output URI."""
    return outcome_from_report(read_report(output_uri, SUMMARY_FILE, storage, credentials))


def credentials_from_secret(secret: Mapping) -> Credentials | None:
    """Credentials from a core/v1 Secret body (base64 `data` or plain `stringData`), or None."""
    import base64

    values: dict[str, str] = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            values[key] = base64.b64decode(value).decode()
        except (ValueError, UnicodeDecodeError):
            continue
    values.update(secret.get("stringData") or {})
    if not values.get("AWS_ACCESS_KEY_ID") or not values.get("AWS_SECRET_ACCESS_KEY"):
        return None
    return Credentials(values["AWS_ACCESS_KEY_ID"], values["AWS_SECRET_ACCESS_KEY"], values.get("AWS_SESSION_TOKEN"))
