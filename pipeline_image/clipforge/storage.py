"""Local paths and s3:// URIs behind one small interface, through pyarrow.fs.

Objects are written atomically: locally through a temporary file and a rename, on S3 by
the nature of PUT and multipart upload (an object appears only once the upload completes).
"""

from __future__ import annotations

import fnmatch
import functools
import io
import json
import os
import posixpath
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from clipforge.spec import StorageSpec

# RGW and other S3 servers reject the default CRC checksums of newer AWS SDKs.
os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")

READ_BUFFER_BYTES = 8 << 20


class StorageError(RuntimeError):
    """An object store or path that cannot be reached or read; the message names the URI."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def join(base: str, *parts: str) -> str:
    if is_s3(base):
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(base, *parts)


@functools.lru_cache(maxsize=16)
def _s3_client(endpoint: str | None, region: str, key: str | None, secret: str | None,
               token: str | None) -> pafs.S3FileSystem:
    """One S3 client per process and connection settings: every Storage of a worker shares it
    (and its connection pool) instead of building one per call. Thread-safe, as Arrow's are."""
    kwargs: dict = {"region": region}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    if key and secret:
        kwargs.update(access_key=key, secret_key=secret, session_token=token)
    # Path-style addressing: RGW, MinIO and in-cluster endpoints rarely have wildcard DNS.
    return pafs.S3FileSystem(force_virtual_addressing=False, **kwargs)


@dataclass(frozen=True)
class Storage:
    """Opens URIs of either kind. Picklable: filesystems are made lazily in each process."""

    endpoint: str | None = None
    region: str = "us-east-1"

    @classmethod
    def from_spec(cls, spec: StorageSpec) -> Storage:
        return cls(endpoint=spec.endpoint, region=spec.region)

    def _s3(self) -> pafs.S3FileSystem:
        key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        return _s3_client(self.endpoint, self.region, key, secret, os.environ.get("AWS_SESSION_TOKEN"))

    def resolve(self, uri: str) -> tuple[pafs.FileSystem, str]:
        if is_s3(uri):
            return self._s3(), uri[len("s3://"):].rstrip("/")
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().absolute())

    def list_files(self, root: str, patterns: list[str], missing_ok: bool = False) -> list[tuple[str, str, int]]:
        """(uri, path relative to root, size) of files under root matching any pattern, sorted.

        missing_ok: a root that does not exist (nothing written there yet) lists as empty.
        """
        fs, path = self.resolve(root)
        try:
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.File:
                infos = [info]
                base = posixpath.dirname(path) if is_s3(root) else os.path.dirname(path)
            elif info.type == pafs.FileType.Directory:
                infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
                base = path
            elif missing_ok:
                return []
            else:
                raise StorageError(f"input {root} does not exist")
        except OSError as exc:
            raise StorageError(f"cannot list input {root}: {exc}") from None
        found = []
        for entry in infos:
            if entry.type != pafs.FileType.File:
                continue
            if not any(fnmatch.fnmatch(entry.base_name, p) for p in patterns):
                continue
            rel = posixpath.relpath(entry.path, base) if is_s3(root) else os.path.relpath(entry.path, base)
            uri = f"s3://{entry.path}" if is_s3(root) else entry.path
            found.append((uri, rel.replace(os.sep, "/"), entry.size))
        return sorted(found, key=lambda f: f[1])

    def open_read(self, uri: str) -> io.BufferedReader:
        """A seekable, buffered reader; decoders read through it without loading the whole object."""
        fs, path = self.resolve(uri)
        try:
            native = fs.open_input_file(path)
        except (OSError, FileNotFoundError) as exc:
            raise StorageError(f"cannot open {uri}: {exc}") from None
        return io.BufferedReader(_RawNativeFile(native), buffer_size=READ_BUFFER_BYTES)

    def read_bytes(self, uri: str) -> bytes:
        with self.open_read(uri) as f:
            return f.read()

    def exists(self, uri: str) -> bool:
        fs, path = self.resolve(uri)
        return fs.get_file_info(path).type == pafs.FileType.File

    def write_bytes(self, uri: str, data: bytes, content_type: str | None = None) -> None:
        """content_type: the object's Content-Type on S3 (browsers need it for pages served from a bucket)."""
        try:
            self._write(uri, data, content_type)
        except OSError as exc:
            raise StorageError(f"cannot write {uri}: {exc}") from None

    def _write(self, uri: str, data: bytes, content_type: str | None) -> None:
        fs, path = self.resolve(uri)
        if is_s3(uri):
            metadata = {"Content-Type": content_type} if content_type else None
            with fs.open_output_stream(path, metadata=metadata) as out:
                out.write(data)
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
        """The project's JSON records: indented, keys sorted, so reruns write identical bytes."""
        self.write_bytes(uri, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode())

    def delete(self, uri: str) -> None:
        fs, path = self.resolve(uri)
        try:
            fs.delete_file(path)
        except FileNotFoundError:
            pass


class _RawNativeFile(io.RawIOBase):
    """Adapts a pyarrow RandomAccessFile to io.RawIOBase so io.BufferedReader can wrap it."""

    def __init__(self, native: pa.NativeFile):
        self._f = native

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # noqa: ANN001
        data = self._f.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n

    def readall(self) -> bytes:
        # One read to the end: RawIOBase.readall would issue one S3 range request per 8 KiB.
        return self._f.read()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        self._f.close()
        super().close()
