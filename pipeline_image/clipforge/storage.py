"""Local paths and s3:// URIs behind one small interface, through pyarrow.fs.

Objects are written atomically: locally through a temporary file and a rename, on S3 by
the nature of PUT and multipart upload (an object appears only once the upload completes),
checked by its size afterwards. Every call rides out a transient failure (a refused
connection, a gateway restart, SlowDown, a 5xx) with exponential backoff and jitter for up to
`Storage.retry_seconds`; a permanent one (no such bucket or key, access denied) fails at once.
"""

from __future__ import annotations

import fnmatch
import functools
import io
import json
import logging
import os
import posixpath
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs

from clipforge.spec import StorageSpec

log = logging.getLogger(__name__)
T = TypeVar("T")

READ_BUFFER_BYTES = 8 << 20
# How long one storage call keeps retrying a transient failure: long enough for a gateway
# restart or a burst of SlowDown, short enough that a lasting outage still ends the task.
RETRY_SECONDS = 120.0
RETRY_FIRST_DELAY_S, RETRY_MAX_DELAY_S = 0.5, 10.0
# What the AWS SDK (through pyarrow) says of failures worth another try: the connection,
# throttling, timeouts and server-side errors. Anything else (404, 403, a bad request) is final.
TRANSIENT_MARKERS = (
    "NETWORK_CONNECTION", "curlCode", "SLOW_DOWN", "THROTTLING", "SERVICE_UNAVAILABLE", "REQUEST_TIMEOUT",
    "INTERNAL_FAILURE", "HTTP status 5", "HTTP status 429", "HTTP status 408", "Connection reset",
    "Connection refused", "timed out",
)


def transient(exc: OSError) -> bool:
    """Whether this storage failure may go away by itself (see TRANSIENT_MARKERS)."""
    return not isinstance(exc, FileNotFoundError) and any(marker in str(exc) for marker in TRANSIENT_MARKERS)


class StorageError(RuntimeError):
    """An object store or path that cannot be reached or read; the message names the URI.
    `missing`: the object does not exist (rather than being out of reach)."""

    def __init__(self, message: str, missing: bool = False):
        super().__init__(message)
        self.missing = missing


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def join(base: str, *parts: str) -> str:
    if is_s3(base):
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(base, *parts)


def json_bytes(document: dict) -> bytes:
    """The project's JSON records: indented, keys sorted, so reruns write identical bytes."""
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


@functools.lru_cache(maxsize=16)
def _s3_client(endpoint: str | None, region: str) -> pafs.S3FileSystem:
    """One S3 client per process and endpoint: every Storage of a worker shares it (and its
    connection pool) instead of building one per call. Thread-safe, as Arrow's are.

    Credentials come from the AWS SDK's default chain, asked again as they expire or change:
    environment keys (a Secret's), a web identity token (IRSA, EKS Pod Identity), a profile, the
    instance's role. A client handed fixed keys would keep them after a rotation.
    """
    kwargs: dict = {"region": region, "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=5)}
    if endpoint and ".amazonaws.com" not in endpoint:
        # Ceph RGW and other S3 servers reject the CRC checksums newer AWS SDKs send by default;
        # AWS itself keeps them. (The SDK reads these when it makes a client.)
        os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
        os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    # Path-style addressing: RGW, MinIO and in-cluster endpoints rarely have wildcard DNS.
    return pafs.S3FileSystem(force_virtual_addressing=False, **kwargs)


class Listed(NamedTuple):
    """One file found by Storage.list_files."""

    uri: str
    relative: str  # below the listed root, with "/" separators
    size: int
    mtime: str  # last modified, ISO 8601 UTC: with the size, which version of the file this is


class ListedPage(NamedTuple):
    """One page of Storage.list_pages."""

    files: list[Listed]  # those matching a pattern
    unmatched: int  # files no pattern matched


def _page(root: str, base: str, entries: list[tuple[str, int, datetime | None]], patterns: list[str]) -> ListedPage:
    """entries (path as the filesystem names it, below `base`, size, mtime) as a page of root's listing."""
    # Case-insensitive: cameras and phones write IMG_0001.MOV and CLIP.MP4. One expression for
    # all patterns: a listing of millions of files tests each name once.
    matching = re.compile("|".join(fnmatch.translate(p.lower()) for p in patterns) or "(?!)")
    cut = len(base.rstrip("/")) + 1
    found, unmatched = [], 0
    for path, size, mtime in entries:
        if not matching.match(path.rsplit("/", 1)[-1].lower()):
            unmatched += 1
            continue
        uri = f"s3://{path}" if is_s3(root) else path
        # To the second: S3 lists milliseconds but HEAD (a single object's listing) says seconds.
        stamp = mtime.astimezone(timezone.utc).replace(microsecond=0).isoformat() if mtime else ""
        found.append(Listed(uri, path[cut:].replace(os.sep, "/"), size, stamp))
    return ListedPage(found, unmatched)


@functools.lru_cache(maxsize=16)
def _boto3_client(endpoint: str | None, region: str):  # noqa: ANN202 - botocore's client class is generated
    """The S3 client that lists inputs a page at a time, configured as _s3_client is (path-style,
    the SDK's default credential chain, asked again as they change)."""
    import boto3
    from botocore.config import Config

    _s3_client(endpoint, region)  # its checksum settings, which botocore reads from the environment too
    config = Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 5})
    return boto3.session.Session().client("s3", region_name=region, endpoint_url=endpoint, config=config)


def _boto3_call(call: Callable[..., T], **kwargs: object) -> T:
    """call(**kwargs), botocore's failures as the OSErrors Storage.retry tells apart."""
    from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError

    try:
        return call(**kwargs)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if error.get("Code") in ("NoSuchBucket", "NoSuchKey"):
            raise FileNotFoundError(str(exc)) from exc
        raise OSError(f"HTTP status {status} {error.get('Code')}: {exc}") from exc
    except HTTPClientError as exc:  # the connection: refused, reset, timed out
        raise OSError(f"NETWORK_CONNECTION: {exc}") from exc
    except BotoCoreError as exc:  # no credentials, a bad endpoint: final
        raise OSError(str(exc)) from exc


@dataclass(frozen=True)
class Storage:
    """Opens URIs of either kind. Picklable: filesystems are made lazily in each process.

    retry_seconds: how long each call retries a transient failure (0: one attempt).
    """

    endpoint: str | None = None
    region: str = "us-east-1"
    retry_seconds: float = RETRY_SECONDS

    @classmethod
    def from_spec(cls, spec: StorageSpec) -> Storage:
        return cls(endpoint=spec.endpoint, region=spec.region)

    def retrying_for(self, seconds: float) -> Storage:
        return replace(self, retry_seconds=seconds)

    def _s3(self) -> pafs.S3FileSystem:
        return _s3_client(self.endpoint, self.region)

    def resolve(self, uri: str) -> tuple[pafs.FileSystem, str]:
        if is_s3(uri):
            return self._s3(), uri[len("s3://"):].rstrip("/")
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().absolute())

    def retry(self, call: Callable[[], T], failure: str) -> T:
        """call(), retried on transient OSErrors until retry_seconds are spent; the last error
        (or a final one) raised as StorageError(f"{failure}: {error}")."""
        deadline = time.monotonic() + self.retry_seconds
        delay = RETRY_FIRST_DELAY_S
        while True:
            try:
                return call()
            except OSError as exc:
                wait = delay * random.uniform(0.5, 1.0)  # jitter: many workers must not retry in step
                if not transient(exc) or time.monotonic() + wait > deadline:
                    raise StorageError(f"{failure}: {exc}", missing=isinstance(exc, FileNotFoundError)) from exc
                log.warning("%s (retrying in %.1f s): %s", failure, wait, exc)
                time.sleep(wait)
                delay = min(2 * delay, RETRY_MAX_DELAY_S)

    def list_files(self, root: str, patterns: list[str], missing_ok: bool = False) -> list[Listed]:
        """The files under root matching any pattern (case-insensitively), sorted by relative path.

        missing_ok: a root that does not exist (nothing written there yet) lists as empty.
        """
        return [listed for page in self.list_pages(root, patterns, missing_ok) for listed in page.files]

    def list_pages(self, root: str, patterns: list[str], missing_ok: bool = False,
                   first_retry_seconds: float | None = None) -> Iterator[ListedPage]:
        """list_files() a page at a time, as the storage lists it (on S3 up to 1,000 keys, locally
        one directory's files), in the order of their relative paths (S3's key order), each page
        with how many of its files no pattern matched. Nothing but the page at hand is held, so
        the first files can be worked on while the listing goes on.

        first_retry_seconds: how long the first call retries, instead of retry_seconds (a run's
        start must not ride out a wrong endpoint as if it were an outage).
        """
        fs, path = self.resolve(root)
        first = self if first_retry_seconds is None else self.retrying_for(first_retry_seconds)
        info = first.retry(lambda: fs.get_file_info(path), f"cannot list input {root}")
        if info.type == pafs.FileType.File:
            base = posixpath.dirname(path) if is_s3(root) else os.path.dirname(path)
            yield _page(root, base, [(info.path, info.size, info.mtime)], patterns)
        elif info.type == pafs.FileType.Directory:
            walk = self._s3_pages(root, path) if is_s3(root) else self._local_pages(fs, root, path)
            for entries in walk:
                yield _page(root, path, entries, patterns)
        elif not missing_ok:
            raise StorageError(f"input {root} does not exist", missing=True)

    def _s3_pages(self, root: str, path: str) -> Iterator[list[tuple[str, int, datetime | None]]]:
        """ListObjectsV2 pages (pyarrow lists a prefix only as a whole)."""
        bucket, _, prefix = path.partition("/")
        prefix = f"{prefix}/" if prefix else ""
        client = _boto3_client(self.endpoint, self.region)
        token: str | None = None
        while True:
            args = {"Bucket": bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
            reply = self.retry(lambda: _boto3_call(client.list_objects_v2, **args), f"cannot list input {root}")
            yield [(f"{bucket}/{item['Key']}", item["Size"], item["LastModified"])
                   for item in reply.get("Contents", []) if not item["Key"].endswith("/")]
            token = reply.get("NextContinuationToken")
            if not reply.get("IsTruncated") or not token:
                return

    def _local_pages(self, fs: pafs.FileSystem, root: str, directory: str
                     ) -> Iterator[list[tuple[str, int, datetime | None]]]:
        """One directory's files at a time, depth first in the order of their relative paths: a
        directory's entries sort as its name and "/" would, which is where its files sort."""
        entries = self.retry(lambda: fs.get_file_info(pafs.FileSelector(directory, recursive=False)),
                             f"cannot list input {root}")
        entries.sort(key=lambda e: e.base_name + ("/" if e.type == pafs.FileType.Directory else ""))
        files: list[tuple[str, int, datetime | None]] = []
        for entry in entries:
            if entry.type == pafs.FileType.Directory:
                if files:
                    yield files
                    files = []
                yield from self._local_pages(fs, root, entry.path)
            elif entry.type == pafs.FileType.File:
                files.append((entry.path, entry.size, entry.mtime))
        if files:
            yield files

    def open_read(self, uri: str) -> io.BufferedReader:
        """A seekable, buffered reader; decoders read through it without loading the whole object.
        Each read is retried as a call is (a positioned read, so a retry reads the same bytes)."""
        fs, path = self.resolve(uri)
        native = self.retry(lambda: fs.open_input_file(path), f"cannot open {uri}")
        return io.BufferedReader(_RawNativeFile(native, self, uri), buffer_size=READ_BUFFER_BYTES)

    def read_bytes(self, uri: str) -> bytes:
        with self.open_read(uri) as f:
            return f.read()

    def exists(self, uri: str) -> bool:
        fs, path = self.resolve(uri)
        return self.retry(lambda: fs.get_file_info(path).type == pafs.FileType.File, f"cannot look up {uri}")

    def write_bytes(self, uri: str, data: bytes, content_type: str | None = None) -> None:
        """content_type: the object's Content-Type on S3 (browsers need it for pages served from a bucket)."""
        self.retry(lambda: self._write(uri, data, content_type), f"cannot write {uri}")

    def _write(self, uri: str, data: bytes, content_type: str | None) -> None:
        fs, path = self.resolve(uri)
        if is_s3(uri):
            metadata = {"Content-Type": content_type} if content_type else None
            with fs.open_output_stream(path, metadata=metadata) as out:
                out.write(data)
            # pyarrow cannot abort an upload: a stream closed after a failed part publishes what
            # it had. The size tells; a short object is removed and the write tried again.
            size = fs.get_file_info(path).size
            if size != len(data):
                fs.delete_file(path)
                raise OSError(f"AWS Error INTERNAL_FAILURE: uploaded {size} of {len(data)} bytes")
            return
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def write_json(self, uri: str, document: dict) -> None:
        self.write_bytes(uri, json_bytes(document))

    def delete(self, uri: str) -> None:
        fs, path = self.resolve(uri)

        def delete() -> None:
            try:
                fs.delete_file(path)
            except FileNotFoundError:
                pass

        self.retry(delete, f"cannot delete {uri}")


class _RawNativeFile(io.RawIOBase):
    """Adapts a pyarrow RandomAccessFile to io.RawIOBase so io.BufferedReader can wrap it.

    Reads are positioned (read_at) from a position kept here, so a read retried after a dropped
    connection reads the same bytes again."""

    def __init__(self, native: pa.NativeFile, storage: Storage, uri: str):
        self._f, self._storage, self._uri = native, storage, uri
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def _read(self, nbytes: int) -> bytes:
        data = self._storage.retry(lambda: self._f.read_at(nbytes, self._pos),
                                   f"cannot read {self._uri} at byte {self._pos}")
        self._pos += len(data)
        return data

    def readinto(self, buffer) -> int:  # noqa: ANN001
        data = self._read(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n

    def readall(self) -> bytes:
        # One read to the end: RawIOBase.readall would issue one S3 range request per 8 KiB.
        return self._read(max(0, self._f.size() - self._pos))

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._f.size()}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        self._f.close()
        super().close()
