"""Metrics for category-agnostic instance segmentation against ground-truth instance masks (numpy, OpenCV, SciPy,
pycocotools).

What is computed, and by whom:

* **Segment-everything AP / AP50 / AP75 / AR and the COCO size buckets**: pycocotools' ``COCOeval(iouType="segm")`` on
  RLE masks (``pycocotools.mask``), one category ("object"), built in memory (``CocoEvaluator``). Nothing of COCO's
  matching or averaging is re-implemented.
* **Point-prompt mIoU (1 click and k clicks)**: the SAM protocol that gen2seg follows (docs/design.md, "Evaluation protocol"):
  the first click is the maximum of the ground-truth mask's distance transform; each next click is the maximum of the
  distance transform of the error region whose interior is deepest (false negatives → positive click, false positives
  → negative click, positive only when its depth is strictly larger, as RITM's ``get_next_click``), computed with a
  one-pixel zero border so the image edge counts as boundary. Ties go to the first pixel in raster order, so the
  protocol is deterministic. Hand-written: no library simulates these clicks.
* **Boundary F-score**: DAVIS's F measure (Perazzi et al. 2016) with its tolerance of 0.008 × the image diagonal
  (rounded up), via distance transforms. Hand-written: pycocotools has no boundary measure (its boundary-IoU fork is
  not packaged), and DAVIS's own code needs scikit-image.
* **Temporal id consistency** (``IdConsistency``): CLEAR-MOT-style matching at IoU ≥ 0.5; see its docstring.
* COCO size buckets everywhere: small < 32², medium < 96², large otherwise (pixels of the ground-truth mask).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = [
    "SMALL_AREA", "MEDIUM_AREA", "SIZE_BUCKETS", "size_bucket", "GtFrame", "encode_mask", "label_rles",
    "centre_point", "next_click", "simulate_clicks", "mask_iou", "boundary_f", "boundary_tolerance", "match_instances",
    "CocoEvaluator", "IdConsistency", "summarise", "PromptResult", "MATCH_IOU",
]

SMALL_AREA = 32**2
MEDIUM_AREA = 96**2
SIZE_BUCKETS = ("small", "medium", "large")
# IoU a prediction needs to count as the same object as a ground-truth instance (CLEAR MOT, COCO AP50).
MATCH_IOU = 0.5
# DAVIS boundary tolerance, as a fraction of the image diagonal.
BOUNDARY_TOLERANCE = 0.008


def _mask_utils() -> Any:
    try:
        from pycocotools import mask
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("bag evaluation needs the Python package 'pycocotools', which is not installed. Install it "
                          "with: pip install 'seg_node[eval]' (or pip install pycocotools)") from exc
    return mask


def size_bucket(area: float) -> str:
    """COCO's object size class for an area in pixels."""
    return "small" if area < SMALL_AREA else "medium" if area < MEDIUM_AREA else "large"


def encode_mask(mask: np.ndarray) -> dict:
    """pycocotools RLE of a bool/uint8 H×W mask."""
    return _mask_utils().encode(np.asfortranarray(mask, dtype=np.uint8))


def label_rles(labels: np.ndarray, ids: Sequence[int]) -> list[dict]:
    """RLE of ``labels == id`` for each id."""
    return [encode_mask(labels == i) for i in ids]


@dataclass
class GtFrame:
    """Ground-truth instances of one frame as RLE masks (compact to pickle, and what pycocotools wants).

    ``ids`` identify the same object across frames when the ground truth does (label images with stable values,
    COCO annotations with a ``track_id``/``instance_id``); ``crowd`` marks COCO crowd regions, which AP ignores and the
    prompt and temporal metrics skip.
    """

    height: int
    width: int
    ids: list[int] = field(default_factory=list)
    rles: list[dict] = field(default_factory=list)
    areas: list[int] = field(default_factory=list)
    crowd: list[bool] = field(default_factory=list)

    @classmethod
    def from_label_image(cls, labels: np.ndarray, background: int = 0) -> GtFrame:
        """One instance per distinct value other than ``background`` (any integer dtype)."""
        if labels.ndim != 2:
            raise ValueError(f"a ground-truth label image must be H×W, got shape {labels.shape}")
        values, counts = np.unique(labels, return_counts=True)
        keep = values != background
        ids, areas = [int(v) for v in values[keep]], [int(c) for c in counts[keep]]
        # Areas counted here: pycocotools' area() of a list overflows above 255 masks (a uint8 count under NumPy 2).
        rles = label_rles(labels, ids)
        return cls(int(labels.shape[0]), int(labels.shape[1]), ids, rles, areas, [False] * len(ids))

    @classmethod
    def from_coco(cls, annotations: Sequence[Mapping[str, Any]], height: int, width: int) -> GtFrame:
        """From COCO annotations (polygons, RLE or uncompressed RLE) of one image."""
        mu = _mask_utils()
        out = cls(height, width)
        for ann in annotations:
            seg = ann["segmentation"]
            if isinstance(seg, list):  # polygons
                rle = mu.merge(mu.frPyObjects(seg, height, width)) if seg else encode_mask(np.zeros((height, width), bool))
            elif isinstance(seg.get("counts"), list):  # uncompressed RLE
                rle = mu.frPyObjects(seg, height, width)
            else:
                rle = {"size": list(seg["size"]), "counts": seg["counts"].encode() if isinstance(seg["counts"], str) else seg["counts"]}
            if list(rle["size"]) != [height, width]:
                raise ValueError(f"annotation {ann.get('id')}: mask size {rle['size']} differs from its image's {height}×{width}")
            out.ids.append(int(ann.get("track_id", ann.get("instance_id", ann.get("id", len(out.ids) + 1)))))
            out.rles.append(rle)
            out.areas.append(int(mu.area(rle)))
            out.crowd.append(bool(ann.get("iscrowd", 0)))
        return out

    def __len__(self) -> int:
        return len(self.ids)

    def mask(self, i: int) -> np.ndarray:
        with warnings.catch_warnings():  # pycocotools 2.0.x's decode trips NumPy 2's __array__ copy deprecation
            warnings.simplefilter("ignore", DeprecationWarning)
            return _mask_utils().decode(self.rles[i]).astype(bool)


# ------------------------------------------------------------------------------------------------ point prompts


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1), end-exclusive, of a bool mask's pixels; None when empty (row/column reductions: several
    times faster than np.nonzero on a full frame)."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask[rows[0]: rows[-1] + 1].any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _deepest_point(mask: np.ndarray) -> tuple[float, tuple[int, int] | None]:
    """(distance, (x, y)) of the maximum of the mask's distance transform with the image edge counting as boundary;
    (0, None) for an empty mask. Computed on the mask's bounding box plus a one-pixel zero border, which gives the
    same values as on the whole zero-padded image (the transform measures the distance to the nearest zero)."""
    box = _bbox(mask)
    if box is None:
        return 0.0, None
    y0, y1, x0, x1 = box
    crop = np.pad(mask[y0:y1, x0:x1].astype(np.uint8), 1)
    dist = cv2.distanceTransform(crop, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    flat = int(np.argmax(dist))  # first maximum in raster order
    y, x = divmod(flat, dist.shape[1])
    return float(dist.flat[flat]), (int(x0 + x), int(y0 + y))


def centre_point(mask: np.ndarray) -> tuple[int, int] | None:
    """SAM's single-point prompt for an object: the (x, y) pixel farthest from the mask's boundary."""
    return _deepest_point(np.asarray(mask, bool))[1]


def next_click(gt: np.ndarray, pred: np.ndarray) -> tuple[int, int, int] | None:
    """(x, y, label) of the next simulated click, label 1 = positive, 0 = negative; None when pred equals gt."""
    fn_depth, fn_point = _deepest_point(gt & ~pred)
    fp_depth, fp_point = _deepest_point(pred & ~gt)
    if fn_point is None and fp_point is None:
        return None
    if fn_depth > fp_depth:
        assert fn_point is not None
        return fn_point[0], fn_point[1], 1
    assert fp_point is not None
    return fp_point[0], fp_point[1], 0


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 1.0


@dataclass
class PromptResult:
    """One ground-truth instance under the click protocol."""

    gt_id: int
    area: int
    ious: list[float]  # IoU after 1, 2, ..., k clicks
    boundary_f: float  # boundary F-score of the 1-click mask
    clicks: list[tuple[int, int, int]]  # (x, y, label) as given

    @property
    def bucket(self) -> str:
        return size_bucket(self.area)


def simulate_clicks(gt: np.ndarray, predict: Callable[[list[tuple[int, int]], list[int]], np.ndarray],
                    k: int) -> tuple[list[float], list[tuple[int, int, int]], np.ndarray]:
    """Run the iterative click protocol for one instance: (IoU after 1..k clicks, the clicks, the 1-click mask).

    ``predict(points, labels)`` returns the bool mask for all clicks so far (gen2seg prompting has no memory, so every
    click is given every time). Once the prediction equals the ground truth, the IoU stays 1 without more clicks.
    """
    gt = np.asarray(gt, bool)
    pred = np.zeros_like(gt)
    points: list[tuple[int, int]] = []
    labels: list[int] = []
    clicks: list[tuple[int, int, int]] = []
    ious: list[float] = []
    first = pred
    for i in range(k):
        click = next_click(gt, pred)
        if click is None:  # perfect already: nothing left to click on, the IoU stays
            ious += [ious[-1] if ious else 1.0] * (k - i)
            break
        x, y, label = click
        points.append((x, y))
        labels.append(label)
        clicks.append(click)
        pred = np.asarray(predict(list(points), list(labels)), bool)
        if pred.shape != gt.shape:
            raise ValueError(f"prompt mask has shape {pred.shape}, the ground truth {gt.shape}")
        if i == 0:
            first = pred
        ious.append(mask_iou(pred, gt))
    return ious, clicks, first


# ------------------------------------------------------------------------------------------------ boundary F


def boundary_tolerance(height: int, width: int) -> int:
    """DAVIS's boundary tolerance in pixels: ceil(0.008 × image diagonal)."""
    return max(1, math.ceil(BOUNDARY_TOLERANCE * math.hypot(height, width)))


_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask; the image edge is not a boundary (the object goes on)."""
    m = mask.astype(np.uint8)
    return (m & ~cv2.erode(m, _CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=1)).astype(bool)


def boundary_f(pred: np.ndarray, gt: np.ndarray, tolerance: int | None = None) -> tuple[float, float, float]:
    """(F, precision, recall) of the predicted mask's boundary against the ground truth's, DAVIS style: a boundary
    pixel counts when the other boundary is within ``tolerance`` pixels (default ``boundary_tolerance``). Both empty →
    (1, 1, 1); one empty → 0."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if tolerance is None:
        tolerance = boundary_tolerance(*gt.shape)
    box = _bbox(pred | gt)
    if box is None:
        return 1.0, 1.0, 1.0
    h, w = gt.shape
    pad = tolerance + 2
    y0, y1 = max(0, box[0] - pad), min(h, box[1] + pad)
    x0, x1 = max(0, box[2] - pad), min(w, box[3] + pad)
    bp, bg = _boundary(pred[y0:y1, x0:x1]), _boundary(gt[y0:y1, x0:x1])
    n_p, n_g = int(bp.sum()), int(bg.sum())
    if n_p == 0 and n_g == 0:
        return 1.0, 1.0, 1.0
    if n_p == 0 or n_g == 0:
        return 0.0, float(n_p == 0), float(n_g == 0)
    # Distance of every pixel to the nearest boundary pixel of the other mask (the transform measures to zeros).
    d_to_g = cv2.distanceTransform((~bg).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    d_to_p = cv2.distanceTransform((~bp).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    precision = float(np.count_nonzero(d_to_g[bp] <= tolerance) / n_p)
    recall = float(np.count_nonzero(d_to_p[bg] <= tolerance) / n_g)
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return f, precision, recall


# ------------------------------------------------------------------------------------------------ matching


def iou_matrix(gt: GtFrame, dt_rles: Sequence[dict]) -> np.ndarray:
    """IoU of every ground-truth instance (rows) with every prediction (columns), pycocotools' mask IoU."""
    if not len(gt) or not dt_rles:
        return np.zeros((len(gt), len(dt_rles)))
    # pycocotools' iou(dt, gt, iscrowd) is D×G; plain IoU for crowd regions too (COCOeval handles crowds for AP).
    d_by_g = _mask_utils().iou(list(dt_rles), list(gt.rles), [0] * len(gt))
    return np.asarray(d_by_g, dtype=np.float64).reshape(len(dt_rles), len(gt)).T


def match_instances(iou: np.ndarray, threshold: float = MATCH_IOU, valid_rows: np.ndarray | None = None) -> list[tuple[int, int, float]]:
    """One-to-one (row, column, IoU) matches with IoU >= threshold maximising the total IoU (Hungarian method).
    At threshold 0.5 every match is unique anyway when predictions do not overlap; the assignment keeps it so for
    overlapping ground truth."""
    if iou.size == 0:
        return []
    score = np.where(iou >= threshold, iou, 0.0)
    if valid_rows is not None:
        score[~valid_rows] = 0.0
    rows, cols = linear_sum_assignment(score, maximize=True)
    return [(int(r), int(c), float(iou[r, c])) for r, c in zip(rows, cols) if score[r, c] > 0]


# ------------------------------------------------------------------------------------------------ COCO AP/AR


class CocoEvaluator:
    """Segment-everything AP/AR over many frames with pycocotools (one category, RLE masks, all in memory)."""

    def __init__(self, max_dets: Sequence[int] = (1, 10, 100)) -> None:
        if len(max_dets) != 3 or list(max_dets) != sorted(max_dets) or max_dets[0] < 1:
            raise ValueError(f"max_dets must be 3 increasing positive numbers, got {list(max_dets)}")
        self.max_dets = [int(m) for m in max_dets]
        self.images: list[dict] = []
        self.gt: list[dict] = []
        self.dt: list[dict] = []

    def add(self, image_id: int, gt: GtFrame, dt_rles: Sequence[dict], scores: Sequence[float]) -> None:
        mu = _mask_utils()
        self.images.append({"id": int(image_id), "height": gt.height, "width": gt.width})
        for rle, area, crowd in zip(gt.rles, gt.areas, gt.crowd):
            self.gt.append({"id": len(self.gt) + 1, "image_id": int(image_id), "category_id": 1, "segmentation": rle,
                            "area": float(area), "bbox": [float(v) for v in mu.toBbox(rle)], "iscrowd": int(crowd)})
        for rle, score in zip(dt_rles, scores):
            self.dt.append({"id": len(self.dt) + 1, "image_id": int(image_id), "category_id": 1, "segmentation": rle,
                            "area": float(mu.area(rle)), "bbox": [float(v) for v in mu.toBbox(rle)], "score": float(score)})

    def evaluate(self) -> dict[str, float | None]:
        """AP (IoU .50:.95), AP50, AP75, AP/AR per size, AR at each max_dets; None where COCO has no value (-1)."""
        if not self.images:
            return {}
        try:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval
        except ImportError:
            _mask_utils()
            raise
        categories = [{"id": 1, "name": "object"}]
        coco_gt, coco_dt = COCO(), COCO()
        coco_gt.dataset = {"images": self.images, "annotations": self.gt, "categories": categories}
        coco_dt.dataset = {"images": self.images, "annotations": self.dt, "categories": categories}
        import contextlib
        import io
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco_gt.createIndex()
            coco_dt.createIndex()
            ev = COCOeval(coco_gt, coco_dt, iouType="segm")
            ev.params.maxDets = self.max_dets
            ev.evaluate()
            ev.accumulate()
        p, top = ev.params, self.max_dets[-1]

        def stat(ap: bool, iou: float | None = None, area: str = "all", dets: int = top) -> float | None:
            # The same selection as COCOeval.summarize(), which only works for max_dets (1, 10, 100).
            s = ev.eval["precision" if ap else "recall"]
            if iou is not None:
                s = s[np.where(np.isclose(p.iouThrs, iou))[0]]
            a, m = p.areaRngLbl.index(area), p.maxDets.index(dets)
            s = s[:, :, :, a, m] if ap else s[:, :, a, m]
            valid = s[s > -1]
            return round(float(valid.mean()), 6) if valid.size else None

        out: dict[str, float | None] = {"AP": stat(True), "AP50": stat(True, 0.5), "AP75": stat(True, 0.75)}
        for area in SIZE_BUCKETS:
            out[f"AP_{area}"] = stat(True, area=area)
        for d in self.max_dets:
            out[f"AR{d}"] = stat(False, dets=d)
        for area in SIZE_BUCKETS:
            out[f"AR_{area}"] = stat(False, area=area)
        return out


# ------------------------------------------------------------------------------------------------ temporal ids


class IdConsistency:
    """How stable predicted ids are on ground-truth objects whose ids are stable across frames.

    Per evaluated frame, ground-truth instances (crowd excluded) and predicted segments are matched one-to-one at
    IoU >= 0.5. Then:

    * ``id_switch_rate`` = switches / pairs, over consecutive evaluated frames in which the same ground-truth object
      is matched in both: a switch is a different predicted id in the second frame. 0 = perfectly stable.
    * ``mot_id_switches``: CLEAR-MOT identity switches, comparing with the object's last match however long ago
      (so an object lost and found under a new id counts too), and ``mota`` = 1 − (misses + false positives +
      mot_id_switches) / ground-truth instances, with ``motp_iou`` the mean IoU of the matches.
    """

    DEFINITION = (
        "Per evaluated frame, GT instances (crowd excluded) and predicted segments are matched one-to-one at IoU >= 0.5 "
        "(Hungarian, max total IoU). id_switch_rate = id_switches / matched_pairs, where matched_pairs counts GT objects "
        "matched in two consecutive evaluated frames and id_switches those whose predicted id differs between the two. "
        "mot_id_switches compares with the object's previous match however many frames ago (CLEAR MOT); "
        "mota = 1 - (misses + false_positives + mot_id_switches) / gt_instances; motp_iou = mean IoU of matches."
    )

    def __init__(self) -> None:
        self._last: dict[int, tuple[int, int]] = {}  # gt id -> (evaluated frame number, predicted id)
        self._frame = -1
        self.pairs = self.switches = self.mot_switches = 0
        self.misses = self.false_positives = self.gt_instances = self.matches = 0
        self._iou_sum = 0.0

    def update(self, matches: Iterable[tuple[int, int, float]], n_gt: int, n_pred: int) -> int:
        """Add one evaluated frame: (gt id, predicted id, IoU) matches; returns the switches in this frame."""
        self._frame += 1
        switches = 0
        count = 0
        for gt_id, pred_id, iou in matches:
            count += 1
            self._iou_sum += iou
            prev = self._last.get(gt_id)
            if prev is not None:
                if prev[1] != pred_id:
                    self.mot_switches += 1
                if prev[0] == self._frame - 1:
                    self.pairs += 1
                    if prev[1] != pred_id:
                        self.switches += 1
                        switches += 1
            self._last[gt_id] = (self._frame, pred_id)
        self.matches += count
        self.gt_instances += n_gt
        self.misses += n_gt - count
        self.false_positives += n_pred - count
        return switches

    def result(self) -> dict[str, Any]:
        return {
            "definition": self.DEFINITION,
            "evaluated_frames": self._frame + 1,
            "matched_pairs": self.pairs,
            "id_switches": self.switches,
            "id_switch_rate": round(self.switches / self.pairs, 6) if self.pairs else None,
            "mot_id_switches": self.mot_switches,
            "gt_instances": self.gt_instances,
            "matches": self.matches,
            "misses": self.misses,
            "false_positives": self.false_positives,
            "mota": round(1.0 - (self.misses + self.false_positives + self.mot_switches) / self.gt_instances, 6)
            if self.gt_instances else None,
            "motp_iou": round(self._iou_sum / self.matches, 6) if self.matches else None,
        }


# ------------------------------------------------------------------------------------------------ summaries


def summarise(values: Sequence[float], digits: int = 3) -> dict[str, float | int | None]:
    """count, mean, p50, p95, max of a list of numbers (None when empty)."""
    if not len(values):
        return {"count": 0, "mean": None, "p50": None, "p95": None, "max": None}
    v = np.asarray(values, dtype=np.float64)
    return {"count": int(v.size), "mean": round(float(v.mean()), digits), "p50": round(float(np.percentile(v, 50)), digits),
            "p95": round(float(np.percentile(v, 95)), digits), "max": round(float(v.max()), digits)}


def prompt_summary(results: Sequence[PromptResult], k: int) -> dict[str, Any]:
    """mIoU after 1..k clicks over all instances and per COCO size bucket, plus the 1-click boundary F."""
    def block(rs: Sequence[PromptResult]) -> dict[str, Any]:
        if not rs:
            return {"instances": 0, "miou": None, "boundary_f": None}
        ious = np.array([r.ious for r in rs], dtype=np.float64)
        return {"instances": len(rs), "miou": {str(i + 1): round(float(ious[:, i].mean()), 6) for i in range(k)},
                "boundary_f": round(float(np.mean([r.boundary_f for r in rs])), 6)}

    out = block(results)
    out["by_size"] = {b: block([r for r in results if r.bucket == b]) for b in SIZE_BUCKETS}
    return out
