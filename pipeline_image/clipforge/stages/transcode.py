"""Cut a chunk's clips out of their source video: re-encoded frame-accurately, or stream-copied.

Both modes read the source once per chunk: one seek to the keyframe at or before the first
clip's start, then one forward pass over its packets. The codec work is in clipforge.codec
(encode, stream_copy, audio); this stage opens the source, picks the mode and records failures.

Codecs and decoders run the threads the stage reserves (Stage.threads), never the machine's
core count: a worker uses what it asked for, and x264's output, which depends on its thread
count, is the same on every machine and executor.

Failures stay with the clip they hit (`clip.errors["transcode"]`, no bytes): an encoder that
cannot open, a span past the end of the source, source data the decoder rejects (the clips
holding frames that may show the damage, up to the next keyframe). A source that cannot be
opened at all fails the video.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import av

from clipforge.codec.audio import SourceAudio
from clipforge.codec.encode import ChunkEncode
from clipforge.codec.stream_copy import copy_chunk
from clipforge.frames import Timeline
from clipforge.spec import TranscodeMode, VideoCurationJobSpec
from clipforge.stages.base import Stage
from clipforge.storage import Storage
from clipforge.tasks import Clip, VideoTask

log = logging.getLogger(__name__)


class SourceError(RuntimeError):
    """The source cannot be read at all; the whole video fails."""


class TranscodeStage(Stage):
    name = "transcode"

    def __init__(self, spec: VideoCurationJobSpec, pipeline: Sequence[type[Stage]]):
        super().__init__(spec, pipeline)
        self.storage = Storage.from_spec(spec.storage)
        # What the job's later stages want of each clip's frames.
        self.requests = [request for stage in pipeline if (request := stage.frame_request(spec)) is not None]

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
                    copy_chunk(container, stream, timeline, clips, audio, self.requests, self.threads, self._fail)
                else:
                    ChunkEncode(self.spec.transcoding, timeline, clips, audio, self.requests, self.threads,
                                self._fail).run(container, stream)
        return [task]

    def _fail(self, clip: Clip, message: str) -> None:
        log.warning("transcode of clip %s failed: %s", clip.uuid, message)
        clip.encoded = None
        clip.frames = {}
        clip.errors[self.name] = message
