"""Frame rate of the Segmenter (robot mode, the checkpoint's torch backend, tracking on) at 320×240 on one core.

Run from the repository root:  .venv/bin/python bench/bench_default_model.py [--model engines/default] [--frames N]

Frames are synthetic tabletop scenes (all shapes). Reports the median and p95 latency of
``Segmenter.segment`` per frame and per stage; the goal for the shipped default model is 10 Hz.
Writes bench/results/default_model.json.
"""
from __future__ import annotations

import one_core  # noqa: F401  (first: one thread, one CPU, before numpy and torch load)

import argparse  # noqa: E402
import os  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from seg_node.model_settings import config_for_model  # noqa: E402
from seg_node.pipeline import Segmenter  # noqa: E402
from training.synthetic import SceneGenerator  # noqa: E402

GOAL_HZ = 10.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "engines" / "default"))
    parser.add_argument("--frames", type=int, default=200)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    # The model with the post-processing it carries (processing resolution, refinement, thresholds), as every tool
    # runs it; the defaults alone would run an SD model at 768 px.
    config = config_for_model(args.model, {"backend.threads": 1})
    scenes = SceneGenerator(height=240, width=320, seed=42)
    frames = [scenes.scene(i).rgb for i in range(20)]
    latencies: list[float] = []
    stages: dict[str, list[float]] = {}
    with Segmenter(config) as seg:
        for rgb in frames[:5]:  # warm-up
            seg.segment(rgb)
        for i in range(args.frames):
            t0 = time.perf_counter()
            result = seg.segment(frames[i % len(frames)])
            latencies.append((time.perf_counter() - t0) * 1e3)
            for k, v in result.timings_ms.items():
                stages.setdefault(k, []).append(v)
        backend = seg.backend.describe()
    median = float(np.median(latencies))
    hz = 1e3 / median
    print(f"{args.model}: {backend}")
    print(f"320×240, one core: median {median:.1f} ms ({hz:.1f} Hz), p95 {np.percentile(latencies, 95):.1f} ms  "
          f"{'PASS' if hz >= GOAL_HZ else 'FAIL'} (>= {GOAL_HZ:g} Hz)")
    for k, v in stages.items():
        print(f"  {k:12s} median {np.median(v):7.2f} ms")
    out = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "model": args.model, "backend": backend, "size": [240, 320], "frames": args.frames,
        "median_ms": median, "p95_ms": float(np.percentile(latencies, 95)), "hz": hz, "goal_hz": GOAL_HZ,
        "pass": hz >= GOAL_HZ, "median_stage_ms": {k: float(np.median(v)) for k, v in stages.items()},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0)),
                    "loadavg_1_5_15": os.getloadavg()},
    }
    path = ROOT / "bench" / "results" / "default_model.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
