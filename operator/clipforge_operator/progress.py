"""Reads the pipeline's run report (progress.json / summary.json) from the job's output URI.

The pipeline rewrites `<output>/progress.json` at least every PROGRESS_INTERVAL_S while it runs
and writes `<output>/summary.json` when it ends; both parse as clipforge.spec.RunReport, the
model the pipeline writes them from. Local paths are read as files (useful in tests and on
single-node clusters with shared volumes); s3:// URIs through boto3. No pyarrow here: the
operator image does not have it.

Credentials, when given, are used for the job's client and never logged. The reads run under a
job's lock on the handlers' shared threads, so one storage endpoint that does not answer must not
hold them: short timeouts and no retry within a read (the next timer tick is the retry), one client
per endpoint and credentials kept for the next read, and a breaker per endpoint that, after
BREAKER_FAILURES reads in a row it did not answer, refuses every read there for BREAKER_OPEN_S.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
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


CONNECT_TIMEOUT_S, READ_TIMEOUT_S = 2, 5
BREAKER_FAILURES = 3
BREAKER_OPEN_S = 60.0
MAX_CLIENTS = 64  # one per endpoint and credentials in use; the oldest go first


class EndpointBreaker:
    """Per storage endpoint: open (refusing reads) for BREAKER_OPEN_S after BREAKER_FAILURES unanswered reads in a row."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._failures: dict[str, int] = {}
        self._open_until: dict[str, float] = {}
        self._guard = threading.Lock()

    def check(self, endpoint: str) -> None:
        with self._guard:
            until = self._open_until.get(endpoint, 0.0)
        if self.clock() < until:
            raise ProgressUnavailable(f"storage endpoint {endpoint} did not answer {BREAKER_FAILURES} reads in a row;"
                                      f" not asked again for {until - self.clock():.0f} s")

    def answered(self, endpoint: str) -> None:
        with self._guard:
            self._failures.pop(endpoint, None)

    def unanswered(self, endpoint: str) -> None:
        with self._guard:
            self._failures[endpoint] = failures = self._failures.get(endpoint, 0) + 1
            if failures >= BREAKER_FAILURES:
                self._open_until[endpoint] = self.clock() + BREAKER_OPEN_S
                self._failures[endpoint] = 0


BREAKER = EndpointBreaker()
_CLIENTS: OrderedDict[tuple, Any] = OrderedDict()
_CLIENTS_GUARD = threading.Lock()


def _client(storage: StorageSpec, credentials: Credentials | None) -> Any:
    """The S3 client for this endpoint, region and credentials, made once (clients are thread-safe)."""
    import boto3
    from botocore.config import Config

    secret = None if credentials is None else hashlib.sha256(repr(
        (credentials.access_key_id, credentials.secret_access_key, credentials.session_token)).encode()).hexdigest()
    key = (storage.endpoint, storage.region, secret)
    with _CLIENTS_GUARD:
        if key in _CLIENTS:
            _CLIENTS.move_to_end(key)
            return _CLIENTS[key]
    kwargs: dict[str, Any] = {"region_name": storage.region,
                              "config": Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1},
                                               connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S)}
    if storage.endpoint:
        kwargs["endpoint_url"] = storage.endpoint
    if credentials is not None:
        kwargs.update(aws_access_key_id=credentials.access_key_id,
                      aws_secret_access_key=credentials.secret_access_key,
                      aws_session_token=credentials.session_token)
    client = boto3.client("s3", **kwargs)
    with _CLIENTS_GUARD:
        _CLIENTS[key] = client
        while len(_CLIENTS) > MAX_CLIENTS:
            _CLIENTS.popitem(last=False)
    return client


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key.strip("/")


def _read_s3(uri: str, storage: StorageSpec, credentials: Credentials | None) -> bytes:
    from botocore.exceptions import BotoCoreError, ClientError  # only when a job writes to S3

    endpoint = storage.endpoint or f"aws:{storage.region}"
    BREAKER.check(endpoint)
    bucket, key = _split_s3(uri)
    try:
        body = _client(storage, credentials).get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:  # an answer, if not the one wanted (no such key yet, access denied)
        BREAKER.answered(endpoint)
        code = exc.response.get("Error", {}).get("Code", "error")
        raise ProgressUnavailable(f"{uri}: {code}") from None
    except BotoCoreError as exc:  # no answer: refused, timed out, cut off
        BREAKER.unanswered(endpoint)
        raise ProgressUnavailable(f"{uri}: {type(exc).__name__}") from None
    BREAKER.answered(endpoint)
    return body


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
