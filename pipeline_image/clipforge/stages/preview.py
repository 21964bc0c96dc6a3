"""An animated WebP per clip: a few frames a second, small, looping forever.

The clip's encoded bytes are decoded once; a frame is kept whenever the clip's clock reaches
the next preview tick (k / fps seconds), scaled to the preview height and handed straight to
the libwebp_anim encoder, so only the encoder's own state is held in memory.
"""

from __future__ import annotations

import io
import logging
import math
from fractions import Fraction

import av

from clipforge.spec import PreviewSpec
from clipforge.stages.base import Stage
from clipforge.tasks import VideoTask

log = logging.getLogger(__name__)

# libwebp_anim stamps frames in milliseconds.
_MS = Fraction(1, 1000)


def preview_size(width: int, height: int, target_height: int) -> tuple[int, int]:
    """target_height tall, width following the aspect ratio, rounded to an even number."""
    out_w = max(2, round(width * target_height / height / 2) * 2)
    return out_w, target_height


def make_preview(data: bytes, spec: PreviewSpec) -> tuple[bytes, int]:
    """(animated WebP bytes, number of frames) for one clip's encoded video."""
    out = io.BytesIO()
    frames = 0
    with av.open(io.BytesIO(data), metadata_errors="ignore") as source:
        stream = source.streams.video[0]
        stream.thread_type = "AUTO"
        time_base = stream.time_base
        origin = stream.start_time
        rate = stream.average_rate or stream.base_rate or Fraction(30)
        with av.open(out, "w", format="webp", options={"loop": "0"}) as sink:
            preview_rate = Fraction(spec.fps).limit_denominator(1000)
            webp = sink.add_stream("libwebp_anim", rate=preview_rate)
            webp.codec_context.time_base = _MS
            webp.codec_context.options = {"quality": str(spec.quality)}
            size: tuple[int, int] | None = None
            next_tick = 0
            for i, frame in enumerate(source.decode(stream)):
                if frame.pts is None or time_base is None:
                    seconds = i / float(rate)
                else:
                    if origin is None:
                        origin = frame.pts
                    seconds = float((frame.pts - origin) * time_base)
                if seconds + 1e-6 < next_tick / spec.fps:
                    continue
                if size is None:
                    size = preview_size(frame.width, frame.height, spec.height)
                    webp.width, webp.height, webp.pix_fmt = size[0], size[1], "yuv420p"
                small = frame.reformat(size[0], size[1], "yuv420p", interpolation="AREA")
                small.pts = round(Fraction(next_tick) / preview_rate / _MS)
                small.time_base = _MS
                small.pict_type = av.video.frame.PictureType.NONE
                sink.mux(webp.encode(small))
                frames += 1
                # The next tick after this frame's time (a slow clip skips ticks rather than repeat).
                next_tick = max(next_tick + 1, math.floor(seconds * spec.fps + 1e-6) + 1)
            if frames == 0:
                raise ValueError("the clip has no frames")
            sink.mux(webp.encode(None))
    return out.getvalue(), frames


class PreviewStage(Stage):
    name = "preview"

    def process(self, task: VideoTask) -> list[VideoTask]:
        spec = self.spec.previews
        if not spec.enabled:
            return [task]
        for clip in task.clips:
            if not clip.encoded:
                continue
            clip.errors.pop(self.name, None)
            try:
                clip.preview, _ = make_preview(clip.encoded, spec)
            except Exception as exc:  # noqa: BLE001 - one clip's failure must not stop the others
                log.warning("preview of clip %s failed: %s", clip.uuid, exc)
                clip.preview = None
                clip.errors[self.name] = f"{type(exc).__name__}: {exc}"
        return [task]
