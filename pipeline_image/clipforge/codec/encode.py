"""Encode mode: clips re-encoded frame-accurately from one decode of the chunk.

Each source frame is decoded once and fed to every clip whose span contains it, so overlapping
clips share the decode and adjacent clips never re-decode frames. That decode is also the only
one of the clip's frames: the frames the later stages asked for (motion, aesthetic, embed,
caption, preview: see frames.py) are converted from it as the clip is encoded and travel with
the clip. Nothing else decoded is kept: a frame is converted, handed to the open encoders and
dropped. Memory is the open encoders (their lookahead), the finished clips' bytes and their
sampled frames, bounded by the chunk, not by the video.

Frame indices follow the split stage: frames on the source's constant-rate grid (frames.Timeline:
a variable-rate source's frames go to their nearest index and the frame before a gap is held
over it), so every clip holds exactly end_frame - start_frame frames. Frames are turned upright
(the source's display rotation applied: a phone's portrait video gives portrait clips) before
they are scaled to the output size. Clips keep the source's colour; HDR sources become SDR
clips, or with `hdr: keep` 10-bit HDR ones, and the later stages get SDR frames either way
(codec/colour.py).

Failures of the input stay with the clip they hit: a span past the end of the source, source
data the decoder rejects (the clips holding frames that may show the damage, up to the next
keyframe). Failures of the environment (an encoder that cannot open, storage) are raised for
the whole task to be retried (clipforge.failures).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import av

from clipforge.codec.audio import SourceAudio
from clipforge.codec.colour import Colour
from clipforge.codec.output import open_output
from clipforge.codec.source import Keyframe, Lost, decode_from, source_seconds
from clipforge.failures import EnvironmentFailure, raise_if_environmental
from clipforge.frames import FrameRequest, FrameSampler, Timeline, Upright, rotation_of, upright_size
from clipforge.spec import Encoder, HdrMode, TranscodingSpec
from clipforge.tasks import Clip

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


def _encoder_options(spec: TranscodingSpec, ctx: av.codec.context.CodecContext) -> dict[str, str]:
    """The encoder's options for the spec's rate control and preset (a bit rate goes on `ctx`)."""
    options: dict[str, str] = {}
    if spec.bitrate:
        ctx.bit_rate = parse_bitrate(spec.bitrate)
    if spec.encoder == Encoder.libx264.value:
        if _X264_ASM:
            options["x264-params"] = f"asm={_X264_ASM}"
        if not spec.bitrate and spec.crf is not None:
            options["crf"] = str(min(spec.crf, 51))
        if spec.preset:
            options["preset"] = spec.preset
    elif spec.encoder == Encoder.h264_nvenc.value:
        if not spec.bitrate and spec.crf is not None:
            options.update(rc="vbr", cq=str(min(spec.crf, 51)))
            ctx.bit_rate = 0
        if spec.preset:
            options["preset"] = spec.preset
    elif spec.encoder == Encoder.libvpx_vp9.value:
        options.update({"row-mt": "1", "deadline": "good", "cpu-used": "5"})
        if not spec.bitrate and spec.crf is not None:
            options["crf"] = str(spec.crf)
            ctx.bit_rate = 0  # constant quality
        if spec.preset:
            # libvpx speaks in deadlines (good/best/realtime) and speeds (cpu-used 0..8).
            key = "cpu-used" if spec.preset.lstrip("-").isdigit() else "deadline"
            options[key] = spec.preset
    elif spec.encoder == Encoder.libsvtav1.value:
        if not spec.bitrate and spec.crf is not None:
            options["crf"] = str(spec.crf)
        if spec.preset:
            options["preset"] = spec.preset
    return options


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
    def open(cls, clip: Clip, spec: TranscodingSpec, fps: Fraction, width: int, height: int, colour: Colour,
             threads: int, requests: list[FrameRequest] = (), audio: SourceAudio | None = None) -> ClipEncoder:
        buffer = io.BytesIO()
        container = open_output(buffer, "mp4")
        try:
            stream = container.add_stream(spec.encoder, rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, colour.pix_fmt
            stream.codec_context.time_base = 1 / fps
            # Frame threads (x264's own default; PyAV's is slices, which cost compression).
            stream.codec_context.thread_type = "FRAME"
            stream.codec_context.thread_count = threads
            stream.codec_context.options = _encoder_options(spec, stream.codec_context)
            colour.tag(stream.codec_context)
            stream.codec_context.open()  # now, so a missing encoder or GPU is reported as such
            audio_stream = audio.add_stream(container) if audio is not None else None
        except BaseException:
            container.close()
            raise
        sampler = FrameSampler(requests, clip.end_frame - clip.start_frame, float(fps), width, height)
        return cls(clip, buffer, container, stream, sampler, audio_stream)

    def encode(self, index: int, frame: av.VideoFrame, for_models: Callable[[], av.VideoFrame]) -> None:
        """Encodes the clip's next frame, the source's frame `index`; `for_models()` gives it as the
        later stages see it, asked for only when they want it."""
        if self.sampler.wants(index - self.clip.start_frame):
            self.sampler.offer(index - self.clip.start_frame, for_models())
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


@dataclass(frozen=True)
class _Geometry:
    """How the source's frames become the clips' frames."""

    rotation: int  # the source's display rotation, applied to turn frames upright
    scaled: tuple[int, int]  # the size frames are scaled to before they are turned
    shown: tuple[int, int]  # the clips' size, upright

    @classmethod
    def of(cls, frame: av.VideoFrame, max_height: int | None) -> _Geometry:
        rotation = rotation_of(frame)
        shown = output_size(*upright_size(frame.width, frame.height, rotation), max_height)
        return cls(rotation, upright_size(*shown, rotation), shown)


class ChunkEncode:
    """One chunk's clips encoded from one forward decode of the source (module docstring).

    A clip goes from waiting (not started; by start) to active (its frames being encoded) to
    closing (its video done, waiting for the audio of its span) to done; `fail` records a clip
    that cannot be written, with the reason.
    """

    def __init__(self, spec: TranscodingSpec, timeline: Timeline, clips: list[Clip], audio: SourceAudio | None,
                 requests: list[FrameRequest], threads: int, fail: Callable[[Clip, str], None]):
        self.spec, self.timeline, self.audio = spec, timeline, audio
        self.requests, self.threads, self.fail = requests, threads, fail
        self.codec_name = _CODEC_NAMES.get(spec.encoder, spec.encoder)
        self.first = clips[0].start_frame
        self.waiting = list(clips)
        self.active: list[ClipEncoder] = []
        self.closing: list[ClipEncoder] = []
        self.written = -1  # last frame index handed to the encoders
        self.previous: tuple[av.VideoFrame, Callable[[], av.VideoFrame]] | None = None  # the frame at `written`
        self.upright = Upright()
        self.upright_sdr = Upright()  # the models' frames when the clips stay HDR (another format)
        self.geometry: _Geometry | None = None  # known from the first frame decoded
        self.colour: Colour | None = None  # likewise
        self.damage = _Damage()

    def run(self, container, stream) -> None:  # noqa: ANN001
        items = decode_from(container, stream, self.timeline, self.first, self.audio)
        try:
            self._read(items)
        except Exception as exc:  # noqa: BLE001 - a broken stream fails the clips it had not finished
            for encoder in self.active + self.closing:
                encoder.abort()
            raise_if_environmental(exc)  # storage, an encoder that cannot open: the task is retried
            message = f"reading the source failed after frame {self.written}: {type(exc).__name__}: {exc}"
            for encoder in self.active + self.closing:
                self.fail(encoder.clip, message)
            for clip in self.waiting:
                self.fail(clip, message)
            return
        self._source_ended()

    def _read(self, items: Iterator[av.VideoFrame | av.Packet | Lost | Keyframe]) -> None:
        audio = self.audio
        for item in items:
            if isinstance(item, av.Packet):
                audio.add(item)
                self._close_ready()
                continue
            if isinstance(item, Lost):
                # A lost keyframe spoils its GOP; any other packet may be a reference for
                # every frame not yet shown, B-frames before it included.
                self.damage.lost(item.keyframe if item.keyframe is not None else self.written + 1)
                continue
            if isinstance(item, Keyframe):
                self.damage.keyframe(item.index)
                continue
            self._decoded(item)
            if not self.waiting and not self.active:
                break
        else:
            if audio is not None:
                audio.ended()
        # The clips' audio may come after their last frame in the file: read on for it.
        for item in items if self.closing else ():
            if isinstance(item, av.Packet):
                audio.add(item)
                self._close_ready()
                if not self.closing:
                    break
        if audio is not None:
            audio.ended()
        self._close_ready()

    def _decoded(self, frame: av.VideoFrame) -> None:
        """Hands a decoded frame, upright and scaled, to the clips holding the indices it fills."""
        if frame.is_corrupt:
            self.damage.lost(self.timeline.index(frame.pts) if frame.pts is not None else self.written + 1)
        indices = self.timeline.fill(frame.pts, max(self.written, self.first - 1))
        if not indices:
            return
        if self.geometry is None:
            self.geometry = _Geometry.of(frame, self.spec.max_height)
            self.colour = Colour.of(frame, self.spec.hdr == HdrMode.keep.value)
        rotation = self.geometry.rotation
        shown = self.upright(self.colour.scale(frame, *self.geometry.scaled), rotation)
        # A decoded frame remembers its picture type; encoders would obey it.
        shown.pict_type = av.video.frame.PictureType.NONE
        if self.colour.kept_hdr:  # tone-mapped once, and only if a stage wants the frame
            for_models = functools.cache(
                lambda: self.upright_sdr(self.colour.sdr(frame, *self.geometry.scaled), rotation))
        else:
            for_models = lambda: shown  # noqa: E731
        # Indices the source skipped (a variable frame rate, a lost frame) hold the frame before.
        for index in indices:
            held = index != indices[-1] and self.previous is not None
            self._emit(index, *(self.previous if held else (shown, for_models)), self.damage.covers(index))
        self.written, self.previous = indices[-1], (shown, for_models)
        self.damage.written(self.written)

    def _emit(self, index: int, frame: av.VideoFrame, for_models: Callable[[], av.VideoFrame],
              damaged: bool) -> None:
        """Frame `index` to every clip that holds it, opening the clips that start there."""
        out_w, out_h = self.geometry.shown
        while self.waiting and self.waiting[0].start_frame <= index:
            clip = self.waiting.pop(0)
            try:
                self.active.append(ClipEncoder.open(clip, self.spec, self.timeline.fps, out_w, out_h, self.colour,
                                                    self.threads, self.requests, self.audio))
            except Exception as exc:  # noqa: BLE001 - no GPU, no NVENC session free: not the clip's fault
                hint = " (h264_nvenc needs an NVIDIA GPU with NVENC)" if self.spec.encoder == "h264_nvenc" else ""
                hint += f" (writing {self.colour.pix_fmt} for hdr: keep)" if self.colour.kept_hdr else ""
                raise EnvironmentFailure(
                    f"cannot open encoder {self.spec.encoder}{hint}: {type(exc).__name__}: {exc}") from exc
        for encoder in list(self.active):
            clip = encoder.clip
            if damaged:
                encoder.damaged.append(index)
            try:
                encoder.encode(index, frame, for_models)
                if index + 1 >= clip.end_frame:
                    self.active.remove(encoder)
                    self._end_video(encoder)
            except Exception as exc:  # noqa: BLE001
                raise_if_environmental(exc)
                if encoder in self.active:
                    self.active.remove(encoder)
                encoder.abort()
                self.fail(clip, f"encoding failed at frame {index}: {type(exc).__name__}: {exc}")

    def _end_video(self, encoder: ClipEncoder) -> None:
        clip = encoder.clip
        if encoder.damaged:
            encoder.abort()
            self.fail(clip, f"the source is damaged at frames {encoder.damaged[0]}..{encoder.damaged[-1]}"
                            " (undecodable or concealed data)")
            return
        encoder.end_video()
        self.closing.append(encoder)
        self._close_ready()

    def _close_ready(self) -> None:
        """Writes the clips whose video is done and whose span's audio has been read."""
        audio = self.audio
        for encoder in list(self.closing):
            clip = encoder.clip
            span = (source_seconds(self.timeline, clip.start_frame), source_seconds(self.timeline, clip.end_frame))
            if audio is not None and not audio.complete_until(span[1]):
                continue
            self.closing.remove(encoder)
            try:
                clip.encoded = encoder.finish(audio, span)
            except Exception as exc:  # noqa: BLE001
                encoder.abort()
                raise_if_environmental(exc)
                self.fail(clip, f"writing the clip failed: {type(exc).__name__}: {exc}")
                continue
            clip.width, clip.height = self.geometry.shown
            clip.framerate = float(self.timeline.fps)
            clip.num_frames, clip.video_codec = encoder.frames, self.codec_name
            clip.audio_codec = audio.clip_codec if audio is not None else None
            clip.rotation = self.geometry.rotation
            clip.frames = encoder.sampler.result()

    def _source_ended(self) -> None:
        """The source ended early: a clip running past its end keeps what exists, recorded as such."""
        for encoder in list(self.active):
            clip = encoder.clip
            log.warning("clip %s ends at frame %d, past the source's last frame %d", clip.uuid, clip.end_frame,
                        self.written)
            self.active.remove(encoder)
            clip.end_frame = clip.start_frame + encoder.frames
            clip.end_s = self.timeline.seconds(clip.end_frame)
            try:
                self._end_video(encoder)
            except Exception as exc:  # noqa: BLE001
                encoder.abort()
                raise_if_environmental(exc)
                self.fail(clip, f"encoding failed at the end of the source: {type(exc).__name__}: {exc}")
        for clip in self.waiting:
            self.fail(clip, f"the source ends at frame {self.written}, before the clip starts")
