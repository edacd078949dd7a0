"""Area (box-filter) shrinking of a uint8 RGB frame straight into a network's normalised channel planes.

OpenCV's INTER_AREA is fast at whole-number ratios but takes a generic path at fractional ones that is several
times slower (about 5 ms for 1280×720 → 768×432 on one core, the deployment profiles' case), and its uint8 result
must then be normalised and split into planes in another pass. ``area_chw`` averages the same pixel areas (without
OpenCV's rounding to uint8) separably, rows first, where the work is contiguous, then columns, and writes the
normalised planes in the same pass. ``normalise_chw`` is that last pass alone, for frames OpenCV shrank (or that
need no shrinking): one pass over the pixels, where ``cv2.dnn.blobFromImage`` took twice as long.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from seg_node.jit import jit


@lru_cache(maxsize=16)
def area_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``n_out`` output pixels over ``n_in`` inputs: its first input index, and the weights of that input
    and the next ones (the overlap of each input pixel with the output's span, over the span's length; zero past
    the last input)."""
    if not 0 < n_out <= n_in:
        raise ValueError(f"area_weights shrinks: {n_in} pixels to {n_out}")
    scale = n_in / n_out
    taps = int(np.ceil(scale)) + 1
    start = np.arange(n_out) * scale
    first = np.floor(start).astype(np.int64)
    inputs = first[:, None] + np.arange(taps)
    overlap = np.minimum(start[:, None] + scale, inputs + 1) - np.maximum(start[:, None], inputs)
    weights = np.where((overlap > 0) & (inputs < n_in), overlap / scale, 0.0).astype(np.float32)
    first.flags.writeable = weights.flags.writeable = False
    return first, weights


def area_chw(rgb: np.ndarray, out: np.ndarray, scale: np.ndarray, bias: np.ndarray,
             hw: tuple[int, int] | None = None) -> np.ndarray:
    """Shrink uint8 H×W×3 ``rgb`` to ``hw`` (h, w; default ``out``'s size) by area averaging and write
    ``mean · scale[c] + bias[c]`` into ``out[c, :h, :w]`` (float32 3×H'×W', H' ≥ h, W' ≥ w; the rest untouched)."""
    h, w = out.shape[1:] if hw is None else hw
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or not rgb.flags.c_contiguous:
        raise ValueError(f"area_chw takes a C-contiguous uint8 H×W×3 image, got {rgb.dtype} {rgb.shape}")
    if out.dtype != np.float32 or out.ndim != 3 or out.shape[0] != 3 or out.shape[1] < h or out.shape[2] < w:
        raise ValueError(f"area_chw writes {h}×{w} into a float32 3×H×W array, got {out.dtype} {out.shape}")
    fy, wy = area_weights(rgb.shape[0], h)
    fx, wx = area_weights(rgb.shape[1], w)
    _area_chw(rgb, fy, wy, fx, wx, np.asarray(scale, np.float32), np.asarray(bias, np.float32), out)
    return out


def normalise_chw(rgb: np.ndarray, out: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Write ``rgb[..., c] · scale[c] + bias[c]`` of uint8 H×W×3 ``rgb`` into ``out[c, :H, :W]`` (float32 3×H'×W',
    H' ≥ H, W' ≥ W; the rest untouched)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"normalise_chw takes a uint8 H×W×3 image, got {rgb.dtype} {rgb.shape}")
    h, w = rgb.shape[:2]
    if out.dtype != np.float32 or out.ndim != 3 or out.shape[0] != 3 or out.shape[1] < h or out.shape[2] < w:
        raise ValueError(f"normalise_chw writes {h}×{w} into a float32 3×H×W array, got {out.dtype} {out.shape}")
    _normalise_chw(rgb, np.asarray(scale, np.float32), np.asarray(bias, np.float32), out)
    return out


@jit
def _normalise_chw(img, scale, bias, out):  # pragma: no cover - compiled
    height, width, _ = img.shape
    for y in range(height):
        for x in range(width):
            out[0, y, x] = img[y, x, 0] * scale[0] + bias[0]
            out[1, y, x] = img[y, x, 1] * scale[1] + bias[1]
            out[2, y, x] = img[y, x, 2] * scale[2] + bias[2]


@jit
def _area_chw(img, fy, wy, fx, wx, scale, bias, out):  # pragma: no cover - compiled
    height, width, channels = img.shape
    flat = img.reshape(height, width * channels)
    # One output row's worth of input columns, plus zeros that the last outputs' zero-weight taps read.
    row = np.zeros(width * channels + channels * wx.shape[1], np.float32)
    for y in range(fy.shape[0]):
        row[: width * channels] = 0.0
        for k in range(wy.shape[1]):
            wk = wy[y, k]
            if wk != 0.0:
                src = flat[fy[y] + k]
                for i in range(width * channels):
                    row[i] += wk * src[i]
        for x in range(fx.shape[0]):
            i0 = fx[x] * channels
            a0 = np.float32(0.0)
            a1 = np.float32(0.0)
            a2 = np.float32(0.0)
            for k in range(wx.shape[1]):
                wk = wx[x, k]
                i = i0 + channels * k
                a0 += wk * row[i]
                a1 += wk * row[i + 1]
                a2 += wk * row[i + 2]
            out[0, y, x] = a0 * scale[0] + bias[0]
            out[1, y, x] = a1 * scale[1] + bias[1]
            out[2, y, x] = a2 * scale[2] + bias[2]
