"""Turn a trained checkpoint into the shipped default model (engines/default) and measure what its card claims.

    .venv/bin/python scripts/ship_default_model.py --model RUNS/sd3/model [--output engines/default]
        [--processing-resolution 160] [--refine-subsample 1] [--calibration-scenes 100] [--eval-scenes 100]
        [--stream-frames 120]

Steps, each printed as it runs (the tail of scripts/train_default_model.sh's recipe):
1. copy the checkpoint (a conv-family folder, or the published gen2seg SD layout) into OUTPUT, with ``model.processing_resolution`` in its
   ``segmenter.yaml`` (the resolution the model was trained for) and ``model.refine_subsample``;
2. ``calibrate_instances`` on the *training* shapes: the instance thresholds and guided refinement,
   written into OUTPUT/segmenter.yaml, so the model carries them;
3. ``export_onnx`` (dynamic H/W, the recommendation embedded in its metadata) to OUTPUT/model.onnx;
4. held-out numbers (blob, cylinder: 240×320 and 480×640 frames) and training-shape numbers from the ONNX file,
   a grid of overlays (held-out scenes and the hardest training-shape scenes) and the main job's frame rate on
   one thread; OUTPUT/metrics.json records every number with the command that measures it;
5. conv only: ``export_onnx --int8`` (activation ranges from scenes of the training shapes) to
   OUTPUT/model_int8.onnx, and the same numbers and frame rate from it.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seg_node.config import unflatten  # noqa: E402
from seg_node.models.checkpoints import inspect_checkpoint  # noqa: E402
from seg_node.model_settings import recommended_settings, resolve_config  # noqa: E402
from seg_node.pipeline import Segmenter  # noqa: E402
from seg_node.processing.visualize import overlay  # noqa: E402
from training.evaluate import evaluate_scenes, evaluation_scenes  # noqa: E402

HELD_OUT = ["blob", "cylinder"]
TRAINING = ["box", "tool", "cable", "flat"]
SEED = 1_000_003
CHECKPOINT_PARTS = {"sd": ("model_index.json", "scheduler", "text_encoder", "tokenizer", "unet", "vae"),
                    "conv": ("config.json", "model.safetensors")}
BIN = Path(sys.executable).parent


def run(cmd: list[str]) -> str:
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return " ".join(shlex.quote(str(Path(c).relative_to(ROOT)) if c.startswith(str(ROOT)) else c) for c in cmd)


def relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def evaluate(onnx: Path, shapes: list[str], scenes: int, size: tuple[int, int]) -> dict:
    with Segmenter(resolve_config(onnx, None, {"tracking.enabled": False})) as segmenter:
        result = evaluate_scenes(segmenter, evaluation_scenes(shapes, scenes, size, SEED))
    result.update(shapes=shapes, size=list(size), seed=SEED)
    result["command"] = (f"python -m training.evaluate --model {relative(onnx)} --shapes {' '.join(shapes)} "
                         f"--scenes {scenes} --size {size[0]}x{size[1]}")
    print(f"{','.join(shapes)} at {size[0]}x{size[1]}: single-point mIoU {result['miou_1']}, AP50 {result['AP50']}, "
          f"{result['segments_per_scene']} segments per scene, {result['precision_50']:.0%} of them objects, "
          f"{result['recall_50']:.0%} of the objects found", flush=True)
    return result


def overlays(onnx: Path, out: Path) -> None:
    """Three held-out scenes and the three training-shape scenes the model does worst on, frame | colours | overlay."""
    with Segmenter(resolve_config(onnx, None, {"tracking.enabled": False})) as segmenter:
        picks = list(evaluation_scenes(HELD_OUT, 3, (240, 320), SEED))
        hard = []
        for scene in evaluation_scenes(TRAINING, 20, (240, 320), SEED):
            score = evaluate_scenes(segmenter, [scene])["miou_1"] or 0.0
            hard.append((score, scene))
        picks += [s for _, s in sorted(hard, key=lambda x: x[0])[:3]]
        rows = []
        for scene in picks:
            result = segmenter.segment(scene.rgb)
            colors = np.clip(result.colors, 0, 255).astype(np.uint8)
            rows.append(np.concatenate([scene.rgb, colors, overlay(scene.rgb, result.labels)[..., :3]], 1))
    cv2.imwrite(str(out), np.concatenate(rows, 0)[..., ::-1])
    print(f"wrote {out}", flush=True)


def main_job(onnx: Path, frames: int, stream: Path) -> dict:
    """The README's main job (synthetic_stream, one thread) on ``onnx``: its summary and command."""
    command = run([str(BIN / "synthetic_stream"), "--model", str(onnx), "--output", str(stream), "--frames",
                   str(frames), "--threads", "1", "--overlay-every", "1000"])
    summary = json.loads((stream / "summary.json").read_text())
    result = {k: summary[k] for k in ("fps", "mean_latency_ms", "mean_stage_ms", "frames", "size", "threads",
                                      "backend", "detection_rate_iou50")}
    result["command"] = command.replace(str(stream), "out/stream")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="trained checkpoint folder (conv or gen2seg SD layout)")
    p.add_argument("--output", type=Path, default=ROOT / "engines" / "default")
    p.add_argument("--processing-resolution", type=int, default=160)
    p.add_argument("--refine-subsample", type=int, default=1,
                   help="model.refine_subsample the calibration runs under and the model carries")
    p.add_argument("--calibration-scenes", type=int, default=100)
    p.add_argument("--eval-scenes", type=int, default=100)
    p.add_argument("--stream-frames", type=int, default=120)
    args = p.parse_args(argv)
    out: Path = args.output.resolve()
    started = time.time()

    print(f"== 1. checkpoint {args.model} -> {out}", flush=True)
    kind = inspect_checkpoint(args.model).kind
    if kind not in CHECKPOINT_PARTS:
        p.error(f"--model {args.model}: a {kind} model; the default model ships a conv or SD checkpoint folder")
    staged = args.model
    if args.model.resolve() == out:
        # Reshipping in place (new post-processing, same weights): keep the checkpoint out of the cleanup below.
        staged = Path(tempfile.mkdtemp(prefix="ship_default_model_"))
        for part in CHECKPOINT_PARTS[kind]:
            src = args.model / part
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, staged / part)
    for old in [*(part for parts in CHECKPOINT_PARTS.values() for part in parts), "segmenter.yaml", "model.onnx",
                "model_int8.onnx", "preprocessor_config.json"]:
        target = out / old
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    for part in CHECKPOINT_PARTS[kind]:
        src = staged / part
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, out / part)
    if staged != args.model:
        shutil.rmtree(staged)
    (out / "segmenter.yaml").write_text(f"model:\n  processing_resolution: {args.processing_resolution}\n"
                                        f"  refine_subsample: {args.refine_subsample}\n")

    print("== 2. post-processing, calibrated on the training shapes", flush=True)
    calibrated = out / "segmenter.calibrated.yaml"
    calibrate_cmd = run([str(BIN / "calibrate_instances"), "--model", str(out), "--shapes", *TRAINING, "--scenes",
                         str(args.calibration_scenes), "--output", str(calibrated), "--threads", "1"])
    calibrated.replace(out / "segmenter.yaml")
    # Keep only what a model carries (post-processing); the calibration's header says how it was chosen.
    header = (out / "segmenter.yaml").read_text().splitlines()[0]
    carried = unflatten(recommended_settings(out))
    (out / "segmenter.yaml").write_text(f"{header}\n# The post-processing this model recommends (seg_node.model_settings).\n"
                                        + yaml.safe_dump(carried, sort_keys=False))

    print("== 3. ONNX export", flush=True)
    onnx = out / "model.onnx"
    export_cmd = run([str(BIN / "export_onnx"), "--model", str(out), "--output", str(onnx), "--dynamic"])

    print("== 4. numbers", flush=True)
    metrics = {
        "model": f"{relative(out)} (model.onnx; the checkpoint gives the same outputs)",
        "held_out": evaluate(onnx, HELD_OUT, args.eval_scenes, (240, 320)),
        "held_out_480x640": evaluate(onnx, HELD_OUT, args.eval_scenes, (480, 640)),
        "training_shapes": evaluate(onnx, TRAINING, args.eval_scenes, (240, 320)),
        "goals": {"held_out": {"miou_1": 0.85, "AP50": 0.7}, "training_shapes": {"miou_1": 0.85},
                  "held_out_480x640": {"miou_1": 0.8}, "main_job_hz": 30},
    }
    overlays(onnx, out / "overlays.png")
    stream = Path("/tmp") / f"ship_default_stream_{int(started)}"
    metrics["main_job"] = main_job(onnx, args.stream_frames, stream)
    metrics["commands"] = {"calibrate": calibrate_cmd.replace(str(calibrated), relative(out / "segmenter.yaml")),
                           "export": export_cmd}
    if kind == "conv":
        print("== 5. int8 for ONNX Runtime on the CPU", flush=True)
        int8 = out / "model_int8.onnx"
        metrics["commands"]["export_int8"] = run([str(BIN / "export_onnx"), "--model", str(out), "--output", str(int8),
                                                  "--dynamic", "--int8", "--int8-shapes", *TRAINING])
        metrics["int8"] = {"model": f"{relative(int8)} (export_onnx --int8)",
                           "held_out": evaluate(int8, HELD_OUT, args.eval_scenes, (240, 320)),
                           "held_out_480x640": evaluate(int8, HELD_OUT, args.eval_scenes, (480, 640)),
                           "training_shapes": evaluate(int8, TRAINING, args.eval_scenes, (240, 320)),
                           "main_job": main_job(int8, args.stream_frames, Path(f"{stream}_int8"))}
    metrics["seconds"] = round(time.time() - started, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"wrote {out / 'metrics.json'} ({metrics['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
