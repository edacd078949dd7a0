"""The stages of ``label_instances`` and their numba kernels (the algorithm: ``seg_node.instances``)."""
from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

from seg_node.jit import jit

from seg_node.instances.records import Instance, InstanceLabels, InstanceParams

_THIN_ANGLE = 0.15  # radians: thin-structure pixels and pieces whose colour directions differ less are one structure


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


# ---- 1. seeds on the coarse grid ----

@jit
def _mirror(i, n):
    """Index i reflected into 0..n-1 without repeating the edge pixel (OpenCV's default border)."""
    if n == 1:
        return 0
    return -i if i < 0 else (2 * n - 2 - i if i >= n else i)


@jit
def _flat_regions(grid, edge_threshold):
    """4-connected components of the grid pixels whose colour gradient (3×3 Sobel / 8 per channel, squared and
    summed over the channels, mirrored borders) is below ``edge_threshold``, numbered 1.. in raster order of their
    first pixel as OpenCV numbers them; 0 elsewhere. They are found as runs along the rows, joined to the runs they
    share a column with in the row above.
    Returns the labels, the pixel count, colour sums and squared colour norm sums per label (none for 0), and
    whether the grid is finite: a NaN or Inf makes the gradients around it NaN."""
    gh, gw = grid.shape[:2]
    row_len = 3 * gw
    rows = grid.reshape(gh, row_len)
    max_runs = gh * ((gw + 1) // 2)
    run_y, run_x0, run_x1 = np.empty(max_runs, np.int64), np.empty(max_runs, np.int64), np.empty(max_runs, np.int64)
    parent = np.empty(max_runs, np.int64)
    # Separable Sobel on whole rows of interleaved channels (float32, which numba vectorises): vertical smoothing and
    # difference, with one mirrored pixel at each end, then the horizontal parts.
    smooth, diff, g2 = np.empty(row_len + 6, np.float32), np.empty(row_len + 6, np.float32), \
        np.empty(row_len, np.float32)
    two, limit = np.float32(2.0), np.float32(64.0 * edge_threshold ** 2)  # 64: the Sobel scale 1/8, squared
    flat = np.empty(gw + 1, np.bool_)
    flat[gw] = False
    finite = True
    n_runs = prev = 0
    for y in range(gh):
        above, here, below = rows[_mirror(y - 1, gh)], rows[y], rows[_mirror(y + 1, gh)]
        for k in range(row_len):
            smooth[k + 3] = above[k] + two * here[k] + below[k]
            diff[k + 3] = below[k] - above[k]
        left, right = 3 + 3 * _mirror(-1, gw), 3 + 3 * _mirror(gw, gw)
        for c in range(3):
            smooth[c], diff[c] = smooth[left + c], diff[left + c]
            smooth[row_len + 3 + c], diff[row_len + 3 + c] = smooth[right + c], diff[right + c]
        for k in range(row_len):
            gx = smooth[k + 6] - smooth[k]
            gy = diff[k] + two * diff[k + 3] + diff[k + 6]
            g2[k] = gx * gx + gy * gy
        for x in range(gw):
            v = g2[3 * x] + g2[3 * x + 1] + g2[3 * x + 2]
            flat[x] = v < limit
            finite &= v < np.inf
        first = n_runs
        x = 0
        while x < gw:
            if flat[x]:
                run_y[n_runs], run_x0[n_runs] = y, x
                while flat[x]:
                    x += 1
                run_x1[n_runs], parent[n_runs] = x, n_runs
                n_runs += 1
            x += 1
        j = prev
        for i in range(first, n_runs):
            while j < first and run_x1[j] <= run_x0[i]:
                j += 1
            k = j
            while k < first and run_x0[k] < run_x1[i]:
                _union(parent, k, i)
                k += 1
        prev = first
    comp = _number_sets(parent[:n_runs]) + 1
    n = comp.max() + 1 if n_runs else 1
    labels = np.zeros((gh, gw), np.int32)
    count, sums, sq = np.zeros(n), np.zeros((n, 3)), np.zeros(n)
    for r in range(n_runs):
        k, y = comp[r], run_y[r]
        s0 = s1 = s2 = q = 0.0
        for x in range(run_x0[r], run_x1[r]):
            labels[y, x] = k
            v0, v1, v2 = np.float64(grid[y, x, 0]), np.float64(grid[y, x, 1]), np.float64(grid[y, x, 2])
            s0, s1, s2, q = s0 + v0, s1 + v1, s2 + v2, q + v0 * v0 + v1 * v1 + v2 * v2
        count[k] += run_x1[r] - run_x0[r]
        sums[k, 0], sums[k, 1], sums[k, 2], sq[k] = sums[k, 0] + s0, sums[k, 1] + s1, sums[k, 2] + s2, sq[k] + q
    return labels, count, sums, sq, finite


@jit
def _colour_step(g8, p, q):
    """OpenCV's watershed priority between two pixels: the largest channel difference of their 8-bit colours."""
    step = 0
    for c in range(3):
        step = max(step, abs(np.int32(g8[3 * p + c]) - np.int32(g8[3 * q + c])))
    return step


@jit
def _enqueue(head, tail, nxt, level, p):
    """Append pixel p to the FIFO queue ``level`` (queues are linked lists through ``nxt``)."""
    nxt[p] = -1
    if tail[level] >= 0:
        nxt[tail[level]] = p
    else:
        head[level] = p
    tail[level] = p


@jit
def _grow_seeds(grid, seeds, lut):
    """The seeds' groups ``lut[seeds]`` (-1: not a seed, an "edge" pixel) grown over the edge pixels by OpenCV's
    watershed (``cv2.watershed`` on the grid's colours saturated to 8 bits, with the same order and result): from
    256 FIFO queues, one per colour step, the pixel next to a region with the smallest step to it takes the label
    of its labelled 4-neighbours, or becomes a line (-1) where two regions meet if they differ. Line pixels then
    take the highest label around them (the full-resolution pass decides them anyway), or the background if none.
    Works on a copy framed by line pixels, as OpenCV does. Returns the grid labels and the edge mask."""
    gh, gw = seeds.shape
    W = gw + 2
    queued = -2
    rows = grid.reshape(gh, 3 * gw)
    g8 = np.zeros((gh + 2) * W * 3, np.uint8)
    mk = np.full((gh + 2) * W, -1, np.int32)  # watershed markers: group + 1, 0 = to flood, -1 = line, -2 = queued
    edge = np.empty((gh, gw), np.bool_)
    todo = np.empty(gh * gw, np.int32)  # the edge pixels, then the pixels to fix after flooding
    n_todo = 0
    for y in range(gh):
        start = (y + 1) * W + 1
        for k in range(3 * gw):
            g8[3 * start + k] = np.uint8(min(np.rint(abs(rows[y, k])), np.float32(255.0)))
        for x in range(gw):
            mk[start + x] = lut[seeds[y, x]] + 1
            edge[y, x] = mk[start + x] == 0
            todo[n_todo] = start + x
            n_todo += edge[y, x]
    head, tail, nxt = np.full(256, -1, np.int32), np.full(256, -1, np.int32), np.empty((gh + 2) * W, np.int32)
    active = 256
    for i in range(n_todo):  # the edge pixels next to a seed, at their smallest step to one
        p = todo[i]
        level = 256
        for q in (p - 1, p + 1, p - W, p + W):
            if mk[q] > 0:
                level = min(level, _colour_step(g8, p, q))
        if level < 256:
            _enqueue(head, tail, nxt, level, p)
            mk[p], active = queued, min(active, level)
    n_edge, n_todo, n_flooded = n_todo, 0, 0
    while active < 256:
        p = head[active]
        if p < 0:
            active += 1
            continue
        head[active] = nxt[p]
        if nxt[p] < 0:
            tail[active] = -1
        n_flooded += 1
        lab = 0
        for q in (p - 1, p + 1, p - W, p + W):
            if mk[q] > 0:
                lab = mk[q] if lab == 0 or lab == mk[q] else -1
        mk[p] = lab
        if lab > 0:
            for q in (p - 1, p + 1, p - W, p + W):
                if mk[q] == 0:
                    level = _colour_step(g8, p, q)
                    _enqueue(head, tail, nxt, level, q)
                    mk[q], active = queued, min(active, level)
        else:
            todo[n_todo] = p
            n_todo += 1
    part = np.empty((gh, gw), np.int32)
    for y in range(gh):
        for x in range(gw):
            part[y, x] = max(mk[(y + 1) * W + x + 1] - 1, 0)
    if n_flooded < n_edge:  # pixels no seed reached (cut off by lines) are fixed like lines
        for y in range(gh):
            for x in range(gw):
                if mk[(y + 1) * W + x + 1] == 0:
                    todo[n_todo] = (y + 1) * W + x + 1
                    n_todo += 1
    for i in range(n_todo):  # the highest label around (flooded values; the frame is -1), or the background
        p = todo[i]
        v = max(mk[p - W - 1], mk[p - W], mk[p - W + 1], mk[p - 1], mk[p], mk[p + 1], mk[p + W - 1], mk[p + W],
                mk[p + W + 1]) - 1
        part[p // W - 1, p % W - 1] = max(v, 0)
    return part, edge


def _seed_partition(grid: np.ndarray, f: int, params: InstanceParams) -> tuple[np.ndarray, np.ndarray, _Stats]:
    """Flat regions of the coarse grid as seeds (near-black ones are background, label 0), grown over the rest of
    the grid in order of colour difference, so that regions meet where the colour changes most. Returns the grid
    labels, the mask of non-seed ("edge") grid pixels and the seed statistics."""
    seeds, count, sums, sq, finite = _flat_regions(grid, params.edge_threshold)
    if not finite:
        raise ValueError("colors contains NaN or Inf")
    raw = _Stats(count * f * f, sums * f * f, sq * f * f)  # a grid pixel stands for f² pixels
    mean = _means(raw)
    keep = count >= min(params.min_seed_area, grid.shape[0] * grid.shape[1])  # tiny images: one flat one
    keep[0] = False  # label 0 = edge pixels
    is_bg = keep & (np.einsum("ij,ij->i", mean, mean) < params.background_threshold**2)
    inst = np.flatnonzero(keep & ~is_bg)
    lut = np.full(len(count), -1, np.int64)
    lut[is_bg] = 0
    lut[inst] = np.arange(1, len(inst) + 1)
    part, edge = _grow_seeds(grid, seeds, lut)
    return part, edge, raw.regroup(lut, len(inst) + 1)


# ---- merging similar regions ----

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


def _merge_similar(part: np.ndarray, stats: _Stats, merge_distance: float):
    """Join regions of the grid that come within 4 cells of each other and whose mean colours are closer than
    ``merge_distance`` (never the background): noise splits an instance into several flat regions, and another
    instance can nearly cut one in two. Returns the relabelled grid, the merged statistics and the touching pairs."""
    pairs, touching = _grid_pairs(part)
    lut = _merge_groups(pairs, _means(stats), merge_distance, 1, 0.0)
    return (_apply_lut(part, lut, np.empty_like(part)), stats.regroup(lut, int(lut.max()) + 1),
            _relabel_pairs(pairs[:touching], lut))


# ---- 2. full-resolution borders ----

@jit
def _full_resolution_labels(img, part, edge, means, f, tol):
    """uint16 labels at full resolution and the area of each: the grid label inside regions and, in grid cells whose
    3×3 neighbourhood holds two or more labels or that are not flat, whichever of the cell's label (C), the highest
    (A) and lowest (B) label in that neighbourhood and the background has the nearest mean colour; the background
    is always one, as a strip of it too narrow to seed has none of its own label nearby.
    Also returns the flat indices (ascending) of the pixels of those cells that are farther than ``tol`` from the
    four means and every blend of two of them (thin structures, or three regions meeting), and those distances,
    for ``_thin_structures``. Blends of A and B, the usual explanation, are tested first: with D = A - B, the
    nearest is B + t D, t = clip((x - B)·D / |D|², 0, 1), at squared distance |x - B|² - t (2 (x - B)·D - t |D|²),
    and |x - A|² = |x - B|² - 2 (x - B)·D + |D|²."""
    h, w = img.shape[:2]
    gh, gw = part.shape
    hi, lo = _max_min3(part)
    labels = np.empty((h, w), np.uint16)
    area = np.zeros(len(means), np.int64)
    odd = np.empty(h * w, np.int64)
    odd_dist = np.empty(h * w)
    n_odd = 0
    row_odd, row_dist, row_n = np.empty((f, w), np.int64), np.empty((f, w)), np.zeros(f, np.int64)
    m0 = _row(means, 0)
    for gy in range(gh):  # cell by cell, each cell's f×f pixels at once
        y0, y1 = gy * f, min(gy * f + f, h)
        row_n[:] = 0
        gx = 0
        while gx < gw:
            c = part[gy, gx]
            if hi[gy, gx] == lo[gy, gx] and not edge[gy, gx]:  # inside a region: a run of its cells
                start = gx
                while gx < gw and hi[gy, gx] == lo[gy, gx] and not edge[gy, gx] and part[gy, gx] == c:
                    gx += 1
                for y in range(y0, y1):
                    for x in range(start * f, min(gx * f, w)):
                        labels[y, x] = c
                area[c] += (y1 - y0) * (min(gx * f, w) - start * f)
                continue
            a, b = hi[gy, gx], lo[gy, gx]
            ma, mb, mc = _row(means, a), _row(means, b), _row(means, c)
            d = (ma[0] - mb[0], ma[1] - mb[1], ma[2] - mb[2])
            dd = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
            inv = 1.0 / max(dd, 1e-6)
            c_new = c != a and c != b  # else C is A or B (a border between two regions)
            zero_new = b != 0  # else the background is B (b <= c <= a)
            for y in range(y0, y1):
                for x in range(gx * f, min(gx * f + f, w)):
                    px = _rgb(img, y, x)
                    xb = (px[0] - mb[0], px[1] - mb[1], px[2] - mb[2])
                    d_b = xb[0] * xb[0] + xb[1] * xb[1] + xb[2] * xb[2]
                    along = xb[0] * d[0] + xb[1] * d[1] + xb[2] * d[2]
                    d_a = d_b - 2.0 * along + dd
                    choice = a if d_a <= d_b else b
                    best = min(d_a, d_b)
                    if c_new:
                        d_c = _dist2(px, mc)
                        choice = c if d_c < best else choice
                        best = min(best, d_c)
                    if zero_new:
                        choice = 0 if _dist2(px, m0) < best else choice
                    labels[y, x] = choice
                    area[choice] += 1
                    t = min(max(along * inv, 0.0), 1.0)
                    d2 = d_b - t * (2.0 * along - t * dd)
                    if d2 > tol * tol:  # the other blends, without repeats
                        if c_new:
                            d2 = min(d2, _segment_dist2(px, mc, ma), _segment_dist2(px, mc, mb))
                        if zero_new:
                            d2 = min(d2, _segment_dist2(px, ma, m0), _segment_dist2(px, mb, m0))
                            if c_new:
                                d2 = min(d2, _segment_dist2(px, mc, m0))
                        if d2 > tol * tol:
                            r = y - y0
                            row_odd[r, row_n[r]], row_dist[r, row_n[r]] = y * w + x, np.sqrt(d2)
                            row_n[r] += 1
            gx += 1
        for r in range(y1 - y0):  # row by row: ascending flat indices
            odd[n_odd:n_odd + row_n[r]] = row_odd[r, :row_n[r]]
            odd_dist[n_odd:n_odd + row_n[r]] = row_dist[r, :row_n[r]]
            n_odd += row_n[r]
    return labels, area, odd[:n_odd].copy(), odd_dist[:n_odd].copy()


# ---- 3. thin structures ----

@jit
def _index_row(window, idx, starts, y, w, clear):
    """Enter the pixels of row y of the sparse set ``idx`` (ascending flat indices, rows from ``starts``) into the
    3-row ``window``, at their position in ``idx`` (-1 elsewhere), or clear them. Rows y-1..y+1 of a sparse set are
    then looked up in a few kB instead of an image-sized map."""
    for i in range(starts[y], starts[y + 1]):
        window[y % 3, idx[i] - y * w + 1] = -1 if clear else i


@jit
def _centre_line_pieces(img, idx, dist, origin, tol, max_angle, min_size, background_threshold, first):
    """Centre lines of the unexplained pixels ``idx`` (ascending flat indices, distances ``dist``): those nearly as
    unexplained as the most unexplained 8-neighbour. This drops a cable's blended sides and the blends where two
    cables meet, so that two touching cables stay apart. They are grouped into 8-connected pieces where neighbours
    differ by less than ``tol`` in colour or ``max_angle`` in direction from ``origin`` (a blend of a colour with
    the background keeps its direction, and thin structures are such blends, to a degree that varies along them).
    Pieces of ``min_size`` pixels or more whose mean colour is ``background_threshold`` or farther from black are
    labelled ``first``, ``first + 1``.. in order of their first pixel. Returns the flat indices of their pixels,
    their labels and the per-piece statistics."""
    h, w = img.shape[:2]
    flat_img = img.reshape(-1, 3)
    window = np.full((3, w + 2), -1, np.int32)  # x + 1: the columns beside the image stay empty
    starts = np.searchsorted(idx, np.arange(h + 1) * w)
    ridge = np.empty(len(idx), np.bool_)
    _index_row(window, idx, starts, 0, w, False)
    for y in range(h):
        if y + 1 < h:
            _index_row(window, idx, starts, y + 1, w, False)
        above, here, below = window[(y - 1) % 3], window[y % 3], window[(y + 1) % 3]  # rows -1, h: empty
        for i in range(starts[y], starts[y + 1]):
            x = idx[i] - y * w + 1
            peak = dist[i]
            for j in (above[x - 1], above[x], above[x + 1], here[x - 1], here[x + 1], below[x - 1], below[x],
                      below[x + 1]):
                if j >= 0:
                    peak = max(peak, dist[j])
            ridge[i] = dist[i] >= 0.5 * peak
        if y > 0:
            _index_row(window, idx, starts, y - 1, w, True)
    _index_row(window, idx, starts, h - 1, w, True)
    line = idx[ridge]
    x = np.empty((len(line), 3))
    u = np.empty((len(line), 3))
    for i in range(len(line)):
        x[i, 0], x[i, 1], x[i, 2] = _row(flat_img, line[i])
        u[i, 0], u[i, 1], u[i, 2] = _direction(_row(x, i), origin)
    starts = np.searchsorted(line, np.arange(h + 1) * w)
    parent = np.arange(len(line))
    _index_row(window, line, starts, 0, w, False)
    for y in range(h):
        if y + 1 < h:
            _index_row(window, line, starts, y + 1, w, False)
        here, below = window[y % 3], window[(y + 1) % 3]  # row h is never entered: empty
        for i in range(starts[y], starts[y + 1]):
            xi = line[i] - y * w + 1
            for j in (here[xi + 1], below[xi - 1], below[xi], below[xi + 1]):
                if j >= 0 and (_dist2(_row(x, i), _row(x, j)) < tol * tol
                               or _dist2(_row(u, i), _row(u, j)) < max_angle ** 2):
                    _union(parent, i, j)
        if y > 0:
            _index_row(window, line, starts, y - 1, w, True)
    piece = _number_sets(parent)
    n = piece.max() + 1 if len(piece) else 0
    big = np.bincount(piece, minlength=n)[piece] >= min_size
    count, sums, sq = _label_stats(piece[big], x[big], n)
    new = np.full(n, -1)
    k = 0
    for i in range(n):
        if count[i] > 0 and _dist2(_row(sums, i), (0.0, 0.0, 0.0)) >= (background_threshold * count[i]) ** 2:
            new[i] = first + k
            k += 1
    keep = new[piece] >= 0
    bright = new >= 0
    return line[keep], new[piece[keep]], (count[bright], sums[bright], sq[bright])


@jit
def _piece_pairs(cells, new, gh, gw):
    """Grid of piece labels (0 = none; ``new`` of the last pixel in each cell wins) and, per piece pixel, its label
    paired with the highest piece label within 4 cells."""
    pgrid = np.zeros(gh * gw, np.int32)
    for i in range(len(cells)):
        pgrid[cells[i]] = new[i]
    near = np.full(gh * gw, -1)  # memo: highest label within 4 cells, per cell
    pairs = np.empty((len(cells), 2), np.int64)
    for i in range(len(cells)):
        cell = cells[i]
        if near[cell] < 0:
            y, x = cell // gw, cell % gw
            top = 0
            for yy in range(max(y - 4, 0), min(y + 5, gh)):
                for xx in range(max(x - 4, 0), min(x + 5, gw)):
                    top = max(top, pgrid[yy * gw + xx])
            near[cell] = top
        pairs[i, 0], pairs[i, 1] = new[i], near[cell]
    return pgrid, pairs


@jit
def _claim_ring(img, labels, area, pgrid, lut, means, f):
    """Pixels of the cells within one cell of a piece take the nearer in colour of their label and the highest
    piece label (through ``lut``) in that cell's 3×3 neighbourhood (``labels`` and ``area`` are updated). Returns
    the (label, piece) pairs that differ, without repeating a label's previous pair."""
    h, w = labels.shape
    gh, gw = -(-h // f), -(-w // f)
    near = np.zeros(gh * gw, np.int32)
    ring = np.empty(gh * gw, np.int64)
    n_ring = 0
    for cell in np.nonzero(pgrid)[0]:
        v = lut[pgrid[cell]]
        y, x = cell // gw, cell % gw
        for yy in range(max(y - 1, 0), min(y + 2, gh)):
            for xx in range(max(x - 1, 0), min(x + 2, gw)):
                if near[yy * gw + xx] == 0:
                    ring[n_ring] = yy * gw + xx
                    n_ring += 1
                near[yy * gw + xx] = max(near[yy * gw + xx], v)
    pairs = np.empty((n_ring * f * f, 2), np.int64)
    last = np.full(len(means), -1)
    k = 0
    for cell in ring[:n_ring]:
        piece = near[cell]
        gy, gx = cell // gw, cell % gw
        for y in range(gy * f, min(gy * f + f, h)):
            for x in range(gx * f, min(gx * f + f, w)):
                old = labels[y, x]
                if old != piece:
                    px = _rgb(img, y, x)
                    if _dist2(px, _row(means, piece)) < _dist2(px, _row(means, old)):
                        labels[y, x] = piece
                        area[old] -= 1
                        area[piece] += 1
                    if last[old] != piece:
                        last[old], pairs[k, 0], pairs[k, 1] = piece, old, piece
                        k += 1
    return pairs[:k]


def _thin_structures(img, labels, area, part, odd, odd_dist, stats, pairs, f, r, params):
    """New regions from the pixels ``odd`` that no region around them explains, by colour or as a blend of two:
    cables 1..3 px wide leave no flat core on the coarse grid, only blends of themselves and their surroundings.
    Their centre lines are grouped by colour into pieces; pieces of one structure are joined, each piece competes
    with the regions around it for the pixels within 2 px, and a piece of the same colour as a region it touches
    joins it. Updates ``labels``; returns the areas of its labels, the label table still to apply to them, and the
    statistics and pairs after it."""
    w = img.shape[1]
    gh, gw = part.shape
    means = _means(stats)
    m = len(means)
    idx, new, pieces = _centre_line_pieces(img, odd, odd_dist, means[0], np.sqrt(2.0) * r, _THIN_ANGLE,
                                           params.min_seed_area * f, params.background_threshold, m)
    if not len(idx):
        return area, stats, pairs, np.arange(m)
    stats = stats.append(_Stats(*pieces))
    _check_label_count(len(stats.n))
    cells = (idx // w // f) * gw + (idx % w) // f

    # Pieces of one cable (split where it crosses or touches something) join if within 4 cells, similar in colour.
    pgrid, near = _piece_pairs(cells, new, gh, gw)
    lut = _merge_groups(near, _means(stats), params.merge_distance, m, _THIN_ANGLE)
    stats = stats.regroup(lut, int(lut.max()) + 1)
    means = _means(stats)

    # Pixels within a cell of a piece take the nearer of their label and the piece's.
    area = np.concatenate([area, np.zeros(len(means) - m, np.int64)])
    touching = _claim_ring(img, labels, area, pgrid, lut, means, f)
    join = _merge_groups(touching, means, 0.5 * params.merge_distance, 1, 0.0)
    # Region labels are unchanged by the piece merge above.
    return area, stats.regroup(join, int(join.max()) + 1), _relabel_pairs(np.vstack([pairs, touching]), join), join


# ---- 4. numbering and records ----

@jit
def _relabel_boxes(labels, table, k):
    """``table[labels]`` and the bounding box (x, y, w, h) of each new label 1..k, from where labels change along
    the rows."""
    h, w = labels.shape
    out = np.empty_like(labels)
    box = np.empty((k + 1, 4), np.int64)
    box[:, 0], box[:, 1], box[:, 2], box[:, 3] = w, h, -1, -1  # x0, y0, x1, y1 while scanning
    for y in range(h):
        src, dst = labels[y], out[y]
        for x in range(w):
            dst[x] = table[src[x]]
        t = dst[0]
        box[t, 0], box[t, 1], box[t, 3] = 0, min(box[t, 1], y), y
        for x in range(1, w):
            if dst[x] != dst[x - 1]:
                t, u = dst[x - 1], dst[x]
                box[t, 2] = max(box[t, 2], x - 1)
                box[u, 0], box[u, 1], box[u, 3] = min(box[u, 0], x), min(box[u, 1], y), y
        box[dst[w - 1], 2] = w - 1
    box[:, 2:] -= box[:, :2] - 1
    return out, box


@jit
def _separation(means, pairs):
    """Distance from each region's mean colour to the nearest of the background's and its neighbours' (``pairs``)."""
    sep = np.empty(len(means))
    for i in range(len(means)):
        sep[i] = np.sqrt(_dist2(_row(means, i), _row(means, 0)))
    for k in range(len(pairs)):
        a, b = pairs[k, 0], pairs[k, 1]
        d = np.sqrt(_dist2(_row(means, a), _row(means, b)))
        sep[a], sep[b] = min(sep[a], d), min(sep[b], d)
    return sep


def _finish(labels: np.ndarray, area: np.ndarray, lut: np.ndarray, stats: _Stats, pairs: np.ndarray,
            min_area: int) -> InstanceLabels:
    """Relabel through ``lut``, drop small instances, number the rest by area (largest first, ties by label) and
    build the records; ``area`` counts the pixels of each label before ``lut``."""
    m = len(stats.n)
    area = np.bincount(lut, area, m).astype(np.int64)
    area[0] = 0
    keep = np.flatnonzero(area >= min_area)
    keep = keep[np.argsort(-area[keep], kind="stable")]
    order = np.zeros(m, np.uint16)
    order[keep] = np.arange(1, len(keep) + 1)
    labels, box = _relabel_boxes(labels, order[lut], len(keep))
    means = _means(stats)
    spread = _spread(stats)
    # Separation b: distance to the nearest neighbouring region's mean colour, background always counted.
    score = 1.0 - spread / np.sqrt(spread**2 + _separation(means, pairs) ** 2 + 1e-12)
    instances = list(map(Instance, range(1, len(keep) + 1), area[keep].tolist(), map(tuple, box[1:].tolist()),
                         score[keep].tolist(), map(tuple, means[keep].tolist())))
    return InstanceLabels(labels, instances)
