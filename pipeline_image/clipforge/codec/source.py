"""Reading a chunk of the source: one seek to the keyframe at or before its first frame, then one
forward pass over its packets."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import av

from clipforge.codec.audio import SourceAudio
from clipforge.frames import Timeline

log = logging.getLogger(__name__)


def source_seconds(timeline: Timeline, index: int) -> float:
    """Where frame `index` is on the source's clock (its audio's timestamps are on the same one)."""
    return float(timeline.origin * timeline.time_base) + timeline.seconds(index)


class SourcePass:
    """The forward pass over a chunk's video and audio packets, from the keyframe at or before
    frame `first`.

    A demuxer whose seek lands past the target (it happens with some containers) is caught at
    the first frame the reader can place (`check`); the pass then starts over from the
    beginning of the stream, with the audio read so far forgotten.
    """

    def __init__(self, container, stream, timeline: Timeline, first: int,  # noqa: ANN001
                 audio: SourceAudio | None):
        self.container, self.stream, self.first, self.audio = container, stream, first, audio
        self.streams = [stream] + ([audio.stream] if audio is not None else [])
        self.placed = first == 0  # a frame of this pass is known to be at or before `first`
        self.rewound = False
        if first > 0:
            container.seek(timeline.pts(first), stream=stream, backward=True, any_frame=False)

    def attempts(self) -> Iterator[Iterator[av.Packet]]:
        """The demuxer's packets; a second time, from the start, when `check` rewound the stream."""
        while True:
            self.rewound = False
            yield self.container.demux(*self.streams)
            if not self.rewound:
                return

    def check(self, index: int | None) -> bool:
        """Whether the pass goes on from the first frame it placed, at `index`; if that is past
        `first`, the stream is rewound to its start and the reader must begin the next attempt."""
        self.placed = True
        if index is None or index <= self.first:
            return True
        log.info("seek to frame %d landed at frame %d; reading from the start", self.first, index)
        self.container.seek(self.stream.start_time or 0, stream=self.stream, backward=True, any_frame=False)
        if self.audio is not None:
            self.audio.restart()
        self.rewound = True
        return False


@dataclass(frozen=True)
class Lost:
    """The decoder rejected a packet: its frame is missing and later ones may refer to it."""

    keyframe: int | None = None  # the packet's frame index, when it was a keyframe


@dataclass(frozen=True)
class Keyframe:
    """A keyframe packet was decoded: frames from its index on do not depend on earlier data."""

    index: int | None


def decode_from(container, stream, timeline: Timeline, first: int,  # noqa: ANN001
                audio: SourceAudio | None) -> Iterator[av.VideoFrame | av.Packet | Lost | Keyframe]:
    """Frames from the keyframe at or before `first` onwards (one SourcePass, one forward
    decode), and the audio packets read on the way.

    A packet the decoder rejects yields Lost and decoding goes on, as ffmpeg does; a keyframe
    packet yields Keyframe before its frames once the pass is placed. Audio read before the pass
    is placed waits for it, and is dropped if the pass starts over.
    """
    source = SourcePass(container, stream, timeline, first, audio)
    for packets in source.attempts():
        early_audio: list[av.Packet] = []
        for packet in packets:
            if packet.stream.type == "audio":
                if packet.size:
                    if source.placed:
                        yield packet
                    else:
                        early_audio.append(packet)
                continue
            try:
                frames = packet.decode()
            except av.error.InvalidDataError as exc:
                log.warning("undecodable packet at pts %s: %s", packet.pts, exc)
                yield Lost(timeline.index(packet.pts) if packet.is_keyframe else None)
                continue
            if packet.is_keyframe and source.placed:
                yield Keyframe(timeline.index(packet.pts))
            for frame in frames:
                if not source.placed:
                    if not source.check(timeline.index(frame.pts)):
                        break
                    yield from early_audio
                yield frame
            if source.rewound:
                break
