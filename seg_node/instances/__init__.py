"""Discrete instances ("segment everything") from a gen2seg instance colouring, with numpy, OpenCV and numba.

gen2seg outputs a float32 H×W×3 colouring in 0..255: every instance a roughly uniform, arbitrary colour, background
near black (docs/design.md, "Models and their output"). The official code stops there. ``label_instances`` turns it into a
uint16 label map and per-instance records:

1. Seeds: on a grid ``downsample`` times coarser (block means, which also average the noise down), the 4-connected
   regions of pixels whose colour gradient is below ``edge_threshold``; near-black ones are background. OpenCV's
   watershed (ported: the same result) grows them over the remaining grid pixels, and regions within 4 cells of
   each other whose mean colours differ by less than ``merge_distance`` are merged (noise splits instances into
   several flat regions), and so are touching regions whose colours one cell in from their border, on each side,
   differ by less than ``continuity_distance`` along most of it (a colour drift across a large object splits it
   into flat regions with distant means, but no step where they meet).
2. At full resolution, each pixel of a grid cell that borders another region, or is not flat, takes whichever of
   its cell's label and the highest and lowest labels around that cell has the nearest mean colour; borders thus
   land in the middle of the colour ramp between two instances.
3. Pixels that no region around them explains, neither by colour nor as a blend of two of them, are thin structures
   (cables, 1..3 px lines) with no flat core on the grid: their centre lines are grouped by colour into new regions,
   which then compete with their surroundings for the pixels next to them (``thin_structures``).
4. Each region gets a score (``Instance.score``: how uniform its colour is against what else could explain it,
   its margin over the background threshold and, with ``border_contrast``, how sharply its colour steps at its
   border). Regions under ``min_area`` pixels or scoring under ``min_score`` become background; the rest are
   numbered 1..K by area, largest first (ties: the region found first, seeds in raster order of the grid before
   thin structures).

Loops over pixels, grid cells and region pairs are numba kernels, each one pass over its data where numpy needed a
dozen passes over temporaries; per-region arithmetic stays in numpy. A 640×480 map takes about 2.3, 3.2 and 5.4 ms
on one idle core of the development machine with 10, 50 and 200 instances (bench/bench_instances.py). The first
call in a process compiles the kernels (about 15 s) or loads them from numba's cache (under a second): a node should
make one call at start-up.
"""
from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np

from seg_node.instances._borders import _full_resolution_labels
from seg_node.instances._kernels import _check_label_count, _coarse_grid, _means, _pixel_noise
from seg_node.instances._merging import _merge_similar
from seg_node.instances._numbering import _finish
from seg_node.instances._seeds import _seed_partition
from seg_node.instances._thin import _thin_structures
from seg_node.instances.records import Instance, InstanceLabels, InstanceParams

__all__ = ["Instance", "InstanceLabels", "InstanceParams", "as_color_map", "label_counts", "label_instances",
           "resize_labels", "upscale_instances"]


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
    grid = _coarse_grid(img, f)
    part, edge, stats = _seed_partition(grid, f, params)
    # Pixel noise would otherwise pass for unexplained colour: never test closer than 2.5× its expected norm.
    residual = max(params.residual_distance, 2.5 * np.sqrt(3.0) * _pixel_noise(stats, f))
    part, stats, pairs = _merge_similar(part, stats, grid, params.merge_distance, params.continuity_distance)
    _check_label_count(len(stats.n))
    # Only the thin-structure pass needs the unexplained pixels (an infinite tolerance finds none).
    labels, area, odd, odd_dist = _full_resolution_labels(img, part, edge, _means(stats), f,
                                                          residual if params.thin_structures else np.inf)
    lut = np.arange(len(stats.n))
    if len(odd):
        area, stats, pairs, lut = _thin_structures(img, labels, area, part, odd, odd_dist, stats, pairs, f, residual,
                                                   params)
    return _finish(labels, area, lut, stats, pairs, params.min_area, params.background_threshold, params.min_score,
                   img, params.border_contrast)


def resize_labels(labels: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A label map scaled to ``hw`` (H, W), nearest neighbour (OpenCV's separable pixel mapping)."""
    if labels.shape == tuple(hw):
        return labels
    return cv2.resize(labels, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)


def upscale_instances(found: InstanceLabels, hw: tuple[int, int]) -> InstanceLabels:
    """``label_instances``' output scaled to ``hw``, with each instance's area and bbox counted in the new pixels.

    Nearest-neighbour scaling maps whole source columns and rows onto runs of target ones, so the exact target areas
    and boxes follow from the source map and the two 1-D mappings; the scaled map is never scanned again.
    """
    labels, instances = found
    if labels.shape == tuple(hw):
        return found
    h, w = labels.shape
    if hw[0] < h or hw[1] < w:
        raise ValueError(f"upscale_instances scales up only: {h}×{w} labels to {hw[0]}×{hw[1]}")
    # Which source column (row) each target column (row) takes: the same call that scales the map.
    cols = resize_labels(np.arange(w, dtype=np.uint16)[None, :], (1, hw[1]))[0].astype(np.intp)
    rows = resize_labels(np.arange(h, dtype=np.uint16)[:, None], (hw[0], 1))[:, 0].astype(np.intp)
    col_count, row_count = np.bincount(cols, minlength=w), np.bincount(rows, minlength=h)
    col_first, row_first = np.searchsorted(cols, np.arange(w)), np.searchsorted(rows, np.arange(h))
    scaled_labels = resize_labels(labels, hw)
    n = max((inst.id for inst in instances), default=0) + 1
    if col_count.min() == col_count.max() and row_count.min() == row_count.max():
        # Whole-number scale factors: every source pixel becomes the same block.
        area = np.zeros(n, np.int64)
        area[[inst.id for inst in instances]] = [inst.area * int(col_count[0]) * int(row_count[0]) for inst in instances]
    else:
        area = label_counts(scaled_labels, n)
    scaled = []
    for inst in instances:
        x, y, bw, bh = inst.bbox
        x0, y0 = int(col_first[x]), int(row_first[y])
        x1 = int(col_first[x + bw - 1] + col_count[x + bw - 1])
        y1 = int(row_first[y + bh - 1] + row_count[y + bh - 1])
        scaled.append(replace(inst, area=int(area[inst.id]), bbox=(x0, y0, x1 - x0, y1 - y0)))
    return InstanceLabels(scaled_labels, scaled)


def label_counts(labels: np.ndarray, n: int) -> np.ndarray:
    """Pixels of each value 0..n-1 in a uint16 array (values must be < n), as int64."""
    if labels.size < 1 << 24:
        # OpenCV's 16-bit histogram: a third to a quarter of np.bincount's time (no cast to intp); its float32
        # counts are exact below 2^24 pixels.
        return cv2.calcHist([labels.reshape(1, -1)], [0], None, [n], [0, n]).ravel().astype(np.int64)
    return np.bincount(labels.ravel(), minlength=n)
