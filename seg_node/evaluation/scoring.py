"""Per-frame scores, latencies and thumbnails of a bag evaluation, and their summary."""
from __future__ import annotations

import heapq
from typing import Any, Sequence

import cv2
import numpy as np

from seg_node.evaluation import metrics as M
from seg_node.evaluation.completion_scoring import CompletionEvaluation, Protocol
from seg_node.evaluation.workers import Frame, Inferred
from seg_node.pipeline import SegmentationResult
from seg_node.processing.visualize import overlay


def _thumbnail(frame: Frame, labels: np.ndarray, width: int = 256) -> bytes:
    """PNG: the segments on the frame and, with ground truth, the ground truth beside it; drawn at thumbnail size
    (the label maps are shrunk with nearest-neighbour, so ids stay ids)."""
    h, w = frame.rgb.shape[:2]
    size = (min(width, w), max(1, round(h * min(width, w) / w)))
    rgb = cv2.resize(frame.rgb, size, interpolation=cv2.INTER_AREA)
    panels = [overlay(rgb, cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST))]
    if frame.gt is not None:
        gt = np.zeros(size[::-1], np.uint16)
        for i in range(len(frame.gt)):
            gt[cv2.resize(frame.gt.mask(i).view(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0] = i + 1
        panels.append(overlay(rgb, gt))
    gap = np.full((size[1], 4, 3), 255, np.uint8)
    img = np.concatenate([x for p in panels for x in (p, gap)][:-1], axis=1)
    ok, png = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return png.tobytes() if ok else b""


class Evaluation:
    def __init__(self, clicks: int, max_dets: Sequence[int], thumbnails: int, sample_every: int,
                 completion: Protocol | None = None) -> None:
        self.clicks = clicks
        self.completion = CompletionEvaluation(completion) if completion else None
        self.coco = M.CocoEvaluator(max_dets)
        self.ids = M.IdConsistency()
        self.prompts: list[M.PromptResult] = []
        self.best_ious: list[float] = []
        self.boundary: list[float] = []  # per GT instance, 0 when unmatched
        self.boundary_matched: list[float] = []
        self.latency: dict[str, list[float]] = {}
        self.prompt_ms: list[float] = []
        self.records: list[dict[str, Any]] = []
        self.segment_counts: list[int] = []
        self.nonfinite_frames = 0
        self.evaluated = 0
        self.n_thumbs, self.sample_every = thumbnails, max(1, sample_every)
        self.best: list[tuple[float, int, bytes]] = []  # min-heap of the best (score, -index)
        self.worst: list[tuple[float, int, bytes]] = []  # min-heap of (-score, -index): the worst
        self.samples: list[tuple[int, bytes]] = []

    def add(self, frame: Frame, result: SegmentationResult, inferred: Inferred, timings: dict[str, float]) -> None:
        ids = [s.id for s in result.segments]
        rec: dict[str, Any] = {"frame": frame.index, "seq": frame.seq, "stamp_ns": frame.stamp, "log_time_ns": frame.log_time,
                               "segments": len(ids), "nonfinite_pixels": inferred.nonfinite,
                               "timings_ms": {k: round(v, 3) for k, v in timings.items()}}
        for k, v in timings.items():
            self.latency.setdefault(k, []).append(v)
        self.segment_counts.append(len(ids))
        self.nonfinite_frames += inferred.nonfinite > 0
        score = None
        gt = frame.gt
        if gt is not None:
            self.evaluated += 1
            dt_rles = M.label_rles(result.labels, ids)
            self.coco.add(frame.index, gt, dt_rles, [s.instance.score for s in result.segments])
            iou = M.iou_matrix(gt, dt_rles)
            valid = ~np.asarray(gt.crowd, bool)
            matches = M.match_instances(iou, valid_rows=valid)
            tolerance = M.boundary_tolerance(gt.height, gt.width)
            matched = {r: c for r, c, _ in matches}
            best = []
            for r in np.flatnonzero(valid):
                best.append(float(iou[r].max()) if iou.shape[1] else 0.0)
                if r in matched:
                    f = M.boundary_f(result.labels == ids[matched[r]], gt.mask(int(r)), tolerance)[0]
                    self.boundary_matched.append(f)
                else:
                    f = 0.0
                self.boundary.append(f)
            self.best_ious.extend(best)
            switches = self.ids.update([(gt.ids[r], ids[c], v) for r, c, v in matches], int(valid.sum()), len(ids))
            rec.update(gt_instances=int(valid.sum()), matched=len(matches), id_switches=switches,
                       mean_best_iou=round(float(np.mean(best)), 6) if best else None)
            score = rec["mean_best_iou"]
            if inferred.prompts is not None:
                self.prompts.extend(inferred.prompts)
                self.prompt_ms.append(inferred.prompt_ms)
                if inferred.prompts:
                    ious = np.array([p.ious for p in inferred.prompts])
                    rec["miou_1"] = round(float(ious[:, 0].mean()), 6)
                    rec[f"miou_{self.clicks}"] = round(float(ious[:, -1].mean()), 6)
                    score = rec["miou_1"]
            if self.completion is not None and inferred.completion is not None:
                rec.update(self.completion.add(frame.index, frame.rgb, gt, inferred.completion))
        self.records.append(rec)
        self._keep_thumbnail(frame, result, score)

    def _keep_thumbnail(self, frame: Frame, result: SegmentationResult, score: float | None) -> None:
        if not self.n_thumbs:
            return
        if score is None:
            if frame.gt is None and frame.index % self.sample_every == 0 and len(self.samples) < 2 * self.n_thumbs:
                self.samples.append((frame.index, _thumbnail(frame, result.labels)))
            return
        # Ties go to the earlier frame in both lists, so a run of equal scores does not redraw a thumbnail per frame.
        for heap, key in ((self.best, (score, -frame.index)), (self.worst, (-score, -frame.index))):
            if len(heap) < self.n_thumbs or key > heap[0][:2]:
                item = (*key, _thumbnail(frame, result.labels))
                heapq.heappush(heap, item) if len(heap) < self.n_thumbs else heapq.heapreplace(heap, item)

    def thumbnails(self) -> list[tuple[str, int, float | None, bytes]]:
        """(kind, frame index, score, png) for the report: best first, then worst (worst first), or samples."""
        out = [("best", -i, s, png) for s, i, png in sorted(self.best, reverse=True)]
        out += [("worst", -i, -s, png) for s, i, png in sorted(self.worst, reverse=True)]
        out += [("sample", i, None, png) for i, png in self.samples]
        return out

    def summary(self, latency_stages: Sequence[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        lat = {k: M.summarise(v) for k, v in self.latency.items()}
        ordered = {k: lat[k] for k in (*latency_stages, *sorted(set(lat) - set(latency_stages))) if k in lat}
        out["latency_ms"] = ordered
        if self.prompt_ms:
            out["latency_ms_evaluation_only"] = {"prompt_clicks_per_frame": M.summarise(self.prompt_ms)}
        out["segments_per_frame"] = M.summarise(self.segment_counts, 2)
        if not self.evaluated:
            return out
        out["point_prompt"] = {"clicks": self.clicks, **M.prompt_summary(self.prompts, self.clicks)} if self.clicks else None
        coco = self.coco.evaluate()
        out["segment_everything"] = {
            **coco,
            "mean_best_iou": round(float(np.mean(self.best_ious)), 6) if self.best_ious else None,
            "boundary_f": round(float(np.mean(self.boundary)), 6) if self.boundary else None,
            "boundary_f_matched": round(float(np.mean(self.boundary_matched)), 6) if self.boundary_matched else None,
        }
        out["temporal"] = self.ids.result()
        out["completion"] = self.completion.summary() if self.completion else None
        return out
