"""Single-core timing of segments_3d (20 segments) and Tracker.update (30 segments) at 640×480.

Run from the repository root:  .venv/bin/python bench/bench_geometry_tracking.py [--repeats N]

These were wall-clock asserts in tests/test_geometry3d.py and tests/test_tracking.py; timing on a shared machine
is not a pass/fail property, so it lives here. Prints the best and median per call against the goals and writes
bench/results/geometry_tracking.json.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from scenes import K, Box, render  # noqa: E402
from test_tracking import draw, moving_objects  # noqa: E402

from seg_node.geometry3d import segments_3d  # noqa: E402
from seg_node.tracking import Tracker  # noqa: E402

GOALS_MS = {"segments_3d, 20 segments": 15.0, "Tracker.update, 30 segments": 5.0}


def _times(fn, inputs) -> list[float]:
    out = []
    for x in inputs:
        t0 = time.perf_counter()
        fn(x)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    objects = tuple(Box((x, y), (rng.uniform(0.05, 0.12), 0.04, 0.05), rng.uniform(-90, 90))
                    for x in np.linspace(-0.45, 0.45, 5) for y in np.linspace(-0.3, 0.3, 4))
    scene = render(15.0, objects=objects)
    segments_3d(scene.labels, 20, scene.depth, K)  # warm-up
    geo = _times(lambda _: segments_3d(scene.labels, 20, scene.depth, K), range(args.repeats))

    moving = moving_objects(np.random.default_rng(9), 30)
    frame_rng = np.random.default_rng(0)
    frames = [draw(moving, f, frame_rng)[:2] for f in range(args.repeats + 1)]
    tracker = Tracker()
    track = _times(lambda lc: tracker.update(*lc), frames)[1:]  # the first frame only starts tracks

    results = []
    for name, times in (("segments_3d, 20 segments", geo), ("Tracker.update, 30 segments", track)):
        best, median = min(times) * 1e3, float(np.median(times)) * 1e3
        goal = GOALS_MS[name]
        print(f"{name:30s} best {best:6.2f} ms  median {median:6.2f} ms  goal {goal:.0f} ms (best): "
              f"{'met' if best < goal else 'MISSED'}")
        results.append(dict(what=name, best_ms=best, median_ms=median, goal_ms=goal))
    out = ROOT / "bench" / "results" / "geometry_tracking.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(host=platform.node(), python=platform.python_version(), results=results), indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
