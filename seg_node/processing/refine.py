"""Edge-aware refinement of a colour map: a guided filter (He, Sun & Tang, 2010) with the camera frame as the guide.

A ViT colours whole patches, so a model that has not learned sub-patch detail gives a blocky map whose borders can sit
half a patch off the object's. The guided filter makes the output locally an affine function of the frame's colours
(``q = a·I + b`` in every window), so where the map changes inside a window the change follows the frame's edges;
where the map is flat it stays flat. Colour-guide variant (a 3×3 system per pixel), so objects that differ from the
table in hue but not in brightness still give edges.

Written here on ``cv2.boxFilter``: OpenCV's own ``ximgproc.guidedFilter`` is only in the contrib build, which would
replace the OpenCV wheel a robot already has.
"""
from __future__ import annotations

import cv2
import numpy as np

__all__ = ["guided_filter"]


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """``src`` (float32 H×W×C) filtered with the colour ``guide`` (uint8 H×W×3, same size).

    ``radius``: window half-size in pixels; ``eps``: regularisation in units of the guide's [0, 1] colour variance
    (smaller follows weaker edges).
    """
    if guide.shape[:2] != src.shape[:2] or guide.ndim != 3 or guide.shape[2] != 3 or src.ndim != 3:
        raise ValueError(f"guide must be H×W×3 and src H×W×C of the same H×W, got {guide.shape} and {src.shape}")
    if radius < 1 or eps <= 0:
        raise ValueError(f"radius must be >= 1 and eps > 0, got {radius} and {eps}")
    ksize = (2 * radius + 1, 2 * radius + 1)

    def mean(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, -1, ksize, borderType=cv2.BORDER_REFLECT)

    img = guide.astype(np.float32) * np.float32(1 / 255)
    src = np.ascontiguousarray(src, dtype=np.float32)
    mean_i = mean(img)
    # Per-pixel covariance of the guide's channels (symmetric 3×3), regularised, and its inverse by cofactors:
    # one closed form for all pixels, where np.linalg.inv would loop over them.
    pairs = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    cov = {(i, j): mean(img[..., i] * img[..., j]) - mean_i[..., i] * mean_i[..., j] for i, j in pairs}
    for i in range(3):
        cov[i, i] = cov[i, i] + np.float32(eps)
    a00, a01, a02, a11, a12, a22 = (cov[p] for p in pairs)
    c00, c01, c02 = a11 * a22 - a12 * a12, a02 * a12 - a01 * a22, a01 * a12 - a02 * a11
    c11, c12, c22 = a00 * a22 - a02 * a02, a01 * a02 - a00 * a12, a00 * a11 - a01 * a01
    inv_det = np.float32(1.0) / (a00 * c00 + a01 * c01 + a02 * c02)
    rows = [(c00 * inv_det, c01 * inv_det, c02 * inv_det), (c01 * inv_det, c11 * inv_det, c12 * inv_det),
            (c02 * inv_det, c12 * inv_det, c22 * inv_det)]
    out = np.empty_like(src)
    for c in range(src.shape[2]):
        p = src[..., c]
        mean_p = mean(p)
        cov_ip = mean(img * p[..., None]) - mean_i * mean_p[..., None]
        v0, v1, v2 = cov_ip[..., 0], cov_ip[..., 1], cov_ip[..., 2]
        a = np.stack([r0 * v0 + r1 * v1 + r2 * v2 for r0, r1, r2 in rows], -1)
        b = mean_p - (a * mean_i).sum(-1)
        out[..., c] = (mean(a) * img).sum(-1) + mean(b)
    return out
