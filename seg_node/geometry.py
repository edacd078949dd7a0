"""Shape of each segment from its mask: 2D image moments for every label at once (3D from depth comes with the node)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Shape2D:
    centroid_x: float
    centroid_y: float
    # Major-axis angle in radians from +x towards +y (image y points down), in (-pi/2, pi/2].
    orientation: float
    # Full extents along the major and minor axes, pixels: the extreme projections of the mask's pixels.
    major_length: float
    minor_length: float


def shapes_2d(labels: np.ndarray, count: int) -> list[Shape2D]:
    """Centroid, principal-axis orientation and extents of labels 1..count, in one pass over the label map.

    Done with bincount rather than cv2.moments per mask: one pass for all segments instead of one per segment.
    """
    if count == 0:
        return []
    h, w = labels.shape
    flat = labels.ravel().astype(np.intp)
    ys, xs = np.divmod(np.arange(flat.size, dtype=np.float64), w)
    n = np.bincount(flat, minlength=count + 1)[1:].astype(np.float64)
    safe = np.maximum(n, 1.0)
    cx = np.bincount(flat, xs, count + 1)[1:] / safe
    cy = np.bincount(flat, ys, count + 1)[1:] / safe
    # Central second moments from raw ones; pixel centres are at +0.5.
    sxx = np.bincount(flat, xs * xs, count + 1)[1:] / safe - cx * cx
    syy = np.bincount(flat, ys * ys, count + 1)[1:] / safe - cy * cy
    sxy = np.bincount(flat, xs * ys, count + 1)[1:] / safe - cx * cy
    theta = 0.5 * np.arctan2(2.0 * sxy, sxx - syy)
    theta = np.where(theta <= -np.pi / 2, theta + np.pi, theta)
    cos, sin = np.cos(theta), np.sin(theta)
    # Extents: range of the projections onto the axes (+1 px for the pixels' own size).
    idx = labels.ravel()
    fg = idx > 0
    lab = idx[fg].astype(np.intp) - 1
    u = (xs[fg] - cx[lab]) * cos[lab] + (ys[fg] - cy[lab]) * sin[lab]
    v = -(xs[fg] - cx[lab]) * sin[lab] + (ys[fg] - cy[lab]) * cos[lab]
    def extent(p: np.ndarray) -> np.ndarray:
        hi = np.full(count, -np.inf)
        lo = np.full(count, np.inf)
        np.maximum.at(hi, lab, p)
        np.minimum.at(lo, lab, p)
        return np.where(n > 0, hi - lo + 1.0, 0.0)

    along, across = extent(u), extent(v)
    # Variance and range can disagree on elongated, irregular masks: the longer extent names the major axis.
    swap = across > along
    theta = np.where(swap, theta - np.sign(theta + 1e-12) * np.pi / 2, theta)
    major, minor = np.where(swap, across, along), np.where(swap, along, across)
    return [
        Shape2D(float(cx[i] + 0.5), float(cy[i] + 0.5), float(theta[i]), float(major[i]), float(minor[i]))
        for i in range(count)
    ]
