"""Seeded synthetic gen2seg colour maps with known instance maps, for tests and benchmarks (numpy/OpenCV only).

A scene is a ground-truth instance map (uint16, 0 = background, 1..K) and the float32 H×W×3 colouring a trained
gen2seg model would produce for it (docs/design.md, "Models and their output"): one roughly uniform colour per instance,
background near black, per-pixel noise and soft borders.

Choices and why:

* Instances are painted into free space only, each kept as its largest connected piece (4-connected for blobs,
  after a 3×3 opening that removes 1..2 px bridges and slivers; 8-connected for 1 px lines), and blobs that lose
  more than half of their drawn area are redrawn. Objects therefore touch (clutter) but are never cut in two by an
  occluder: a model would give both parts one colour, which no grouping by colour and adjacency can join again.
* Thin structures are polylines exactly 1, 2 or 3 px wide, drawn first (instances 1..n_thin).
* Instance colours are uniform in RGB, at least ``MIN_BRIGHTNESS`` (60) from black, and instances within
  ``NEIGHBOUR_RADIUS`` (8 px) of each other differ by at least ``MIN_NEIGHBOUR_DISTANCE`` (30). The loss repels
  every instance mean from the other means *and* from the background's (0, 0, 0) with a Cauchy kernel
  300 / (1 + d²) (docs/design.md, "Instance-colouring loss"), which falls below 0.33 at d = 30 and below 0.1 at d = 55: a trained model has no
  pressure to push colours further apart than that, and closer colours are what it gets wrong. 8 px covers two
  soft borders plus a gap; instances that close with the same colour cannot be told from one instance. Far-apart
  instances may share colours. ``similar_pairs`` forces that many touching pairs of blobs to 30..35 apart, the
  hardest case a trained model still separates (not cables: a 1 px cable 30 apart in colour from the object it
  lies along is, once blurred, that object's darker rim).
* Soft borders: each pixel is ``(1 - border_halo) * own colour + border_halo * GaussianBlur(colours, blur_sigma)``.
  A pure Gaussian (halo 1) at sigma 1.5 leaves a 1 px line with 27 % of its colour and its side pixels with 21 %:
  the line no longer exists in the map, so no labeller could recover it, and a model that does paint cables does
  not produce that. With the default halo 0.6 a 1 px line keeps 56 % and its sides 13 %, while wide objects still
  get colour ramps about 2·sigma wide on both sides of every border.
* ``drift_sigma`` (off by default) gives each blob a linear colour gradient across it, each channel's slope drawn
  with that standard deviation in colour units per pixel: a trained model's colour wanders over a large object
  instead of holding one value, so the flat regions of one instance have means far apart. Lines keep one colour.
* Noise is additive i.i.d. Gaussian per channel, added after the blur; the map is clipped to 0..255, the range
  of the min-max normalised model output (so the background is half-normal noise above black).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np
from scipy import ndimage

MIN_BRIGHTNESS = 60.0
MIN_NEIGHBOUR_DISTANCE = 30.0
NEIGHBOUR_RADIUS = 8  # px: instances this close count as neighbours for MIN_NEIGHBOUR_DISTANCE
SIMILAR_DISTANCE = (30.0, 35.0)
MIN_BLOB_AREA = 60
MIN_LINE_AREA = 40
COVERAGE = 0.55  # expected fraction of the image covered by instances


@dataclass(frozen=True)
class SceneSpec:
    n_instances: int = 10
    size: tuple[int, int] = (480, 640)  # (H, W)
    noise_sigma: float = 3.0  # per channel, 0..255 scale
    blur_sigma: float = 1.2  # px, soft-border width
    border_halo: float = 0.6  # share of each pixel's colour taken from the blurred map (1 = pure Gaussian blur)
    thin_fraction: float = 0.1  # share of instances drawn as 1..3 px lines/cables
    similar_pairs: int = 0  # touching pairs forced to SIMILAR_DISTANCE
    drift_sigma: float = 0.0  # per-blob linear colour gradient: std of each channel's slope, colour units per px
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.n_instances <= 200:
            raise ValueError(f"n_instances must be in [1, 200], got {self.n_instances}")
        if not 0.0 <= self.thin_fraction <= 1.0:
            raise ValueError(f"thin_fraction must be in [0, 1], got {self.thin_fraction}")
        if not 0.0 <= self.border_halo <= 1.0:
            raise ValueError(f"border_halo must be in [0, 1], got {self.border_halo}")


class Scene(NamedTuple):
    gt: np.ndarray  # uint16 H×W, 0 = background, instances 1..K
    colors: np.ndarray  # float32 H×W×3 in 0..255
    palette: np.ndarray  # float32 (K+1)×3 noise-free instance colours, row 0 = background
    n_thin: int  # instances 1..n_thin are the thin structures


def make_scene(spec: SceneSpec) -> Scene:
    rng = np.random.default_rng(spec.seed)
    n_thin = int(round(spec.thin_fraction * spec.n_instances))
    gt = make_instance_map(spec.n_instances, spec.size, n_thin, rng)
    palette = make_palette(gt, spec.similar_pairs, n_thin, rng)
    colors = render_colors(gt, palette, spec.noise_sigma, spec.blur_sigma, spec.border_halo, rng,
                           drift_sigma=spec.drift_sigma, n_thin=n_thin)
    return Scene(gt, colors, palette, n_thin)


def _blob(rng: np.random.Generator, h: int, w: int, area: float) -> np.ndarray:
    """A filled ellipse, rotated rectangle or rotated polygon of about ``area`` px, at a random place."""
    mask = np.zeros((h, w), np.uint8)
    cx, cy = float(rng.uniform(0, w)), float(rng.uniform(0, h))
    angle = float(rng.uniform(0, 180))
    aspect = float(rng.uniform(0.35, 1.0))
    kind = rng.integers(3)
    if kind == 0:
        a = np.sqrt(area / (np.pi * aspect))
        cv2.ellipse(mask, ((cx, cy), (2 * a, 2 * a * aspect), angle), 1, -1)
    elif kind == 1:
        a = np.sqrt(area / aspect)
        box = cv2.boxPoints(((cx, cy), (a, a * aspect), angle))
        cv2.fillPoly(mask, [np.round(box).astype(np.int32)], 1)
    else:
        k = int(rng.integers(3, 8))
        theta = np.sort(rng.uniform(0, 2 * np.pi, k)) + np.deg2rad(angle)
        radius = np.sqrt(area / np.pi) * rng.uniform(0.7, 1.3, k)
        pts = np.stack([cx + radius * np.cos(theta), cy + aspect * radius * np.sin(theta)], 1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask


def _cable(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A straight line or polyline 'cable', 1, 2 or 3 px wide (a 1 px line dilated by a square of that width;
    OpenCV's ``thickness`` draws round brushes wider than asked)."""
    mask = np.zeros((h, w), np.uint8)
    n = int(rng.integers(2, 5))
    start = rng.uniform((0, 0), (w, h))
    steps = rng.normal(0, 1, (n - 1, 2)) * rng.uniform(25, 90)
    pts = np.round(np.vstack([start, start + np.cumsum(steps, 0)])).astype(np.int32)
    cv2.polylines(mask, [pts], False, 1, thickness=1)
    width = int(rng.integers(1, 4))
    return cv2.dilate(mask, np.ones((width, width), np.uint8)) if width > 1 else mask


def _largest_piece(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=connectivity)
    if n <= 1:
        return mask, 0
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return (lab == best).astype(np.uint8), int(stats[best, cv2.CC_STAT_AREA])


def make_instance_map(n_instances: int, size: tuple[int, int], n_thin: int, rng: np.random.Generator) -> np.ndarray:
    """Exactly ``n_instances`` connected instances placed into free space (uint16, 0 = background); the first
    ``n_thin`` are thin structures."""
    h, w = size
    gt = np.zeros((h, w), np.uint16)
    mean_area = COVERAGE * h * w / n_instances
    placed, attempts = 0, 0
    while placed < n_instances:
        attempts += 1
        if attempts > 200 * n_instances:
            raise RuntimeError(f"could not place {n_instances} instances in {size}")
        thin = placed < n_thin
        shape = _cable(rng, h, w) if thin else _blob(rng, h, w, mean_area * np.exp(rng.uniform(-0.7, 0.7)))
        x, y, bw, bh = cv2.boundingRect(shape)
        if bw == 0:
            continue
        box = np.s_[y:y + bh, x:x + bw]
        drawn = int(shape[box].sum())
        visible = shape[box] & (gt[box] == 0)
        if not thin:  # no 1..2 px bridges or slivers where a blob squeezes between others
            visible = cv2.morphologyEx(visible, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        piece, area = _largest_piece(visible, 8 if thin else 4)
        if area < (MIN_LINE_AREA if thin else MIN_BLOB_AREA) or area < (0.6 if thin else 0.5) * drawn:
            continue
        placed += 1
        gt[box][piece.astype(bool)] = placed
    return gt


def neighbour_pairs(gt: np.ndarray, radius: int) -> np.ndarray:
    """Unique (i, j), i < j, of instances whose pixels come within ``radius`` px (chessboard) of each other."""
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    found = []
    for k, box in enumerate(ndimage.find_objects(gt), start=1):
        if box is None:
            continue
        ys, xs = (slice(max(b.start - radius, 0), b.stop + radius) for b in box)
        crop = gt[ys, xs]
        near = np.unique(crop[cv2.dilate((crop == k).view(np.uint8), kernel) > 0])
        found += [(k, int(j)) for j in near if j > k]
    return np.array(sorted(found), np.int64).reshape(-1, 2)


def make_palette(gt: np.ndarray, similar_pairs: int, n_thin: int, rng: np.random.Generator) -> np.ndarray:
    """Random instance colours obeying MIN_BRIGHTNESS and MIN_NEIGHBOUR_DISTANCE; row 0 is black. Similar pairs
    are drawn among touching objects other than thin structures (a 1 px cable next to an object 30 apart in colour
    is, after blurring, indistinguishable from that object's darker rim)."""
    k = int(gt.max())
    near = neighbour_pairs(gt, NEIGHBOUR_RADIUS)
    nbrs: list[set[int]] = [set() for _ in range(k + 1)]
    for i, j in near:
        nbrs[i].add(int(j))
        nbrs[j].add(int(i))
    touching = neighbour_pairs(gt, 1)
    touching = touching[touching.min(1) > n_thin]
    partner: dict[int, int] = {}
    for idx in rng.permutation(len(touching)):
        i, j = (int(v) for v in touching[idx])
        if len(partner) >= 2 * similar_pairs:
            break
        if i not in partner and j not in partner:
            partner[i], partner[j] = j, i
    palette = np.full((k + 1, 3), np.nan, np.float32)
    palette[0] = 0.0
    for i in rng.permutation(np.arange(1, k + 1)):
        mate = partner.get(int(i))
        for _ in range(10000):
            if mate is not None and not np.isnan(palette[mate, 0]):
                d = rng.normal(size=3)
                c = palette[mate] + d / np.linalg.norm(d) * rng.uniform(*SIMILAR_DISTANCE)
            else:
                c = rng.uniform(0, 255, 3)
            if np.any(c < 0) or np.any(c > 255) or np.linalg.norm(c) < MIN_BRIGHTNESS:
                continue
            done = [j for j in nbrs[i] if not np.isnan(palette[j, 0])]
            if not done or np.min(np.linalg.norm(palette[done] - c, axis=1)) >= MIN_NEIGHBOUR_DISTANCE:
                palette[i] = c
                break
        else:
            raise RuntimeError(f"no colour found for instance {i}")
    return palette


def render_colors(gt: np.ndarray, palette: np.ndarray, noise_sigma: float, blur_sigma: float,
                  border_halo: float, rng: np.random.Generator, drift_sigma: float = 0.0, n_thin: int = 0) -> np.ndarray:
    ideal = palette[gt]
    if drift_sigma > 0:  # blobs only (instances above n_thin), each sloping about its centroid
        yy, xx = np.mgrid[0:gt.shape[0], 0:gt.shape[1]].astype(np.float32)
        for k in range(n_thin + 1, len(palette)):
            m = gt == k
            if m.any():
                slope = rng.normal(0.0, drift_sigma, (2, 3)).astype(np.float32)
                ideal[m] += (yy[m] - yy[m].mean())[:, None] * slope[0] + (xx[m] - xx[m].mean())[:, None] * slope[1]
    if blur_sigma > 0 and border_halo > 0:
        ideal = (1 - border_halo) * ideal + border_halo * cv2.GaussianBlur(ideal, (0, 0), blur_sigma)
    noisy = ideal + rng.normal(0.0, noise_sigma, ideal.shape).astype(np.float32)
    return np.clip(noisy, 0, 255).astype(np.float32)
