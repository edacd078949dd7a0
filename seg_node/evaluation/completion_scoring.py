"""Mask completion scored against ground truth: the hiding protocol, the scores and their sums, shared by
``bench/bench_completion.py`` (synthetic scenes) and ``bag_eval --completion`` (recorded bags).

Protocol. Of every ground-truth instance a fraction of its pixels is hidden, as random discs ("blobs") or as one band
across it ("band"); every other pixel, background included, is known. The completion (``complete_labels`` on the
frame's colour map) and the baseline (``nearest_label_fill``: every hidden pixel takes the nearest known label) are
scored per instance of at least ``MIN_AREA`` px: the IoU of the pixels given its id with its whole mask (the known part
included); and over all hidden pixels, the share given the right id.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

PATTERNS = ("blobs", "band")
MIN_AREA = 30  # ground-truth instances smaller than this are not scored (the labeller's own min_area)
HIDDEN_GREY = 128  # how hidden pixels show in a figure's partial panel


def hide(gt: np.ndarray, fraction: float, pattern: str, rng: np.random.Generator) -> np.ndarray:
    """Bool mask of hidden pixels: about ``fraction`` of every instance, as random discs or one band across it."""
    hidden = np.zeros(gt.shape, bool)
    for k in np.unique(gt[gt > 0]):
        ys, xs = np.nonzero(gt == k)
        n = len(ys)
        if pattern == "band":
            theta = rng.uniform(0, np.pi)
            rank = np.argsort(np.argsort(xs * np.cos(theta) + ys * np.sin(theta))) / n
            start = rng.uniform(0, 1 - fraction)
            take = (rank >= start) & (rank < start + fraction)
            hidden[ys[take], xs[take]] = True
            continue
        radius = max(2.0, 0.3 * np.sqrt(n / np.pi))
        mine = np.zeros(n, bool)
        while mine.sum() < fraction * n:
            c = rng.integers(n)
            mine |= (ys - ys[c]) ** 2 + (xs - xs[c]) ** 2 <= radius ** 2
        hidden[ys[mine], xs[mine]] = True
    return hidden


def instance_scores(pred: np.ndarray, gt: np.ndarray, hidden: np.ndarray) -> tuple[list[float], int]:
    """Per-instance IoU (instances of at least MIN_AREA px) and the number of hidden pixels with the right id."""
    ious = []
    for k in np.unique(gt[gt > 0]):
        g, p = gt == k, pred == k
        if g.sum() >= MIN_AREA:
            ious.append(float((g & p).sum() / (g | p).sum()))
    return ious, int((pred[hidden] == gt[hidden]).sum())


@dataclass
class Scores:
    """A completion and the baseline against the ground truth, or their sums over frames."""

    ious: list[float]
    baseline_ious: list[float]
    right: int
    baseline_right: int
    hidden: int


def compare(completed: np.ndarray, baseline: np.ndarray, gt: np.ndarray, hidden: np.ndarray) -> Scores:
    (ious, right), (base_ious, base_right) = instance_scores(completed, gt, hidden), instance_scores(baseline, gt, hidden)
    return Scores(ious, base_ious, right, base_right, int(hidden.sum()))


def row_name(percent: int, pattern: str) -> str:
    return f"{pattern} {percent}%"


def _share(n: int, of: int) -> float | None:
    return round(n / of, 4) if of else None


class Tally:
    """Scores summed per row (a hidden percentage and pattern), in the order rows first appear."""

    def __init__(self) -> None:
        self.rows: dict[str, Scores] = {}

    def add(self, name: str, s: Scores) -> None:
        row = self.rows.setdefault(name, Scores([], [], 0, 0, 0))
        row.ious += s.ious
        row.baseline_ious += s.baseline_ious
        row.right += s.right
        row.baseline_right += s.baseline_right
        row.hidden += s.hidden

    def summary(self) -> dict[str, dict[str, Any]]:
        return {name: {"instances": len(r.ious),
                       "completion_iou": round(float(np.mean(r.ious)), 4) if r.ious else None,
                       "baseline_iou": round(float(np.mean(r.baseline_ious)), 4) if r.baseline_ious else None,
                       "completion_hidden_correct": _share(r.right, r.hidden),
                       "baseline_hidden_correct": _share(r.baseline_right, r.hidden)}
                for name, r in self.rows.items()}
