"""The records ``label_instances`` returns, and its parameters."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np



@dataclass(frozen=True)
class InstanceParams:
    """Tunables of ``label_instances``; colour values are on the model's 0..255 scale."""

    background_threshold: float = 30.0  # a flat region whose mean colour is closer than this to black is background
    edge_threshold: float = 6.0  # colour gradient (units per coarse-grid pixel) above which a pixel cannot seed
    downsample: int = 2  # coarse-grid factor for seeds and merging (1 = full resolution; borders are always full-res)
    min_seed_area: int = 4  # flat regions smaller than this (coarse-grid pixels) are treated as edges, not seeds
    merge_distance: float = 15.0  # regions within 4 grid cells whose mean colours are closer than this become one
    continuity_distance: float = 20.0  # touching regions whose colours step less than this across their border
    # (cells one in from it, on each side) along most of it become one; 0 = off
    residual_distance: float = 20.0  # colour farther than this from all nearby regions and blends is unexplained
    thin_structures: bool = True  # find 1..3 px structures no flat region explains
    min_area: int = 30  # instances smaller than this (full-resolution pixels) are dropped to background
    min_score: float = 0.0  # instances scoring below this (Instance.score) are dropped to background; 0 = keep all
    border_contrast: float = 0.0  # mean colour step across an instance's border below which its score is scaled
    # down in proportion (soft-bordered regions are rarely objects); 0 = off

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            ok = {"bool": isinstance(value, bool),
                  "int": isinstance(value, int) and not isinstance(value, bool),
                  "float": isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)}
            if not ok[f.type]:
                raise ValueError(f"{f.name} must be {f.type}, got {value!r}")
        _check_range("background_threshold", self.background_threshold, 0.0, 441.7)
        _check_range("edge_threshold", self.edge_threshold, 1e-3, 441.7)
        _check_range("downsample", self.downsample, 1, 8)
        _check_range("min_seed_area", self.min_seed_area, 1, None)
        _check_range("merge_distance", self.merge_distance, 0.0, 441.7)
        _check_range("continuity_distance", self.continuity_distance, 0.0, 441.7)
        _check_range("residual_distance", self.residual_distance, 1e-3, 441.7)
        _check_range("min_area", self.min_area, 1, None)
        _check_range("min_score", self.min_score, 0.0, 1.0)
        _check_range("border_contrast", self.border_contrast, 0.0, 441.7)


def _check_range(name: str, value: float, lo: float, hi: float | None) -> None:
    if value < lo or (hi is not None and value > hi):
        allowed = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {allowed}, got {value}")


@dataclass
class Instance:
    """One instance of the label map.

    ``score``, in [0, 1), is a simplified silhouette coefficient of the instance's colour cluster,
    ``1 - a / sqrt(a² + b²)``, times its margin over the background threshold. ``a`` is the RMS distance of its
    interior colours to its mean colour (coarse-grid block means of its flat region, or the centre-line pixels of a
    thin structure) and ``b`` the distance from its mean to the nearest of: the background's mean, the means of the
    regions it touches, and the blends of those with the background (a shadow or glow the model drew beside an
    object has the object's colour dimmed towards black, and scores near 0); the silhouette equals
    ``(b' - a) / b'`` with ``b'`` the RMS distance of those colours to that nearest other mean: high when the
    instance is uniform and far in colour from everything next to it, near 0 when a neighbour's colour is within
    the instance's own noise (a likely wrong split or merge). The margin is
    ``min(1, (|mean| - T) / T)`` with T = ``background_threshold`` (1 when T is 0): a region whose colour only just
    clears the threshold is as likely a background blotch as an object. With ``InstanceParams.border_contrast`` C
    above 0, the score is also scaled by ``min(1, s / C)``, ``s`` the mean colour distance between the two pixels
    of each 4-neighbour pair across its border: an object ends in a step of colour, while a shadow, a lit-up patch
    of table or a piece split off an object by a colour drift fades into what surrounds it.
    """

    id: int  # 1-based, equal to its value in the label map
    area: int  # pixels
    bbox: tuple[int, int, int, int]  # x, y, w, h
    score: float
    mean_color: tuple[float, float, float]  # mean colour of its interior (flat-region or centre-line) pixels


class InstanceLabels(NamedTuple):
    labels: np.ndarray  # uint16 H×W, 0 = background, i = instances[i - 1]
    instances: list[Instance]
