"""Stream copy: clips cut out of the source on keyframes, without re-encoding.

Stream copy keeps whole GOPs: every clip boundary moves to the keyframe nearest to it, so the
spans written partition the source the way the requested spans do (clips that did not overlap
do not overlap once snapped) and a clip's id names the span actually written. A clip whose
boundaries snap to the same keyframe (shorter than the source's keyframe interval) cannot be
cut without re-encoding and fails with that reason. Each copied clip is decoded once, for the
frames the later stages asked for.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import av

from clipforge.codec.audio import AudioUnit, SourceAudio
from clipforge.codec.output import open_output
from clipforge.codec.source import SourcePass, source_seconds
from clipforge.failures import raise_if_environmental
from clipforge.frames import FrameRequest, Timeline, sample_encoded
from clipforge.tasks import Clip, clip_uuid

log = logging.getLogger(__name__)

_CopiedPacket = tuple[bytes, "int | None", "int | None", int, bool]  # data, pts, dts, duration, key


@dataclass
class _Packets:
    """The chunk's video packets in decode order, with their frame indices, and where its GOPs start."""

    indices: list[int] = field(default_factory=list)
    packets: list[_CopiedPacket] = field(default_factory=list)
    keyframes: list[tuple[int, int]] = field(default_factory=list)  # (frame index, position in packets)
    end: int | None = None  # one past the last frame, once the stream has ended

    def add(self, index: int, packet: _CopiedPacket) -> None:
        if packet[4]:
            self.keyframes.append((index, len(self.packets)))
        self.indices.append(index)
        self.packets.append(packet)

    def snap(self, index: int) -> tuple[int, int] | None:
        """(frame index, position) of the GOP boundary nearest to `index` (the earlier on a tie);
        the end of the stream counts as one."""
        bounds = list(self.keyframes) + ([(self.end, len(self.packets))] if self.end is not None else [])
        if not bounds:
            return None
        return min(bounds, key=lambda b: (abs(b[0] - index), b[0]))


def _read_packets(container, stream, timeline: Timeline, first: int, last: int,  # noqa: ANN001
                  audio: SourceAudio | None) -> _Packets:
    """Packets from the keyframe at or before frame `first` up to the first keyframe at or past
    frame `last` (the GOP boundary nearest to any clip end is then known), or to the end of the
    stream; and the audio up to there."""
    source = SourcePass(container, stream, timeline, first, audio)
    for packets in source.attempts():
        read = _Packets()
        closing: float | None = None  # the time of the first keyframe at or past `last`
        for packet in packets:
            if packet.size == 0:
                continue  # the demuxer's end-of-stream marker
            if packet.stream.type == "audio":
                audio.add(packet)
            elif closing is None:
                index = timeline.index(packet.pts if packet.pts is not None else packet.dts)
                if index is None:
                    index = (read.indices[-1] + 1) if read.indices else first
                key = packet.is_keyframe
                if key and not source.placed and not source.check(index):
                    break
                if key and index >= last:
                    read.keyframes.append((index, len(read.packets)))
                    closing = source_seconds(timeline, index)
                else:
                    read.add(index, (bytes(packet), packet.pts, packet.dts, packet.duration or 0, key))
            if closing is not None and (audio is None or audio.complete_until(closing)):
                break
        else:
            if closing is None:
                read.end = max(read.indices) + 1 if read.indices else first
            if audio is not None:
                audio.ended()
    return read


def copy_chunk(container, stream, timeline: Timeline, clips: list[Clip], audio: SourceAudio | None,  # noqa: ANN001
               requests: list[FrameRequest], threads: int, fail: Callable[[Clip, str], None]) -> None:
    """Each clip becomes the whole GOPs between the keyframes nearest its start and its end
    (module docstring); `fail` records a clip that cannot be.

    Starting on a keyframe makes the clip decodable (an open GOP's leading pictures, which refer
    to the GOP before, are left out); ending before the next GOP's keyframe means no frame
    written refers to one that is not, and that a clip's last frame is never the next clip's
    first (the next GOP's leading pictures, shown before its keyframe, belong to neither). The
    span recorded, and the id, are what was written.
    """
    try:
        read = _read_packets(container, stream, timeline, clips[0].start_frame, max(c.end_frame for c in clips), audio)
    except Exception as exc:  # noqa: BLE001
        raise_if_environmental(exc)
        for clip in clips:
            fail(clip, f"reading the source failed: {type(exc).__name__}: {exc}")
        return
    written: dict[tuple[int, int], str] = {}
    for clip in clips:
        if read.end is not None and clip.start_frame >= read.end:
            fail(clip, f"the source ends at frame {read.end - 1}, before the clip starts")
            continue
        start, end = read.snap(clip.start_frame), read.snap(clip.end_frame)
        if start is None or end is None or start[0] >= end[0]:
            fail(clip, f"no keyframe-aligned span for [{clip.start_frame}, {clip.end_frame}): both ends are nearest"
                       f" the same keyframe (frame {start[0] if start else '?'}); the source's keyframes are further"
                       " apart than the clip is long")
            continue
        chosen = [i for i in range(start[1], end[1]) if read.indices[i] >= start[0]]
        span = (start[0], max(read.indices[i] for i in chosen) + 1)
        if span in written:
            fail(clip, f"snaps to the same keyframe-aligned span {list(span)} as clip {written[span]}")
            continue
        _finish_copy(clip, span, [read.packets[i] for i in chosen], stream, timeline, audio, requests, threads, fail)
        if clip.encoded is not None:
            written[span] = clip.uuid


def _finish_copy(clip: Clip, span: tuple[int, int], packets: list[_CopiedPacket], in_stream,  # noqa: ANN001
                 timeline: Timeline, audio: SourceAudio | None, requests: list[FrameRequest], threads: int,
                 fail: Callable[[Clip, str], None]) -> None:
    if len(packets) != span[1] - span[0]:
        # A variable frame rate: copied frames keep their own timing, off the constant grid.
        log.info("clip %s: %d frames copied for span [%d, %d)", clip.uuid, len(packets), *span)
    units = audio.span(source_seconds(timeline, span[0]), source_seconds(timeline, span[1])) if audio is not None else []
    try:
        data = _mux_copy(packets, in_stream, audio, units, "mp4")
    except Exception as mp4_exc:  # noqa: BLE001 - codecs MP4 cannot carry go to Matroska
        try:
            data = _mux_copy(packets, in_stream, audio, units, "matroska")
        except Exception as exc:  # noqa: BLE001
            fail(clip, f"stream copy failed: {type(mp4_exc).__name__}: {mp4_exc}; {exc}")
            return
        clip.container = "mkv"
    try:
        clip.frames = sample_encoded(data, requests, threads) if requests else {}
    except Exception as exc:  # noqa: BLE001
        fail(clip, f"the copied clip does not decode: {type(exc).__name__}: {exc}")
        return
    ctx = in_stream.codec_context
    clip.encoded = data
    clip.keyframe_aligned = True
    clip.uuid = clip_uuid(clip.source_video, *span)
    clip.start_frame, clip.end_frame = span
    clip.start_s, clip.end_s = timeline.seconds(span[0]), timeline.seconds(span[1])
    clip.width, clip.height, clip.framerate = ctx.width, ctx.height, float(timeline.fps)
    clip.num_frames = len(packets)
    clip.video_codec = ctx.name
    clip.audio_codec = audio.clip_codec if units else None


def _mux_copy(packets: list[_CopiedPacket], in_stream, audio: SourceAudio | None,  # noqa: ANN001
              units: list[AudioUnit], container_format: str) -> bytes:
    buffer = io.BytesIO()
    with open_output(buffer, container_format) as out:
        out_stream = out.add_stream_from_template(in_stream)
        audio_stream = audio.add_stream(out) if units else None
        # Timestamps restart at the clip's first keyframe.
        shift = packets[0][1] if packets[0][1] is not None else (in_stream.start_time or 0)
        for data, pts, dts, duration, key in packets:
            packet = av.Packet(data)
            packet.pts = None if pts is None else pts - shift
            packet.dts = None if dts is None else dts - shift
            packet.duration = duration
            packet.is_keyframe = key
            packet.time_base = in_stream.time_base
            packet.stream = out_stream
            out.mux(packet)
        if units:
            audio.mux(out, audio_stream, units)
    return buffer.getvalue()
