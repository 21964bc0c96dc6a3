"""Clip containers written into memory."""

from __future__ import annotations

import io

import av


def _snapshot_opener(buffer: io.BytesIO):
    """io_open for +faststart: the MP4 muxer re-reads what it wrote to move the index up front.

    It reopens its output by URL, which an in-memory buffer has not got; a copy of the bytes
    written so far is what it needs (it only reads data that precede what it overwrites).
    """

    def io_open(url: str, flags: int, options: dict) -> io.BytesIO:  # noqa: ARG001
        return io.BytesIO(buffer.getvalue())

    return io_open


def open_output(buffer: io.BytesIO, container_format: str) -> av.container.OutputContainer:
    """A container writing into `buffer`; MP4 with its index before the data (+faststart)."""
    if container_format == "mp4":
        return av.open(
            buffer, "w", format="mp4", options={"movflags": "+faststart"}, io_open=_snapshot_opener(buffer)
        )
    return av.open(buffer, "w", format=container_format)
