"""Masks as RGB images ("maskige", GSS): a label map written as an image that an image VAE can carry, and read back.

Encoding gives every instance a colour from a small lattice of codes in the RGB cube (``levels`` values per
channel; black is the background). The default, ``levels=2``, uses the cube's 7 non-black corners: codes 255 apart,
the largest distance three channels allow, so colour shifts and blur from a VAE round trip rarely flip a pixel to
another code. Ids are not colours: touching instances get different codes (greedy graph colouring, least-used code
first), and instances that share a code are told apart again by connectivity when decoding.

Decoding (X⁻¹) maps each pixel to its nearest code, optionally after an affine colour correction fitted to a VAE's
round trips (``MaskigeCodec.fitted``, GSS's "lightly learned" transform), splits each code into connected pieces,
and merges specks smaller than ``min_area`` into the nearest large piece (VAE noise, not objects).

numpy / OpenCV / scipy only: the runtime uses it without torch.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

__all__ = ["MaskigeCodec", "encode_maskige", "decode_maskige", "fit_color_transform"]

_NEIGHBOUR_KERNEL = np.ones((3, 3), np.uint8)


def _lattice(levels: int) -> np.ndarray:
    """(levels³, 3) float32 codes, black first; the others ordered so that the first ones are far apart (corners)."""
    values = np.linspace(0.0, 255.0, levels)
    codes = np.array(list(itertools.product(values, repeat=3)), np.float32)
    # Sort by how many channels sit at an extreme (corners first), then by distance from black: the greedy
    # colouring takes the earliest least-used code, so few instances use the best separated colours.
    extreme = ((codes == 0) | (codes == 255)).sum(1)
    order = np.lexsort((-np.linalg.norm(codes, axis=1), -extreme))
    codes = codes[order]
    black = int(np.flatnonzero(~codes.any(1))[0])
    return np.concatenate([codes[black:black + 1], np.delete(codes, black, 0)])


def fit_color_transform(sent: np.ndarray, received: np.ndarray) -> np.ndarray:
    """Least-squares affine map (4×3: rows 0..2 the matrix, row 3 the offset) taking ``received`` colours (N×3, e.g.
    after a VAE round trip) back to the ``sent`` codes (N×3)."""
    sent = np.asarray(sent, np.float64).reshape(-1, 3)
    received = np.asarray(received, np.float64).reshape(-1, 3)
    if sent.shape != received.shape or len(sent) < 4:
        raise ValueError(f"need matching N×3 colour sets with N >= 4, got {sent.shape} and {received.shape}")
    design = np.concatenate([received, np.ones((len(received), 1))], 1)
    transform, *_ = np.linalg.lstsq(design, sent, rcond=None)
    return transform.astype(np.float32)


@dataclass(frozen=True)
class MaskigeCodec:
    """Label map ↔ maskige. ``levels``: code values per channel (2..6); ``transform``: an optional 4×3 affine
    colour correction applied before the nearest-code lookup (``fit_color_transform``); ``min_area``: decoded pieces
    smaller than this (pixels) join their nearest larger neighbour."""

    levels: int = 2
    transform: np.ndarray | None = None
    min_area: int = 4

    def __post_init__(self) -> None:
        if not 2 <= self.levels <= 6:
            raise ValueError(f"levels must be 2..6, got {self.levels}")
        if self.transform is not None and np.asarray(self.transform).shape != (4, 3):
            shape = np.asarray(self.transform).shape
            raise ValueError(f"transform must be 4×3 (matrix rows + offset row), got {shape}")
        if self.min_area < 1:
            raise ValueError(f"min_area must be >= 1, got {self.min_area}")

    @property
    def codes(self) -> np.ndarray:
        """(levels³, 3) float32 code colours; row 0 is the background (black)."""
        return _lattice(self.levels)

    def fitted(self, sent: np.ndarray, received: np.ndarray) -> MaskigeCodec:
        """This codec with a colour correction fitted on (sent maskige, received maskige) pixel pairs."""
        return MaskigeCodec(self.levels, fit_color_transform(sent, received), self.min_area)

    def encode(self, labels: np.ndarray) -> np.ndarray:
        """H×W integer label map (0 = background) → uint8 H×W×3 maskige."""
        labels = np.asarray(labels)
        if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be an H×W integer array, got {labels.dtype} {labels.shape}")
        if labels.size and labels.min() < 0:
            raise ValueError("labels must be >= 0 (0 = background)")
        ids, inverse = np.unique(labels, return_inverse=True)
        dense = inverse.reshape(labels.shape).astype(np.int32)  # 0..len(ids)-1, background 0 if present
        offset = int(ids[0] == 0)
        code_of = np.zeros(len(ids), np.int64)
        codes = self.codes
        uses = np.zeros(len(codes), np.int64)
        areas = np.bincount(dense.ravel(), minlength=len(ids))
        for k in sorted(range(offset, len(ids)), key=lambda k: -areas[k]):  # large instances choose first
            ring = cv2.dilate((dense == k).astype(np.uint8), _NEIGHBOUR_KERNEL).astype(bool)
            taken = {int(code_of[j]) for j in np.unique(dense[ring]) if j != k and code_of[j] > 0}
            free = [c for c in range(1, len(codes)) if c not in taken]  # code 0, black, is the background's
            pool = free or list(range(1, len(codes)))  # more neighbours than codes: connectivity cannot split them
            code_of[k] = min(pool, key=lambda c: (uses[c], c))
            uses[code_of[k]] += 1
        return codes[code_of][dense].round().astype(np.uint8)

    def nearest_code(self, maskige: np.ndarray) -> np.ndarray:
        """H×W×3 maskige (any float or uint8 0..255 image) → H×W int32 index of the nearest code (0 = background)."""
        img = np.asarray(maskige, np.float32)
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"maskige must be H×W×3, got {img.shape}")
        if self.transform is not None:
            t = np.asarray(self.transform, np.float32)
            img = img @ t[:3] + t[3]
        codes = self.codes
        # |x − c|² = |x|² − 2x·c + |c|²; the |x|² term is the same for every code.
        score = img.reshape(-1, 3) @ (-2.0 * codes.T) + (codes**2).sum(1)
        return score.argmin(1).reshape(img.shape[:2]).astype(np.int32)

    def decode(self, maskige: np.ndarray) -> np.ndarray:
        """H×W×3 maskige → uint16 H×W label map: 0 = background, 1..K connected pieces of each non-background code."""
        code = self.nearest_code(maskige)
        pieces = np.zeros(code.shape, np.int32)
        count = 0
        for c in np.unique(code):
            n, comp = cv2.connectedComponents((code == c).astype(np.uint8), connectivity=8)
            hit = comp > 0
            pieces[hit] = comp[hit] + count
            count += n - 1
        areas = np.bincount(pieces.ravel(), minlength=count + 1)
        small = areas[pieces] < self.min_area
        if small.any() and not small.all():
            # Specks take the piece of the nearest pixel that is not a speck.
            _, (iy, ix) = ndimage.distance_transform_edt(small, return_indices=True)
            pieces = pieces[iy, ix]
            code = code[iy, ix]
        pieces[code == 0] = 0
        _, dense = np.unique(pieces, return_inverse=True)
        dense = dense.reshape(pieces.shape)
        return (dense if (pieces == 0).any() else dense + 1).astype(np.uint16)


def encode_maskige(labels: np.ndarray, codec: MaskigeCodec | None = None) -> np.ndarray:
    """H×W label map (0 = background) → uint8 H×W×3 maskige with ``codec`` (default: the fixed 7-corner code)."""
    return (codec or MaskigeCodec()).encode(labels)


def decode_maskige(maskige: np.ndarray, codec: MaskigeCodec | None = None) -> np.ndarray:
    """H×W×3 maskige (e.g. a VAE's output) → uint16 H×W label map (0 = background)."""
    return (codec or MaskigeCodec()).decode(maskige)
