"""Stage 1 of ``label_instances``, end: regions near each other with similar mean colours become one, and so do
touching regions whose colours run on across their border."""
from __future__ import annotations

import numpy as np

from seg_node.jit import jit
from seg_node.instances._kernels import _Stats, _means, _merge_groups, _number_sets, _union


@jit
def _grid_pairs(part):
    """Labels that touch on the grid (4-neighbours), then labels within 4 cells: 5×5 windows on every other
    cell. A window yields only its highest and lowest label, so each is paired with the centre label too.
    Repeats of a label's previous pair are skipped: a border yields the same pair on every row."""
    gh, gw = part.shape
    sh, sw = (gh + 1) // 2, (gw + 1) // 2
    pairs = np.empty((2 * gh * gw + 3 * sh * sw, 2), np.int64)
    last = np.full(part.max() + 1, -1)
    k = 0
    for y in range(gh):
        for x in range(gw):
            a = part[y, x]
            b = part[y, x + 1] if x + 1 < gw else a
            if b != a and last[a] != b:
                last[a], pairs[k, 0], pairs[k, 1] = b, a, b
                k += 1
            b = part[y + 1, x] if y + 1 < gh else a
            if b != a and last[a] != b:
                last[a], pairs[k, 0], pairs[k, 1] = b, a, b
                k += 1
    touching = k
    # Separable 5×5 maximum and minimum, on a copy with the edge cells repeated twice (which changes neither).
    padded = np.empty((sh, sw + 4), part.dtype)
    for y in range(sh):
        for x in range(sw + 4):
            padded[y, x] = part[2 * y, 2 * min(max(x - 2, 0), sw - 1)]
    rhi, rlo = np.empty((sh, sw), part.dtype), np.empty((sh, sw), part.dtype)
    for y in range(sh):
        r = padded[y]
        for x in range(sw):
            rhi[y, x] = max(r[x], r[x + 1], r[x + 2], r[x + 3], r[x + 4])
            rlo[y, x] = min(r[x], r[x + 1], r[x + 2], r[x + 3], r[x + 4])
    for y in range(sh):
        y0, y1, y3, y4 = max(y - 2, 0), max(y - 1, 0), min(y + 1, sh - 1), min(y + 2, sh - 1)
        for x in range(sw):
            hi = max(rhi[y0, x], rhi[y1, x], rhi[y, x], rhi[y3, x], rhi[y4, x])
            lo = min(rlo[y0, x], rlo[y1, x], rlo[y, x], rlo[y3, x], rlo[y4, x])
            if hi != lo:
                c = padded[y, x + 2]
                pairs[k, 0], pairs[k, 1] = lo, hi
                pairs[k + 1, 0], pairs[k + 1, 1] = lo, c
                pairs[k + 2, 0], pairs[k + 2, 1] = c, hi
                k += 3
    return pairs[:k], touching


@jit
def _relabel_pairs(pairs, lut):
    """``lut`` applied to pairs of labels, without the pairs it makes equal."""
    out = np.empty_like(pairs)
    k = 0
    for i in range(len(pairs)):
        a, b = lut[pairs[i, 0]], lut[pairs[i, 1]]
        if a != b:
            out[k, 0], out[k, 1] = a, b
            k += 1
    return out[:k]


@jit
def _apply_lut(labels, lut, out):
    """out = lut[labels], element-wise."""
    flat, dst = labels.reshape(-1), out.reshape(-1)
    for i in range(len(flat)):
        dst[i] = lut[flat[i]]
    return out


@jit
def _border_steps(grid, part, distance):
    """Each grid cell pair across a border between two regions (not the background) with a cell of the same region
    behind each side: the two labels and whether the colours of those two cells behind, three cells apart, are
    closer than ``distance``. Cells right at the border are skipped: they hold the soft edge between instances."""
    gh, gw = part.shape
    out = np.empty((2 * gh * gw, 3), np.int64)
    limit = distance * distance
    k = 0
    for y in range(gh):
        for x in range(gw):
            a = part[y, x]
            if a == 0:
                continue
            for dy, dx in ((0, 1), (1, 0)):
                ya, xa, yb, xb = y - dy, x - dx, y + 2 * dy, x + 2 * dx
                if ya < 0 or xa < 0 or yb >= gh or xb >= gw:
                    continue
                b = part[y + dy, x + dx]
                if b == a or b == 0 or part[ya, xa] != a or part[yb, xb] != b:
                    continue
                d2 = 0.0
                for c in range(3):
                    t = grid[yb, xb, c] - grid[ya, xa, c]
                    d2 += t * t
                out[k, 0], out[k, 1], out[k, 2] = min(a, b), max(a, b), d2 < limit
                k += 1
    return out[:k]


def _continuous_groups(grid: np.ndarray, part: np.ndarray, distance: float) -> np.ndarray:
    """Old → new label table joining touching regions whose colour steps across their shared border are mostly
    (over half of at least 3 border cells) below ``distance``. A trained model's colour drifts across a large
    object; the drift splits it into flat regions whose *means* differ by more than ``merge_distance``, yet the colour
    runs on smoothly where they meet, while two instances always step by their colour difference there."""
    steps = _border_steps(grid, part, distance)
    n = int(part.max()) + 1
    parent = np.arange(n)
    if len(steps):
        pair, index = np.unique(steps[:, 0] * n + steps[:, 1], return_inverse=True)
        total, smooth = np.bincount(index), np.bincount(index, weights=steps[:, 2])
        for key in pair[(2 * smooth > total) & (total >= 3)]:
            _union(parent, key // n, key % n)
    return _number_sets(parent)


def _merge_similar(part: np.ndarray, stats: _Stats, grid: np.ndarray, merge_distance: float,
                   continuity_distance: float):
    """Join regions of the grid that come within 4 cells of each other and whose mean colours are closer than
    ``merge_distance`` (never the background): noise splits an instance into several flat regions, and another
    instance can nearly cut one in two. Then join touching regions whose colours run on across their border
    (``continuity_distance``, 0 = off). Returns the relabelled grid, the merged statistics and the touching pairs."""
    pairs, touching = _grid_pairs(part)
    lut = _merge_groups(pairs, _means(stats), merge_distance, 1, 0.0)
    part, stats, pairs = (_apply_lut(part, lut, np.empty_like(part)), stats.regroup(lut, int(lut.max()) + 1),
                          _relabel_pairs(pairs[:touching], lut))
    if continuity_distance > 0:
        lut = _continuous_groups(grid, part, continuity_distance)
        if lut[-1] < len(lut) - 1:  # some regions joined (sets are numbered in order, so the last is the count - 1)
            part, stats, pairs = (_apply_lut(part, lut, np.empty_like(part)),
                                  stats.regroup(lut, int(lut.max()) + 1), _relabel_pairs(pairs, lut))
    return part, stats, pairs
