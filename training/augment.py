"""Frame augmentation for training (``training.data`` says which source gets which): a horizontal flip, then a
resize or a crop. RGB is resampled by area when shrinking, else bilinearly; instance colours by nearest neighbour,
or by instance share when shrinking (``shrink_instances``), so that they stay exact: the loss groups pixels by
exact colour. ``labels_from_colors`` (colours → ids) lives here so that the shrink uses it without importing the
datasets; ``training.data`` keeps offering it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

__all__ = ["Augment", "labels_from_colors", "resize_rgb", "shrink_instances"]


@dataclass(frozen=True)
class Augment:
    """Random horizontal flip, then a resize to ``size`` (H, W) or a random crop of ``size`` at native scale."""

    size: tuple[int, int]
    mode: Literal["resize", "crop"] = "resize"
    flip: float = 0.5
    crop_tries: int = 1000
    min_share: float | None = None  # shrinking: nearest neighbour if None, else shrink_instances with this share

    def __post_init__(self) -> None:
        if self.mode not in ("resize", "crop"):
            raise ValueError(f"mode must be 'resize' or 'crop', got {self.mode!r}")
        if min(self.size) < 1 or not 0 <= self.flip <= 1 or self.crop_tries < 1:
            raise ValueError(f"bad augmentation size {self.size}, flip probability {self.flip} or crop_tries "
                             f"{self.crop_tries}")
        if self.min_share is not None and not 0 < self.min_share <= 1:
            raise ValueError(f"min_share must lie in (0, 1], got {self.min_share}")

    def __call__(self, rgb: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """uint8 H×W×3 RGB and instance colours → the same at ``size``."""
        if rng.random() < self.flip:
            rgb, target = rgb[:, ::-1], target[:, ::-1]
        h, w = self.size
        if self.mode == "resize":
            shrinking = h * w < target.shape[0] * target.shape[1]
            if shrinking and self.min_share is not None:
                return resize_rgb(rgb, (h, w)), shrink_instances(target, (h, w), self.min_share)
            return resize_rgb(rgb, (h, w)), cv2.resize(np.ascontiguousarray(target), (w, h), interpolation=cv2.INTER_NEAREST)
        ih, iw = rgb.shape[:2]
        if ih < h or iw < w:  # smaller than the crop: scale up until it fits, as gen2seg does
            s = max(h / ih, w / iw)
            size = (math.ceil(ih * s), math.ceil(iw * s))
            rgb = resize_rgb(rgb, size)
            target = cv2.resize(np.ascontiguousarray(target), size[::-1], interpolation=cv2.INTER_NEAREST)
            ih, iw = size
        for _ in range(self.crop_tries):
            y, x = int(rng.integers(0, ih - h + 1)), int(rng.integers(0, iw - w + 1))
            crop = target[y:y + h, x:x + w]
            if crop.any():  # keep at least one instance in view
                break
        return np.ascontiguousarray(rgb[y:y + h, x:x + w]), np.ascontiguousarray(crop)


def shrink_instances(target: np.ndarray, hw: tuple[int, int], min_share: float) -> np.ndarray:
    """uint8 H×W×3 instance colours → ``hw`` (smaller): each pixel takes the instance that covers most of its
    footprint, or black where no instance covers ``min_share`` of it.

    Nearest neighbour samples one frame pixel per output pixel, so an object one or two pixels wide (a cable) comes
    out dashed, its gaps labelled background, while the area-averaged RGB still shows it whole: the loss would then
    teach the network to colour part of every thin object black. OpenCV has no mode-of-labels resize, hence the
    per-instance area resize here.
    """
    h, w = hw
    ids = labels_from_colors(target)
    present, first = np.unique(ids, return_index=True)
    colors = np.zeros((int(present[-1]) + 1, 3), np.uint8)
    colors[present] = target.reshape(-1, 3)[first]
    best = np.zeros((h, w), np.int32)
    share = np.zeros((h, w), np.float32)
    for i in present[present > 0]:
        cover = cv2.resize((ids == i).astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
        wins = cover > share
        best[wins], share[wins] = i, cover[wins]
    out = colors[best]
    out[share < min_share - 1e-6] = 0
    return out


def labels_from_colors(colors: np.ndarray) -> np.ndarray:
    """uint8 H×W×3 instance colours → int32 H×W ids, 0 = black background, 1..K in sorted colour order."""
    key = (colors[..., 0].astype(np.int64) << 16) | (colors[..., 1].astype(np.int64) << 8) | colors[..., 2]
    values, inverse = np.unique(key, return_inverse=True)
    ids = inverse.reshape(key.shape).astype(np.int32)
    return ids if values[0] == 0 else ids + 1


def resize_rgb(rgb: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    h, w = rgb.shape[:2]
    if (h, w) == tuple(hw):
        return np.ascontiguousarray(rgb)
    shrinking = hw[0] * hw[1] < h * w
    return cv2.resize(np.ascontiguousarray(rgb), (hw[1], hw[0]), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
