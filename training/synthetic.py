"""Procedural tabletop scenes with exact instance maps: the third training set, and a zero-shot test bed.

A scene is a table (wood, cloth, stone or plain, sometimes with a wall behind it) seen obliquely by an orthographic
camera at elevation φ, with 3..12 objects of six shapes standing or lying on it:

* ``box``: cuboids with three shaded faces; ``cylinder``: cans, jars and bottles (optional neck);
* ``tool``: thin tools lying flat (screwdriver: handle + metal shaft; wrench: bar with ring ends; pen);
* ``cable``: long thin curves of 1.5..5 px with a plug;
* ``blob``: irregular smooth shapes with dome shading (fruit, stones, plush);
* ``flat``: paper, books, cards and plates: thin, textured, low.

Objects get a base colour, often a texture (stripes, checks, dots, noise, print), Lambertian shading from one light
per scene, and a soft shadow away from that light. They are drawn far to near (by the image row of their base),
so nearer objects occlude farther ones and the label map records exactly the visible pixels of each object
(``uint16``, 0 = table/wall, k = k-th visible object, in drawing order). The RGB is blurred by ~0.6 px and gets
sensor noise; the labels stay exact. Optional depth (float32 metres) follows the camera model: table depth at the
pixel minus the surface height there over sin φ (face heights are per face, so it is approximate within an
object, but always nearer than the table behind it).

``SceneGenerator(seed=...).scene(i)`` is a pure function of (seed, i, settings), so datasets can index it and
shard it freely. ``shapes=`` / ``exclude=`` choose the shapes, e.g. train without ``cable`` and ``blob`` and
test on them alone (zero-shot).
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from training import randomize
from training.shapes import BUILDERS, ONE, SHIFT, SceneObject, clip_box, dome_shading, fixed_point, random_color

__all__ = ["SHAPES", "Scene", "SceneGenerator", "scene_size", "select_shapes"]

SHAPES: tuple[str, ...] = ("box", "cylinder", "tool", "cable", "blob", "flat")
_METRES_PER_WIDTH = 0.8  # the frame spans this much table at its centre
_TABLE_DEPTH = 0.7  # metres to the table point at the frame centre


def scene_size(text: str) -> tuple[int, int]:
    """An argparse type for a scene size "HxW" (e.g. 240x320), at least 16x16."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HxW, e.g. 240x320") from None
    if h < 16 or w < 16:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 16x16")
    return h, w


def select_shapes(shapes: Sequence[str] | None = None, exclude: Sequence[str] = ()) -> tuple[str, ...]:
    """The shapes to draw: ``shapes`` (default all) minus ``exclude``; ValueError on unknown or none left."""
    chosen = tuple(SHAPES if shapes is None else shapes)
    unknown = sorted((set(chosen) | set(exclude)) - set(SHAPES))
    if unknown:
        raise ValueError(f"unknown shapes {unknown}; known: {', '.join(SHAPES)}")
    left = tuple(s for s in SHAPES if s in chosen and s not in exclude)
    if not left:
        raise ValueError(f"no shape left from {list(chosen)} after excluding {list(exclude)}")
    return left


@dataclass
class Scene:
    rgb: np.ndarray  # uint8 H×W×3
    labels: np.ndarray  # uint16 H×W, 0 = background (table, wall), k = instance k
    shapes: list[str]  # shape of instance k at index k-1
    depth: np.ndarray | None = None  # float32 H×W metres, when asked for


class SceneGenerator:
    """Seeded tabletop scenes of ``height``×``width`` of the chosen shapes."""

    def __init__(self, height: int = 240, width: int = 320, shapes: Sequence[str] | None = None,
                 exclude: Sequence[str] = (), min_objects: int = 3, max_objects: int = 12, depth: bool = False,
                 noise: float = 2.0, seed: int = 0, randomize: bool = False) -> None:
        if height < 16 or width < 16:
            raise ValueError(f"scenes need at least 16×16 pixels, got {width}×{height}")
        if not 1 <= min_objects <= max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.height, self.width = int(height), int(width)
        self.shapes = select_shapes(shapes, exclude)
        self.min_objects, self.max_objects = int(min_objects), int(max_objects)
        self.depth = bool(depth)
        self.noise = float(noise)
        self.seed = int(seed)
        self.randomize = bool(randomize)
        rng = np.random.default_rng([self.seed, 0x7E57])
        side = max(self.height, self.width)
        # Pools built once: per-scene texture synthesis would cost more than the rest of the scene.
        self._textures = [_texture(kind, side, rng) for kind in ("stripes", "checks", "dots", "noise", "print") * 3]
        self._tables = [_table_texture(kind, self.height, self.width, rng) for kind in ("wood", "cloth", "stone", "plain") * 2]
        yy, xx = np.mgrid[0:self.height, 0:self.width].astype(np.float32)
        self._grid = (xx, yy)

    def __iter__(self) -> Iterator[Scene]:
        i = 0
        while True:
            yield self.scene(i)
            i += 1

    def scene(self, index: int) -> Scene:
        """Scene number ``index`` (any int ≥ 0): the same index, seed and settings give the same scene."""
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index}")
        rng = np.random.default_rng([self.seed, int(index)])
        return self._render(rng)

    # ------------------------------------------------------------------------------------------------ rendering

    def _render(self, rng: np.random.Generator) -> Scene:
        h, w = self.height, self.width
        elevation = math.radians(rng.uniform(35, 80))
        squash, lift = math.sin(elevation), math.cos(elevation)
        azimuth, light_el = rng.uniform(0, 2 * math.pi), math.radians(rng.uniform(30, 70))
        light = np.array([math.cos(light_el) * math.cos(azimuth), math.cos(light_el) * math.sin(azimuth),
                          math.sin(light_el)])
        ambient = rng.uniform(0.35, 0.55)
        wall = int(h * rng.uniform(0.08, 0.3)) if rng.random() < 0.4 else 0

        rgb = self._background(rng, wall)
        labels = np.zeros((h, w), np.uint16)
        metres_px = _METRES_PER_WIDTH / w
        depth = table_rows = None
        if self.depth:
            # Orthographic camera: table depth falls by cot φ per pixel down the image.
            table_rows = (_TABLE_DEPTH - (np.arange(h) - h / 2) * metres_px * lift / squash).astype(np.float32)
            depth = np.repeat(table_rows[:, None], w, axis=1)
            if wall:
                depth[:wall] = table_rows[wall]  # a vertical wall where the table ends

        n = int(rng.integers(self.min_objects, self.max_objects + 1))
        scale = min(h, w)
        if self.randomize:
            if rng.random() < 0.5:
                randomize.clutter(rng, rgb, random_color, density=rng.uniform(0.3, 4.0))
            zoom = randomize.zoom(rng)
            n = min(int(round(n / min(zoom, 1.0) ** 1.5)), 30)  # small objects come in larger numbers
            scale = scale * zoom
            bases = randomize.cluster_bases(rng, n, h, w, wall, spread=0.12 * scale)
        else:
            bases = np.stack([rng.uniform(0.03, 0.97, n) * w, wall + rng.uniform(0.1, 1.0, n) * (h - wall)], 1)
            bases = bases[np.argsort(bases[:, 1])]  # far (high in the image) first
        shapes: list[str] = []
        previous: np.ndarray | None = None
        for k, base in enumerate(bases, 1):
            shape = self.shapes[int(rng.integers(len(self.shapes)))]
            perspective = 0.7 + 0.5 * base[1] / h
            obj = BUILDERS[shape](rng, base, scale * perspective, squash, lift, light, ambient)
            if self.randomize:
                if previous is not None and rng.random() < 0.25:
                    randomize.match_color(obj.faces, obj.strokes, previous)
                colors = [f[1] for f in obj.faces] + [st[2] for st in obj.strokes]
                previous = np.mean(colors, axis=0) if colors else previous
            if rng.random() < 0.6:
                obj.texture = int(rng.integers(len(self._textures)))
                obj.tint = random_color(rng) if rng.random() < 0.4 else None
            self._shadow(rgb, obj, light, light_el, squash, rng)
            self._draw(rgb, labels, depth, table_rows, obj, k, metres_px / squash, rng)
            shapes.append(shape)

        xx, yy = self._grid
        gx, gy = rng.uniform(-0.25, 0.25, 2)
        light_field = 1.0 + gx * (xx / w - 0.5) + gy * (yy / h - 0.5)  # uneven illumination across the frame
        rgb *= light_field[..., None] * rng.uniform(0.8, 1.15)
        if self.randomize and depth is None and rng.random() < 0.5:
            rgb, labels = randomize.camera_crop(rng, rgb, labels)

        # Compact ids to the visible instances, in drawing order.
        visible = np.flatnonzero(np.bincount(labels.ravel(), minlength=len(shapes) + 1)[1:]) + 1
        lut = np.zeros(len(shapes) + 1, np.uint16)
        lut[visible] = np.arange(1, len(visible) + 1, dtype=np.uint16)
        labels = lut[labels]
        shapes = [shapes[i - 1] for i in visible]

        if self.randomize:
            return Scene(randomize.photometric(rng, rgb), labels, shapes, depth)
        rgb = cv2.GaussianBlur(rgb, (0, 0), 0.6)
        if self.noise > 0:
            rgb += rng.standard_normal(rgb.shape, dtype=np.float32) * np.float32(self.noise / 255.0)
        out = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Scene(out, labels, shapes, depth)

    def _background(self, rng: np.random.Generator, wall: int) -> np.ndarray:
        if self.randomize and rng.random() < 0.6:
            rgb = randomize.background(rng, self.height, self.width, self._textures, random_color)
            if wall:
                rgb[:wall] *= rng.uniform(0.6, 1.2)
            return rgb
        table = self._tables[int(rng.integers(len(self._tables)))]
        if rng.random() < 0.5:
            table = table[:, ::-1]
        c1 = random_color(rng, saturation=(0.0, 0.5))
        # Mostly a darker shade of the same colour: real tables are rarely as salient as the objects on them.
        c2 = c1 * rng.uniform(0.55, 0.9) if rng.random() < 0.8 else random_color(rng, saturation=(0.0, 0.5))
        rgb = c1[None, None] * (1 - table[..., None]) + c2[None, None] * table[..., None]
        if wall:
            shade = np.linspace(0.75, 1.0, wall, dtype=np.float32)[:, None, None]
            rgb[:wall] = random_color(rng, saturation=(0.0, 0.3), value=(0.5, 0.95))[None, None] * shade
        return rgb.astype(np.float32)

    def _shadow(self, rgb: np.ndarray, obj: SceneObject, light: np.ndarray, light_el: float, squash: float,
                rng: np.random.Generator) -> None:
        # The shadow of the top lands obj.height / tan(elevation) away from the light, on the ground.
        reach = obj.height / max(math.tan(light_el), 0.2)
        offset = -np.array([light[0], light[1] * squash]) / max(np.hypot(light[0], light[1]), 1e-6) * reach
        soft = 1.0 + 0.08 * obj.height
        if obj.footprint is not None:  # a solid: the footprint swept along the shadow
            hull = cv2.convexHull(np.concatenate([obj.footprint, obj.footprint + offset]).astype(np.float32))[:, 0]
            outline = hull
        else:  # a thin object lying flat: its own strokes, displaced
            outline = np.concatenate([s[0] for s in obj.strokes] + [r[0][None] for r in obj.rings]) + offset
        pad = max([s[1] for s in obj.strokes] + [int(r[1]) + r[2] for r in obj.rings] + [0]) + int(3 * soft) + 2
        box = clip_box(outline, rgb.shape, pad)
        if box is None:
            return
        x0, y0, x1, y1 = box
        canvas = np.zeros((y1 - y0, x1 - x0), np.float32)
        origin = np.array([x0, y0], np.float64)
        if obj.footprint is not None:
            cv2.fillPoly(canvas, [fixed_point(outline - origin)], 1.0, cv2.LINE_8, SHIFT)
        else:
            for line, thickness, _, _ in obj.strokes:
                cv2.polylines(canvas, [fixed_point(line + offset - origin)], False, 1.0, thickness, cv2.LINE_8, SHIFT)
            for centre, radius, thickness, _, _ in obj.rings:
                c = tuple(int(v) for v in np.round((centre + offset - origin) * ONE))
                cv2.circle(canvas, c, int(round(radius * ONE)), 1.0, thickness, cv2.LINE_8, SHIFT)
        canvas = cv2.GaussianBlur(canvas, (0, 0), soft)
        rgb[y0:y1, x0:x1] *= (1.0 - rng.uniform(0.3, 0.6) * canvas)[..., None]

    def _draw(self, rgb: np.ndarray, labels: np.ndarray, depth: np.ndarray | None, table_rows: np.ndarray | None,
              obj: SceneObject, k: int, metres_per_height: float, rng: np.random.Generator) -> None:
        points = [f[0] for f in obj.faces] + [s[0] for s in obj.strokes] + [r[0][None] for r in obj.rings]
        pad = max([s[1] for s in obj.strokes] + [int(r[1]) + r[2] for r in obj.rings] + [1]) + 2
        box = clip_box(np.concatenate(points), rgb.shape, pad)
        if box is None:
            return
        x0, y0, x1, y1 = box
        shape = (y1 - y0, x1 - x0)
        color = np.zeros((*shape, 3), np.float32)
        mask = np.zeros(shape, np.uint8)
        height = np.zeros(shape, np.float32) if depth is not None else None
        origin = np.array([x0, y0], np.float64)
        # Faces are listed back to front; each one paints over what it hides of the earlier ones.
        for polygon, face_rgb, z in obj.faces:
            pts = [fixed_point(polygon - origin)]
            cv2.fillPoly(color, pts, face_rgb.tolist(), cv2.LINE_8, SHIFT)
            cv2.fillPoly(mask, pts, 1, cv2.LINE_8, SHIFT)
            if height is not None:
                cv2.fillPoly(height, pts, float(z), cv2.LINE_8, SHIFT)
        for line, thickness, stroke_rgb, z in obj.strokes:
            pts = [fixed_point(line - origin)]
            cv2.polylines(color, pts, False, stroke_rgb.tolist(), thickness, cv2.LINE_8, SHIFT)
            cv2.polylines(mask, pts, False, 1, thickness, cv2.LINE_8, SHIFT)
            if height is not None:
                cv2.polylines(height, pts, False, float(z), thickness, cv2.LINE_8, SHIFT)
        for centre, radius, thickness, ring_rgb, z in obj.rings:
            c = tuple(int(v) for v in np.round((centre - origin) * ONE))
            r = int(round(radius * ONE))
            cv2.circle(color, c, r, ring_rgb.tolist(), thickness, cv2.LINE_8, SHIFT)
            cv2.circle(mask, c, r, 1, thickness, cv2.LINE_8, SHIFT)
            if height is not None:
                cv2.circle(height, c, r, float(z), thickness, cv2.LINE_8, SHIFT)
        if obj.dome is not None:
            color *= dome_shading(mask.shape, obj.base - origin - (0, obj.height * 0.5), *obj.dome)[..., None]
        if obj.texture >= 0:
            tex = self._textures[obj.texture]
            ty, tx = (int(rng.integers(0, tex.shape[i] - shape[i] + 1)) for i in (0, 1))
            t = tex[ty:ty + shape[0], tx:tx + shape[1], None]
            second = obj.tint[None, None] * color.max(axis=2, keepdims=True) if obj.tint is not None else color * 0.55
            color = color * (1 - t) + second * t
        inside = mask.astype(bool)
        rgb[y0:y1, x0:x1][inside] = color[inside]
        labels[y0:y1, x0:x1][inside] = k
        if depth is not None and height is not None:
            # Depth of a surface point z above the ground: the table's depth at its pixel minus z / sin φ.
            table = np.broadcast_to(table_rows[y0:y1, None], shape)[inside]
            depth[y0:y1, x0:x1][inside] = table - height[inside] * np.float32(metres_per_height)


# --------------------------------------------------------------------------------------------------- textures


def _value_noise(shape: tuple[int, int], cell: float, rng: np.random.Generator) -> np.ndarray:
    small = rng.random((max(2, int(shape[0] / cell) + 2), max(2, int(shape[1] / cell) + 2))).astype(np.float32)
    return cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def _texture(kind: str, side: int, rng: np.random.Generator) -> np.ndarray:
    """side×side float32 mixing weights in [0, 1] between an object's colour and its second colour."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    period = rng.uniform(4, 14)
    if kind == "stripes":
        a = rng.uniform(0, math.pi)
        t = (np.sin(2 * math.pi * (xx * math.cos(a) + yy * math.sin(a)) / period) > rng.uniform(-0.5, 0.5))
    elif kind == "checks":
        t = ((xx // period + yy // period) % 2) > 0
    elif kind == "dots":
        t = ((xx % period - period / 2) ** 2 + (yy % period - period / 2) ** 2) < (period * rng.uniform(0.15, 0.35)) ** 2
    elif kind == "noise":
        return np.clip(_value_noise((side, side), period, rng) * 1.2 - 0.1, 0, 1)
    else:  # print: rows of dashes, like text
        rows = (yy % period) < max(1.0, period * 0.35)
        dashes = _value_noise((side, side), period * 0.7, rng) > 0.45
        t = rows & dashes
    return t.astype(np.float32)


def _table_texture(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "wood":
        warp = _value_noise((h, w), 24, rng) * 30
        t = 0.5 + 0.5 * np.sin(2 * math.pi * (yy + warp) / rng.uniform(6, 16))
        t = 0.7 * t + 0.3 * _value_noise((h, w), 3, rng)
    elif kind == "cloth":
        p = rng.uniform(3, 8)
        t = 0.5 + 0.25 * np.sin(2 * math.pi * xx / p) + 0.25 * np.sin(2 * math.pi * yy / p)
    elif kind == "stone":
        t = 0.6 * _value_noise((h, w), 10, rng) + 0.4 * _value_noise((h, w), 2, rng)
    else:
        t = 0.3 * _value_noise((h, w), 40, rng)
    return np.clip(t, 0, 1).astype(np.float32)
