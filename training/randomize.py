"""Domain randomisation for the synthetic scenes: variety that teaches grouping rather than the renderer's style.

A model trained on one renderer learns its shortcuts: that tables are wood, cloth or stone, that objects are about
a tenth of the frame, that nothing is blurred or compressed, that neighbours differ in colour. With
``SceneGenerator(randomize=True)`` each scene draws from wider distributions, all labelled exactly:

* backgrounds: the renderer's tables, or linear/radial gradients, stripes, checks, value noise and texture tiles;
* clutter: small specks and scratches on the background (at most ``CLUTTER_MAX_PX`` across, flat, no shadow):
  always background, never an object, so the rule a model must learn is consistent — things that stand out
  and are larger than a few pixels are objects;
* layout: object scale from a few pixels to half the frame (``zoom``), objects gathered in touching and
  overlapping clusters, same-colour neighbours;
* camera: a random crop of the rendered frame at another scale and aspect, resized back (labels by nearest);
* photometry: colour-channel gains, saturation, gamma, brightness, blur, sensor noise and JPEG artefacts.

Everything here is a pure function of its ``rng``, so a scene stays a function of (seed, index, settings).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["CLUTTER_MAX_PX", "background", "camera_crop", "clutter", "cluster_bases", "match_color", "photometric",
           "zoom"]

CLUTTER_MAX_PX = 4  # specks up to this size are background texture, never labelled


def background(rng: np.random.Generator, h: int, w: int, textures: list[np.ndarray], color) -> np.ndarray:
    """A random non-table background, float32 H×W×3 in 0..1. ``colour(rng)`` draws an RGB colour."""
    c1, c2 = color(rng), color(rng)
    if rng.random() < 0.5:  # low contrast, as most real surfaces
        c2 = c1 * rng.uniform(0.6, 0.95)
    kind = int(rng.integers(5))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:  # linear gradient
        a = rng.uniform(0, 2 * math.pi)
        t = (xx * math.cos(a) + yy * math.sin(a))
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    elif kind == 1:  # radial gradient
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        t = np.hypot(xx - cx, yy - cy)
        t = t / max(float(t.max()), 1e-6)
    elif kind == 2:  # stripes at any angle and period
        a, period = rng.uniform(0, math.pi), rng.uniform(4, max(h, w) / 3)
        t = (np.sin((xx * math.cos(a) + yy * math.sin(a)) * 2 * math.pi / period) > 0).astype(np.float32)
        t = cv2.GaussianBlur(t, (0, 0), rng.uniform(0.3, 1.5))
    elif kind == 3:  # checks
        cell = rng.uniform(6, max(h, w) / 4)
        t = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2).astype(np.float32)
    else:  # a texture tile from the renderer's pool, stretched
        tex = textures[int(rng.integers(len(textures)))]
        t = cv2.resize(tex[:max(8, int(tex.shape[0] * rng.uniform(0.3, 1)))], (w, h), interpolation=cv2.INTER_LINEAR)
    return (c1[None, None] * (1 - t[..., None]) + c2[None, None] * t[..., None]).astype(np.float32)


def clutter(rng: np.random.Generator, rgb: np.ndarray, color, density: float) -> None:
    """Draw specks and short scratches (background, unlabelled) onto ``rgb`` in place: ~``density`` per 1000 px."""
    h, w = rgb.shape[:2]
    n = int(rng.poisson(density * h * w / 1000))
    for _ in range(n):
        c = color(rng).tolist()
        x, y = int(rng.integers(w)), int(rng.integers(h))
        if rng.random() < 0.7:
            cv2.circle(rgb, (x, y), int(rng.integers(0, CLUTTER_MAX_PX // 2 + 1)), c, -1, cv2.LINE_AA)
        else:
            a, length = rng.uniform(0, math.pi), rng.uniform(2, CLUTTER_MAX_PX)
            end = (int(x + length * math.cos(a)), int(y + length * math.sin(a)))
            cv2.line(rgb, (x, y), end, c, 1, cv2.LINE_AA)


def zoom(rng: np.random.Generator) -> float:
    """A per-scene factor on object size: log-uniform from 0.3 (a few pixels) to 2.2 (half the frame)."""
    return float(math.exp(rng.uniform(math.log(0.3), math.log(2.2))))


def cluster_bases(rng: np.random.Generator, n: int, h: int, w: int, wall: int, spread: float) -> np.ndarray:
    """Footprint centres (x, y) of ``n`` objects: uniform, or gathered in 1..3 clusters of radius ``spread`` px so
    that objects touch and overlap. Sorted far (small y) to near, the drawing order."""
    if rng.random() < 0.5:
        bases = np.stack([rng.uniform(0.03, 0.97, n) * w, wall + rng.uniform(0.1, 1.0, n) * (h - wall)], 1)
    else:
        centres = np.stack([rng.uniform(0.15, 0.85, 3) * w, wall + rng.uniform(0.3, 0.9, 3) * (h - wall)], 1)
        bases = centres[rng.integers(0, int(rng.integers(1, 4)), n)] + rng.normal(0, spread, (n, 2))
        bases[:, 0] = np.clip(bases[:, 0], 0, w - 1)
        bases[:, 1] = np.clip(bases[:, 1], wall, h - 1)
    return bases[np.argsort(bases[:, 1])]


def match_color(faces: list, strokes: list, target: np.ndarray) -> None:
    """Recolour an object so that its mean colour is ``target`` (same-colour neighbours), keeping its shading."""
    colors = [f[1] for f in faces] + [s[2] for s in strokes]
    if not colors:
        return
    gain = target / np.maximum(np.mean(colors, axis=0), 1e-3)
    faces[:] = [(p, np.clip(c * gain, 0, 1), z) for p, c, z in faces]
    strokes[:] = [(p, t, np.clip(c * gain, 0, 1), z) for p, t, c, z in strokes]


def camera_crop(rng: np.random.Generator, rgb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A crop of 55..100 % of the frame with its aspect changed by up to ±25 %, resized back to the frame size
    (RGB area/linear, labels nearest)."""
    h, w = labels.shape
    s = rng.uniform(0.55, 1.0)
    aspect = math.exp(rng.uniform(-0.25, 0.25))
    ch, cw = min(h, max(8, int(h * s * aspect))), min(w, max(8, int(w * s / aspect)))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    rgb = cv2.resize(np.ascontiguousarray(rgb[y:y + ch, x:x + cw]), (w, h), interpolation=cv2.INTER_LINEAR)
    labels = cv2.resize(np.ascontiguousarray(labels[y:y + ch, x:x + cw]), (w, h), interpolation=cv2.INTER_NEAREST)
    return rgb, labels


def photometric(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    """Colour jitter, gamma, blur and noise on float RGB in 0..1, then maybe JPEG; returns uint8."""
    rgb = rgb * rng.uniform(0.85, 1.15, 3).astype(np.float32) * np.float32(rng.uniform(0.7, 1.3))
    grey = rgb.mean(axis=2, keepdims=True)
    rgb = grey + (rgb - grey) * np.float32(rng.uniform(0.5, 1.4))
    rgb = np.clip(rgb, 0, 1) ** np.float32(rng.uniform(0.7, 1.4))
    sigma = rng.uniform(0.3, 1.6) if rng.random() < 0.6 else 0.5
    rgb = cv2.GaussianBlur(rgb, (0, 0), sigma)
    rgb = rgb + rng.standard_normal(rgb.shape, dtype=np.float32) * np.float32(rng.uniform(0, 8) / 255)
    out = np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < 0.4:
        ok, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(25, 95))])
        out = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy()
    return out
