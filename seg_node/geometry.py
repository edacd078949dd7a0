"""Shape of each segment from its mask: 2D image moments for every label at once (3D from depth comes with the node)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


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
    """Centroid, principal-axis orientation and extents of labels 1..count.

    Each segment is measured inside its own bounding box (scipy's find_objects, one pass), so the cost follows the
    segments' area rather than count × image size.
    """
    shapes = []
    for k, box in enumerate(ndimage.find_objects(labels, max_label=count), 1):
        if box is None:
            shapes.append(Shape2D(0.0, 0.0, 0.0, 0.0, 0.0))
            continue
        ys, xs = np.nonzero(labels[box] == k)
        # Pixel (c, r) covers [c, c+1) × [r, r+1): its centre is at +0.5.
        xs = xs + (box[1].start + 0.5)
        ys = ys + (box[0].start + 0.5)
        cx, cy = xs.mean(), ys.mean()
        dx, dy = xs - cx, ys - cy
        # Element-wise sums, not np.dot: BLAS threading costs more than it saves on vectors this short.
        theta = 0.5 * np.arctan2(2.0 * (dx * dy).sum(), (dx * dx).sum() - (dy * dy).sum())
        if theta <= -np.pi / 2:
            theta += np.pi
        cos, sin = np.cos(theta), np.sin(theta)
        u = dx * cos + dy * sin
        v = dy * cos - dx * sin
        # Extents: range of the projections onto the axes, +1 px for the pixels' own size.
        along, across = float(np.ptp(u)) + 1.0, float(np.ptp(v)) + 1.0
        if across > along:
            # Variance and range can disagree on elongated, irregular masks: the longer extent names the major axis.
            theta = theta - np.pi / 2 if theta > 0 else theta + np.pi / 2
            along, across = across, along
        shapes.append(Shape2D(float(cx), float(cy), float(theta), along, across))
    return shapes
