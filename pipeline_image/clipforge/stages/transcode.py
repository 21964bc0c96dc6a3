"""Cut a chunk's clips out of their source video: re-encoded frame-accurately, or stream-copied.

Both modes read the source once per chunk: one seek to the keyframe at or before the first
clip's start, then one forward pass over its packets.

Encode mode decodes each source frame once and feeds it to every clip whose span contains it,
so overlapping clips share the decode and adjacent clips never re-decode frames. That decode is
also the only one of the clip's frames: the frames the later stages asked for (motion,
aesthetic, embed, caption, preview: see frames.py) are converted from it as the clip is encoded
and travel with the clip. Nothing else decoded is kept: a frame is converted, handed to the open
encoders and dropped. Memory is the open encoders (their lookahead), the finished clips' bytes
and their sampled frames, bounded by the chunk, not by the video.

Frame indices follow the split stage: frames on the source's constant-rate grid (frames.Timeline:
a variable-rate source's frames go to their nearest index and the frame before a gap is held
over it), so every clip holds exactly end_frame - start_frame frames. Frames are
turned upright (the source's display rotation applied: a phone's portrait video gives portrait
clips) before they are scaled to the output size.

Audio (transcoding.keepAudio): the source's first audio track is read in the same pass and each
clip gets the audio of its span, copied for AAC and MP3, re-encoded to AAC for anything else,
aligned to the clip's first frame to within half an audio frame (about 10 ms for AAC).

Stream copy keeps whole GOPs: every clip boundary moves to the keyframe nearest to it, so the
spans written partition the source the way the requested spans do (clips that did not overlap
do not overlap once snapped) and a clip's id names the span actually written. A clip whose
boundaries snap to the same keyframe (shorter than the source's keyframe interval) cannot be
cut without re-encoding and fails with that reason. Each copied clip is decoded once, for the
frames the later stages asked for.

Codecs and decoders run the threads the stage reserves (Stage.threads), never the machine's
core count: a worker uses what it asked for, and x264's output, which depends on its thread
count, is the same on every machine and executor.

Failures stay with the clip they hit (`clip.errors["transcode"]`, no bytes): an encoder that
cannot open, a span past the end of the source, source data the decoder rejects (the clips
holding frames that may show the damage, up to the next keyframe). A source that cannot be
opened at all fails the video.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import av

from clipforge.frames import FrameRequest, FrameSampler, Timeline, Upright, rotation_of, sample_encoded, upright_size
from clipforge.spec import Encoder, TranscodeMode, VideoCurationJobSpec
from clipforge.stages.base import Stage
from clipforge.storage import Storage
from clipforge.tasks import Clip, VideoTask, clip_uuid

log = logging.getLogger(__name__)

# The decoder's own name for what each encoder writes, as the probe stage reports codecs.
_CODEC_NAMES = {
    Encoder.libx264.value: "h264",
    Encoder.h264_nvenc.value: "h264",
    Encoder.libvpx_vp9.value: "vp9",
    Encoder.libsvtav1.value: "av1",
}


def _x264_asm() -> str | None:
    """x264's instruction sets, capped below AVX-512 on CPUs that have it.

    With its AVX-512 routines x264 does not encode the same frames to the same bytes twice
    (measured here: five different outputs in ten runs of one clip, one thread or several);
    with AVX2 and below every run is identical. Every AVX-512 CPU has AVX2.
    """
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    except OSError:
        return None
    return "AVX2" if "avx512f" in flags and "avx2" in flags else None


_X264_ASM = _x264_asm()
# Audio codecs copied into the clips as they are; others are re-encoded to AAC.
_COPIED_AUDIO = ("aac", "mp3")


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


def frame_requests(spec: VideoCurationJobSpec) -> list[FrameRequest]:
    """What the job's later stages want of each clip's frames."""
    from clipforge.stages import pipeline_stages

    return [request for stage in pipeline_stages(spec) if (request := stage.frame_request(spec)) is not None]


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


# -- audio -----------------------------------------------------------------------------


@dataclass
class _AudioUnit:
    """A packet (copied codecs) or a decoded frame (re-encoded ones), on the container's clock."""

    start: float
    end: float
    packet: tuple[bytes, int, int] | None = None  # data, pts, duration
    frame: av.AudioFrame | None = None


class SourceAudio:
    """The chunk's audio, read in the same pass as its video and handed to each clip by span."""

    def __init__(self, stream: av.audio.stream.AudioStream):
        self.stream = stream
        self.copied = stream.codec_context.name in _COPIED_AUDIO
        self.units: list[_AudioUnit] = []
        self.reached = float("-inf")  # start of the latest unit read: audio before it is complete
        if not self.copied:
            stream.codec_context.thread_count = 1

    def add(self, packet: av.Packet) -> None:
        time_base = self.stream.time_base
        if packet.pts is None:
            return
        if self.copied:
            start = float(packet.pts * time_base)
            self.units.append(_AudioUnit(start, start + float((packet.duration or 0) * time_base),
                                         packet=(bytes(packet), packet.pts, packet.duration or 0)))
            self.reached = max(self.reached, start)
            return
        try:
            frames = packet.decode()
        except av.error.FFmpegError as exc:  # damaged audio: that stretch stays silent
            log.warning("undecodable audio packet at pts %s: %s", packet.pts, exc)
            return
        for frame in frames:
            if frame.pts is None:
                continue
            start = float(frame.pts * frame.time_base)
            self.units.append(_AudioUnit(start, start + frame.samples / frame.sample_rate, frame=frame))
            self.reached = max(self.reached, start)

    @property
    def clip_codec(self) -> str:
        """The codec of the clips' audio."""
        return self.stream.codec_context.name if self.copied else "aac"

    def ended(self) -> None:
        self.reached = float("inf")

    def restart(self) -> None:
        """Forgets what was read: the pass starts over."""
        self.units.clear()
        self.reached = float("-inf")

    def complete_until(self, seconds: float) -> bool:
        return self.reached >= seconds

    def span(self, start: float, end: float) -> list[_AudioUnit]:
        """The units nearest to [start, end): those that begin within half their length of it."""
        return [u for u in self.units if start - (u.end - u.start) / 2 <= u.start < end - (u.end - u.start) / 2]

    def add_stream(self, out: av.container.OutputContainer):  # noqa: ANN201
        if self.copied:
            return out.add_stream_from_template(self.stream)
        ctx = self.stream.codec_context
        stream = out.add_stream("aac", rate=ctx.sample_rate, layout=ctx.layout.name)
        stream.codec_context.thread_count = 1
        return stream

    def mux(self, out: av.container.OutputContainer, out_stream, units: list[_AudioUnit]) -> None:  # noqa: ANN001
        """Writes `units` as the clip's audio, starting at 0."""
        if not units:
            return
        if self.copied:
            shift = units[0].packet[1]
            for data, pts, duration in (u.packet for u in units):
                packet = av.Packet(data)
                packet.pts = packet.dts = pts - shift
                packet.duration = duration
                packet.time_base = self.stream.time_base
                packet.stream = out_stream
                out.mux(packet)
            return
        ctx = out_stream.codec_context
        resampler = av.AudioResampler(format=ctx.format.name, layout=ctx.layout.name, rate=ctx.sample_rate)
        fifo = av.AudioFifo()
        samples = 0

        def encode(frame: av.AudioFrame | None) -> None:
            nonlocal samples
            if frame is not None:
                frame.pts, frame.time_base = samples, Fraction(1, ctx.sample_rate)
                samples += frame.samples
            out.mux(out_stream.encode(frame))

        for unit in units:
            for converted in resampler.resample(unit.frame):
                converted.pts = None
                fifo.write(converted)
            while fifo.samples >= ctx.frame_size:
                encode(fifo.read(ctx.frame_size))
        for converted in resampler.resample(None):
            converted.pts = None
            fifo.write(converted)
        if fifo.samples:
            encode(fifo.read())
        encode(None)


# -- encode mode -----------------------------------------------------------------------


@dataclass
class ClipEncoder:
    """One clip's encoder writing MP4 into memory, with the later stages' frames on the side."""

    clip: Clip
    buffer: io.BytesIO
    container: av.container.OutputContainer
    stream: av.video.stream.VideoStream
    sampler: FrameSampler
    audio_stream: object = None
    frames: int = 0
    damaged: list[int] = field(default_factory=list)  # indices of frames from damaged source data

    @classmethod
    def open(cls, clip: Clip, spec, fps: Fraction, width: int, height: int, threads: int,  # noqa: ANN001
             requests: list[FrameRequest] = (), audio: SourceAudio | None = None) -> ClipEncoder:
        encoder = spec.encoder
        buffer = io.BytesIO()
        container = _open_output(buffer, "mp4")
        try:
            stream = container.add_stream(encoder, rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.time_base = 1 / fps
            # Frame threads (x264's own default; PyAV's is slices, which cost compression).
            stream.codec_context.thread_type = "FRAME"
            stream.codec_context.thread_count = threads
            options: dict[str, str] = {}
            if spec.bitrate:
                stream.codec_context.bit_rate = parse_bitrate(spec.bitrate)
            if encoder == Encoder.libx264.value:
                if _X264_ASM:
                    options["x264-params"] = f"asm={_X264_ASM}"
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
            audio_stream = audio.add_stream(container) if audio is not None else None
        except BaseException:
            container.close()
            raise
        sampler = FrameSampler(requests, clip.end_frame - clip.start_frame, float(fps), width, height)
        return cls(clip, buffer, container, stream, sampler, audio_stream)

    def encode(self, index: int, frame: av.VideoFrame) -> None:
        """Encodes the clip's next frame, the source's frame `index`."""
        self.sampler.offer(index - self.clip.start_frame, frame)
        # The same converted frame goes to every open encoder; each stamps it with its own time.
        frame.pts = self.frames
        frame.time_base = self.stream.codec_context.time_base
        self.container.mux(self.stream.encode(frame))
        self.frames += 1

    def end_video(self) -> None:
        self.container.mux(self.stream.encode(None))

    def finish(self, audio: SourceAudio | None, span: tuple[float, float]) -> bytes:
        """Closes the clip with the audio of `span` (seconds on the source's clock)."""
        if audio is not None:
            audio.mux(self.container, self.audio_stream, audio.span(*span))
        self.container.close()
        return self.buffer.getvalue()

    def abort(self) -> None:
        # Closing a broken muxer must not mask the error that broke it.
        with contextlib.suppress(Exception):
            self.container.close()


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


class TranscodeStage(Stage):
    name = "transcode"

    def __init__(self, spec: VideoCurationJobSpec):
        super().__init__(spec)
        self.storage = Storage.from_spec(spec.storage)
        self.requests = frame_requests(spec)

    def process(self, task: VideoTask) -> list[VideoTask]:
        clips = []
        for clip in sorted(task.clips, key=lambda c: (c.start_frame, c.end_frame)):
            clip.encoded = None
            clip.frames = {}
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
                # Slices only: frame threads would report an error packets after the one that caused it.
                stream.thread_type = "SLICE"
                stream.codec_context.thread_count = self.threads
                try:
                    timeline = Timeline.of(stream, task.meta.framerate if task.meta else None)
                except ValueError as exc:
                    raise SourceError(f"{task.source}: {exc}") from None
                audio = None
                if self.spec.transcoding.keep_audio and container.streams.audio:
                    audio = SourceAudio(container.streams.audio[0])
                if self.spec.transcoding.mode == TranscodeMode.copy.value:
                    _copy_chunk(container, stream, timeline, clips, audio, self.requests, self.threads)
                else:
                    self._encode_chunk(container, stream, timeline, clips, audio)
        return [task]

    def _encode_chunk(self, container, stream, timeline: Timeline, clips: list[Clip],  # noqa: ANN001, C901
                      audio: SourceAudio | None) -> None:
        spec = self.spec.transcoding
        codec_name = _CODEC_NAMES.get(spec.encoder, spec.encoder)
        fps = timeline.fps
        waiting = list(clips)  # not started yet, by start
        active: list[ClipEncoder] = []
        closing: list[ClipEncoder] = []  # video done, waiting for the audio of their span
        written = -1  # last frame index handed to the encoders
        previous: av.VideoFrame | None = None  # the frame at `written`
        upright = Upright()
        geometry: tuple[int, tuple[int, int], tuple[int, int]] | None = None  # rotation, scaled, shown

        def fail(clip: Clip, message: str) -> None:
            log.warning("transcode of clip %s failed: %s", clip.uuid, message)
            clip.encoded = None
            clip.frames = {}
            clip.errors[self.name] = message

        def span_seconds(clip: Clip) -> tuple[float, float]:
            origin = float(timeline.origin * timeline.time_base)
            return origin + timeline.seconds(clip.start_frame), origin + timeline.seconds(clip.end_frame)

        def emit(index: int, frame: av.VideoFrame, damaged: bool) -> None:
            out_w, out_h = geometry[2]
            while waiting and waiting[0].start_frame <= index:
                clip = waiting.pop(0)
                try:
                    active.append(ClipEncoder.open(clip, spec, fps, out_w, out_h, self.threads, self.requests, audio))
                except Exception as exc:  # noqa: BLE001
                    hint = " (h264_nvenc needs an NVIDIA GPU with NVENC)" if spec.encoder == "h264_nvenc" else ""
                    fail(clip, f"cannot open encoder {spec.encoder}{hint}: {type(exc).__name__}: {exc}")
            for encoder in list(active):
                clip = encoder.clip
                if damaged:
                    encoder.damaged.append(index)
                try:
                    encoder.encode(index, frame)
                    if index + 1 >= clip.end_frame:
                        active.remove(encoder)
                        end_video(encoder)
                except Exception as exc:  # noqa: BLE001
                    if encoder in active:
                        active.remove(encoder)
                    encoder.abort()
                    fail(clip, f"encoding failed at frame {index}: {type(exc).__name__}: {exc}")

        def end_video(encoder: ClipEncoder) -> None:
            clip = encoder.clip
            if encoder.damaged:
                encoder.abort()
                fail(clip, f"the source is damaged at frames {encoder.damaged[0]}..{encoder.damaged[-1]}"
                           " (undecodable or concealed data)")
                return
            encoder.end_video()
            closing.append(encoder)
            close_ready()

        def close_ready() -> None:
            for encoder in list(closing):
                clip = encoder.clip
                span = span_seconds(clip)
                if audio is not None and not audio.complete_until(span[1]):
                    continue
                closing.remove(encoder)
                try:
                    clip.encoded = encoder.finish(audio, span)
                except Exception as exc:  # noqa: BLE001
                    encoder.abort()
                    fail(clip, f"writing the clip failed: {type(exc).__name__}: {exc}")
                    continue
                out_w, out_h = geometry[2]
                clip.width, clip.height, clip.framerate = out_w, out_h, float(fps)
                clip.num_frames, clip.video_codec = encoder.frames, codec_name
                clip.audio_codec = audio.clip_codec if audio is not None else None
                clip.rotation = geometry[0]
                clip.frames = encoder.sampler.result()

        first = clips[0].start_frame
        damage = _Damage()
        items = _decode_from(container, stream, timeline, first, audio)
        try:
            for item in items:
                if isinstance(item, av.Packet):
                    audio.add(item)
                    close_ready()
                    continue
                if isinstance(item, _Lost):
                    # A lost keyframe spoils its GOP; any other packet may be a reference for
                    # every frame not yet shown, B-frames before it included.
                    damage.lost(item.keyframe if item.keyframe is not None else written + 1)
                    continue
                if isinstance(item, _Keyframe):
                    damage.keyframe(item.index)
                    continue
                frame = item
                if frame.is_corrupt:
                    damage.lost(timeline.index(frame.pts) if frame.pts is not None else written + 1)
                indices = timeline.fill(frame.pts, max(written, first - 1))
                if not indices:
                    continue
                if geometry is None:
                    rotation = rotation_of(frame)
                    shown = output_size(*upright_size(frame.width, frame.height, rotation), spec.max_height)
                    geometry = (rotation, upright_size(*shown, rotation), shown)
                scaled = frame.reformat(*geometry[1], "yuv420p", interpolation="BICUBIC")
                frame = upright(scaled, geometry[0])
                # A decoded frame remembers its picture type; encoders would obey it.
                frame.pict_type = av.video.frame.PictureType.NONE
                # Indices the source skipped (a variable frame rate, a lost frame) hold the frame before.
                for index in indices:
                    shown = frame if index == indices[-1] or previous is None else previous
                    emit(index, shown, damage.covers(index))
                written, previous = indices[-1], frame
                damage.written(written)
                if not waiting and not active:
                    break
            else:
                if audio is not None:
                    audio.ended()
            # The clips' audio may come after their last frame in the file: read on for it.
            for item in items if closing else ():
                if isinstance(item, av.Packet):
                    audio.add(item)
                    close_ready()
                    if not closing:
                        break
            if audio is not None:
                audio.ended()
            close_ready()
        except Exception as exc:  # noqa: BLE001 - a broken stream fails the clips it had not finished
            message = f"reading the source failed after frame {written}: {type(exc).__name__}: {exc}"
            for encoder in active + closing:
                encoder.abort()
                fail(encoder.clip, message)
            for clip in waiting:
                fail(clip, message)
            return
        # The source ended early: a clip running past its end keeps what exists, recorded as such.
        for encoder in list(active):
            clip = encoder.clip
            log.warning("clip %s ends at frame %d, past the source's last frame %d", clip.uuid, clip.end_frame, written)
            active.remove(encoder)
            clip.end_frame = clip.start_frame + encoder.frames
            clip.end_s = timeline.seconds(clip.end_frame)
            try:
                end_video(encoder)
            except Exception as exc:  # noqa: BLE001
                encoder.abort()
                fail(clip, f"encoding failed at the end of the source: {type(exc).__name__}: {exc}")
        for clip in waiting:
            fail(clip, f"the source ends at frame {written}, before the clip starts")


def _seek(container, stream, timeline: Timeline, index: int) -> None:  # noqa: ANN001
    """Seek to the keyframe at or before frame `index` (the decoder is flushed by PyAV)."""
    container.seek(timeline.pts(index), stream=stream, backward=True, any_frame=False)


def _decode_from(container, stream, timeline: Timeline, first: int,  # noqa: ANN001
                 audio: SourceAudio | None) -> Iterator[av.VideoFrame | av.Packet | _Lost | _Keyframe]:
    """Frames from the keyframe at or before `first` onwards (one seek, one forward decode), and
    the audio packets read on the way.

    A packet the decoder rejects yields _Lost and decoding goes on, as ffmpeg does; a keyframe
    packet yields _Keyframe before its frames. A demuxer whose seek lands past the target (it
    happens with some containers) is caught on the first frame and the pass starts over from
    the beginning of the stream instead; audio read before that check waits for it.
    """
    streams = [stream] + ([audio.stream] if audio is not None else [])
    rewound = first == 0
    if first > 0:
        _seek(container, stream, timeline, first)
    while True:
        restart = False
        early_audio: list[av.Packet] = []
        for packet in container.demux(*streams):
            if packet.stream.type == "audio":
                if packet.size:
                    if rewound:
                        yield packet
                    else:
                        early_audio.append(packet)
                continue
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
                    yield from early_audio
                yield frame
            if restart:
                break
        if not restart:
            return


# -- copy mode -------------------------------------------------------------------------


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
    streams = [stream] + ([audio.stream] if audio is not None else [])
    checked = first == 0
    if first > 0:
        _seek(container, stream, timeline, first)
    origin = float(timeline.origin * timeline.time_base)
    while True:
        read = _Packets()
        closing: float | None = None  # the time of the first keyframe at or past `last`
        restart = False
        for packet in container.demux(*streams):
            if packet.size == 0:
                continue  # the demuxer's end-of-stream marker
            if packet.stream.type == "audio":
                audio.add(packet)
            elif closing is None:
                index = timeline.index(packet.pts if packet.pts is not None else packet.dts)
                if index is None:
                    index = (read.indices[-1] + 1) if read.indices else first
                key = packet.is_keyframe
                if not checked and key:
                    checked = True
                    if index > first:
                        log.info("seek to frame %d landed at keyframe %d; reading from the start", first, index)
                        container.seek(stream.start_time or 0, stream=stream, backward=True, any_frame=False)
                        restart = True
                        break
                if key and index >= last:
                    read.keyframes.append((index, len(read.packets)))
                    closing = origin + timeline.seconds(index)
                else:
                    read.add(index, (bytes(packet), packet.pts, packet.dts, packet.duration or 0, key))
            if closing is not None and (audio is None or audio.complete_until(closing)):
                break
        else:
            if closing is None:
                read.end = max(read.indices) + 1 if read.indices else first
            if audio is not None:
                audio.ended()
        if not restart:
            return read
        if audio is not None:
            audio.restart()


def _copy_chunk(container, stream, timeline: Timeline, clips: list[Clip],  # noqa: ANN001
                audio: SourceAudio | None, requests: list[FrameRequest], threads: int) -> None:
    """Stream copy: each clip becomes the whole GOPs between the keyframes nearest its start and
    its end (module docstring).

    Starting on a keyframe makes the clip decodable (an open GOP's leading pictures, which refer
    to the GOP before, are left out); ending before the next GOP's keyframe means no frame
    written refers to one that is not, and that a clip's last frame is never the next clip's
    first (the next GOP's leading pictures, shown before its keyframe, belong to neither). The
    span recorded, and the id, are what was written.
    """
    try:
        read = _read_packets(container, stream, timeline, clips[0].start_frame, max(c.end_frame for c in clips), audio)
    except Exception as exc:  # noqa: BLE001
        for clip in clips:
            clip.errors["transcode"] = f"reading the source failed: {type(exc).__name__}: {exc}"
        return
    written: dict[tuple[int, int], str] = {}
    for clip in clips:
        if read.end is not None and clip.start_frame >= read.end:
            clip.errors["transcode"] = f"the source ends at frame {read.end - 1}, before the clip starts"
            continue
        start, end = read.snap(clip.start_frame), read.snap(clip.end_frame)
        if start is None or end is None or start[0] >= end[0]:
            clip.errors["transcode"] = (
                f"no keyframe-aligned span for [{clip.start_frame}, {clip.end_frame}): both ends are nearest"
                f" the same keyframe (frame {start[0] if start else '?'}); the source's keyframes are further"
                " apart than the clip is long"
            )
            continue
        chosen = [i for i in range(start[1], end[1]) if read.indices[i] >= start[0]]
        span = (start[0], max(read.indices[i] for i in chosen) + 1)
        if span in written:
            clip.errors["transcode"] = f"snaps to the same keyframe-aligned span {list(span)} as clip {written[span]}"
            continue
        _finish_copy(clip, span, [read.packets[i] for i in chosen], stream, timeline, audio, requests, threads)
        if clip.encoded is not None:
            written[span] = clip.uuid


def _finish_copy(clip: Clip, span: tuple[int, int], packets: list[_CopiedPacket], in_stream,  # noqa: ANN001
                 timeline: Timeline, audio: SourceAudio | None, requests: list[FrameRequest], threads: int) -> None:
    if len(packets) != span[1] - span[0]:
        # A variable frame rate: copied frames keep their own timing, off the constant grid.
        log.info("clip %s: %d frames copied for span [%d, %d)", clip.uuid, len(packets), *span)
    origin = float(timeline.origin * timeline.time_base)
    seconds = (origin + timeline.seconds(span[0]), origin + timeline.seconds(span[1]))
    units = audio.span(*seconds) if audio is not None else []
    try:
        data = _mux_copy(packets, in_stream, audio, units, "mp4")
    except Exception as mp4_exc:  # noqa: BLE001 - codecs MP4 cannot carry go to Matroska
        try:
            data = _mux_copy(packets, in_stream, audio, units, "matroska")
        except Exception as exc:  # noqa: BLE001
            clip.errors["transcode"] = f"stream copy failed: {type(mp4_exc).__name__}: {mp4_exc}; {exc}"
            return
    try:
        clip.frames = sample_encoded(data, requests, threads) if requests else {}
    except Exception as exc:  # noqa: BLE001
        clip.errors["transcode"] = f"the copied clip does not decode: {type(exc).__name__}: {exc}"
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
              units: list[_AudioUnit], container_format: str) -> bytes:
    buffer = io.BytesIO()
    with _open_output(buffer, container_format) as out:
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
