"""Each clip's audio (transcoding.keepAudio).

The source's first audio track is read in the same pass as the chunk's video and each clip gets
the audio of its span, copied for AAC and MP3, re-encoded to AAC for anything else, aligned to
the clip's first frame to within half an audio frame (about 10 ms for AAC).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction

import av

log = logging.getLogger(__name__)

# Audio codecs copied into the clips as they are; others are re-encoded to AAC.
_COPIED_AUDIO = ("aac", "mp3")


@dataclass
class AudioUnit:
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
        self.units: list[AudioUnit] = []
        self.reached = float("-inf")  # start of the latest unit read: audio before it is complete
        if not self.copied:
            stream.codec_context.thread_count = 1

    def add(self, packet: av.Packet) -> None:
        time_base = self.stream.time_base
        if packet.pts is None:
            return
        if self.copied:
            start = float(packet.pts * time_base)
            self.units.append(AudioUnit(start, start + float((packet.duration or 0) * time_base),
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
            self.units.append(AudioUnit(start, start + frame.samples / frame.sample_rate, frame=frame))
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

    def span(self, start: float, end: float) -> list[AudioUnit]:
        """The units nearest to [start, end): those that begin within half their length of it."""
        return [u for u in self.units if start - (u.end - u.start) / 2 <= u.start < end - (u.end - u.start) / 2]

    def add_stream(self, out: av.container.OutputContainer):  # noqa: ANN201
        if self.copied:
            return out.add_stream_from_template(self.stream)
        ctx = self.stream.codec_context
        stream = out.add_stream("aac", rate=ctx.sample_rate, layout=ctx.layout.name)
        stream.codec_context.thread_count = 1
        return stream

    def mux(self, out: av.container.OutputContainer, out_stream, units: list[AudioUnit]) -> None:  # noqa: ANN001
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

