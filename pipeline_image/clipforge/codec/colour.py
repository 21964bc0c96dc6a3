"""The source's colour as the clips keep it and the models see it.

Clips carry the source's colour description (primaries, transfer, matrix; an untagged source as
players read it) and limited range, and frames are scaled in the source's matrix, so a scaled
clip shows the source's colours: an untagged 480p clip of a BT.709 source would be shown as
BT.601. An HDR source (PQ, HLG) is tone-mapped to SDR BT.709 (codec/hdr.py) unless its clips
keep HDR (`hdr: keep`, or stream copy); the models' frames are the tone-mapped ones either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import av

from clipforge.codec.hdr import BT709, RANGE_JPEG, RANGE_MPEG, SMPTE170M, UNSPECIFIED, is_hdr, tone_map

# Matrices swscale converts with (AVColorSpace values): BT.709, FCC, BT.470BG, SMPTE 170M and
# 240M, BT.2020 (non-constant and constant luminance).
_SWSCALE_MATRICES = {1, 4, 5, 6, 7, 9, 10}


@dataclass(frozen=True)
class Colour:
    """The source's colour description, which the clips keep (an HDR one only if `keep_hdr`)."""

    primaries: int
    transfer: int
    matrix: int
    full_range: bool
    keep_hdr: bool

    @classmethod
    def of(cls, frame: av.VideoFrame, keep_hdr: bool) -> Colour:
        # Untagged video is read as players read it: BT.709 from HD up, SMPTE 170M below.
        guess = BT709 if frame.height >= 720 or frame.width >= 1280 else SMPTE170M
        matrix = frame.colorspace if frame.colorspace in _SWSCALE_MATRICES else guess
        return cls(primaries=guess if frame.color_primaries == UNSPECIFIED else frame.color_primaries,
                   transfer=guess if frame.color_trc == UNSPECIFIED else frame.color_trc,
                   matrix=matrix,
                   full_range=frame.color_range == RANGE_JPEG or frame.format.name.startswith("yuvj"),
                   keep_hdr=keep_hdr)

    @property
    def tone_mapped(self) -> bool:
        """Whether the clips are SDR made from an HDR source."""
        return is_hdr(self.transfer) and not self.keep_hdr

    @property
    def kept_hdr(self) -> bool:
        """Whether the clips are HDR: the models' frames are then made apart (`sdr`)."""
        return is_hdr(self.transfer) and self.keep_hdr

    @property
    def pix_fmt(self) -> str:
        # HDR's transfer functions spread their range thin: in 8 bits, PQ bands visibly.
        return "yuv420p10le" if self.kept_hdr else "yuv420p"

    def scale(self, frame: av.VideoFrame, width: int, height: int) -> av.VideoFrame:
        """`frame` as the clips' 4:2:0 limited-range frame: in the source's matrix, or tone-mapped
        to SDR BT.709 from HDR unless the clips stay HDR."""
        if self.tone_mapped:
            return self.sdr(frame, width, height)
        return frame.reformat(width, height, self.pix_fmt, src_colorspace=self.matrix, dst_colorspace=self.matrix,
                              src_color_range=RANGE_JPEG if self.full_range else RANGE_MPEG,
                              dst_color_range=RANGE_MPEG, interpolation="BICUBIC")

    def sdr(self, frame: av.VideoFrame, width: int, height: int) -> av.VideoFrame:
        """An HDR frame tone-mapped: a tone-mapped clip's frame, and the models' frame either way."""
        return tone_map(frame, width, height, self.transfer, self.matrix, self.full_range)

    def tag(self, ctx: av.codec.context.CodecContext) -> None:
        if self.tone_mapped:
            ctx.color_primaries = ctx.color_trc = ctx.colorspace = BT709
        else:
            ctx.color_primaries, ctx.color_trc, ctx.colorspace = self.primaries, self.transfer, self.matrix
        ctx.color_range = RANGE_MPEG
