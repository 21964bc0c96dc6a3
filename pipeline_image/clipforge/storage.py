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
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timezone
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
        return self.list_matching(root, patterns, missing_ok)[0]

    def list_matching(self, root: str, patterns: list[str], missing_ok: bool = False) -> tuple[list[Listed], int]:
        """list_files(), and how many files under root no pattern matched."""
        fs, path = self.resolve(root)

        def listing() -> tuple[list[pafs.FileInfo], str] | None:
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.File:
                return [info], posixpath.dirname(path) if is_s3(root) else os.path.dirname(path)
            if info.type == pafs.FileType.Directory:
                return fs.get_file_info(pafs.FileSelector(path, recursive=True)), path
            return None

        listed = self.retry(listing, f"cannot list input {root}")
        if listed is None:
            if missing_ok:
                return [], 0
            raise StorageError(f"input {root} does not exist", missing=True)
        infos, base = listed
        # Case-insensitive: cameras and phones write IMG_0001.MOV and CLIP.MP4.
        lowered = [p.lower() for p in patterns]
        found, unmatched = [], 0
        for entry in infos:
            if entry.type != pafs.FileType.File:
                continue
            if not any(fnmatch.fnmatchcase(entry.base_name.lower(), p) for p in lowered):
                unmatched += 1
                continue
            rel = posixpath.relpath(entry.path, base) if is_s3(root) else os.path.relpath(entry.path, base)
            uri = f"s3://{entry.path}" if is_s3(root) else entry.path
            # To the second: S3 lists milliseconds but HEAD (a single object's listing) says seconds.
            mtime = entry.mtime.astimezone(timezone.utc).replace(microsecond=0).isoformat() if entry.mtime else ""
            found.append(Listed(uri, rel.replace(os.sep, "/"), entry.size, mtime))
        return sorted(found, key=lambda f: f.relative), unmatched

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
