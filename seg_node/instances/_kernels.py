"""Shared pieces of ``label_instances``: region statistics, the coarse grid, union-find and colour geometry
(numba kernels)."""
from __future__ import annotations

import cv2
import numpy as np
from typing import NamedTuple

from seg_node.jit import jit


def _check_label_count(n: int) -> None:
    if n > 65536:
        raise ValueError(f"{n - 1} regions do not fit a uint16 label map; raise min_seed_area or downsample")


def _coarse_grid(img: np.ndarray, f: int) -> np.ndarray:
    """The average over f×f blocks of the colour map, edge-padded to a multiple of f."""
    if f == 1:
        return img
    h, w = img.shape[:2]
    hp, wp = -(-h // f) * f, -(-w // f) * f
    if (hp, wp) != (h, w):
        img = cv2.copyMakeBorder(img, 0, hp - h, 0, wp - w, cv2.BORDER_REPLICATE)
    # For f = 2, bilinear sampling at the block centres is exactly the 2×2 mean, and 3× faster than INTER_AREA.
    return cv2.resize(img, (wp // f, hp // f), interpolation=cv2.INTER_LINEAR if f == 2 else cv2.INTER_AREA)


class _Stats(NamedTuple):
    """Per-label accumulators: pixel count, colour sums, sums of squared colour norms."""

    n: np.ndarray
    s: np.ndarray
    q: np.ndarray

    def regroup(self, lut: np.ndarray, m: int) -> "_Stats":
        """Statistics of the groups ``lut[label]`` (labels with a negative group are left out)."""
        return _Stats(*_regroup(self.n, self.s, self.q, lut, m))

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


# ---- numba kernels: union-find, labelling, colour geometry ----

@jit
def _row(a, i):
    """Colour i of an N×3 array as a tuple."""
    return a[i, 0], a[i, 1], a[i, 2]


@jit
def _rgb(a, i, j):
    """Colour (i, j) of an H×W×3 array as a tuple."""
    return a[i, j, 0], a[i, j, 1], a[i, j, 2]


@jit
def _find(parent, i):
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # path halving
        i = parent[i]
    return i


@jit
def _union(parent, i, j):
    """Join the sets of i and j under the lower root: every root is then the lowest member of its set."""
    i, j = _find(parent, i), _find(parent, j)
    if i < j:
        parent[j] = i
    elif j < i:
        parent[i] = j


@jit
def _number_sets(parent):
    """Set of each element, sets numbered from 0 in order of their lowest member (roots are the lowest members)."""
    out = np.empty(len(parent), np.int64)
    k = 0
    for i in range(len(parent)):
        r = _find(parent, i)
        if r == i:
            out[i] = k
            k += 1
        else:
            out[i] = out[r]
    return out


@jit
def _dist2(x, y):
    return (x[0] - y[0]) ** 2 + (x[1] - y[1]) ** 2 + (x[2] - y[2]) ** 2


@jit
def _segment_dist2(x, a, b):
    """Squared distance from x to the segment a-b (the blends of two colours)."""
    ab = (b[0] - a[0], b[1] - a[1], b[2] - a[2])
    xa = (x[0] - a[0], x[1] - a[1], x[2] - a[2])
    t = (xa[0] * ab[0] + xa[1] * ab[1] + xa[2] * ab[2]) / max(ab[0] ** 2 + ab[1] ** 2 + ab[2] ** 2, 1e-6)
    t = min(max(t, 0.0), 1.0)
    return (xa[0] - t * ab[0]) ** 2 + (xa[1] - t * ab[1]) ** 2 + (xa[2] - t * ab[2]) ** 2


@jit
def _direction(x, origin):
    """Unit vector from origin to x (zero-safe): blending a colour with the background keeps its direction."""
    d = (x[0] - origin[0], x[1] - origin[1], x[2] - origin[2])
    norm = max(np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2), 1e-6)
    return d[0] / norm, d[1] / norm, d[2] / norm


@jit
def _merge_groups(pairs, means, merge_distance, first, max_angle):
    """Old → new label table joining paired labels (both >= ``first``) whose mean colours are closer than
    ``merge_distance`` or, with ``max_angle``, point in nearly the same direction from the background's.
    New labels keep the order of each group's first label."""
    parent = np.arange(len(means))
    for k in range(len(pairs)):
        i, j = pairs[k, 0], pairs[k, 1]
        if min(i, j) < first:
            continue
        mi, mj, m0 = _row(means, i), _row(means, j), _row(means, 0)
        join = _dist2(mi, mj) < merge_distance ** 2
        if not join and max_angle > 0:
            join = _dist2(_direction(mi, m0), _direction(mj, m0)) < max_angle ** 2
        if join:
            _union(parent, i, j)
    return _number_sets(parent)


@jit
def _regroup(n, s, q, lut, m):
    """``_Stats.regroup`` on its arrays."""
    n2, s2, q2 = np.zeros(m), np.zeros((m, 3)), np.zeros(m)
    for i in range(len(lut)):
        g = lut[i]
        if g >= 0:
            n2[g] += n[i]
            s2[g, 0], s2[g, 1], s2[g, 2] = s2[g, 0] + s[i, 0], s2[g, 1] + s[i, 1], s2[g, 2] + s[i, 2]
            q2[g] += q[i]
    return n2, s2, q2


@jit
def _label_stats(ids, x, m):
    """Per-label pixel count, colour sums and sums of squared colour norms of the colours ``x`` (N×3) with labels
    ``ids`` (N, < m)."""
    n, s, q = np.zeros(m), np.zeros((m, 3)), np.zeros(m)
    for i in range(len(ids)):
        k = ids[i]
        n[k] += 1.0
        for c in range(3):
            s[k, c] += x[i, c]
            q[k] += x[i, c] * x[i, c]
    return n, s, q


@jit
def _max_min3(part):
    """Highest and lowest label in each cell's 3×3 neighbourhood (clipped at the border), in separable passes."""
    gh, gw = part.shape
    rhi, rlo = np.empty_like(part), np.empty_like(part)
    for y in range(gh):
        p, ph, pl = part[y], rhi[y], rlo[y]
        for x in range(gw):
            xm, xp = max(x - 1, 0), min(x + 1, gw - 1)
            ph[x], pl[x] = max(p[xm], p[x], p[xp]), min(p[xm], p[x], p[xp])
    hi, lo = np.empty_like(part), np.empty_like(part)
    for y in range(gh):
        ym, yp = max(y - 1, 0), min(y + 1, gh - 1)
        for x in range(gw):
            hi[y, x] = max(rhi[ym, x], rhi[y, x], rhi[yp, x])
            lo[y, x] = min(rlo[ym, x], rlo[y, x], rlo[yp, x])
    return hi, lo
