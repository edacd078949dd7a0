"""``synthetic_stream``: the Segmenter on a stream of synthetic camera frames, with overlays and a per-frame summary.

    synthetic_stream --model engines/default/model.onnx --output DIR [--config FILE.yaml] [--frames 300] [--shot 60]
                     [--size 240x320] [--shapes S ...] [--seed 0] [--threads 1] [--overlay-every 1]

The stream is a camera panning over procedural tabletop scenes (``training.synthetic``): each shot of ``--shot``
frames moves a window smoothly across one scene drawn 1.5× larger than the frame, then the next shot starts on a
new scene (tracking is reset between shots). Every frame goes through ``Segmenter.segment`` in robot mode with
tracking on, exactly as the node runs it.

Writes ``DIR/overlay_NNNNN.png`` (segments tinted by track id, outlined), ``DIR/frames.jsonl`` (per frame: shot,
segment ids, ground-truth instances, how many are found at IoU ≥ 0.5, their mean best IoU, stage timings) and
``DIR/summary.json`` (frame rate, mean latency per stage, detection rate). Exit status 0, or 2 for a bad model
or output folder.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from seg_node.evaluation import metrics as M
from seg_node.model_settings import resolve_config
from seg_node.models.checkpoints import CheckpointError
from seg_node.pipeline import Segmenter
from seg_node.processing.visualize import overlay
from training.synthetic import SHAPES, SceneGenerator, scene_size

EXIT_OK, EXIT_USAGE = 0, 2
PAN_SCALE = 1.5


def pan_frames(size: tuple[int, int], frames: int, shot: int, shapes: tuple[str, ...],
               seed: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(shot, rgb, ground-truth labels) for each frame: a window panning over a larger scene, a new scene per shot."""
    h, w = size
    big = SceneGenerator(height=int(h * PAN_SCALE), width=int(w * PAN_SCALE), shapes=shapes, seed=seed)
    scene = None
    for i in range(frames):
        s, t = divmod(i, shot)
        if t == 0:
            scene = big.scene(s)
        assert scene is not None
        phase = 2 * math.pi * t / shot
        x0 = int(round((big.width - w) * 0.5 * (1 - math.cos(phase))))
        y0 = int(round((big.height - h) * 0.5 * (1 - math.cos(phase / 2))))
        yield s, scene.rgb[y0:y0 + h, x0:x0 + w], scene.labels[y0:y0 + h, x0:x0 + w]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="synthetic_stream", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint folder or .onnx file (e.g. engines/default)")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--config", type=Path, help="Segmenter config YAML (e.g. engines/default/segmenter.yaml); "
                                                    "--model and --threads override it")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--shot", type=int, default=60, help="frames per scene")
    parser.add_argument("--size", type=scene_size, default=(240, 320), help="frame size HxW (default 240x320)")
    # --families: the old spelling, still in scripts and users' commands
    parser.add_argument("--shapes", "--families", nargs="+", default=list(SHAPES), choices=SHAPES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="network threads (0 = the library's default)")
    parser.add_argument("--overlay-every", type=int, default=1, help="write every k-th overlay (0 = none)")
    args = parser.parse_args(argv)
    h, w = args.size
    if args.frames < 1 or args.shot < 1 or args.overlay_every < 0:
        parser.error("--frames and --shot must be >= 1, --overlay-every >= 0")
    try:
        args.output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"synthetic_stream: cannot create {args.output}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        config = resolve_config(args.model, args.config, {"backend.threads": args.threads})
        segmenter = Segmenter(config)
    except (CheckpointError, ValueError, ImportError) as exc:
        print(f"synthetic_stream: {exc}", file=sys.stderr)
        return EXIT_USAGE
    backend = segmenter.backend.describe()
    print(f"model {args.model}: {backend}")

    stages: dict[str, list[float]] = {}
    latencies, found, total_gt = [], 0, 0
    last_shot = -1
    with segmenter, (args.output / "frames.jsonl").open("w") as log:
        for i, (shot, rgb, gt_labels) in enumerate(pan_frames((h, w), args.frames, args.shot, tuple(args.shapes),
                                                               args.seed)):
            if shot != last_shot:
                segmenter.reset_tracking()
                last_shot = shot
            t0 = time.perf_counter()
            result = segmenter.segment(rgb)
            latency = (time.perf_counter() - t0) * 1e3
            latencies.append(latency)
            for k, v in result.timings_ms.items():
                stages.setdefault(k, []).append(v)
            ids = [s.id for s in result.segments]
            gt = M.GtFrame.from_label_image(gt_labels)
            iou = M.iou_matrix(gt, M.label_rles(result.labels, ids))
            matches = M.match_instances(iou)
            found += len(matches)
            total_gt += len(gt)
            record = {"frame": i, "shot": shot, "segments": len(ids), "ids": ids, "gt_instances": len(gt),
                      "matched_iou50": len(matches),
                      "mean_best_iou": round(float(iou.max(1).mean()), 4) if iou.size else None,
                      "latency_ms": round(latency, 2),
                      "timings_ms": {k: round(v, 2) for k, v in result.timings_ms.items()}}
            log.write(json.dumps(record) + "\n")
            if args.overlay_every and i % args.overlay_every == 0:
                cv2.imwrite(str(args.output / f"overlay_{i:05d}.png"),
                            cv2.cvtColor(overlay(rgb, result.labels), cv2.COLOR_RGB2BGR))
            if (i + 1) % 50 == 0 or i + 1 == args.frames:
                print(f"frame {i + 1}/{args.frames}: {len(ids)} segments, {1e3 / np.mean(latencies[-50:]):.1f} Hz")
    summary = {
        "model": args.model, "frames": args.frames, "size": [h, w], "shapes": args.shapes, "seed": args.seed,
        "threads": args.threads, "backend": backend,
        "mean_latency_ms": round(float(np.mean(latencies)), 2), "p95_latency_ms": round(float(np.percentile(latencies, 95)), 2),
        "fps": round(1e3 / float(np.mean(latencies)), 2),
        "mean_stage_ms": {k: round(float(np.mean(v)), 2) for k, v in stages.items()},
        "gt_instances": total_gt, "matched_iou50": found,
        "detection_rate_iou50": round(found / total_gt, 4) if total_gt else None,
    }
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{summary['fps']} Hz mean over {args.frames} frames; {found}/{total_gt} ground-truth instances found at "
          f"IoU >= 0.5. Wrote {args.output / 'frames.jsonl'}, {args.output / 'summary.json'}"
          + (f" and overlay_*.png in {args.output}" if args.overlay_every else ""))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
