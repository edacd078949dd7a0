"""Stage 4 of ``label_instances``: small or low-scoring regions to background, the rest numbered by area, and the
records."""
from __future__ import annotations

import numpy as np

from seg_node.jit import jit
from seg_node.instances._kernels import _Stats, _dist2, _means, _rgb, _row, _segment_dist2, _spread
from seg_node.instances.records import Instance, InstanceLabels


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
    """Distance from each region's mean colour to the nearest other explanation of it: the background's mean, a
    neighbour's (``pairs``), or a blend of a neighbour with the background. The last is how a model draws an
    object's shadow or glow next to it (its colour, dimmed towards black): such a region is an echo of the object,
    not one of its own."""
    sep = np.empty(len(means))
    background = _row(means, 0)
    for i in range(len(means)):
        sep[i] = np.sqrt(_dist2(_row(means, i), background))
    for k in range(len(pairs)):
        a, b = pairs[k, 0], pairs[k, 1]
        d = np.sqrt(_dist2(_row(means, a), _row(means, b)))
        sep[a], sep[b] = min(sep[a], d), min(sep[b], d)
        if a > 0 and b > 0:
            sep[a] = min(sep[a], np.sqrt(_segment_dist2(_row(means, a), background, _row(means, b))))
            sep[b] = min(sep[b], np.sqrt(_segment_dist2(_row(means, b), background, _row(means, a))))
    return sep


@jit
def _border_steps(labels, lut, img, m):
    """Mean colour step across each region's border: over the 4-neighbour pixel pairs whose labels (through
    ``lut``, ``m`` regions) differ, the colour distance between the two pixels, averaged per region on either side;
    0 for a region with no border inside the frame."""
    h, w = labels.shape
    total, count = np.zeros(m), np.zeros(m)
    for y in range(h):
        for x in range(w):
            for dy, dx in ((0, 1), (1, 0)):
                yy, xx = y + dy, x + dx
                # Equal labels map to equal regions: look up only where they differ.
                if yy < h and xx < w and labels[yy, xx] != labels[y, x]:
                    a, b = lut[labels[y, x]], lut[labels[yy, xx]]
                    if b != a:
                        d = np.sqrt(_dist2(_rgb(img, y, x), _rgb(img, yy, xx)))
                        total[a] += d
                        total[b] += d
                        count[a] += 1
                        count[b] += 1
    return total / np.maximum(count, 1.0)


def _finish(labels: np.ndarray, area: np.ndarray, lut: np.ndarray, stats: _Stats, pairs: np.ndarray,
            min_area: int, background_threshold: float, min_score: float, img: np.ndarray,
            border_contrast: float) -> InstanceLabels:
    """Relabel through ``lut``, drop instances under ``min_area`` pixels or ``min_score``, number the rest by area
    (largest first, ties by label) and build the records; ``area`` counts the pixels of each label before ``lut``,
    ``img`` is the colour map ``labels`` label."""
    m = len(stats.n)
    area = np.bincount(lut, area, m).astype(np.int64)
    area[0] = 0
    means = _means(stats)
    spread = _spread(stats)
    # Separation b: distance to the nearest other explanation of the region's colour (see _separation).
    score = 1.0 - spread / np.sqrt(spread**2 + _separation(means, pairs) ** 2 + 1e-12)
    if background_threshold > 0:
        # A region that only just clears the background threshold is as likely a background blotch (a shadow, a
        # textured patch the model lit up) as an object, however uniform it is.
        margin = (np.sqrt(np.einsum("ij,ij->i", means, means)) - background_threshold) / background_threshold
        score *= np.clip(margin, 0.0, 1.0)
    if border_contrast > 0:
        # An object ends in a step of colour; a region that fades into its surroundings (a shadow, a lit-up patch of
        # table, a piece split off an object by a colour drift) is as uniform inside, and its mean as far from its
        # neighbours', but its border is soft.
        score *= np.minimum(_border_steps(labels, lut, img, m) / border_contrast, 1.0)
    keep = np.flatnonzero((area >= min_area) & (score >= min_score))
    keep = keep[np.argsort(-area[keep], kind="stable")]
    order = np.zeros(m, np.uint16)
    order[keep] = np.arange(1, len(keep) + 1)
    labels, box = _relabel_boxes(labels, order[lut], len(keep))
    instances = list(map(Instance, range(1, len(keep) + 1), area[keep].tolist(), map(tuple, box[1:].tolist()),
                         score[keep].tolist(), map(tuple, means[keep].tolist())))
    return InstanceLabels(labels, instances)
