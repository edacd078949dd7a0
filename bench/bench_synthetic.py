"""Single-core rate of training.synthetic scenes at 320×240 (goal: 50 scenes/s), with and without depth.

Run from the repository root:  .venv/bin/python bench/bench_synthetic.py [--scenes N]

Writes bench/results/synthetic.json.
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
from training.synthetic import SceneGenerator  # noqa: E402

GOAL = 50.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=300)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    results = {}
    for depth in (False, True):
        gen = SceneGenerator(height=240, width=320, depth=depth, seed=0)
        gen.scene(0)
        t0 = time.perf_counter()
        objects = sum(len(gen.scene(i).shapes) for i in range(args.scenes))
        rate = args.scenes / (time.perf_counter() - t0)
        name = "rgb+labels+depth" if depth else "rgb+labels"
        results[name] = {"scenes_per_s": rate, "mean_visible_instances": objects / args.scenes}
        print(f"{name:18s} {rate:6.1f} scenes/s  ({objects / args.scenes:.1f} visible instances per scene)  "
              f"{'PASS' if rate >= GOAL else 'FAIL'} (>= {GOAL:g}/s)")
    out = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "size": [320, 240],
        "scenes": args.scenes,
        "goal_scenes_per_s": GOAL,
        "results": results,
        "pass": all(r["scenes_per_s"] >= GOAL for r in results.values()),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "numpy": np.__version__,
                    "opencv": cv2.__version__, "cpu_count": os.cpu_count(), "loadavg_1_5_15": os.getloadavg()},
    }
    path = ROOT / "bench" / "results" / "synthetic.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
