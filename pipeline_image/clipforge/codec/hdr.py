"""HDR sources (PQ or HLG, BT.2020) tone-mapped to SDR BT.709, for the clips and the models alike.

Without it an HDR source's 10-bit PQ code values would be squeezed into 8-bit clips shown as
washed-out SDR, and the models would score PQ-coded pixels. The mapping, per frame after scaling
(fewer pixels): the transfer function's inverse to linear light (PQ absolute; HLG with its
system gamma for a 1000-nit display), BT.2020 primaries to BT.709, a luminance curve that keeps
everything up to 80 % of SDR white (203 nits, BT.2408) unchanged and rolls brighter light off
smoothly towards white, then BT.1886's 2.4 gamma. FFmpeg's zscale would do this in C; PyAV's
FFmpeg has no zimg, so it is numpy with lookup tables: about 0.1 s per 1080p PQ frame, 0.15 s
HLG, on one core of a 2-core VM (2026-12-07).
"""

from __future__ import annotations

import functools

import av
import numpy as np

# FFmpeg's colour codes (AVColorPrimaries, AVColorTransferCharacteristic and AVColorSpace share
# these values), and its ranges.
BT709, UNSPECIFIED, SMPTE170M = 1, 2, 6
PQ, HLG = 16, 18  # transfer characteristics
RANGE_MPEG, RANGE_JPEG = 1, 2
SDR_WHITE_NITS = 203.0  # BT.2408's HDR reference white: SDR white in an HDR signal
HLG_PEAK_NITS = 1000.0
KNEE = 0.8  # relative luminance (1 = SDR white) up to which the curve is the identity


def rgb_to_xyz(primaries: tuple[tuple[float, float], ...], white: tuple[float, float]) -> np.ndarray:
    """The linear RGB -> CIE XYZ matrix of a colour space given by its primaries' and white's xy."""
    xyz = np.array([[x / y, 1.0, (1 - x - y) / y] for x, y in primaries]).T
    wx, wy = white
    scale = np.linalg.solve(xyz, [wx / wy, 1.0, (1 - wx - wy) / wy])
    return xyz * scale


D65 = (0.3127, 0.3290)
BT709_XYZ = rgb_to_xyz(((0.64, 0.33), (0.30, 0.60), (0.15, 0.06)), D65)
BT2020_XYZ = rgb_to_xyz(((0.708, 0.292), (0.170, 0.797), (0.131, 0.046)), D65)
# Linear BT.2020 RGB to linear BT.709 RGB (BT.2087's matrix, at full precision).
BT2020_TO_BT709 = (np.linalg.inv(BT709_XYZ) @ BT2020_XYZ).astype(np.float32)
BT709_LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
BT2020_LUMA = np.array([0.2627, 0.6780, 0.0593], dtype=np.float32)


def is_hdr(transfer: int) -> bool:
    return transfer in (PQ, HLG)


def pq_to_nits(code: np.ndarray) -> np.ndarray:
    """SMPTE ST 2084's EOTF: non-linear code values (0..1) to absolute luminance."""
    m1, m2, c1, c2, c3 = 0.1593017578125, 78.84375, 0.8359375, 18.8515625, 18.6875
    p = np.power(np.clip(code, 0, 1), 1 / m2)
    return 10000.0 * np.power(np.maximum(p - c1, 0) / (c2 - c3 * p), 1 / m1)


def hlg_scene(code: np.ndarray) -> np.ndarray:
    """BT.2100 HLG's inverse OETF: code values to scene light (0..1). The OOTF of a 1000-nit
    display (system gamma 1.2) follows in tone_map, since it depends on all three channels."""
    a, b, c = 0.17883277, 0.28466892, 0.55991073
    code = np.clip(code, 0, 1)
    return np.where(code <= 0.5, code * code / 3, (np.exp((code - c) / a) + b) / 12)


def roll_off(y: np.ndarray) -> np.ndarray:
    """Relative luminance to SDR: the identity up to KNEE, then towards 1 with a continuous slope."""
    room = 1 - KNEE
    return np.where(y <= KNEE, y, KNEE + room * (1 - np.exp(-(y - KNEE) / room)))


@functools.cache
def _to_linear_table(transfer: int) -> np.ndarray:
    """16-bit code value -> linear light relative to SDR white (PQ) or scene light (HLG)."""
    code = np.arange(65536, dtype=np.float64) / 65535
    if transfer == PQ:
        return (pq_to_nits(code) / SDR_WHITE_NITS).astype(np.float32)
    return hlg_scene(code).astype(np.float32)


@functools.cache
def _gamma_table() -> np.ndarray:
    """16-bit linear light (0..1) -> 8-bit BT.1886 code value."""
    return np.rint(np.power(np.arange(65536) / 65535, 1 / 2.4) * 255).astype(np.uint8)


def tone_map(frame: av.VideoFrame, width: int, height: int, transfer: int, matrix: int,
             full_range: bool) -> av.VideoFrame:
    """An HDR frame as the clips' SDR BT.709 4:2:0 limited-range frame of width x height.
    Per-channel steps go through tables, so a frame costs a few array passes."""
    code = frame.reformat(width, height, "rgb48le", src_colorspace=matrix,
                          src_color_range=RANGE_JPEG if full_range else RANGE_MPEG, interpolation="BICUBIC").to_ndarray()
    linear = _to_linear_table(transfer)[code]
    if transfer == HLG:  # the OOTF: scene light to display light, by the scene's luminance
        luma = np.maximum(linear @ BT2020_LUMA, 1e-6)[..., None]
        linear *= np.power(luma, 0.2) * (HLG_PEAK_NITS / SDR_WHITE_NITS)
    linear = linear @ BT2020_TO_BT709.T
    luma = np.maximum(linear @ BT709_LUMA, 1e-6)[..., None]
    linear *= roll_off(luma) / luma
    rgb = _gamma_table()[(np.clip(linear, 0, 1) * 65535).astype(np.uint16)]
    out = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
        format="yuv420p", dst_colorspace=BT709, dst_color_range=RANGE_MPEG)
    out.pts = frame.pts
    return out
