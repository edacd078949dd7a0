"""Edge-aware refinement of a colour map: a guided filter (He, Sun & Tang, 2010) with the camera frame as the guide.

A ViT colours whole patches, so a model that has not learned sub-patch detail gives a blocky map whose borders can sit
half a patch off the object's. The guided filter makes the output locally an affine function of the frame's colours
(``q = a·I + b`` in every window), so where the map changes inside a window the change follows the frame's edges;
where the map is flat it stays flat. Colour-guide variant (a 3×3 system per pixel), so objects that differ from the
table in hue but not in brightness still give edges.

Written here on ``cv2.boxFilter``: OpenCV's own ``ximgproc.guidedFilter`` is only in the contrib build, which would
replace the OpenCV wheel a robot already has. The per-pixel algebra runs as three numba passes around two rounds
of box filters (one ``cv2.boxFilter`` per plane of products), where numpy's one array pass per term made a 320×240
map cost 17 ms on one core (now 6.8 ms).
"""
from __future__ import annotations

import cv2
import numpy as np

from seg_node.jit import jit

__all__ = ["guided_filter"]


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float, subsample: int = 1) -> np.ndarray:
    """``src`` (float32 H×W×C) filtered with the colour ``guide`` (uint8 H×W×3, same size).

    ``radius``: window half-size in pixels; ``eps``: regularisation in units of the guide's [0, 1] colour variance
    (smaller follows weaker edges). ``subsample`` s > 1: the fast guided filter (He & Sun, 2015): the local linear
    models are fitted on both images area-downscaled by s (radius / s), scaled back up bilinearly and applied to
    the full-size guide, so edges still follow the frame's pixels, for about 1/s² of the fitting's cost.
    """
    if guide.shape[:2] != src.shape[:2] or guide.ndim != 3 or guide.shape[2] != 3 or src.ndim != 3:
        raise ValueError(f"guide must be H×W×3 and src H×W×C of the same H×W, got {guide.shape} and {src.shape}")
    if radius < 1 or eps <= 0 or subsample < 1:
        raise ValueError(f"radius and subsample must be >= 1 and eps > 0, got {radius}, {subsample} and {eps}")
    img = np.ascontiguousarray(guide, dtype=np.uint8)
    src = np.ascontiguousarray(src, dtype=np.float32)
    h, w, c = src.shape
    small_img, small_src = img, src
    hs, ws = max(h // subsample, 1), max(w // subsample, 1)
    if (hs, ws) != (h, w):
        small_img = cv2.resize(img, (ws, hs), interpolation=cv2.INTER_AREA)
        small_src = cv2.resize(src, (ws, hs), interpolation=cv2.INTER_AREA).reshape(hs, ws, c)
        radius = max(round(radius / subsample), 1)
    ksize = (2 * radius + 1, 2 * radius + 1)
    # Window means of I, of the guide's channel products and of p and I·p (9 + 4C planes), then of a and b (4C).
    means = _box_planes(_products(small_img, small_src, _planes(9 + 4 * c, hs, ws)), ksize)
    coefficients = _box_planes(_coefficients(means, np.float32(eps), c, _planes(4 * c, hs, ws)), ksize)
    if (hs, ws) != (h, w):
        full = _planes(4 * c, h, w)
        for plane, out in zip(coefficients, full):
            cv2.resize(plane, (w, h), dst=out, interpolation=cv2.INTER_LINEAR)
        coefficients = full
    return _apply(img, coefficients, np.empty_like(src))


def _planes(k: int, h: int, w: int) -> np.ndarray:
    """An uninitialised K×H×W float32 stack whose planes start one cache line apart modulo 4 KiB. Planes a whole
    number of pages apart (a 320×240 plane is 75) map a pixel of every plane to the same L1 cache set, and the 21
    read at each pixel kept evicting each other: the per-pixel passes took 16 ms instead of about 2."""
    stride = -(-h * w // 1024) * 1024 + 16  # floats: whole 4 KiB pages, then one 64-byte line
    return np.lib.stride_tricks.as_strided(np.empty(k * stride, np.float32), (k, h, w), (4 * stride, 4 * w, 4))


def _box_planes(planes: np.ndarray, ksize: tuple[int, int]) -> np.ndarray:
    """Each plane of a K×H×W stack replaced by its window mean (one plane at a time: OpenCV filters a plane faster
    than the same numbers interleaved as channels)."""
    for plane in planes:
        cv2.boxFilter(plane, -1, ksize, dst=plane, borderType=cv2.BORDER_REFLECT)
    return planes


_SCALE = np.float32(1 / 255)


@jit
def _rgb(img: np.ndarray, y: int, x: int) -> tuple[np.float32, np.float32, np.float32]:
    """The guide's colour at (y, x) in [0, 1] (numba inlines the call)."""
    return img[y, x, 0] * _SCALE, img[y, x, 1] * _SCALE, img[y, x, 2] * _SCALE


@jit
def _products(img: np.ndarray, src: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Planes I (3), I_i·I_j for i <= j (6), p (C), then I·p_k (3 per channel), I in [0, 1]."""
    h, w, c = src.shape
    for y in range(h):
        for x in range(w):
            r, g, b = _rgb(img, y, x)
            out[0, y, x], out[1, y, x], out[2, y, x] = r, g, b
            out[3, y, x], out[4, y, x], out[5, y, x] = r * r, r * g, r * b
            out[6, y, x], out[7, y, x], out[8, y, x] = g * g, g * b, b * b
            for k in range(c):
                p = src[y, x, k]
                out[9 + k, y, x] = p
                out[9 + c + 3 * k, y, x], out[10 + c + 3 * k, y, x], out[11 + c + 3 * k, y, x] = r * p, g * p, b * p
    return out


@jit
def _coefficients(m: np.ndarray, eps: np.float32, c: int, out: np.ndarray) -> np.ndarray:
    """Per pixel the local linear model p ≈ a·I + b: a = (Σ_I + eps·1)⁻¹ cov(I, p), by cofactors (a closed form, where
    a 3×3 solve per pixel would cost a call each); planes a (3) and b for each channel."""
    h, w = m.shape[1:]
    for y in range(h):
        for x in range(w):
            mr, mg, mb = m[0, y, x], m[1, y, x], m[2, y, x]
            a00, a01, a02 = m[3, y, x] - mr * mr + eps, m[4, y, x] - mr * mg, m[5, y, x] - mr * mb
            a11, a12, a22 = m[6, y, x] - mg * mg + eps, m[7, y, x] - mg * mb, m[8, y, x] - mb * mb + eps
            c00, c01, c02 = a11 * a22 - a12 * a12, a02 * a12 - a01 * a22, a01 * a12 - a02 * a11
            c11, c12, c22 = a00 * a22 - a02 * a02, a01 * a02 - a00 * a12, a00 * a11 - a01 * a01
            inv_det = np.float32(1.0) / (a00 * c00 + a01 * c01 + a02 * c02)
            for k in range(c):
                mp = m[9 + k, y, x]
                v0 = m[9 + c + 3 * k, y, x] - mr * mp
                v1 = m[10 + c + 3 * k, y, x] - mg * mp
                v2 = m[11 + c + 3 * k, y, x] - mb * mp
                ar = (c00 * v0 + c01 * v1 + c02 * v2) * inv_det
                ag = (c01 * v0 + c11 * v1 + c12 * v2) * inv_det
                ab = (c02 * v0 + c12 * v1 + c22 * v2) * inv_det
                out[4 * k, y, x], out[4 * k + 1, y, x], out[4 * k + 2, y, x] = ar, ag, ab
                out[4 * k + 3, y, x] = mp - (ar * mr + ag * mg + ab * mb)
    return out


@jit
def _apply(img: np.ndarray, ab: np.ndarray, out: np.ndarray) -> np.ndarray:
    """q = mean(a)·I + mean(b) per pixel and channel."""
    h, w, c = out.shape
    for y in range(h):
        for x in range(w):
            r, g, b = _rgb(img, y, x)
            for k in range(c):
                out[y, x, k] = ab[4 * k, y, x] * r + ab[4 * k + 1, y, x] * g + ab[4 * k + 2, y, x] * b + ab[4 * k + 3, y, x]
    return out
