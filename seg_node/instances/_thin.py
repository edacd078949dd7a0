"""Stage 3 of ``label_instances``: thin structures (cables, 1..3 px lines) that no flat region explains."""
from __future__ import annotations

import numpy as np

from seg_node.jit import jit
from seg_node.instances._kernels import (_Stats, _check_label_count, _direction, _dist2, _label_stats, _means,
                                         _merge_groups, _number_sets, _rgb, _row, _union)
from seg_node.instances._merging import _relabel_pairs

_THIN_ANGLE = 0.15  # radians: thin-structure pixels and pieces whose colour directions differ less are one structure


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
