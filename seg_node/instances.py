"""Discrete instances ("segment everything") from a gen2seg instance colouring, with numpy, OpenCV and scipy only.

gen2seg outputs a float32 H×W×3 colouring in 0..255: every instance a roughly uniform, arbitrary colour, background
near black (shared/reference/gen2seg.md §1, §4.1). The official code stops there. ``label_instances`` turns it into a
uint16 label map and per-instance records:

1. Seeds: on a grid ``downsample`` times coarser (block means, which also average the noise down), the 4-connected
   regions of pixels whose colour gradient is below ``edge_threshold``; near-black ones are background. OpenCV's
   watershed grows them over the remaining grid pixels, and regions within 4 cells of each other whose mean colours
   differ by less than ``merge_distance`` are merged (noise splits instances into several flat regions).
2. At full resolution, each pixel of a grid cell that borders another region, or is not flat, takes whichever of
   its cell's label and the highest and lowest labels around that cell has the nearest mean colour; borders thus
   land in the middle of the colour ramp between two instances.
3. Pixels that no region around them explains, neither by colour nor as a blend of two of them, are thin structures
   (cables, 1..3 px lines) with no flat core on the grid: their centre lines are grouped by colour into new regions,
   which then compete with their surroundings for the pixels next to them (``thin_structures``).
4. Regions under ``min_area`` pixels become background; the rest are numbered 1..K by area, largest first (ties:
   the region found first, seeds in raster order of the grid before thin structures).

A 640×480 map takes about 15-30 ms on one core of the development machine (10 to 200 instances), a quarter of it
in the thin-structure pass; see bench/bench_instances.py.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple

import cv2
import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["Instance", "InstanceLabels", "InstanceParams", "label_instances"]

_K3 = np.ones((3, 3), np.uint8)
_THIN_ANGLE = 0.15  # radians: thin-structure pixels and pieces whose colour directions differ less are one structure


@dataclass(frozen=True)
class InstanceParams:
    """Tunables of ``label_instances``; colour values are on the model's 0..255 scale."""

    background_threshold: float = 30.0  # a flat region whose mean colour is closer than this to black is background
    edge_threshold: float = 6.0  # colour gradient (units per coarse-grid pixel) above which a pixel cannot seed
    downsample: int = 2  # coarse-grid factor for seeds and merging (1 = full resolution; borders are always full-res)
    min_seed_area: int = 4  # flat regions smaller than this (coarse-grid pixels) are treated as edges, not seeds
    merge_distance: float = 15.0  # regions within 4 grid cells whose mean colours are closer than this become one
    residual_distance: float = 20.0  # colour farther than this from all nearby regions and blends is unexplained
    thin_structures: bool = True  # find 1..3 px structures no flat region explains (a quarter to half of the time)
    min_area: int = 30  # instances smaller than this (full-resolution pixels) are dropped to background

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            ok = {"bool": isinstance(value, bool),
                  "int": isinstance(value, int) and not isinstance(value, bool),
                  "float": isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)}
            if not ok[f.type]:
                raise ValueError(f"{f.name} must be {f.type}, got {value!r}")
        _check_range("background_threshold", self.background_threshold, 0.0, 441.7)
        _check_range("edge_threshold", self.edge_threshold, 1e-3, 441.7)
        _check_range("downsample", self.downsample, 1, 8)
        _check_range("min_seed_area", self.min_seed_area, 1, None)
        _check_range("merge_distance", self.merge_distance, 0.0, 441.7)
        _check_range("residual_distance", self.residual_distance, 1e-3, 441.7)
        _check_range("min_area", self.min_area, 1, None)


def _check_range(name: str, value: float, lo: float, hi: float | None) -> None:
    if value < lo or (hi is not None and value > hi):
        allowed = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {allowed}, got {value}")


@dataclass
class Instance:
    """One instance of the label map.

    ``score`` is a simplified silhouette coefficient of the instance's colour cluster, in [0, 1):
    ``1 - a / sqrt(a² + b²)``, where ``a`` is the RMS distance of its interior colours to its mean colour (coarse-grid
    block means of its flat region, or the centre-line pixels of a thin structure) and ``b`` the distance from its
    mean to the nearest mean among the regions it touches and the background. It equals the silhouette
    ``(b' - a) / b'`` with ``b'`` the RMS distance of those colours to that nearest other mean: high when the
    instance is uniform and far in colour from everything next to it, near 0 when a neighbour's colour is within
    the instance's own noise (a likely wrong split or merge).
    """

    id: int  # 1-based, equal to its value in the label map
    area: int  # pixels
    bbox: tuple[int, int, int, int]  # x, y, w, h
    score: float
    mean_color: tuple[float, float, float]  # mean colour of its interior (flat-region or centre-line) pixels


class InstanceLabels(NamedTuple):
    labels: np.ndarray  # uint16 H×W, 0 = background, i = instances[i - 1]
    instances: list[Instance]


def as_color_map(colors: np.ndarray, check_finite: bool = True) -> np.ndarray:
    """Validated float32 contiguous H×W×3 view/copy of a colour map (uint8 is converted). ``check_finite=False``
    leaves the NaN/Inf check to a caller that computes something from every pixel anyway."""
    if not isinstance(colors, np.ndarray):
        raise ValueError(f"colors must be a numpy array, got {type(colors).__name__}")
    if colors.ndim != 3 or colors.shape[2] != 3 or colors.shape[0] == 0 or colors.shape[1] == 0:
        raise ValueError(f"colors must have shape H×W×3 with H, W >= 1, got {colors.shape}")
    if colors.dtype != np.uint8 and not np.issubdtype(colors.dtype, np.floating):
        raise ValueError(f"colors must be float (0..255) or uint8, got dtype {colors.dtype}")
    out = np.ascontiguousarray(colors, dtype=np.float32)
    if check_finite and colors.dtype != np.uint8 and not np.isfinite(out).all():
        raise ValueError("colors contains NaN or Inf")
    return out


def label_instances(colors: np.ndarray, params: InstanceParams = InstanceParams()) -> InstanceLabels:
    """Label every instance of a gen2seg colour map (see the module docstring for the algorithm)."""
    img = as_color_map(colors, check_finite=False)
    h, w = img.shape[:2]
    f = params.downsample if min(h, w) >= 4 * params.downsample else 1
    padded, grid = _coarse_grid(img, f)
    if not np.isfinite(cv2.sumElems(grid)).all():  # a NaN or Inf anywhere reaches its block mean and the sum
        raise ValueError("colors contains NaN or Inf")
    part, edge, stats = _seed_partition(grid, f, params)
    # Pixel noise would otherwise pass for unexplained colour: never test closer than 2.5× its expected norm.
    residual = max(params.residual_distance, 2.5 * np.sqrt(3.0) * _pixel_noise(stats, f))
    part, stats, pairs = _merge_similar(part, stats, params.merge_distance)
    _check_label_count(len(stats.n))
    labels, unexplained = _full_resolution_labels(padded, part, edge, _means(stats), f, (h, w), residual)
    lut = np.arange(len(stats.n))
    if params.thin_structures and len(unexplained):
        labels, stats, pairs, lut = _thin_structures(img, labels, part, unexplained, stats, pairs, f, residual, params)
    return _finish(labels, lut, stats, pairs, params.min_area)


def _check_label_count(n: int) -> None:
    if n > 65536:
        raise ValueError(f"{n - 1} regions do not fit a uint16 label map; raise min_seed_area or downsample")


def _coarse_grid(img: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
    """The colour map edge-padded to a multiple of f, and its average over f×f blocks."""
    if f == 1:
        return img, img
    h, w = img.shape[:2]
    hp, wp = -(-h // f) * f, -(-w // f) * f
    if (hp, wp) != (h, w):
        img = cv2.copyMakeBorder(img, 0, hp - h, 0, wp - w, cv2.BORDER_REPLICATE)
    # For f = 2, bilinear sampling at the block centres is exactly the 2×2 mean, and 3× faster than INTER_AREA.
    return img, cv2.resize(img, (wp // f, hp // f), interpolation=cv2.INTER_LINEAR if f == 2 else cv2.INTER_AREA)


class _Stats(NamedTuple):
    """Per-label accumulators: pixel count, colour sums, sums of squared colour norms."""

    n: np.ndarray
    s: np.ndarray
    q: np.ndarray

    @classmethod
    def of(cls, ids: np.ndarray, x: np.ndarray, m: int, weight: float = 1.0) -> "_Stats":
        x = x.reshape(-1, 3).astype(np.float64)
        return cls(np.bincount(ids, minlength=m)[:m] * weight,
                   np.stack([np.bincount(ids, x[:, k], m)[:m] for k in range(3)], 1) * weight,
                   np.bincount(ids, np.einsum("ij,ij->i", x, x), m)[:m] * weight)

    def regroup(self, lut: np.ndarray, m: int) -> "_Stats":
        """Statistics of the groups ``lut[label]`` (labels with a negative group are left out)."""
        ok = lut >= 0
        g = lut[ok]
        return _Stats(np.bincount(g, self.n[ok], m),
                      np.stack([np.bincount(g, self.s[ok, k], m) for k in range(3)], 1), np.bincount(g, self.q[ok], m))

    def append(self, other: "_Stats") -> "_Stats":
        return _Stats(*(np.concatenate([a, b]) for a, b in zip(self, other)))


def _means(stats: _Stats) -> np.ndarray:
    return stats.s / np.maximum(stats.n, 1e-9)[:, None]


def _spread(stats: _Stats) -> np.ndarray:
    """RMS distance of a region's pixels to its mean colour."""
    m = _means(stats)
    return np.sqrt(np.maximum(stats.q / np.maximum(stats.n, 1e-9) - np.einsum("ij,ij->i", m, m), 0.0))


def _pixel_noise(stats: _Stats, f: int) -> float:
    """Per-channel noise std of the map's pixels, from the colour spread inside the instance seeds (background is
    left out: the model's output is clipped at black). A grid value averages f² pixels, hence the factor f."""
    n, m = stats.n[1:], _means(stats)[1:]
    if n.sum() == 0:
        return 0.0
    var = (stats.q[1:] - n * np.einsum("ij,ij->i", m, m)).sum() / (3.0 * n.sum())
    return f * float(np.sqrt(max(var, 0.0)))


def _seed_partition(grid: np.ndarray, f: int, params: InstanceParams):
    """Flat regions of the coarse grid as seeds (near-black ones are background, label 0), grown over the rest of
    the grid. Returns the grid labels, the mask of non-seed ("edge") grid pixels and the seed statistics."""
    gx = cv2.Sobel(grid, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
    gy = cv2.Sobel(grid, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
    g2 = cv2.transform(cv2.add(cv2.multiply(gx, gx), cv2.multiply(gy, gy)), np.ones((1, 3), np.float32))
    n, seeds = cv2.connectedComponentsWithAlgorithm((g2 < params.edge_threshold**2).view(np.uint8), 4,
                                                    cv2.CV_32S, cv2.CCL_DEFAULT)
    raw = _Stats.of(seeds.ravel(), grid, n, f * f)
    mean = _means(raw)
    keep = raw.n >= min(params.min_seed_area, grid.shape[0] * grid.shape[1]) * f * f  # tiny images: one flat one
    keep[0] = False  # connected-component label 0 = edge pixels
    is_bg = keep & (np.einsum("ij,ij->i", mean, mean) < params.background_threshold**2)
    inst = np.flatnonzero(keep & ~is_bg)
    lut = np.full(n, -1, np.int64)
    lut[is_bg] = 0
    lut[inst] = np.arange(1, len(inst) + 1)
    # Grow the seeds over the edge pixels: OpenCV's watershed floods from the seeds in order of colour difference,
    # so regions meet where the colour changes most. It wants 8-bit colours and labels >= 1 (hence the + 1), uses
    # the outermost pixels as a -1 frame (hence the padding), and marks the pixels where regions meet with -1;
    # those take a neighbour's label (the full-resolution pass decides them anyway).
    markers = cv2.copyMakeBorder((lut + 1).astype(np.int32)[seeds], 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    edge = markers[1:-1, 1:-1] == 0
    if markers.any():
        cv2.watershed(cv2.copyMakeBorder(cv2.convertScaleAbs(grid), 1, 1, 1, 1, cv2.BORDER_REPLICATE), markers)
    part = (markers[1:-1, 1:-1] - 1).astype(np.float32)  # cv2 morphology has no int32; float32 is exact to 2**24
    cv2.copyTo(cv2.dilate(part, _K3), (part < 0).view(np.uint8), part)
    part[part < 0] = 0
    return part, edge, raw.regroup(lut, len(inst) + 1)


def _nearest(x: np.ndarray, cand: np.ndarray, means: np.ndarray) -> np.ndarray:
    d = np.stack([np.einsum("ij,ij->i", x - means[c], x - means[c]) for c in cand.T], 1)
    return cand[np.arange(len(x)), d.argmin(1)]


def _merge_groups(pairs: np.ndarray, means: np.ndarray, merge_distance: float, first: int = 1,
                  max_angle: float = 0.0) -> np.ndarray:
    """Old → new label table joining paired labels (both >= ``first``) whose mean colours are closer than
    ``merge_distance`` or, with ``max_angle``, point in nearly the same direction from the background's.
    New labels keep the order of each group's first label."""
    m = len(means)
    i, j = pairs[:, 0], pairs[:, 1]
    dist2 = sum((np.take(means[:, k], i) - np.take(means[:, k], j)) ** 2 for k in range(3))
    join = dist2 < merge_distance**2
    if max_angle:
        u = (means - means[0]) / np.maximum(np.linalg.norm(means - means[0], axis=1), 1e-6)[:, None]
        join |= sum((np.take(u[:, k], i) - np.take(u[:, k], j)) ** 2 for k in range(3)) < max_angle**2
    join &= pairs.min(1) >= first
    graph = coo_matrix((np.ones(int(join.sum())), (pairs[join, 0], pairs[join, 1])), shape=(m, m))
    # scipy numbers components in order of their lowest node, which is the order wanted here.
    return connected_components(graph, directed=False)[1]


def _merge_similar(part: np.ndarray, stats: _Stats, merge_distance: float):
    """Join regions of the grid that come within 4 cells of each other and whose mean colours are closer than
    ``merge_distance`` (never the background): noise splits an instance into several flat regions, and another
    instance can nearly cut one in two. Returns the relabelled grid, the merged statistics and the touching pairs."""
    touching = []
    for a, b in ((part[:, :-1], part[:, 1:]), (part[:-1], part[1:])):
        sel = a != b
        touching.append(np.stack([a[sel], b[sel]], 1))
    touching = np.concatenate(touching).astype(np.int64)
    # Labels within 4 cells: 5×5 windows on every other cell. A window sees only its highest and lowest label, so
    # pair each with the centre label too.
    sub = np.ascontiguousarray(part[::2, ::2])
    k5 = np.ones((5, 5), np.uint8)
    hi, lo = cv2.dilate(sub, k5), cv2.erode(sub, k5)
    sel = hi != lo
    a, b, c = lo[sel], hi[sel], sub[sel]
    near = np.stack([np.concatenate([a, a, c]), np.concatenate([b, c, b])], 1).astype(np.int64)
    lut = _merge_groups(np.vstack([touching, near]), _means(stats), merge_distance)
    pairs = lut[touching]
    return (np.take(lut.astype(np.float32), part.astype(np.int64)), stats.regroup(lut, int(lut.max()) + 1),
            pairs[pairs[:, 0] != pairs[:, 1]])


def _full_resolution_labels(padded: np.ndarray, part: np.ndarray, edge: np.ndarray, means: np.ndarray, f: int,
                            shape: tuple[int, int], tol: float):
    """uint16 labels at full resolution: the grid label inside regions and, in grid cells whose 3×3 neighbourhood
    holds two or more labels or that are not flat, whichever of the cell's label, the highest (A) and lowest (B)
    label in that neighbourhood and the background has the nearest mean colour.
    Also returns the flat indices of the pixels of those and of the ``edge`` cells that are farther than ``tol``
    from every blend of A and B (thin structures, or three regions meeting), for ``_thin_structures``.
    With d = A - B, the nearest blend is B + t d, t = clip((x - B)·d / |d|², 0, 1), at squared distance
    |x - B|² - t (2 (x - B)·d - t |d|²).
    Only those cells are computed, block by block on a compact copy of their pixels, which stays in cache where
    whole-image passes would not."""
    h, w = shape
    gh, gw = part.shape
    labels = part.astype(np.uint16)
    hi, lo = cv2.dilate(labels, _K3).ravel(), cv2.erode(labels, _K3).ravel()
    own = labels.ravel().copy()
    if f > 1:
        labels = cv2.resize(labels, (gw * f, gh * f), interpolation=cv2.INTER_NEAREST)
    cells = np.flatnonzero((hi != lo) | edge.ravel())
    ci, cj = np.divmod(cells, gw)
    # Planar (channel, cell, pixel-in-cell) copy: numpy runs per-channel arithmetic on it several times faster
    # than on interleaved colour triples.
    x = np.ascontiguousarray(padded.reshape(gh, f, gw, f, 3)[ci, :, cj].reshape(len(cells), f * f, 3).transpose(2, 0, 1))
    a, b, c = hi[cells], lo[cells], own[cells]
    table = np.ascontiguousarray(means.T, dtype=np.float32)  # 3 × labels
    sq = (table * table).sum(0)

    def dot(lab: np.ndarray) -> np.ndarray:
        return sum(x[k] * table[k, lab][:, None] for k in range(3))

    # Squared distances |x - m|² = |x|² - 2 x·m + |m|² for the candidate means; the background (label 0) is
    # always one, as a strip of it too narrow to seed has none of its own label nearby.
    xx = sum(x[k] * x[k] for k in range(3))
    xa, xb = dot(a), dot(b)
    d_a = xx - 2 * xa + sq[a][:, None]
    d_b = xx - 2 * xb + sq[b][:, None]
    d_c = xx - 2 * dot(c) + sq[c][:, None]
    d_0 = xx - 2 * sum(x[k] * table[k, 0] for k in range(3)) + sq[0]
    choice = np.where(d_a <= d_b, a[:, None], b[:, None])
    best = np.minimum(d_a, d_b)
    choice = np.where(d_c < best, c[:, None], choice)
    choice = np.where(d_0 < np.minimum(best, d_c), 0, choice)
    labels.reshape(gh, f, gw, f)[ci, :, cj] = choice.reshape(-1, f, f)
    ab = sum(table[k, a] * table[k, b] for k in range(3))
    along = xa - xb - (ab - sq[b])[:, None]  # (x - B)·(A - B)
    d2 = (sq[a] - 2 * ab + sq[b])[:, None]
    t = np.clip(along / np.maximum(d2, 1e-6), 0.0, 1.0)
    blend2 = d_b - t * (2 * along - t * d2)
    k, p = np.nonzero(blend2 > tol * tol)
    yy, xx = ci[k] * f + p // f, cj[k] * f + p % f
    inside = (yy < h) & (xx < w)
    return np.ascontiguousarray(labels[:h, :w]), np.sort(yy[inside] * w + xx[inside])


def _segment_distance2(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip(np.einsum("ij,ij->i", x - a, ab) / np.maximum(np.einsum("ij,ij->i", ab, ab), 1e-6), 0.0, 1.0)
    r = x - a - t[:, None] * ab
    return np.einsum("ij,ij->i", r, r)


def _unexplained2(x: np.ndarray, cand: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Squared distance from each colour to the nearest of its candidate regions' means and blends of two of them."""
    best = np.full(len(x), np.inf)
    k = cand.shape[1]
    for i in range(k):
        a = means[cand[:, i]]
        best = np.minimum(best, np.einsum("ij,ij->i", x - a, x - a))
        for j in range(i + 1, k):
            best = np.minimum(best, _segment_distance2(x, a, means[cand[:, j]]))
    return best


def _neighbour(idx: np.ndarray, h: int, w: int, dy: int, dx: int) -> np.ndarray:
    """Position in the sorted flat indices ``idx`` of each pixel's (dy, dx) neighbour, or -1 if it is not there."""
    row, col = np.divmod(idx, w)
    target = idx + dy * w + dx
    k = np.minimum(np.searchsorted(idx, target), len(idx) - 1)
    ok = (idx[k] == target) & (row + dy >= 0) & (row + dy < h) & (col + dx >= 0) & (col + dx < w)
    return np.where(ok, k, -1)


def _colour_components(idx: np.ndarray, x: np.ndarray, h: int, w: int, origin: np.ndarray, tol: float,
                       max_angle: float) -> tuple[int, np.ndarray]:
    """Connected components of the pixels ``idx`` (sorted flat indices, colours ``x``) where 8-neighbours join if
    their colours differ by less than ``tol`` or point in nearly the same direction from ``origin``: a blend of a
    colour with the background keeps its direction, and thin structures are such blends, to a degree that varies
    along them. OpenCV's labelling is binary-only, so the pixel graph goes to scipy's csgraph."""
    u = x - origin
    u /= np.maximum(np.linalg.norm(u, axis=1), 1e-6)[:, None]
    src, dst = [], []
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):
        j = _neighbour(idx, h, w, dy, dx)
        i = np.flatnonzero(j >= 0)
        j = j[i]
        close = (np.einsum("ij,ij->i", x[i] - x[j], x[i] - x[j]) < tol * tol) | (
            np.einsum("ij,ij->i", u[i] - u[j], u[i] - u[j]) < max_angle**2)
        src.append(i[close])
        dst.append(j[close])
    src, dst = np.concatenate(src), np.concatenate(dst)
    return connected_components(coo_matrix((np.ones(len(src)), (src, dst)), shape=(len(idx),) * 2), directed=False)


def _cell_pixels(cells: np.ndarray, gw: int, f: int, h: int, w: int) -> np.ndarray:
    """Flat full-resolution indices of the f×f pixels of each grid cell (none from the padding)."""
    dy, dx = np.divmod(np.arange(f * f), f)
    yy = ((cells // gw)[:, None] * f + dy).ravel()
    xx = ((cells % gw)[:, None] * f + dx).ravel()
    inside = (yy < h) & (xx < w)
    return yy[inside] * w + xx[inside]


def _thin_structures(img, labels, part, idx, stats, pairs, f, r, params):
    """New regions from pixels that no region around them explains, by colour or as a blend of two: cables 1..3 px
    wide leave no flat core on the coarse grid, only blends of themselves and their surroundings. Their centre
    lines are grouped by colour into pieces; pieces of one structure are joined, each piece competes with the
    regions around it for the pixels within 2 px, and a piece of the same colour as a region it touches joins it.
    Returns the labels, the label table still to apply to them, and the statistics and pairs after it."""
    h, w = img.shape[:2]
    gh, gw = part.shape
    means = _means(stats)
    m = len(means)
    cell = (idx // w // f) * gw + (idx % w) // f
    cand = np.stack([v.ravel()[cell] for v in (part, cv2.dilate(part, _K3), cv2.erode(part, _K3))]
                    + [np.zeros(len(idx), np.float32)], 1).astype(np.int64)
    x = img.reshape(-1, 3)[idx].astype(np.float64)
    dist = np.sqrt(_unexplained2(x, cand, means))
    odd = dist > r
    idx, x, dist = idx[odd], x[odd], dist[odd]
    if len(idx) == 0:
        return labels, stats, pairs, np.arange(m)
    # Centre lines: pixels nearly as unexplained as the most unexplained one around them. This drops a cable's
    # blended sides and the blends where two cables meet, so that two touching cables stay apart.
    peak = dist.copy()
    for dy, dx in ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)):
        j = _neighbour(idx, h, w, dy, dx)
        np.maximum(peak, np.where(j >= 0, dist[j], 0.0), out=peak)
    ridge = dist >= 0.5 * peak
    idx, x = idx[ridge], x[ridge]
    n, comp = _colour_components(idx, x, h, w, means[0], np.sqrt(2.0) * r, _THIN_ANGLE)
    big = (np.bincount(comp, minlength=n) >= params.min_seed_area * f)[comp]  # centre-line pixels
    idx, x, comp = idx[big], x[big], comp[big]
    pieces = _Stats.of(comp, x, n)
    pm = _means(pieces)
    bright = (pieces.n > 0) & (np.einsum("ij,ij->i", pm, pm) >= params.background_threshold**2)
    if not bright.any():
        return labels, stats, pairs, np.arange(m)
    stats = stats.append(_Stats(*(a[bright] for a in pieces)))
    _check_label_count(len(stats.n))
    keep = bright[comp]
    idx, new = idx[keep], m + (np.cumsum(bright) - 1)[comp[keep]]
    cell = (idx // w // f) * gw + (idx % w) // f

    # Pieces of one cable (split where it crosses or touches something) join if within 4 cells, similar in colour.
    pgrid = np.zeros(gh * gw, np.float32)
    pgrid[cell] = new
    near = cv2.dilate(pgrid.reshape(gh, gw), np.ones((9, 9), np.uint8)).ravel()
    lut = _merge_groups(np.stack([new, near[cell].astype(np.int64)], 1), _means(stats), params.merge_distance,
                        first=m, max_angle=_THIN_ANGLE)
    stats = stats.regroup(lut, int(lut.max()) + 1)
    means = _means(stats)
    pgrid[cell] = lut[new]

    # Pixels within a cell of a piece take the nearer of their label and the piece's.
    near = cv2.dilate(pgrid.reshape(gh, gw), _K3).ravel()
    ring = _cell_pixels(np.flatnonzero(near), gw, f, h, w)
    flat = labels.ravel()
    cand = np.stack([flat[ring], near[(ring // w // f) * gw + (ring % w) // f]], 1).astype(np.int64)
    flat[ring] = _nearest(img.reshape(-1, 3)[ring].astype(np.float64), cand, means)
    touching = cand[cand[:, 0] != cand[:, 1]]
    join = _merge_groups(touching, means, 0.5 * params.merge_distance)
    pairs = join[np.vstack([pairs, touching])]  # region labels are unchanged by the piece merge above
    return labels, stats.regroup(join, int(join.max()) + 1), pairs[pairs[:, 0] != pairs[:, 1]], join


def _finish(labels: np.ndarray, lut: np.ndarray, stats: _Stats, pairs: np.ndarray, min_area: int) -> InstanceLabels:
    """Relabel through ``lut``, drop small instances, number the rest by area (largest first, ties by label) and
    build the records."""
    m = len(stats.n)
    area = np.bincount(lut, cv2.calcHist([labels], [0], None, [len(lut)], [0, len(lut)]).ravel(), m).astype(np.int64)
    area[0] = 0
    keep = np.flatnonzero(area >= min_area)
    keep = keep[np.argsort(-area[keep], kind="stable")]
    order = np.zeros(m, np.uint16)
    order[keep] = np.arange(1, len(keep) + 1)
    labels = np.take(order[lut], labels)

    # Separation b: distance to the nearest neighbouring region's mean colour, background always counted.
    means = _means(stats)
    sep = np.linalg.norm(means - means[0], axis=1)
    d = np.sqrt(sum((np.take(means[:, k], pairs[:, 0]) - np.take(means[:, k], pairs[:, 1])) ** 2 for k in range(3)))
    np.minimum.at(sep, pairs[:, 0], d)
    np.minimum.at(sep, pairs[:, 1], d)
    spread = _spread(stats)
    score = 1.0 - spread / np.sqrt(spread**2 + sep**2 + 1e-12)

    instances = []
    for new, (old, (ys, xs)) in enumerate(zip(keep, ndimage.find_objects(labels, max_label=len(keep))), start=1):
        instances.append(Instance(id=new, area=int(area[old]), bbox=(xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start),
                                  score=float(score[old]), mean_color=tuple(float(v) for v in means[old])))
    return InstanceLabels(labels, instances)
