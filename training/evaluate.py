"""Held-out evaluation on synthetic scenes, through the robot's own code path.

Each scene goes through a ``Segmenter`` (robot-mode pre/post-processing, point prompting, ``label_instances``) and
is scored with ``seg_node.metrics``, as ``bag_eval`` scores bags:

* single-point mIoU: one positive click per ground-truth instance at the maximum of its distance transform
  (SAM's and gen2seg's centre point, ``metrics.simulate_clicks`` with k = 1), the prompt mask against the instance;
* segment-everything AP / AP50 / AP75 with pycocotools (``metrics.CocoEvaluator``) on ``label_instances``' output,
  scored by its per-instance scores.

During training the network under training is wrapped as a backend (``ModuleBackend``); a saved checkpoint is
evaluated with ``python -m training.evaluate --model PATH --shapes cable blob``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from seg_node.evaluation import metrics as M
from seg_node.backends.base import Backend
from seg_node.model_settings import resolve_config
from seg_node.config import SegmenterConfig
from seg_node.models.spec import ModelSpec
from seg_node.pipeline import Segmenter
from seg_node.processing.tracking import TrackerParams
from training.synthetic import Scene, SceneGenerator, scene_size

__all__ = ["ModuleBackend", "evaluate_scenes", "evaluation_scenes", "segmenter_for_module", "main"]


class ModuleBackend(Backend):
    """A callable torch network (normalised N×3×H×W → raw colours) behind the Backend interface."""

    name = "training"

    def __init__(self, network: Callable[[Any], Any], spec: ModelSpec, device: Any) -> None:
        self._network, self._spec, self._device = network, spec, device

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self._device)
            return self._network(x).float().cpu().numpy()


def segmenter_for_module(network: Callable[[Any], Any], spec: ModelSpec, device: Any,
                         processing_resolution: int = 0) -> Segmenter:
    """A Segmenter around an in-memory network, with tracking off (evaluation frames are unrelated)."""
    config = SegmenterConfig(tracking=TrackerParams(enabled=False))
    config = replace(config, model=replace(config.model, path="<training>", processing_resolution=processing_resolution))
    return Segmenter(config, backend=ModuleBackend(network, spec, device))


def evaluation_scenes(shapes: Sequence[str], count: int, size: tuple[int, int] = (240, 320),
                      seed: int = 1_000_003) -> list[Scene]:
    """``count`` scenes (``size`` = H, W) of only ``shapes``; a seed apart from training's by default."""
    generator = SceneGenerator(height=size[0], width=size[1], shapes=shapes, seed=seed)
    return [generator.scene(i) for i in range(count)]


def single_point_ious(segmenter: Segmenter, colors: Any, gt: M.GtFrame) -> list[float]:
    """IoU of the prompt mask from one click (at the distance-transform maximum) on each ground-truth instance."""
    return [M.simulate_clicks(gt.mask(i), lambda p, lab: segmenter.prompt(colors, p, lab), 1)[0][0]
            for i in range(len(gt.ids))]


def evaluate_scenes(segmenter: Segmenter, scenes: Sequence[Scene]) -> dict[str, Any]:
    """Single-point mIoU (overall and per shape) and segment-everything AP of ``segmenter`` on ``scenes``."""
    coco = M.CocoEvaluator()
    ious: list[float] = []
    by_shape: dict[str, list[float]] = {}
    matched = segments = objects = 0
    t0 = time.perf_counter()
    for index, scene in enumerate(scenes):
        color_map = segmenter.color_maps([scene.rgb])[0]
        gt = M.GtFrame.from_label_image(scene.labels)
        for gt_id, iou in zip(gt.ids, single_point_ious(segmenter, color_map, gt)):
            ious.append(iou)
            by_shape.setdefault(scene.shapes[gt_id - 1], []).append(iou)
        result = segmenter.segment_colors(color_map)
        ids = [s.id for s in result.segments]
        rles = M.label_rles(result.labels, ids)
        coco.add(index, gt, rles, [s.instance.score for s in result.segments])
        matched += len(M.match_instances(M.iou_matrix(gt, rles)))
        segments, objects = segments + len(ids), objects + len(gt.ids)
    ap = coco.evaluate()
    return {
        "scenes": len(scenes),
        "instances": len(ious),
        "miou_1": round(float(np.mean(ious)), 6) if ious else None,
        "miou_1_by_shape": {s: round(float(np.mean(v)), 6) for s, v in sorted(by_shape.items())},
        "AP": ap.get("AP"), "AP50": ap.get("AP50"), "AP75": ap.get("AP75"),
        # What a robot gets from segment-everything as published (every segment, whatever its score): the share of
        # segments that are an object (IoU >= 0.5) and of objects found.
        "segments_per_scene": round(segments / len(scenes), 2) if scenes else None,
        "precision_50": round(matched / segments, 4) if segments else None,
        "recall_50": round(matched / objects, 4) if objects else None,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate",
                                     description="Score a model on held-out synthetic shapes.")
    parser.add_argument("--model", required=True, help="checkpoint folder or .onnx file")
    # --families: the old spelling, still in scripts and users' commands
    parser.add_argument("--shapes", "--families", nargs="+", required=True, help="shapes of the scenes")
    parser.add_argument("--scenes", type=int, default=100)
    parser.add_argument("--size", type=scene_size, default=(240, 320), help="scene size HxW (default 240x320)")
    parser.add_argument("--seed", type=int, default=1_000_003)
    parser.add_argument("--output", type=Path, help="write the metrics here as JSON")
    parser.add_argument("--config", type=Path, help="Segmenter config YAML (e.g. from calibrate_instances)")
    args = parser.parse_args(argv)
    h, w = args.size
    config = resolve_config(args.model, args.config, {"tracking.enabled": False})
    with Segmenter(config) as segmenter:
        result = evaluate_scenes(segmenter, evaluation_scenes(args.shapes, args.scenes, (h, w), args.seed))
    result.update(model=args.model, config=str(args.config) if args.config else None, shapes=list(args.shapes),
                  size=[h, w], seed=args.seed)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
