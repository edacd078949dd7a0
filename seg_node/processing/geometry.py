"""Shape of each segment from its mask: 2D image moments for every label at once (3D from depth comes with the node)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
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


def shapes_2d(labels: np.ndarray, count: int, boxes: Sequence[tuple[int, int, int, int]] | None = None,
              values: Sequence[int] | None = None) -> list[Shape2D]:
    """Centroid, principal-axis orientation and extents of labels 1..count, or of the ``count`` label ``values``
    given (e.g. track ids; they need their ``boxes``).

    Each segment is measured inside its own bounding box, so the cost follows the segments' area rather than
    count × image size: ``boxes`` (x, y, w, h per label, as ``label_instances`` reports them), or found with scipy's
    find_objects in one pass over the map. OpenCV's moments give centroid and axes in one C pass; the extreme
    projections of a mask's pixels lie on its outer contours, so only those are projected.
    """
    if values is None:
        values = range(1, count + 1)
    elif len(values) != count:
        raise ValueError(f"{count} labels need {count} label values, got {len(values)}")
    elif boxes is None:
        raise ValueError("label values need their boxes (find_objects numbers labels 1..count)")
    if boxes is None:
        slices = ndimage.find_objects(labels, max_label=count)
    else:
        if len(boxes) != count:
            raise ValueError(f"{count} labels need {count} boxes, got {len(boxes)}")
        slices = [(slice(y, y + h), slice(x, x + w)) if w > 0 and h > 0 else None for x, y, w, h in boxes]
    shapes = []
    for k, box in zip(values, slices):
        if box is None:
            shapes.append(Shape2D(0.0, 0.0, 0.0, 0.0, 0.0))
            continue
        mask = (labels[box] == k).view(np.uint8)
        m = cv2.moments(mask, binaryImage=True)
        if m["m00"] == 0:
            shapes.append(Shape2D(0.0, 0.0, 0.0, 0.0, 0.0))
            continue
        # Pixel (c, r) covers [c, c+1) × [r, r+1): its centre is at +0.5.
        x0, y0 = box[1].start + 0.5, box[0].start + 0.5
        cx, cy = m["m10"] / m["m00"], m["m01"] / m["m00"]
        theta = 0.5 * np.arctan2(2.0 * m["mu11"], m["mu20"] - m["mu02"])
        if theta <= -np.pi / 2:
            theta += np.pi
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        edge = np.concatenate(contours).reshape(-1, 2).astype(np.float64)
        dx, dy = edge[:, 0] - cx, edge[:, 1] - cy
        cos, sin = np.cos(theta), np.sin(theta)
        u = dx * cos + dy * sin
        v = dy * cos - dx * sin
        # Extents: range of the projections onto the axes, +1 px for the pixels' own size.
        along, across = float(np.ptp(u)) + 1.0, float(np.ptp(v)) + 1.0
        if across > along:
            # Variance and range can disagree on elongated, irregular masks: the longer extent names the major axis.
            theta = theta - np.pi / 2 if theta > 0 else theta + np.pi / 2
            along, across = across, along
        shapes.append(Shape2D(float(cx + x0), float(cy + y0), float(theta), along, across))
    return shapes


def upscale_shapes(shapes: Sequence[Shape2D], factor: int) -> list[Shape2D]:
    """The shapes of the same labels after nearest-neighbour scaling by a whole ``factor`` in both axes (every pixel
    becomes a factor×factor block), from their shapes before it, without measuring the larger map.

    Exact: coordinates scale by ``factor``; a square block's own spread is the same along every direction, so the
    principal axes do not turn; and each extreme projection moves out by the extreme projection of the block's pixel
    centres around its centre, (factor - 1) / 2 · (|cos| + |sin|) of the axis angle, at both ends.
    """
    if factor < 1:
        raise ValueError(f"upscale_shapes takes a whole factor >= 1, got {factor}")
    out = []
    for s in shapes:
        if s.major_length == 0.0:  # nothing measured
            out.append(s)
            continue
        grow = (factor - 1) * (abs(np.cos(s.orientation)) + abs(np.sin(s.orientation)))
        out.append(Shape2D(s.centroid_x * factor, s.centroid_y * factor, s.orientation,
                           (s.major_length - 1.0) * factor + grow + 1.0, (s.minor_length - 1.0) * factor + grow + 1.0))
    return out
