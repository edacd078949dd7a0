"""Single-core timing of label_instances and single-point mask_from_points on 640×480 synthetic colour maps.

Run from the repository root:  .venv/bin/python bench/bench_instances.py [--repeats N]

Every median is also given as a ratio to one numpy pass over the same colour map (``colors.sum()``), measured in
the same run, so that numbers from a noisy shared machine can be compared, and with the median CPU time of the
calling thread, which other processes on the core do not inflate. The numba kernels of label_instances are compiled
(or loaded from numba's cache) before anything is timed. Writes bench/results/instances.json.
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
import numba  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.helpers import synthetic_colors  # noqa: E402
from seg_node.instances import InstanceParams, label_instances  # noqa: E402
from seg_node.processing.prompting import mask_from_points  # noqa: E402

GOAL_LABEL_MS = 5.0
GOAL_PROMPT_MS = 1.0
SCENES = {  # name: SceneSpec arguments (defaults: noise sigma 3, blur sigma 1.2)
    "10 instances": dict(n_instances=10, thin_fraction=0.1, similar_pairs=2),
    "50 instances": dict(n_instances=50, thin_fraction=0.1, similar_pairs=5),
    "200 instances": dict(n_instances=200, thin_fraction=0.05, similar_pairs=20),
}



def time_ms(fn, repeats: int) -> tuple[float, float, float]:
    """Median and 10th percentile of ``repeats`` timed calls, and the median CPU time of this thread per call, in ms
    (the 10th percentile and the CPU time show the floor when other processes share the core)."""
    fn()  # warm-up
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.thread_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    return float(np.median(times) * 1e3), float(np.percentile(times, 10) * 1e3), float(np.median(cpu) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per measurement (median taken)")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    synth = synthetic_colors
    t0 = time.perf_counter()
    label_instances(np.zeros((64, 64, 3), np.float32))  # compiles the numba kernels, or loads them from its cache
    jit_warmup_s = time.perf_counter() - t0

    results, ok = [], True
    print(f"numba {numba.__version__}: kernels ready in {jit_warmup_s:.2f} s")
    print(f"{'scene':14s} {'what':34s} {'median ms':>9s} {'x numpy':>8s} {'p10 ms':>7s} {'cpu ms':>7s}  "
          "goal (on the median)")
    for name, kwargs in SCENES.items():
        scene = synth.make_scene(synth.SceneSpec(seed=0, size=(480, 640), **kwargs))
        colors = scene.colors
        numpy_ms, numpy_p10, numpy_cpu = time_ms(lambda: colors.sum(), args.repeats)
        label_ms, label_p10, label_cpu = time_ms(lambda: label_instances(colors), args.repeats)
        no_thin_ms, no_thin_p10, no_thin_cpu = time_ms(
            lambda: label_instances(colors, InstanceParams(thin_structures=False)), args.repeats)
        # A click deep inside each object in turn, as a user would click.
        clicks = []
        for k in range(scene.n_thin + 1, int(scene.gt.max()) + 1):
            depth = cv2.distanceTransform((scene.gt == k).astype(np.uint8), cv2.DIST_L2, 3)
            y, x = np.unravel_index(depth.argmax(), depth.shape)
            clicks.append((int(x), int(y)))
        turn = iter(clicks * (args.repeats // len(clicks) + 2))
        prompt_ms, prompt_p10, prompt_cpu = time_ms(lambda: mask_from_points(colors, [next(turn)], [1]),
                                                    args.repeats)
        rows = [("numpy pass: colors.sum()", numpy_ms, numpy_p10, numpy_cpu, None),
                ("label_instances", label_ms, label_p10, label_cpu, GOAL_LABEL_MS),
                ("label_instances thin_structures=0", no_thin_ms, no_thin_p10, no_thin_cpu, None),
                ("mask_from_points, 1 positive", prompt_ms, prompt_p10, prompt_cpu, GOAL_PROMPT_MS)]
        for what, ms, p10, cpu, goal in rows:
            verdict = "" if goal is None else f"{'PASS' if ms <= goal else 'FAIL'} (<= {goal:g} ms)"
            ok &= goal is None or ms <= goal
            print(f"{name:14s} {what:34s} {ms:9.3f} {ms / numpy_ms:8.1f} {p10:7.3f} {cpu:7.3f}  {verdict}")
        results.append({"scene": name, "scene_spec": kwargs, "instances": int(scene.gt.max()),
                        "numpy_sum_ms": numpy_ms, "label_instances_ms": label_ms,
                        "label_instances_no_thin_ms": no_thin_ms, "mask_from_points_1pt_ms": prompt_ms,
                        "p10_ms": {"numpy_sum": numpy_p10, "label_instances": label_p10,
                                   "label_instances_no_thin": no_thin_p10, "mask_from_points_1pt": prompt_p10},
                        "cpu_median_ms": {"numpy_sum": numpy_cpu, "label_instances": label_cpu,
                                          "label_instances_no_thin": no_thin_cpu, "mask_from_points_1pt": prompt_cpu},
                        "label_instances_x_numpy": label_ms / numpy_ms,
                        "mask_from_points_x_numpy": prompt_ms / numpy_ms,
                        "label_instances_pass": label_ms <= GOAL_LABEL_MS,
                        "mask_from_points_pass": prompt_ms <= GOAL_PROMPT_MS})

    out = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "cwd": os.getcwd(),
        "repeats": args.repeats,
        "goals_ms": {"label_instances": GOAL_LABEL_MS, "mask_from_points": GOAL_PROMPT_MS},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "cpu_count": os.cpu_count(),
                    "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                    "numpy": np.__version__, "opencv": cv2.__version__, "opencv_threads": cv2.getNumThreads(),
                    "numba": numba.__version__, "numba_kernels_ready_s": jit_warmup_s,
                    # The machine is shared: a load above 1 means other processes competed for the core and caches.
                    "loadavg_1_5_15": os.getloadavg()},
        "results": results,
    }
    path = ROOT / "bench" / "results" / "instances.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"{'all goals met' if ok else 'some goals missed'}; wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
