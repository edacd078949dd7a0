"""Mask completion scored against ground truth: the hiding protocol, the scores and their sums, shared by
``bench/bench_completion.py`` (synthetic scenes) and ``bag_eval --completion`` (recorded bags).

Protocol. Of every ground-truth instance a fraction of its pixels is hidden, as random discs ("blobs") or as one band
across it ("band"); every other pixel, background included, is known. The completion (``complete_labels`` on the
frame's colour map) and the baseline (``nearest_label_fill``: every hidden pixel takes the nearest known label) are
scored per instance of at least ``MIN_AREA`` px: the IoU of the pixels given its id with its whole mask (the known part
included); and over all hidden pixels, the share given the right id.

In ``bag_eval`` the hiding is seeded by the frame's position on the image topic, the percentage and the pattern, so a
frame hides the same pixels in every run, whatever else ``--completion`` lists and however many workers run.
"""
from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from seg_node.evaluation.metrics import GtFrame
from seg_node.instances import InstanceParams
from seg_node.processing.completion import complete_labels, nearest_label_fill
from seg_node.processing.prompting import PromptParams
from seg_node.processing.visualize import label_colors, panels

PATTERNS = ("blobs", "band")
MIN_AREA = 30  # ground-truth instances smaller than this are not scored (the labeller's own min_area)
HIDDEN_GREY = 128  # how hidden pixels show in a figure's partial panel
FIGURE = "completion.png"
NO_SCORABLE_INSTANCE = "no_instance_of_min_area"
DEFINITION = (f"per GT instance (crowd regions stay known and unscored), PERCENT % of its pixels hidden as random discs "
              f"(blobs) or one band across it (band), seeded by the frame's seq, the percentage and the pattern; all other "
              f"pixels (background included) known. Completion = Segmenter's complete_labels on the frame's colour map; "
              f"baseline = nearest known label. completion_iou / baseline_iou = mean over GT instances of >= {MIN_AREA} px "
              f"of the IoU of the pixels given its id with its whole mask; *_hidden_correct = share of hidden pixels given "
              f"the right id. Frames with ground truth but no instance of >= {MIN_AREA} px are counted in not_scored.")


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


# ----------------------------------------------------------------------------------------------- bag_eval


@dataclass(frozen=True)
class Protocol:
    """What ``bag_eval --completion`` hides: these percentages of every instance, in these patterns."""

    percents: tuple[int, ...]
    patterns: tuple[str, ...]

    def rows(self) -> list[tuple[int, str]]:
        return [(p, pattern) for p in self.percents for pattern in self.patterns]

    @property
    def figure_row(self) -> tuple[int, str]:
        """The row the figure shows: the most hidden, as a band when bands are scored (the hardest case, as in the
        bench's figure)."""
        return self.percents[-1], self.patterns[-1]


def percents(text: str) -> tuple[int, ...]:
    """argparse type of ``--completion``: distinct whole percentages in 1..99, comma-separated."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(1 <= v <= 99 for v in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct whole percentages in 1..99, comma-separated like 30,60,90; "
                                         f"got {text!r}")
    return tuple(sorted(values))


def add_completion_arguments(group: Any) -> None:
    group.add_argument("--completion", type=percents, metavar="PERCENTS",
                       help="also score mask completion: hide these percentages of every ground-truth instance "
                            "(e.g. 30,60,90), complete them on the frame's colour map and compare with a nearest-label "
                            "fill (default: off)")
    group.add_argument("--completion-pattern", choices=(*PATTERNS, "both"), default="both",
                       help="how --completion hides: random discs (blobs), one band across the instance, or both "
                            "(default both)")


def completion_protocol(args: argparse.Namespace) -> Protocol | None:
    if not args.completion:
        return None
    patterns = PATTERNS if args.completion_pattern == "both" else (args.completion_pattern,)
    return Protocol(args.completion, patterns)


def gt_label_map(gt: GtFrame) -> tuple[np.ndarray, np.ndarray]:
    """uint16 maps of the ground truth (instance i has id i + 1; where COCO masks overlap, the later one) with and
    without its crowd regions."""
    if len(gt) > np.iinfo(np.uint16).max:
        raise ValueError(f"{len(gt)} ground-truth instances: mask completion takes at most 65535")
    labels = np.zeros((gt.height, gt.width), np.uint16)
    for i in range(len(gt)):
        labels[gt.mask(i)] = i + 1
    crowd = [i + 1 for i, c in enumerate(gt.crowd) if c]
    return labels, np.where(np.isin(labels, crowd), 0, labels).astype(np.uint16)


@dataclass
class FrameCompletion:
    """One frame's scores per row (none: no instance to score) and the figure row's hidden mask and completed map
    (sent with every frame: only the parent knows which frame is the first scored)."""

    scores: dict[str, Scores]
    example: tuple[np.ndarray, np.ndarray] | None = None


def score_frame(colors: np.ndarray, gt: GtFrame, seq: int, protocol: Protocol, instances: InstanceParams,
                prompting: PromptParams) -> FrameCompletion:
    """Every row of ``protocol`` on one frame: hide, complete on ``colors`` (the frame's colour map), score."""
    labels, scored = gt_label_map(gt)
    out = FrameCompletion({})
    if not (np.bincount(scored.ravel())[1:] >= MIN_AREA).any():
        return out
    for percent, pattern in protocol.rows():
        rng = np.random.default_rng([17, seq, percent, PATTERNS.index(pattern)])
        hidden = hide(scored, percent / 100, pattern, rng)
        partial = np.where(hidden, 0, labels).astype(np.uint16)
        completed = complete_labels(colors, partial, ~hidden, instances, prompting)
        out.scores[row_name(percent, pattern)] = compare(completed, nearest_label_fill(partial, ~hidden), scored, hidden)
        if (percent, pattern) == protocol.figure_row:
            out.example = (hidden, completed)
    return out


class CompletionEvaluation:
    """The frames' completion scores summed in frame order, and the figure of the first scored frame."""

    def __init__(self, protocol: Protocol) -> None:
        self.protocol = protocol
        self.tally = Tally()
        self.scored = 0
        self.not_scored: Counter[str] = Counter()
        self.figure: bytes | None = None
        self.figure_frame: int | None = None

    def add(self, index: int, rgb: np.ndarray, gt: GtFrame, result: FrameCompletion) -> dict[str, Any]:
        """Count one frame with ground truth; returns its entries for frames.jsonl."""
        if not result.scores:
            self.not_scored[NO_SCORABLE_INSTANCE] += 1
            return {}
        self.scored += 1
        for name, s in result.scores.items():
            self.tally.add(name, s)
        if self.figure is None and result.example is not None:
            self.figure, self.figure_frame = self._figure(rgb, gt, *result.example), index
        return {"completion_iou": {name: round(float(np.mean(s.ious)), 6) for name, s in result.scores.items()}}

    def _figure(self, rgb: np.ndarray, gt: GtFrame, hidden: np.ndarray, completed: np.ndarray) -> bytes:
        labels, _ = gt_label_map(gt)
        shown = label_colors(np.where(hidden, 0, labels))
        shown[hidden] = HIDDEN_GREY
        percent, pattern = self.protocol.figure_row
        fig = panels([("image", rgb), (f"known (grey: {percent}% hidden, {pattern})", shown),
                      ("completed", label_colors(completed)), ("ground truth", label_colors(labels))])
        ok, png = cv2.imencode(".png", cv2.cvtColor(fig, cv2.COLOR_RGB2BGR))
        return png.tobytes() if ok else b""

    def summary(self) -> dict[str, Any]:
        rows = self.tally.summary()
        return {"percents": list(self.protocol.percents), "patterns": list(self.protocol.patterns),
                "frames_scored": self.scored, "not_scored": dict(self.not_scored),
                "results": {row_name(p, pattern): {"percent": p, "pattern": pattern, "frames": self.scored,
                                                   **rows[row_name(p, pattern)]}
                            for p, pattern in self.protocol.rows() if row_name(p, pattern) in rows},
                "figure": FIGURE if self.figure else None, "figure_frame": self.figure_frame, "definition": DEFINITION}

    def write_figure(self, out: Path) -> Path | None:
        if not self.figure:
            return None
        path = out / FIGURE
        path.write_bytes(self.figure)
        return path
