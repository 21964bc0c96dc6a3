"""Reads the pipeline's run report (progress.json / summary.json) from the job's output URI.

The pipeline rewrites `<output>/progress.json` at least every PROGRESS_INTERVAL_S while it runs
and writes `<output>/summary.json` when it ends; both parse as clipforge.spec.RunReport, the
model the pipeline writes them from. Local paths are read as files (useful in tests and on
single-node clusters with shared volumes); s3:// URIs through boto3. No pyarrow here: the
operator image does not have it.

Credentials, when given, are used for the one client and never logged or stored.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from clipforge.spec import PROGRESS_FILE, SUMMARY_FILE, JobProgress, RunReport, StorageSpec

log = logging.getLogger(__name__)


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
                credentials: Credentials | None = None) -> RunReport:
    """The run report `name` (PROGRESS_FILE or SUMMARY_FILE) under the output URI."""
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
        return RunReport.model_validate_json(raw)
    except ValidationError as exc:  # the first problem's place only: the values stay out of logs
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the document"
        raise ProgressUnavailable(f"{uri}: not a run report ({where}: {first['type']})") from None


def progress_from_report(report: RunReport) -> JobProgress:
    """The status.progress block for a progress.json/summary.json report."""
    videos, clips = report.videos, report.clips
    return JobProgress(
        videos_done=videos.done, videos_failed=videos.failed, videos_skipped=videos.skipped,
        videos_total=videos.total, clips_passed=clips.passed, clips_filtered=clips.filtered,
        throughput_video_seconds_per_second=report.throughput_video_seconds_per_second,
        updated_at=report.updated_at,
    )


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


def read_outcome(output_uri: str, storage: StorageSpec, credentials: Credentials | None = None) -> RunReport:
    """How the last run ended: its summary.json under the output URI."""
    return read_report(output_uri, SUMMARY_FILE, storage, credentials)


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
