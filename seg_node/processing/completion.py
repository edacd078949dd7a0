"""Mask completion (LDMSeg-style mask inpainting) on a gen2seg colour map, with numpy, OpenCV and scipy.

A caller knows part of a frame's segmentation (``partial_labels`` where ``known_mask`` is set: ids from a human, an
earlier frame, another detector) and wants the rest. The colour map says which pixels belong together, so:

1. Every known segment (known background, id 0, included) gets a reference colour: the median over its known pixels,
   robust to the soft-border pixels a label always covers.
2. Flood: an unknown pixel joins segment k when it is 4-connected to k's known pixels through unknown pixels whose
   colour lies within ``t_k`` of k's reference. ``t_k`` is the point prompt's in-mask distance
   (``tau / min_similarity``), widened up to twice that for segments whose own known pixels are noisier (2.6 × their
   median distance: the 99.9th percentile of Gaussian noise's norm); the cap keeps a segment that the model paints
   in two colours from leaking into its neighbours. A pixel reached by several segments takes the nearest colour.
3. What no flood reached is grouped by ``label_instances`` on the whole map (so its borders and thin structures are
   found as in ``segment``), restricted to those pixels. An instance there whose mean colour is within ``t_k`` of the
   segment it overlaps most, or that is mostly covered by that segment already, is the hidden rest of it (the flood
   stopped at a shading ramp); any other instance is a new segment, numbered from the largest known id + 1 in order
   of size. Pieces under ``min_area`` take the nearest segment's id; pixels ``label_instances`` calls background are 0.
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from seg_node.instances import InstanceParams, as_color_map, label_instances
from seg_node.processing.prompting import PromptParams

_NOISE_QUANTILE = 2.6  # the 99.9th percentile of the norm of 3-channel Gaussian noise, over its median
_MAX_WIDEN = 2.0  # a segment's flood threshold grows at most this much above the prompt's


def check_partial(partial_labels: np.ndarray, known_mask: np.ndarray | None, hw: tuple[int, int]) -> np.ndarray:
    """The known-pixel mask after checking both inputs against an H×W frame; ``None`` = the non-zero labels."""
    if not isinstance(partial_labels, np.ndarray):
        raise ValueError(f"partial_labels must be a numpy array, got {type(partial_labels).__name__}")
    if partial_labels.dtype != np.uint16:
        raise ValueError(f"partial_labels must be uint16 (0 = background, k = segment k), got dtype {partial_labels.dtype}")
    if partial_labels.shape != tuple(hw):
        raise ValueError(f"partial_labels has shape {partial_labels.shape}, the frame is {hw[0]}×{hw[1]}")
    if known_mask is None:
        known_mask = partial_labels > 0
    elif not isinstance(known_mask, np.ndarray) or known_mask.dtype != np.bool_:
        kind = known_mask.dtype if isinstance(known_mask, np.ndarray) else type(known_mask).__name__
        raise ValueError(f"known_mask must be a bool numpy array (True = label known), got {kind}")
    elif known_mask.shape != partial_labels.shape:
        raise ValueError(f"known_mask has shape {known_mask.shape}, partial_labels {partial_labels.shape}")
    if not known_mask.any():
        raise ValueError("known_mask marks no pixel as known: nothing to complete from (segment the frame instead)")
    return known_mask


def complete_labels(colors: np.ndarray, partial_labels: np.ndarray, known_mask: np.ndarray | None = None,
                    instances: InstanceParams = InstanceParams(), prompting: PromptParams = PromptParams()) -> np.ndarray:
    """The full uint16 label map of a colour map, given ``partial_labels`` where ``known_mask`` is True (see the
    module docstring). Known pixels keep their ids; ``known_mask=None`` takes the non-zero labels as the known ones."""
    img = as_color_map(colors)
    known = check_partial(partial_labels, known_mask, img.shape[:2])
    out = np.where(known, partial_labels, 0).astype(np.uint16)
    if known.all():
        return out
    ids, refs, limits = _references(img, partial_labels, known, prompting.tau / prompting.min_similarity)
    reach = _flood(img, partial_labels, known, ids, refs, limits)
    flooded = reach >= 0
    out[flooded] = ids[reach[flooded]]
    rest = ~known & ~flooded
    if rest.any():
        _fill_rest(img, out, rest, refs, limits, ids, instances)
    return out


def nearest_label_fill(partial_labels: np.ndarray, known_mask: np.ndarray) -> np.ndarray:
    """The baseline without a colour map: every unknown pixel takes the label of the nearest known pixel."""
    known = check_partial(partial_labels, known_mask, partial_labels.shape)
    _, (iy, ix) = ndimage.distance_transform_edt(~known, return_indices=True)
    return partial_labels[iy, ix]


def _references(img: np.ndarray, partial: np.ndarray, known: np.ndarray,
                tau: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Known ids, their median colours and flood thresholds."""
    values = partial[known]
    pixels = img[known]
    order = np.argsort(values, kind="stable")
    ids, starts = np.unique(values[order], return_index=True)
    groups = np.split(pixels[order], starts[1:])
    refs = np.stack([np.median(g, axis=0) for g in groups]).astype(np.float32)
    spread = np.array([np.median(np.linalg.norm(g - r, axis=1)) for g, r in zip(groups, refs)])
    limits = np.clip(_NOISE_QUANTILE * spread, tau, _MAX_WIDEN * tau)
    return ids, refs, limits


def _distance(img: np.ndarray, ref: np.ndarray) -> np.ndarray:
    diff = img - ref
    return np.sqrt(np.einsum("ijc,ijc->ij", diff, diff))


def _flood(img: np.ndarray, partial: np.ndarray, known: np.ndarray, ids: np.ndarray, refs: np.ndarray,
           limits: np.ndarray) -> np.ndarray:
    """Per unknown pixel, the index into ``ids`` of the segment whose colour flood reaches it (nearest colour
    among several), -1 where none does."""
    unknown = ~known
    best = np.full(known.shape, np.inf, np.float32)
    reach = np.full(known.shape, -1, np.int32)
    for i, (k, ref, limit) in enumerate(zip(ids, refs, limits)):
        d = _distance(img, ref)
        seeds = known & (partial == k)
        passable = (unknown & (d < limit)) | seeds
        n, comp = cv2.connectedComponents(passable.view(np.uint8), connectivity=4)
        touched = np.zeros(n, bool)
        touched[comp[seeds]] = True
        touched[0] = False
        mine = touched[comp] & unknown & (d < best)
        best[mine] = d[mine]
        reach[mine] = i
    return reach


def _fill_rest(img: np.ndarray, out: np.ndarray, rest: np.ndarray, refs: np.ndarray, limits: np.ndarray,
               ids: np.ndarray, params: InstanceParams) -> None:
    """Labels for the pixels no flood reached (step 3 of the module docstring), written into ``out``."""
    found = label_instances(img, params)
    regions = found.labels.astype(np.int64)
    assigned = ~rest & (regions > 0)
    # Pixels of each label_instances region per segment already in ``out``.
    pair, count = np.unique(regions[assigned] << 16 | out[assigned], return_counts=True)
    overlap: dict[int, tuple[int, int]] = {}
    for p, c in zip(pair.tolist(), count.tolist()):
        r, seg = p >> 16, p & 0xFFFF
        if c > overlap.get(r, (0, 0))[1]:
            overlap[r] = (seg, c)
    index = {int(k): i for i, k in enumerate(ids)}
    rest_regions = regions[rest]
    piece_area = np.bincount(rest_regions, minlength=len(found.instances) + 1)
    new: list[int] = []
    lut = np.zeros(len(found.instances) + 1, np.int64)  # region → id for its rest pixels; -1 = nearest segment
    for r in np.flatnonzero(piece_area[1:]) + 1:
        inst = found.instances[r - 1]
        seg, c = overlap.get(int(r), (-1, 0))
        if seg >= 0:
            i = index[seg]
            close = np.linalg.norm(np.asarray(inst.mean_color, np.float32) - refs[i]) <= limits[i]
            if close or c >= inst.area / 2:
                lut[r] = seg
                continue
        if piece_area[r] < params.min_area:
            lut[r] = -1
        else:
            new.append(int(r))
    first = int(ids.max()) + 1
    if new and first + len(new) - 1 > np.iinfo(np.uint16).max:
        raise ValueError(f"{len(new)} new segments above the largest known id {first - 1} do not fit uint16 labels")
    for j, r in enumerate(sorted(new, key=lambda r: -piece_area[r])):
        lut[r] = first + j
    filled = lut[rest_regions]
    out[rest] = np.maximum(filled, 0)
    if (filled < 0).any():
        stray = np.zeros_like(rest)
        stray[rest] = filled < 0
        _, (iy, ix) = ndimage.distance_transform_edt(stray, return_indices=True)
        out[stray] = out[iy[stray], ix[stray]]
