"""Animated WebP: the format of clip previews and of caption windows' previews."""

from __future__ import annotations

import io
from collections.abc import Iterable
from fractions import Fraction

import av

# libwebp_anim stamps frames in milliseconds.
_MS = Fraction(1, 1000)


def preview_size(width: int, height: int, target_height: int) -> tuple[int, int]:
    """target_height tall, width following the aspect ratio, rounded to an even number."""
    out_w = max(2, round(width * target_height / height / 2) * 2)
    return out_w, target_height


def encode_animated_webp(frames: Iterable[av.VideoFrame], times_ms: Iterable[int], quality: int) -> bytes:
    """An endlessly looping animated WebP of yuv420p `frames`, each shown from its time (ms)."""
    out = io.BytesIO()
    with av.open(out, "w", format="webp", options={"loop": "0"}) as sink:
        webp = None
        for frame, time_ms in zip(frames, times_ms):
            if webp is None:
                webp = sink.add_stream("libwebp_anim", rate=1000)
                webp.codec_context.time_base = _MS
                webp.codec_context.options = {"quality": str(quality)}
                webp.width, webp.height, webp.pix_fmt = frame.width, frame.height, "yuv420p"
            frame.pts, frame.time_base = time_ms, _MS
            frame.pict_type = av.video.frame.PictureType.NONE
            sink.mux(webp.encode(frame))
        if webp is None:
            raise ValueError("no frames for the preview")
        sink.mux(webp.encode(None))
    return out.getvalue()
