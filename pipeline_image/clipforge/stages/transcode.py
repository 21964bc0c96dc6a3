"""Cut a chunk's clips out of their source video: re-encoded frame-accurately, or stream-copied.

Both modes read the source once per chunk: one seek to the keyframe at or before the first
clip's start, then one forward pass that feeds every frame (or packet) to each clip whose span
contains it, so overlapping clips share the decode and adjacent clips never re-decode frames.
Nothing decoded is kept: a frame is converted once, handed to the open encoders and dropped.
Memory is the open encoders (their lookahead) plus the finished clips' bytes, bounded by the
chunk, not by the video.

Frame indices follow the split stage: the n-th frame of the video, counted from 0. A frame's
index is recovered from its timestamp, ((pts - stream start) * time_base * fps) rounded, so a
seek does not lose count. For constant-frame-rate sources that is exact; a variable-rate source
is put on the constant grid the way ffmpeg's cfr mode does it (a late frame is repeated over
the indices it skipped, an early one that lands on an index already written is dropped), which
keeps every encoded clip at exactly end_frame - start_frame frames.

Failures stay with the clip they hit (`clip.errors["transcode"]`, no bytes): an encoder that
cannot open, a span past the end of the source, source data the decoder rejects (the clips
holding frames that may show the damage, up to the next keyframe). A source that cannot be
opened at all fails the video.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import av

from clipforge.spec import Encoder, TranscodeMode, VideoCurationJobSpec
from clipforge.stages.base import Stage
from clipforge.storage import Storage
from clipforge.tasks import Clip, VideoMeta, VideoTask

log = logging.getLogger(__name__)

# The decoder's own name for what each encoder writes, as the probe stage reports codecs.
_CODEC_NAMES = {
    Encoder.libx264.value: "h264",
    Encoder.h264_nvenc.value: "h264",
    Encoder.libvpx_vp9.value: "vp9",
    Encoder.libsvtav1.value: "av1",
}


class SourceError(RuntimeError):
    """The source cannot be read at all; the whole video fails."""


def parse_bitrate(value: str) -> int:
    """'4M' -> 4000000, '800k' -> 800000, '250000' -> 250000 (bits per second)."""
    multiplier = {"k": 1_000, "m": 1_000_000}.get(value[-1].lower(), 1)
    digits = value[:-1] if multiplier != 1 else value
    return int(digits) * multiplier


def output_size(width: int, height: int, max_height: int | None) -> tuple[int, int]:
    """The encoded size: even dimensions (4:2:0), scaled down to max_height keeping the aspect."""
    if max_height and height > max_height:
        out_h = max(2, max_height - max_height % 2)
        out_w = max(2, round(width * out_h / height / 2) * 2)
        return out_w, out_h
    return max(2, width - width % 2), max(2, height - height % 2)


def _snapshot_opener(buffer: io.BytesIO):
    """io_open for +faststart: the MP4 muxer re-reads what it wrote to move the index up front.

    It reopens its output by URL, which an in-memory buffer has not got; a copy of the bytes
    written so far is what it needs (it only reads data that precede what it overwrites).
    """

    def io_open(url: str, flags: int, options: dict) -> io.BytesIO:  # noqa: ARG001
        return io.BytesIO(buffer.getvalue())

    return io_open


def _open_output(buffer: io.BytesIO, container_format: str) -> av.container.OutputContainer:
    if container_format == "mp4":
        return av.open(
            buffer, "w", format="mp4", options={"movflags": "+faststart"}, io_open=_snapshot_opener(buffer)
        )
    return av.open(buffer, "w", format=container_format)


@dataclass
class _Timeline:
    """Maps a video stream's timestamps to frame indices and back."""

    time_base: Fraction
    fps: Fraction
    origin: int  # pts of frame 0

    @classmethod
    def of(cls, stream: av.video.stream.VideoStream, meta: VideoMeta | None) -> _Timeline:
        fps = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not fps and meta is not None and meta.framerate:
            fps = Fraction(meta.framerate).limit_denominator(1001)
        if not fps:
            raise SourceError("the source's frame rate is unknown")
        if stream.time_base is None:
            raise SourceError("the source's video stream has no time base")
        return cls(Fraction(stream.time_base), Fraction(fps), stream.start_time or 0)

    def index(self, pts: int | None) -> int | None:
        if pts is None:
            return None
        return math.floor((pts - self.origin) * self.time_base * self.fps + Fraction(1, 2))

    def pts(self, index: int) -> int:
        return self.origin + math.floor(index / self.fps / self.time_base)

    def seconds(self, index: int) -> float:
        return float(index / self.fps)


@dataclass
class ClipEncoder:
    """One clip's encoder writing MP4 (or WebM) into memory."""

    clip: Clip
    buffer: io.BytesIO
    container: av.container.OutputContainer
    stream: av.video.stream.VideoStream
    frames: int = 0
    damaged: list[int] = field(default_factory=list)  # indices of frames from damaged source data

    @classmethod
    def open(cls, clip: Clip, spec, fps: Fraction, width: int, height: int) -> ClipEncoder:  # noqa: ANN001
        encoder = spec.encoder
        buffer = io.BytesIO()
        container = _open_output(buffer, "mp4")
        try:
            stream = container.add_stream(encoder, rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.time_base = 1 / fps
            options: dict[str, str] = {}
            if spec.bitrate:
                stream.codec_context.bit_rate = parse_bitrate(spec.bitrate)
            if encoder == Encoder.libx264.value:
                if not spec.bitrate and spec.crf is not None:
                    options["crf"] = str(min(spec.crf, 51))
                if spec.preset:
                    options["preset"] = spec.preset
            elif encoder == Encoder.h264_nvenc.value:
                if not spec.bitrate and spec.crf is not None:
                    options.update(rc="vbr", cq=str(min(spec.crf, 51)))
                    stream.codec_context.bit_rate = 0
                if spec.preset:
                    options["preset"] = spec.preset
            elif encoder == Encoder.libvpx_vp9.value:
                options.update({"row-mt": "1", "deadline": "good", "cpu-used": "5"})
                if not spec.bitrate and spec.crf is not None:
                    options["crf"] = str(spec.crf)
                    stream.codec_context.bit_rate = 0  # constant quality
                if spec.preset:
                    # libvpx speaks in deadlines (good/best/realtime) and speeds (cpu-used 0..8).
                    key = "cpu-used" if spec.preset.lstrip("-").isdigit() else "deadline"
                    options[key] = spec.preset
            elif encoder == Encoder.libsvtav1.value:
                if not spec.bitrate and spec.crf is not None:
                    options["crf"] = str(spec.crf)
                if spec.preset:
                    options["preset"] = spec.preset
            stream.codec_context.options = options
            stream.codec_context.open()  # now, so a missing encoder or GPU is reported as such
        except BaseException:
            container.close()
            raise
        return cls(clip, buffer, container, stream)

    def encode(self, frame: av.VideoFrame) -> None:
        # The same converted frame goes to every open encoder; each stamps it with its own time.
        frame.pts = self.frames
        frame.time_base = self.stream.codec_context.time_base
        self.container.mux(self.stream.encode(frame))
        self.frames += 1

    def finish(self) -> bytes:
        self.container.mux(self.stream.encode(None))
        self.container.close()
        return self.buffer.getvalue()

    def abort(self) -> None:
        # Closing a broken muxer must not mask the error that broke it.
        with contextlib.suppress(Exception):
            self.container.close()


_CopiedPacket = tuple[bytes, "int | None", "int | None", int, bool]  # data, pts, dts, duration, key


@dataclass
class _CopyClip:
    """One clip's stream copy: packets from the keyframe at or before its start, in decode order."""

    clip: Clip
    keyframe: int | None = None  # index of the keyframe the written span starts at
    packets: list[_CopiedPacket] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    # The first keyframe at or past the clip's end, held back: written only if leading pictures
    # (open GOP: shown before it, decoded after it and referring to it) follow and are needed.
    closing: tuple[int, _CopiedPacket] | None = None
    closing_written: bool = False

    def add(self, index: int, packet: _CopiedPacket) -> None:
        self.packets.append(packet)
        self.indices.append(index)


class TranscodeStage(Stage):
    name = "transcode"

    def __init__(self, spec: VideoCurationJobSpec):
        super().__init__(spec)
        self.storage = Storage.from_spec(spec.storage)

    def process(self, task: VideoTask) -> list[VideoTask]:
        clips = []
        for clip in sorted(task.clips, key=lambda c: (c.start_frame, c.end_frame)):
            clip.encoded = None
            clip.errors.pop(self.name, None)
            if clip.start_frame < 0 or clip.end_frame <= clip.start_frame:
                clip.errors[self.name] = f"empty or negative span [{clip.start_frame}, {clip.end_frame})"
            else:
                clips.append(clip)
        if not clips:
            return [task]
        with self.storage.open_read(task.source) as raw:
            try:
                container = av.open(raw, metadata_errors="ignore")
            except av.error.FFmpegError as exc:
                raise SourceError(f"cannot open {task.source} as a video: {exc}") from None
            with container:
                if not container.streams.video:
                    raise SourceError(f"{task.source} has no video stream")
                stream = container.streams.video[0]
                timeline = _Timeline.of(stream, task.meta)
                if self.spec.transcoding.mode == TranscodeMode.copy.value:
                    _copy_chunk(container, stream, timeline, clips)
                else:
                    self._encode_chunk(container, stream, timeline, clips)
        return [task]

    # -- encode mode -------------------------------------------------------------------

    def _encode_chunk(self, container, stream, timeline: _Timeline, clips: list[Clip]) -> None:  # noqa: ANN001
        spec = self.spec.transcoding
        src_w, src_h = stream.codec_context.width, stream.codec_context.height
        out_w, out_h = output_size(src_w, src_h, spec.max_height)
        codec_name = _CODEC_NAMES.get(spec.encoder, spec.encoder)
        fps = timeline.fps
        waiting = list(clips)  # not started yet, by start
        active: list[ClipEncoder] = []
        written = -1  # last frame index handed to the encoders

        def fail(clip: Clip, message: str) -> None:
            log.warning("transcode of clip %s failed: %s", clip.uuid, message)
            clip.encoded = None
            clip.errors[self.name] = message

        def emit(index: int, frame: av.VideoFrame, damaged: bool) -> None:
            while waiting and waiting[0].start_frame <= index:
                clip = waiting.pop(0)
                try:
                    active.append(ClipEncoder.open(clip, spec, fps, out_w, out_h))
                except Exception as exc:  # noqa: BLE001
                    hint = " (h264_nvenc needs an NVIDIA GPU with NVENC)" if spec.encoder == "h264_nvenc" else ""
                    fail(clip, f"cannot open encoder {spec.encoder}{hint}: {type(exc).__name__}: {exc}")
            for encoder in list(active):
                clip = encoder.clip
                if damaged:
                    encoder.damaged.append(index)
                try:
                    encoder.encode(frame)
                    if index + 1 >= clip.end_frame:
                        active.remove(encoder)
                        finish(encoder)
                except Exception as exc:  # noqa: BLE001
                    if encoder in active:
                        active.remove(encoder)
                    encoder.abort()
                    fail(clip, f"encoding failed at frame {index}: {type(exc).__name__}: {exc}")

        def finish(encoder: ClipEncoder) -> None:
            clip = encoder.clip
            if encoder.damaged:
                encoder.abort()
                fail(clip, f"the source is damaged at frames {encoder.damaged[0]}..{encoder.damaged[-1]}"
                           " (undecodable or concealed data)")
                return
            clip.encoded = encoder.finish()
            clip.width, clip.height, clip.framerate = out_w, out_h, float(fps)
            clip.num_frames, clip.video_codec = encoder.frames, codec_name

        first = clips[0].start_frame
        damage = _Damage()
        try:
            for frame in _decode_from(container, stream, timeline, first):
                if isinstance(frame, _Lost):
                    # A lost keyframe spoils its GOP; any other packet may be a reference for
                    # every frame not yet shown, B-frames before it included.
                    damage.lost(frame.keyframe if frame.keyframe is not None else written + 1)
                    continue
                if isinstance(frame, _Keyframe):
                    damage.keyframe(frame.index)
                    continue
                index = timeline.index(frame.pts)
                if index is None:
                    index = written + 1
                if frame.is_corrupt:
                    damage.lost(index)
                if index <= written or index < first:
                    continue
                if written < 0 and index > first:
                    # Only happens when the frame at `first` is missing from the source itself.
                    written = first - 1
                frame = frame.reformat(out_w, out_h, "yuv420p", interpolation="BICUBIC")
                # A decoded frame remembers its picture type; encoders would obey it.
                frame.pict_type = av.video.frame.PictureType.NONE
                # Indices the source skipped (a variable frame rate, a lost frame) repeat this frame.
                for missing in range(written + 1, index + 1):
                    emit(missing, frame, damage.covers(missing))
                written = index
                damage.written(index)
                if not waiting and not active:
                    break
        except Exception as exc:  # noqa: BLE001 - a broken stream fails the clips it had not finished
            message = f"reading the source failed after frame {written}: {type(exc).__name__}: {exc}"
            for encoder in active:
                encoder.abort()
                fail(encoder.clip, message)
            for clip in waiting:
                fail(clip, message)
            return
        # The source ended early: a clip running past its end keeps what exists, recorded as such.
        for encoder in active:
            clip = encoder.clip
            log.warning("clip %s ends at frame %d, past the source's last frame %d", clip.uuid, clip.end_frame, written)
            try:
                finish(encoder)
            except Exception as exc:  # noqa: BLE001
                encoder.abort()
                fail(clip, f"encoding failed at the end of the source: {type(exc).__name__}: {exc}")
                continue
            if clip.encoded is not None:
                clip.end_frame = clip.start_frame + encoder.frames
                clip.end_s = timeline.seconds(clip.end_frame)
        for clip in waiting:
            fail(clip, f"the source ends at frame {written}, before the clip starts")


@dataclass(frozen=True)
class _Lost:
    """The decoder rejected a packet: its frame is missing and later ones may refer to it."""

    keyframe: int | None = None  # the packet's frame index, when it was a keyframe


@dataclass(frozen=True)
class _Keyframe:
    """A keyframe packet was decoded: frames from its index on do not depend on earlier data."""

    index: int | None


@dataclass
class _Damage:
    """Which frame indices may show damage, so that clips holding them are failed, not written.

    From a packet the decoder rejects (or a frame it had to conceal), every frame not yet
    written is suspect: B-frames shown before a lost reference depend on it too. The damage
    ends at the next keyframe decoded after it (closed GOPs); until then, all frames count.
    """

    start: int | None = None
    end: int | None = None  # the recovering keyframe's index, once it is decoded

    def lost(self, index: int) -> None:
        self.start = index if self.start is None else min(self.start, index)
        self.end = None

    def keyframe(self, index: int | None) -> None:
        if self.start is not None and self.end is None and index is not None and index >= self.start:
            self.end = index

    def covers(self, index: int) -> bool:
        return self.start is not None and index >= self.start and (self.end is None or index < self.end)

    def written(self, index: int) -> None:
        if self.end is not None and index >= self.end:
            self.start = self.end = None


def _seek(container, stream, timeline: _Timeline, index: int) -> None:  # noqa: ANN001
    """Seek to the keyframe at or before frame `index` (the decoder is flushed by PyAV)."""
    container.seek(timeline.pts(index), stream=stream, backward=True, any_frame=False)


def _decode_from(container, stream, timeline: _Timeline, first: int) -> Iterator[av.VideoFrame | _Lost | _Keyframe]:  # noqa: ANN001
    """Frames from the keyframe at or before `first` onwards: one seek, one forward decode.

    A packet the decoder rejects yields _Lost and decoding goes on, as ffmpeg does; a keyframe
    packet yields _Keyframe before its frames. Decoding is not frame-threaded, so that an error
    is reported on the packet that caused it (the encoders, not the decoder, are the cost). A demuxer
    whose seek lands past the target (it happens with some containers) is caught on the first
    frame and the pass starts over from the beginning of the stream instead.
    """
    stream.thread_type = "SLICE"
    rewound = first == 0
    if first > 0:
        _seek(container, stream, timeline, first)
    while True:
        restart = False
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.InvalidDataError as exc:
                log.warning("undecodable packet at pts %s: %s", packet.pts, exc)
                yield _Lost(timeline.index(packet.pts) if packet.is_keyframe else None)
                continue
            if packet.is_keyframe and rewound:
                yield _Keyframe(timeline.index(packet.pts))
            for frame in frames:
                if not rewound:
                    rewound = True
                    index = timeline.index(frame.pts)
                    if index is not None and index > first:
                        log.info("seek to frame %d landed at %d; decoding from the start", first, index)
                        container.seek(stream.start_time or 0, stream=stream, backward=True, any_frame=False)
                        restart = True
                        break
                yield frame
            if restart:
                break
        if not restart:
            return


# -- copy mode -------------------------------------------------------------------------


def _copy_chunk(container, stream, timeline: _Timeline, clips: list[Clip]) -> None:  # noqa: ANN001
    """Stream copy: each clip becomes whole GOPs, from the keyframe at or before its start to the
    first keyframe at or past its end.

    Starting on a keyframe makes the clip decodable (an open GOP's leading pictures, which refer
    to the GOP before, are left out); ending at the next keyframe means no frame written refers
    to one that is not. Packets come in decode order, so a clip closes when that keyframe
    arrives; in an open GOP its leading pictures still belong to the clip, and then the keyframe
    they refer to is written too. The span recorded is what was written.
    """
    open_states = [_CopyClip(clip) for clip in clips]
    first = clips[0].start_frame
    # Whether the keyframe the pass starts from is known to be at or before the first start.
    checked = first == 0
    if first > 0:
        _seek(container, stream, timeline, first)
    last_index = -1
    try:
        while open_states:
            restart = False
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue  # the demuxer's end-of-stream marker
                index = timeline.index(packet.pts if packet.pts is not None else packet.dts)
                if index is None:
                    index = last_index + 1
                key = packet.is_keyframe
                if not checked and key:
                    checked = True
                    if index > first:
                        log.info("seek to frame %d landed at keyframe %d; reading from the start", first, index)
                        container.seek(stream.start_time or 0, stream=stream, backward=True, any_frame=False)
                        restart = True
                        break
                last_index = max(last_index, index)
                copied = (bytes(packet), packet.pts, packet.dts, packet.duration or 0, key)
                for state in list(open_states):
                    if _copy_packet(state, index, key, copied):
                        _finish_copy(state, stream, timeline)
                        open_states.remove(state)
                if not open_states:
                    break
            if not restart:
                break
    except Exception as exc:  # noqa: BLE001
        message = f"reading the source failed after frame {last_index}: {type(exc).__name__}: {exc}"
        for state in open_states:
            state.clip.errors["transcode"] = message
        return
    for state in open_states:  # the stream ended
        if state.keyframe is None or not state.packets:
            state.clip.errors["transcode"] = f"the source ends at frame {last_index}, before the clip starts"
        else:
            _finish_copy(state, stream, timeline)


def _copy_packet(state: _CopyClip, index: int, key: bool, packet: _CopiedPacket) -> bool:
    """Adds one packet to a clip's copy if it belongs there; True once the clip is complete."""
    clip = state.clip
    if state.closing is not None:
        closing_index, closing_packet = state.closing
        if index >= closing_index:
            return True  # past the closing keyframe's leading pictures
        if not state.closing_written:
            state.add(closing_index, closing_packet)
            state.closing_written = True
        state.add(index, packet)
        return False
    if key:
        if index <= clip.start_frame:
            state.keyframe, state.packets, state.indices = index, [], []
        elif state.keyframe is None:
            # No keyframe at or before the start exists (a stream that opens mid-GOP).
            if index >= clip.end_frame:
                clip.errors["transcode"] = f"no keyframe within [{clip.start_frame}, {clip.end_frame})"
                return True
            state.keyframe = index
        elif index >= clip.end_frame:
            state.closing = (index, packet)
            return False
    if state.keyframe is None or index < state.keyframe:
        return False  # before the start, or a leading picture referring to the GOP before
    state.add(index, packet)
    return False


def _finish_copy(state: _CopyClip, in_stream, timeline: _Timeline) -> None:  # noqa: ANN001
    clip = state.clip
    if clip.errors.get("transcode"):
        return
    end = max(state.indices) + 1
    if len(state.packets) != end - state.keyframe:
        # A variable frame rate: copied frames keep their own timing, off the constant grid.
        log.info("clip %s: %d frames copied for span [%d, %d)", clip.uuid, len(state.packets), state.keyframe, end)
    try:
        data = _mux_copy(state, in_stream, "mp4")
    except Exception as mp4_exc:  # noqa: BLE001 - codecs MP4 cannot carry go to Matroska
        try:
            data = _mux_copy(state, in_stream, "matroska")
        except Exception as exc:  # noqa: BLE001
            clip.errors["transcode"] = f"stream copy failed: {type(mp4_exc).__name__}: {mp4_exc}; {exc}"
            return
    ctx = in_stream.codec_context
    clip.encoded = data
    clip.keyframe_aligned = True
    clip.start_frame, clip.end_frame = state.keyframe, end
    clip.start_s, clip.end_s = timeline.seconds(state.keyframe), timeline.seconds(end)
    clip.width, clip.height, clip.framerate = ctx.width, ctx.height, float(timeline.fps)
    clip.num_frames = len(state.packets)
    clip.video_codec = ctx.name


def _mux_copy(state: _CopyClip, in_stream, container_format: str) -> bytes:  # noqa: ANN001
    buffer = io.BytesIO()
    with _open_output(buffer, container_format) as out:
        out_stream = out.add_stream_from_template(in_stream)
        # Timestamps restart at the clip's first keyframe.
        shift = in_stream.start_time or 0
        first_pts = state.packets[0][1]
        if first_pts is not None:
            shift = first_pts
        for data, pts, dts, duration, key in state.packets:
            packet = av.Packet(data)
            packet.pts = None if pts is None else pts - shift
            packet.dts = None if dts is None else dts - shift
            packet.duration = duration
            packet.is_keyframe = key
            packet.time_base = in_stream.time_base
            packet.stream = out_stream
            out.mux(packet)
    return buffer.getvalue()
