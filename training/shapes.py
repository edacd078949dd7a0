"""The six object shapes of the synthetic tabletop scenes (``training.synthetic``): each builder turns a footprint on
the table into faces, strokes and rings to draw, lit and seen from the scene's camera; and the geometry they share."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

SHIFT = 4  # cv2 sub-pixel bits for polygon drawing
ONE = 1 << SHIFT


@dataclass
class SceneObject:
    shape: str
    base: np.ndarray  # (x, y) image point of its footprint centre
    height: float  # px above the table
    faces: list[tuple[np.ndarray, np.ndarray, float]] = field(default_factory=list)  # (polygon, rgb 0..1, z px)
    strokes: list[tuple[np.ndarray, int, np.ndarray, float]] = field(default_factory=list)  # (polyline, px, rgb, z)
    rings: list[tuple[np.ndarray, float, int, np.ndarray, float]] = field(default_factory=list)  # centre, r, px, rgb, z
    texture: int = -1  # index into the texture pool, -1 = plain
    tint: np.ndarray | None = None  # second colour of the texture
    dome: tuple[float, np.ndarray, float] | None = None  # (radius, light, ambient): shade as a dome (blobs)
    footprint: np.ndarray | None = None  # ground outline of a solid, for its shadow (thin objects: None)


# --------------------------------------------------------------------------------------------------- geometry


def fixed_point(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points, np.float64) * ONE).astype(np.int32)


def clip_box(points: np.ndarray, shape: tuple[int, ...], pad: int) -> tuple[int, int, int, int] | None:
    x0, y0 = np.floor(points.min(axis=0)).astype(int) - pad
    x1, y1 = np.ceil(points.max(axis=0)).astype(int) + pad + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, shape[1]), min(y1, shape[0])
    return (int(x0), int(y0), int(x1), int(y1)) if x1 > x0 and y1 > y0 else None


def _ground(base: np.ndarray, pts: np.ndarray, squash: float, z: float = 0.0, lift: float = 0.0) -> np.ndarray:
    """Ground-plane offsets (x right, y towards the camera) at height z → image points."""
    return np.stack([base[0] + pts[:, 0], base[1] + pts[:, 1] * squash - z * lift], 1)


def _rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def _shade(rgb: np.ndarray, normal: Sequence[float], light: np.ndarray, ambient: float) -> np.ndarray:
    return rgb * (ambient + (1 - ambient) * max(0.0, float(np.dot(normal, light))))


def random_color(rng: np.random.Generator, saturation: tuple[float, float] = (0.15, 1.0),
            value: tuple[float, float] = (0.25, 1.0)) -> np.ndarray:
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(*saturation) * 255, rng.uniform(*value) * 255]]], np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255.0


def _box_faces(base: np.ndarray, half: tuple[float, float], height: float, yaw: float, squash: float, lift: float,
               rgb: np.ndarray, light: np.ndarray, ambient: float) -> tuple[list, np.ndarray]:
    corners = np.array([[-half[0], -half[1]], [half[0], -half[1]], [half[0], half[1]], [-half[0], half[1]]])
    corners = corners @ _rotation(yaw).T
    bottom, top = _ground(base, corners, squash), _ground(base, corners, squash, height, lift)
    faces = []
    for i in range(4):
        j = (i + 1) % 4
        edge = corners[j] - corners[i]
        normal = np.array([edge[1], -edge[0]]) / max(np.hypot(*edge), 1e-9)
        if normal[1] > 0:  # faces the camera (towards +y)
            quad = np.stack([bottom[i], bottom[j], top[j], top[i]])
            faces.append((quad, _shade(rgb, (normal[0], normal[1], 0.0), light, ambient), height / 2))
    faces.append((top, _shade(rgb, (0.0, 0.0, 1.0), light, ambient), height))
    return faces, bottom


def _ellipse(centre: np.ndarray, rx: float, ry: float, start: float = 0.0, end: float = 2 * math.pi,
             n: int = 28) -> np.ndarray:
    t = np.linspace(start, end, n)
    return np.stack([centre[0] + rx * np.cos(t), centre[1] + ry * np.sin(t)], 1)


# ----------------------------------------------------------------------------------------------------- shapes


def _box(rng, base, size, squash, lift, light, ambient) -> SceneObject:
    half = (size * rng.uniform(0.04, 0.13), size * rng.uniform(0.04, 0.13))
    height = size * rng.uniform(0.05, 0.22)
    faces, footprint = _box_faces(base, half, height, rng.uniform(0, math.pi), squash, lift, random_color(rng), light, ambient)
    return SceneObject("box", base, height, faces, footprint=footprint)


def _cylinder(rng, base, size, squash, lift, light, ambient) -> SceneObject:
    r = size * rng.uniform(0.03, 0.09)
    height = size * rng.uniform(0.08, 0.3)
    rgb = random_color(rng)
    obj = SceneObject("cylinder", base, height, footprint=_ellipse(base, r, r * squash))
    parts = [(r, 0.0, height)]
    if rng.random() < 0.35:  # a bottle: a narrower neck on top
        neck = height * rng.uniform(0.25, 0.5)
        parts = [(r, 0.0, height - neck), (r * rng.uniform(0.3, 0.5), height - neck, height)]
    # Body shading across the width: the normal turns from −x to +x.
    bands = 6
    for radius, z0, z1 in parts:
        c0, c1 = base - (0, z0 * lift), base - (0, z1 * lift)
        for b in range(bands):
            a0, a1 = math.pi * b / bands, math.pi * (b + 1) / bands
            # Band of the visible half-surface between angles a0..a1 (0 = right edge, π = left edge).
            lower = _ellipse(c0, radius, radius * squash, a0, a1, 6)
            upper = _ellipse(c1, radius, radius * squash, a1, a0, 6)
            mid = (a0 + a1) / 2
            normal = (math.cos(mid), math.sin(mid), 0.0)
            obj.faces.append((np.concatenate([lower, upper]), _shade(rgb, normal, light, ambient), (z0 + z1) / 2))
        obj.faces.append((_ellipse(c1, radius, radius * squash), _shade(rgb, (0, 0, 1), light, ambient), z1))
    return obj


def _tool(rng, base, size, squash, lift, light, ambient) -> SceneObject:
    length = size * rng.uniform(0.2, 0.45)
    angle = rng.uniform(0, 2 * math.pi)
    d = np.array([math.cos(angle), math.sin(angle) * squash])
    metal = np.full(3, rng.uniform(0.45, 0.8), np.float32)
    kind = rng.integers(3)
    thick = max(2, int(round(size * rng.uniform(0.012, 0.02))))
    obj = SceneObject("tool", base, 2.0)
    start, end = base - d * length / 2, base + d * length / 2
    if kind == 0:  # screwdriver: a thick coloured handle and a thin metal shaft
        split = start + d * length * rng.uniform(0.35, 0.5)
        obj.strokes.append((np.stack([split, end]), thick, _shade(metal, (0, 0, 1), light, ambient), 1.0))
        obj.strokes.append((np.stack([start, split]), thick * 3, _shade(random_color(rng), (0, 0, 1), light, ambient), 2.0))
    elif kind == 1:  # wrench: a bar with a ring at each end
        grey = _shade(metal, (0, 0, 1), light, ambient)
        obj.strokes.append((np.stack([start, end]), thick * 2, grey, 1.0))
        for tip, radius in ((start, thick * 2.2), (end, thick * 1.6)):
            obj.rings.append((tip, radius, max(2, thick), grey, 1.0))
    else:  # pen: a rod with a differently coloured cap
        body, cap = _shade(random_color(rng), (0, 0, 1), light, ambient), _shade(random_color(rng), (0, 0, 1), light, ambient)
        split = start + d * length * 0.8
        obj.strokes.append((np.stack([start, split]), thick + 1, body, 1.0))
        obj.strokes.append((np.stack([split, end]), thick + 2, cap, 1.0))
    return obj


def _cable(rng, base, size, squash, lift, light, ambient) -> SceneObject:
    steps = 40
    length = size * rng.uniform(0.5, 1.3)
    heading = rng.uniform(0, 2 * math.pi)
    turn = np.cumsum(rng.normal(0, 0.18, steps))
    headings = heading + np.convolve(turn, np.ones(5) / 5, mode="same")
    moves = np.stack([np.cos(headings), np.sin(headings) * squash], 1) * (length / steps)
    line = base + np.cumsum(moves, 0) - moves.sum(0) / 2
    thickness = max(1, int(round(size * rng.uniform(0.006, 0.02))))
    rgb = random_color(rng) if rng.random() < 0.6 else np.full(3, rng.uniform(0.05, 0.9), np.float32)
    obj = SceneObject("cable", base, 1.0)
    obj.strokes.append((line, thickness, _shade(rgb, (0, 0, 1), light, ambient), 0.5))
    if rng.random() < 0.7:  # a plug at one end
        tip, direction = line[-1], moves[-1] / max(np.hypot(*moves[-1]), 1e-9)
        obj.strokes.append((np.stack([tip, tip + direction * thickness * 4]), thickness * 3,
                            _shade(np.full(3, rng.uniform(0.1, 0.8), np.float32), (0, 0, 1), light, ambient), 1.5))
    return obj


def _blob(rng, base, size, squash, lift, light, ambient) -> SceneObject:
    radius = size * rng.uniform(0.04, 0.12)
    t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
    k = np.arange(2, 6)[:, None]
    wobble = (rng.uniform(0, 0.18, 4)[:, None] / k * 2 * np.cos(k * t + rng.uniform(0, 2 * math.pi, 4)[:, None])).sum(0)
    ground = np.stack([np.cos(t), np.sin(t)], 1) * (radius * (1 + wobble))[:, None]
    height = radius * rng.uniform(0.5, 1.2)
    footprint = _ground(base, ground, squash)
    # Silhouette of a dome: the footprint's upper half lifted by the height.
    outline = _ground(base, ground, squash, height * np.clip(-np.sin(t), 0, 1) ** 0.5, lift)
    rgb = random_color(rng)
    obj = SceneObject("blob", base, height, dome=(radius, light, ambient), footprint=footprint)
    obj.faces += [(footprint, rgb, height / 2), (outline, rgb, height)]
    return obj


def _flat(rng, base, size, squash, lift, light, ambient) -> SceneObject:
    rgb = random_color(rng, value=(0.4, 1.0))
    if rng.random() < 0.3:  # a plate or coaster: a rim around a lighter centre
        r = size * rng.uniform(0.06, 0.14)
        obj = SceneObject("flat", base, 2.0, footprint=_ellipse(base, r, r * squash))
        obj.faces.append((_ellipse(base, r, r * squash), _shade(rgb, (0, 0, 1), light, ambient), 1.0))
        inner = _ellipse(base - (0, 1), r * 0.75, r * 0.75 * squash)
        obj.faces.append((inner, _shade(np.minimum(rgb * 1.15, 1.0), (0, 0, 1), light, ambient), 1.0))
        return obj
    half = (size * rng.uniform(0.06, 0.16), size * rng.uniform(0.05, 0.12))
    height = size * rng.uniform(0.005, 0.04)
    faces, footprint = _box_faces(base, half, height, rng.uniform(0, math.pi), squash, lift, rgb, light, ambient)
    return SceneObject("flat", base, height, faces, footprint=footprint)


BUILDERS = {"box": _box, "cylinder": _cylinder, "tool": _tool, "cable": _cable, "blob": _blob, "flat": _flat}


def dome_shading(shape: tuple[int, int], centre: np.ndarray, radius: float, light: np.ndarray,
                  ambient: float) -> np.ndarray:
    """Lambertian shading by the normals of a sphere of ``radius`` centred at ``centre`` (crop coordinates)."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    u, v = (xs - centre[0]) / radius, (ys - centre[1]) / radius
    nz = np.sqrt(np.clip(1 - u * u - v * v, 0.05, 1))
    dot = np.clip(u * light[0] + v * light[1] + nz * light[2], 0, 1) / np.sqrt(u * u + v * v + nz * nz)
    return (ambient + (1 - ambient) * dot).astype(np.float32)
