"""Stage 1 of ``label_instances``: flat regions of the coarse grid as seeds, grown over the rest as OpenCV's watershed
does (numba kernels)."""
from __future__ import annotations

import numpy as np

from seg_node.jit import jit
from seg_node.instances._kernels import _Stats, _means, _number_sets, _union
from seg_node.instances.records import InstanceParams


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
def _color_step(g8, p, q):
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
                level = min(level, _color_step(g8, p, q))
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
                    level = _color_step(g8, p, q)
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
