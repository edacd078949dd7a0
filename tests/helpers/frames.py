"""Camera-like uint8 RGB frames for tests that need a picture but no ground truth."""
from __future__ import annotations

import numpy as np


def camera_like_frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients, a few flat rectangles, mild noise: H×W×3 uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], axis=-1)
    for _ in range(4):
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        img[y0: y0 + h // 4, x0: x0 + w // 4] = rng.integers(0, 256, 3)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
