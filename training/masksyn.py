"""MaskSyn (SegGen): new instance layouts recomposed from a bank of real object masks, with exact labels.

A ``MaskBank`` holds object cut-outs (mask, source pixels, provenance) taken from any dataset the trainer reads
(``training.data``: Hypersim, Virtual KITTI 2, synthetic scenes) or from label maps directly. ``compose_layout``
draws a new frame from it: a number of objects (density), each scaled, rotated and flipped, placed at random and
painted back to front in a random occlusion order, so the label map holds exactly each object's visible pixels.
The same placement pastes the objects' source pixels, which gives copy-paste images for free; other images for
the layout come from ``training.imgsyn``.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from training.data import labels_from_colors

__all__ = ["Cutout", "MaskBank", "LayoutParams", "Layout", "compose_layout"]


@dataclass(frozen=True)
class Cutout:
    """One object: its mask and pixels in its tight bounding box, and where it came from."""

    mask: np.ndarray  # bool h×w
    rgb: np.ndarray  # uint8 h×w×3
    source: str


class MaskBank:
    """Object cut-outs to recompose; ``min_area`` drops specks, ``max_fraction`` drops background-sized regions."""

    def __init__(self, cutouts: Iterable[Cutout] = ()) -> None:
        self.cutouts: list[Cutout] = list(cutouts)

    def __len__(self) -> int:
        return len(self.cutouts)

    def add_frame(self, rgb: np.ndarray, labels: np.ndarray, source: str, min_area: int = 64,
                  max_fraction: float = 0.5) -> int:
        """Cut every instance (label > 0) of one frame out whole, visible pixels only; returns how many were kept."""
        if rgb.shape[:2] != labels.shape:
            raise ValueError(f"{source}: image {rgb.shape[:2]} and labels {labels.shape} differ in size")
        kept = 0
        for k, box in enumerate(_boxes(labels), start=1):
            if box is None:
                continue
            y0, y1, x0, x1 = box
            mask = labels[y0:y1, x0:x1] == k
            area = int(mask.sum())
            if area < min_area or area > max_fraction * labels.size:
                continue
            self.cutouts.append(Cutout(mask, np.ascontiguousarray(rgb[y0:y1, x0:x1]), f"{source}#{k}"))
            kept += 1
        return kept

    @classmethod
    def from_dataset(cls, dataset: Any, count: int, name: str, min_area: int = 64) -> MaskBank:
        """Cut-outs from the first ``count`` items of a ``training.data`` dataset (items with ``rgb``/``target``);
        provenance ``name:index#instance``. Datasets without background labels (``no_bg``) count too: their
        instances are labelled."""
        bank = cls()
        for i in range(min(count, len(dataset))):
            item = dataset[(i, 0)]
            rgb = item["rgb"].numpy().transpose(1, 2, 0)
            labels = labels_from_colors(item["target"].numpy().transpose(1, 2, 0))
            bank.add_frame(rgb, labels, f"{name}:{i}", min_area)
        if not bank.cutouts:
            raise ValueError(f"{name}: no object of at least {min_area} px in its first {count} items")
        return bank


def _boxes(labels: np.ndarray) -> list[tuple[int, int, int, int] | None]:
    """Bounding box (y0, y1, x0, x1) of each label 1..max (None where absent), via scipy's find_objects."""
    from scipy import ndimage

    return [None if s is None else (s[0].start, s[0].stop, s[1].start, s[1].stop)
            for s in ndimage.find_objects(labels.astype(np.int32))]


@dataclass(frozen=True)
class LayoutParams:
    """How new layouts are drawn: ``objects`` (min, max) per frame (density), ``scale`` (min, max) factor on the
    cut-out, ``rotation`` max degrees either way, ``flip`` probability, ``min_visible`` pixels an object must keep
    after occlusion to be labelled (fewer: painted over by the background, and so not in the image)."""

    size: tuple[int, int] = (240, 320)
    objects: tuple[int, int] = (4, 14)
    scale: tuple[float, float] = (0.5, 1.5)
    rotation: float = 180.0
    flip: float = 0.5
    min_visible: int = 16

    def __post_init__(self) -> None:
        if min(self.size) < 8 or not 1 <= self.objects[0] <= self.objects[1]:
            raise ValueError(f"bad layout size {self.size} or object count range {self.objects}")
        if not 0 < self.scale[0] <= self.scale[1] or not 0 <= self.flip <= 1 or self.min_visible < 1:
            raise ValueError(f"bad scale range {self.scale}, flip {self.flip} or min_visible {self.min_visible}")


@dataclass
class Layout:
    """A recomposed frame: ``labels`` (uint16, 0 = background, 1..K back to front), the pasted source pixels
    ``rgb`` over the given background, and per object its provenance and transform."""

    labels: np.ndarray
    rgb: np.ndarray
    objects: list[dict[str, Any]] = field(default_factory=list)


def compose_layout(bank: MaskBank, params: LayoutParams, rng: np.random.Generator,
                   background: np.ndarray | None = None) -> Layout:
    """A new layout from ``bank`` (see the module docstring); ``background`` uint8 H×W×3 (default black)."""
    if not len(bank):
        raise ValueError("the mask bank is empty")
    h, w = params.size
    base = np.zeros((h, w, 3), np.uint8) if background is None else background
    if base.shape != (h, w, 3):
        raise ValueError(f"background must be {h}×{w}×3, got {base.shape}")
    canvas = base.copy()
    labels = np.zeros((h, w), np.int32)
    placed: list[dict[str, Any]] = []
    for _ in range(int(rng.integers(params.objects[0], params.objects[1] + 1))):
        index = int(rng.integers(len(bank)))
        cut = bank.cutouts[index]
        scale = float(rng.uniform(*params.scale))
        angle = float(rng.uniform(-params.rotation, params.rotation))
        flip = bool(rng.random() < params.flip)
        mask, rgb = _transform(cut, scale, angle, flip)
        # The centre anywhere in the frame: objects may be cut by the frame edge, as in camera images.
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        y0, x0 = cy - mask.shape[0] // 2, cx - mask.shape[1] // 2
        sy, sx = slice(max(0, y0), min(h, y0 + mask.shape[0])), slice(max(0, x0), min(w, x0 + mask.shape[1]))
        m = mask[sy.start - y0:sy.stop - y0, sx.start - x0:sx.stop - x0]
        if not m.any():
            continue
        placed.append({"source": cut.source, "bank_index": index, "scale": round(scale, 4), "angle": round(angle, 2),
                       "flip": flip, "centre": [cy, cx]})
        labels[sy, sx][m] = len(placed)  # nearer objects are painted later: occlusion order = drawing order
        canvas[sy, sx][m] = rgb[sy.start - y0:sy.stop - y0, sx.start - x0:sx.stop - x0][m]
    # Only what is visible is labelled; objects left with a few pixels go back to the background.
    areas = np.bincount(labels.ravel(), minlength=len(placed) + 1)
    keep = np.flatnonzero(areas[1:] >= params.min_visible) + 1
    lookup = np.zeros(len(placed) + 1, np.int32)
    lookup[keep] = np.arange(1, len(keep) + 1)
    lost = (labels > 0) & (lookup[labels] == 0)
    canvas[lost] = base[lost]
    objects = [dict(placed[k - 1], visible_px=int(areas[k])) for k in keep]
    return Layout(lookup[labels].astype(np.uint16), canvas, objects)


def _transform(cut: Cutout, scale: float, angle: float, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """The cut-out scaled, rotated about its centre and optionally mirrored, in a box that holds all of it; masks by
    nearest neighbour (exact labels), pixels bilinearly."""
    mask, rgb = (cut.mask[:, ::-1], cut.rgb[:, ::-1]) if flip else (cut.mask, cut.rgb)
    h, w = mask.shape
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    bw, bh = max(1, int(np.ceil(h * sin + w * cos))), max(1, int(np.ceil(h * cos + w * sin)))
    matrix[:, 2] += (bw / 2 - w / 2, bh / 2 - h / 2)
    out_mask = cv2.warpAffine(np.ascontiguousarray(mask, np.uint8), matrix, (bw, bh), flags=cv2.INTER_NEAREST) > 0
    out_rgb = cv2.warpAffine(np.ascontiguousarray(rgb), matrix, (bw, bh), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)
    return out_mask, out_rgb
