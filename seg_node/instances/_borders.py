"""Stage 2 of ``label_instances``: labels at full resolution, borders in the middle of the colour ramp between
regions (numba kernel)."""
from __future__ import annotations

import numpy as np

from seg_node.jit import jit
from seg_node.instances._kernels import _dist2, _max_min3, _rgb, _row, _segment_dist2


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
