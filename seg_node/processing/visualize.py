"""Pictures people look at: segment overlays on the camera image."""
from __future__ import annotations

import cv2
import numpy as np


def palette(count: int) -> np.ndarray:
    """uint8 (count+1)×3 RGB colours, index 0 black; well separated and the same for the same id every time."""
    ids = np.arange(count + 1, dtype=np.float64)
    # Golden-ratio hue steps keep neighbouring ids far apart on the colour wheel.
    hue = (ids * 0.618033988749895) % 1.0
    sat = 0.65 + 0.35 * ((ids * 0.381966) % 1.0)
    k = (np.array([5.0, 3.0, 1.0])[None, :] + hue[:, None] * 6.0) % 6.0
    rgb = 1.0 - sat[:, None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    out = (rgb * 255.0).astype(np.uint8)
    out[0] = 0
    return out


def boundaries(labels: np.ndarray) -> np.ndarray:
    """Bool mask of pixels whose right or lower neighbour has another label."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge


def overlay(rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """uint8 RGB image: each segment tinted with its palette colour, outlines in white, background untouched."""
    if rgb.shape[:2] != labels.shape:
        raise ValueError(f"image {rgb.shape[:2]} and label map {labels.shape} differ in size")
    colors = palette(int(labels.max()))[labels]
    fg = (labels > 0)[..., None]
    out = np.where(fg, (1.0 - alpha) * rgb + alpha * colors, rgb).astype(np.uint8)
    out[boundaries(labels)] = 255
    return out


def label_colors(labels: np.ndarray) -> np.ndarray:
    """uint8 RGB picture of a label map: each id its palette colour (the same id, the same colour), 0 black."""
    return palette(int(labels.max()))[labels]


def panels(images: list[tuple[str, np.ndarray]], height: int = 240) -> np.ndarray:
    """uint8 RGB figure: the (title, RGB image) pairs side by side, each scaled to ``height`` with its title above."""
    row = []
    for title, img in images:
        w = max(1, round(img.shape[1] * height / img.shape[0]))
        tile = np.full((height + 22, w, 3), 255, np.uint8)
        tile[22:] = cv2.resize(img, (w, height), interpolation=cv2.INTER_NEAREST)
        cv2.putText(tile, title, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        row += [tile, np.full((height + 22, 4, 3), 255, np.uint8)]
    return np.hstack(row[:-1])
