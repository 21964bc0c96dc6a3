"""Probe: container and stream metadata of one input video, and proof that it decodes."""

from __future__ import annotations

import av

from clipforge.frames import rotation_of
from clipforge.spec import InputLimits
from clipforge.stages.base import Stage
from clipforge.storage import Storage
from clipforge.tasks import VideoMeta, VideoTask


class ProbeError(RuntimeError):
    pass


def probe_container(container: av.container.InputContainer, size_bytes: int, limits: InputLimits,
                    threads: int = 1) -> VideoMeta:
    """The video's metadata; raises ProbeError for a video that does not decode or is over `limits`
    (checked before anything is decoded: what is over them may not fit in memory)."""
    if not container.streams.video:
        raise ProbeError("no video stream")
    stream = container.streams.video[0]
    codec = stream.codec_context
    codec.thread_count = threads
    pixels = codec.width * codec.height
    if pixels > limits.max_pixels:
        raise ProbeError(f"{codec.width}x{codec.height} is {pixels:,} pixels a frame, over"
                         f" execution.limits.maxPixels ({limits.max_pixels:,})")
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise ProbeError("video stream has no frame rate")
    fps = float(rate)
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    else:
        duration = 0.0
    num_frames = stream.frames
    if not num_frames:
        # Matroska/WebM and some streams carry no frame count: count packets (no decode).
        num_frames = sum(1 for p in container.demux(stream) if p.size)
        container.seek(0)
    if not duration:
        duration = num_frames / fps
    if duration > limits.max_duration_seconds:
        raise ProbeError(f"{duration:,.0f} s long, over execution.limits.maxDurationSeconds"
                         f" ({limits.max_duration_seconds:,g} s)")
    # Decoding one frame catches files whose headers parse but whose video does not.
    frame = next(container.decode(stream), None)
    if frame is None:
        raise ProbeError("no decodable video frame")
    return VideoMeta(
        container=container.format.name,
        size_bytes=size_bytes,
        duration_s=duration,
        width=codec.width,
        height=codec.height,
        framerate=fps,
        num_frames=num_frames,
        video_codec=codec.name,
        pix_fmt=codec.format.name if codec.format else "",
        bit_rate=container.bit_rate or None,
        has_audio=bool(container.streams.audio),
        rotation=rotation_of(frame),
    )


class ProbeStage(Stage):
    name = "probe"

    def setup(self) -> None:
        self.storage = Storage.from_spec(self.spec.storage)

    def process(self, task: VideoTask) -> list[VideoTask]:
        with self.storage.open_read(task.source) as reader:
            reader.seek(0, 2)
            size = reader.tell()
            reader.seek(0)
            if size == 0:
                raise ProbeError("empty file (0 bytes)")
            try:
                with av.open(reader, "r") as container:
                    task.meta = probe_container(container, size, self.spec.execution.limits, self.threads)
            except av.FFmpegError as exc:
                raise ProbeError(f"not a readable video: {exc}") from None
        if task.meta.num_frames <= 0:
            raise ProbeError("video has no frames")
        return [task]
