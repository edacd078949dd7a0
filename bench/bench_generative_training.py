"""GSS maskige warm start and MaskSyn shards in the SD miniature's stage-3 fine-tune: held-out mIoU curves.

Run from the repository root:
    .venv/bin/python bench/bench_generative_training.py --model RUNS/sd2/model [--steps 300] [--seeds 802 803 804]

``--model`` is a stage-2 checkpoint of the SD miniature (the UNet as a latent denoiser on the stage-1 VAE):
``bash scripts/train_sd_miniature.sh RUNS`` writes it to RUNS/sd2/model (stages 1-2; stop the script when stage 3
starts). From it, three arms run the SD miniature's stage-3 recipe (``train --objective instance --train-decoder
--color-scale shift --color-gain 64``, shape families blob and cylinder held out of the data) at a small size, with
the same seed, steps and schedule:

* ``baseline``: synthetic scenes only;
* ``warm_start``: the same with ``--maskige-warmup W`` (GSS stage 1: the first W of the steps regress the latent of
  the target's maskige, then the instance loss takes over);
* ``masksyn``: ``--data synthetic@2 shards:DIR@1``, the shard made by ``masksyn`` (copy-paste) from synthetic scenes
  of the training families only.

``train`` evaluates every arm every ``--eval-every`` steps on the same fixed held-out scenes (single-point mIoU,
segment-everything AP50); step 0, the start checkpoint shared by all arms, is scored on the same scenes at the same
resolution by ``python -m training.evaluate``; with the warm start, ``maskige_check`` first measures how much of a
maskige the model's VAE keeps at the train size's long edge, 160 and 320 px (the method's precondition). Reports the
curves, the first evaluated step at which each arm reaches each ``--thresholds`` mIoU, and the final and curve-mean
numbers, per seed, with the paired differences to the baseline; a difference counts as a gain or loss only when
every seed agrees on its sign and its mean exceeds both the baseline's spread over seeds and ``--min-difference``.
Writes bench/results/generative_training.json and .png; runs and shards go to --work (a run whose folder holds a
finished run of the identical command is reused).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from training.synthetic import scene_size  # noqa: E402

HELD_OUT = "blob,cylinder"
ARMS = ("baseline", "warm_start", "masksyn")
ARM_COLORS = {"baseline": (0, 0, 0), "warm_start": (200, 90, 0), "masksyn": (0, 140, 0)}  # OpenCV BGR


def _hw(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _run(cmd: list[str], folder: Path, done: Path, log_name: str) -> float | None:
    """Run ``cmd`` (output to ``folder/log_name``, held-out evaluations echoed) unless ``folder`` already holds a
    finished run of the same command; returns its wall seconds (None when reused)."""
    stamp = folder / "bench_command.txt"
    text = shlex.join(cmd) + "\n"
    if done.exists() and stamp.is_file() and stamp.read_text() == text:
        print(f"  reusing {folder}", flush=True)
        return None
    shutil.rmtree(folder, ignore_errors=True)  # train appends to an old log: start clean
    folder.mkdir(parents=True)
    print(f"  $ {text}", end="", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.setdefault("OMP_NUM_THREADS", "1")  # one thread: reproducible CPU numerics, and the machine stays usable
    t0 = time.perf_counter()
    with (folder / log_name).open("w") as log, subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:  # text mode splits tqdm's carriage-return refreshes into lines too
            log.write(line)
            if "held-out" in line or "Error" in line:
                print(f"    {line.strip()}", flush=True)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {text}see {folder / log_name}")
    stamp.write_text(text)
    return round(time.perf_counter() - t0, 1)


def _curve(log: Path) -> list[dict[str, float]]:
    """The held-out evaluations ``train`` logged: step, single-point mIoU, AP, AP50."""
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    return [{"step": r["step"], "miou_1": r["eval"]["miou_1"], "AP": r["eval"]["AP"], "AP50": r["eval"]["AP50"]}
            for r in rows if "eval" in r]


def _first_step(curve: list[dict[str, float]], threshold: float) -> int | None:
    return next((p["step"] for p in curve if p["miou_1"] >= threshold), None)


def _mean_spread(values: list[float]) -> dict[str, float]:
    return {"mean": round(float(np.mean(values)), 4), "min": round(min(values), 4), "max": round(max(values), 4)}


def _compare(arm: str, curves: dict[str, dict[int, list[dict[str, float]]]], seeds: list[int],
             thresholds: list[float], floor: float) -> dict[str, Any]:
    """``arm`` against the baseline, paired by seed: steps to each threshold, final and curve-mean mIoU and AP50."""
    out: dict[str, Any] = {"steps_to_miou": {}, "final": {}, "curve_mean": {}}
    for t in thresholds:
        out["steps_to_miou"][f"{t:g}"] = {str(s): {"baseline": _first_step(curves["baseline"][s], t),
                                                   arm: _first_step(curves[arm][s], t)} for s in seeds}
    for metric in ("miou_1", "AP50"):
        for key, pick in (("final", lambda c: c[-1][metric]),
                          ("curve_mean", lambda c: float(np.mean([p[metric] for p in c[1:]])))):  # [0]: step 0
            base = [pick(curves["baseline"][s]) for s in seeds]
            other = [pick(curves[arm][s]) for s in seeds]
            diffs = [o - b for o, b in zip(other, base)]
            out[key][metric] = {"baseline": _mean_spread(base), arm: _mean_spread(other),
                                "paired_difference": _mean_spread(diffs),
                                "baseline_seed_spread": round(max(base) - min(base), 4),
                                "verdict": _verdict(diffs, max(max(base) - min(base), floor))}
    return out


def _verdict(diffs: list[float], noise: float) -> str:
    """A gain or loss only when every seed agrees on its sign and the mean exceeds ``noise`` (the baseline's seed
    spread, at least --min-difference)."""
    mean = float(np.mean(diffs))
    if len(diffs) > 1 and (all(d > 0 for d in diffs) or all(d < 0 for d in diffs)) and abs(mean) > noise:
        return "gain" if mean > 0 else "loss"
    return "within noise" if len(diffs) > 1 else "one seed: no spread to judge by"


def _panel(title: str, series: dict[str, list[list[tuple[float, float]]]], x_max: float, y_label: str,
           hlines: list[float], vline: float | None, size: tuple[int, int] = (300, 420)) -> np.ndarray:
    """One line chart (white, BGR): per arm each seed's curve thin and their mean thick."""
    h, w = size
    left, right, top, bottom = 48, 12, 28, 36
    img = np.full((h, w, 3), 255, np.uint8)
    values = [v for curves in series.values() for c in curves for _, v in c] + hlines
    lo, hi = min(values), max(values)
    pad = max(0.01, 0.08 * (hi - lo))
    lo, hi = max(0.0, lo - pad), hi + pad

    def xy(x: float, y: float) -> tuple[int, int]:
        return (left + int((w - left - right) * x / x_max), top + int((h - top - bottom) * (1 - (y - lo) / (hi - lo))))

    font, black = cv2.FONT_HERSHEY_SIMPLEX, (0, 0, 0)
    cv2.rectangle(img, xy(0, hi), xy(x_max, lo), black, 1)
    tick = next(t for t in (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5) if (hi - lo) / t <= 6)
    for y in np.arange(np.ceil(lo / tick) * tick, hi, tick):
        cv2.putText(img, f"{y:.3f}", (2, xy(0, y)[1] + 4), font, 0.35, black, 1, cv2.LINE_AA)
    for x in np.linspace(0, x_max, 5):
        cv2.putText(img, f"{x:.0f}", (xy(x, lo)[0] - 10, h - bottom + 14), font, 0.35, black, 1, cv2.LINE_AA)
    cv2.putText(img, f"step; {y_label}", (left, h - 6), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.putText(img, title, (left, 18), font, 0.45, black, 1, cv2.LINE_AA)
    for y in hlines:
        cv2.line(img, xy(0, y), xy(x_max, y), (200, 200, 200), 1)
    if vline is not None:
        cv2.line(img, xy(vline, lo), xy(vline, hi), (230, 190, 150), 1)
    for row, (arm, curves) in enumerate(series.items()):
        color = ARM_COLORS[arm]
        for c in curves:
            cv2.polylines(img, [np.array([xy(x, y) for x, y in c], np.int32)], False, color, 1, cv2.LINE_AA)
        mean = [(x, float(np.mean([c[i][1] for c in curves]))) for i, (x, _) in enumerate(curves[0])]
        cv2.polylines(img, [np.array([xy(x, y) for x, y in mean], np.int32)], False, color, 2, cv2.LINE_AA)
        cv2.putText(img, arm, (left + 8, top + 16 + 16 * row), font, 0.4, color, 1, cv2.LINE_AA)
    return img


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=Path("runs/sd2/model"),
                   help="stage-2 SD checkpoint (scripts/train_sd_miniature.sh RUNS, stages 1-2: RUNS/sd2/model)")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_generative_training"), help="runs and shards")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    p.add_argument("--seeds", type=int, nargs="+", default=[802, 803, 804])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--maskige-warmup", type=int, default=50, metavar="W", help="warm_start arm: maskige steps")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.22, 0.24, 0.26])
    p.add_argument("--min-difference", type=float, default=0.01,
                   help="smaller paired differences are within noise whatever the seeds say (the sampling error of a "
                        "mean over ~200 held-out instances is about this)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--lr-warmup", type=int, default=20, help="linear lr warm-up steps (the recipe: 200 of 12000)")
    p.add_argument("--train-size", type=scene_size, default=(64, 80))
    p.add_argument("--synthetic-size", type=scene_size, default=(128, 160), help="training scenes and shard samples")
    p.add_argument("--eval-size", type=scene_size, default=(128, 160))
    p.add_argument("--eval-resolution", type=int, default=80, help="Segmenter processing resolution at evaluation")
    p.add_argument("--eval-scenes", type=int, default=32)
    p.add_argument("--masksyn-count", type=int, default=400, help="masksyn arm: samples in the shard")
    args = p.parse_args()
    if not (args.model / "model_index.json").is_file():
        p.error(f"{args.model}: no SD checkpoint (model_index.json). Make one with "
                "`bash scripts/train_sd_miniature.sh RUNS` (stages 1-2 write RUNS/sd2/model) and pass --model")
    if "baseline" not in args.arms:
        p.error("--arms: the baseline is what the other arms are compared with")
    if not 0 < args.maskige_warmup < args.steps or args.eval_every < 1:
        p.error("--maskige-warmup must be in 1..steps-1 and --eval-every >= 1")
    model, work = args.model.resolve(), args.work.resolve()
    py = sys.executable
    work.mkdir(parents=True, exist_ok=True)
    commands: dict[str, Any] = {}
    seconds: dict[str, float | None] = {}

    print("step 0: the start checkpoint on the held-out scenes", flush=True)
    resolution_config = work / "eval_resolution.yaml"
    resolution_config.write_text(f"model:\n  processing_resolution: {args.eval_resolution}\n")
    step0 = work / "step0"
    cmd = [py, "-m", "training.evaluate", "--model", str(model), "--families", *HELD_OUT.split(","),
           "--scenes", str(args.eval_scenes), "--size", _hw(args.eval_size), "--config", str(resolution_config),
           "--output", str(step0 / "eval.json")]
    commands["step0"] = shlex.join(cmd)
    seconds["step0"] = _run(cmd, step0, step0 / "eval.json", "evaluate.log")
    e0 = json.loads((step0 / "eval.json").read_text())
    start = {"step": 0, "miou_1": e0["miou_1"], "AP": e0["AP"], "AP50": e0["AP50"]}
    print(f"  step 0: mIoU {start['miou_1']:.4f}, AP50 {start['AP50']:.4f} ({e0['instances']} instances)", flush=True)

    round_trip: dict[str, dict[str, float]] | None = None
    if "warm_start" in args.arms:
        # The warm start regresses maskige latents at the train size: how much of a maskige the VAE keeps there.
        print("maskige round trip through the model's VAE (the warm start's precondition)", flush=True)
        check = work / "maskige_check"
        cmd = [py, "-m", "training.maskige_check", "--model", str(model), "--resolutions",
               *(str(r) for r in sorted({max(args.train_size), 160, 320})), "--scenes", "20", "--size", "240x320",
               "--fit", "--output", str(check)]
        commands["maskige_check"] = shlex.join(cmd)
        seconds["maskige_check"] = _run(cmd, check, check / "maskige_check.json", "maskige_check.log")
        report = json.loads((check / "maskige_check.json").read_text())["results"]
        round_trip = {res: {"iou": r["all"]["iou"], "medium_iou": r["medium"]["iou"], "thin_iou": r["thin"]["iou"],
                            "fitted_iou": report["fitted"][res]["all"]["iou"]} for res, r in report["fixed"].items()}
        print("  maskige IoU after the VAE: " + ", ".join(f"{res} px {r['iou']:.3f}" for res, r in round_trip.items()))

    shard = work / "masksyn_shard"
    if "masksyn" in args.arms:
        print("masksyn shard (training families only)", flush=True)
        cmd = [py, "-m", "training.imgsyn", "--output", str(shard), "--count", str(args.masksyn_count),
               "--source", "synthetic", "--synthetic-exclude", HELD_OUT, "--size", _hw(args.synthetic_size),
               "--seed", "0"]
        commands["masksyn_shard"] = shlex.join(cmd)
        seconds["masksyn_shard"] = _run(cmd, shard, shard / "manifest.json", "masksyn.log")

    common = ["--family", "sd", "--model", str(model), "--synthetic-randomize", "--synthetic-size",
              _hw(args.synthetic_size), "--train-size", _hw(args.train_size), "--synthetic-exclude", HELD_OUT,
              "--eval-families", HELD_OUT, "--batch-size", str(args.batch_size), "--grad-accum", "1", "--workers", "1",
              "--log-every", "25", "--objective", "instance", "--train-decoder", "--steps", str(args.steps),
              "--lr", str(args.lr), "--warmup", str(args.lr_warmup), "--lr-total-iters", str(args.steps),
              "--color-scale", "shift", "--color-gain", "64", "--eval-size", _hw(args.eval_size),
              "--eval-resolution", str(args.eval_resolution), "--eval-scenes", str(args.eval_scenes),
              "--eval-every", str(args.eval_every), "--save-every", str(args.steps), "--keep-checkpoints", "1"]
    extra = {"baseline": ["--data", "synthetic"], "warm_start": ["--data", "synthetic",
                                                                 "--maskige-warmup", str(args.maskige_warmup)],
             "masksyn": ["--data", "synthetic@2", f"shards:{shard}@1"]}
    curves: dict[str, dict[int, list[dict[str, float]]]] = {arm: {} for arm in args.arms}
    for seed in args.seeds:
        for arm in args.arms:
            out = work / f"{arm}_seed{seed}"
            print(f"{arm}, seed {seed}", flush=True)
            cmd = [py, "-m", "training.train", *common, *extra[arm], "--seed", str(seed), "--output", str(out)]
            commands[f"{arm}_seed{seed}"] = shlex.join(cmd)
            seconds[f"{arm}_seed{seed}"] = _run(cmd, out, out / "model" / "model_index.json", "train.log")
            curves[arm][seed] = [start, *_curve(out / "train_log.jsonl")]

    comparisons = {arm: _compare(arm, curves, args.seeds, args.thresholds, args.min_difference)
                   for arm in args.arms if arm != "baseline"}
    print(f"\nheld-out {HELD_OUT} single-point mIoU (step 0: {start['miou_1']:.4f}), {args.steps} steps, "
          f"seeds {args.seeds}:")
    for arm, c in comparisons.items():
        for t, per_seed in c["steps_to_miou"].items():
            cells = ", ".join(f"seed {s}: {v['baseline']} vs {v[arm]}" for s, v in per_seed.items())
            print(f"  {arm}: first step at mIoU >= {t} (baseline vs {arm}): {cells}")
        for key in ("final", "curve_mean"):
            for metric, r in c[key].items():
                print(f"  {arm}: {key} {metric} baseline {r['baseline']['mean']:.4f} vs {r[arm]['mean']:.4f}; paired "
                      f"difference {r['paired_difference']['mean']:+.4f} ({r['paired_difference']['min']:+.4f}.."
                      f"{r['paired_difference']['max']:+.4f}), baseline seed spread {r['baseline_seed_spread']:.4f}: "
                      f"{r['verdict']}")

    out_dir = ROOT / "bench" / "results"
    figure = out_dir / "generative_training.png"

    def series(arms: list[str], metric: str) -> dict[str, list[list[tuple[float, float]]]]:
        return {a: [[(q["step"], q[metric]) for q in curves[a][s]] for s in args.seeds] for a in arms}

    panels = [_panel("GSS warm start: held-out mIoU", series(["baseline", "warm_start"], "miou_1"), args.steps,
                     "single-point mIoU", args.thresholds, args.maskige_warmup)] if "warm_start" in args.arms else []
    if "masksyn" in args.arms:
        panels += [_panel("MaskSyn 1 in 3: held-out mIoU", series(["baseline", "masksyn"], "miou_1"), args.steps,
                          "single-point mIoU", args.thresholds, None),
                   _panel("MaskSyn 1 in 3: held-out AP50", series(["baseline", "masksyn"], "AP50"), args.steps,
                          "AP50", [], None)]
    if panels:
        cv2.imwrite(str(figure), np.concatenate(panels, 1))
    result = {
        "command": shlex.join(["python", "bench/bench_generative_training.py", *sys.argv[1:]]),
        "what": "stage-3 fine-tunes of the default SD design from one stage-2 checkpoint; baseline vs GSS maskige "
                "warm start (same steps: the warm-up counts in them) and vs MaskSyn copy-paste shards mixed in at "
                "1 part in 3; same seed per pair. Held-out families " + HELD_OUT + ", evaluated by train itself "
                "(training.evaluate for step 0: the same scenes and resolution)",
        "model": str(model), "seeds": args.seeds, "steps": args.steps, "maskige_warmup": args.maskige_warmup,
        "settings": {k: (_hw(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()
                     if k not in ("model", "work", "arms", "seeds", "steps", "maskige_warmup", "thresholds")},
        "eval_instances": e0["instances"], "step0": start,
        "maskige_round_trip": round_trip, "thresholds": args.thresholds,
        "comparisons": comparisons, "curves": {a: {str(s): c for s, c in per.items()} for a, per in curves.items()},
        "commands": commands, "wall_seconds": seconds,
        "reused": [k for k, v in seconds.items() if v is None],  # finished runs of the identical command in --work
        "figure": str(figure.relative_to(ROOT)) if panels else None,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "loadavg_1_5_15": os.getloadavg()},
    }
    path = out_dir / "generative_training.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path.relative_to(ROOT)}" + (f" and {figure.relative_to(ROOT)}" if panels else ""))


if __name__ == "__main__":
    main()
