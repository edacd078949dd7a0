"""Single-core forward+backward time and peak memory of InstanceColoringLoss against the literal per-instance loop.

Run from the repository root:  .venv/bin/python bench/bench_loss.py [--repeats N] [--loop-repeats N]

Scene: a 480×640 frame cut into K compact instances (nearest of K random seeds) plus a black background, batch 1,
predictions near the target colours plus noise. Both implementations run alternately in one process (the machine
is shared; the ratio of medians taken side by side is the number to compare). Peak memory is measured in a fresh
subprocess per implementation: the growth of the process's peak RSS (VmHWM, reset through /proc/self/clear_refs)
over its RSS just before the call, which counts every allocation torch makes (tracemalloc sees only Python
objects). Writes
bench/results/loss.json.
"""
from __future__ import annotations

import one_core  # noqa: F401  (first: one thread, one CPU, before numpy and torch load)

import argparse  # noqa: E402
import os  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from training.loss import InstanceColoringLoss, instance_coloring_loss_loop  # noqa: E402

H, W = 480, 640
GOAL_SPEEDUP = 10.0


def make_scene(instances: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    seeds = torch.rand(instances + 1, 2, generator=g) * torch.tensor([H, W])
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    labels = torch.zeros(H, W, dtype=torch.long)
    best = torch.full((H, W), float("inf"))
    for k in range(instances + 1):  # nearest seed, one seed at a time (a K×H×W distance tensor would be 0.5 GB)
        d = (yy - seeds[k, 0]) ** 2 + (xx - seeds[k, 1]) ** 2
        closer = d < best
        labels[closer], best[closer] = k, d[closer]
    colors = torch.randint(1, 256, (instances + 1, 3), generator=g).float()
    colors[0] = 0  # seed 0's region is the background
    target = colors[labels].permute(2, 0, 1)[None]
    prediction = (0.6 * target + 100 * torch.rand(1, 3, H, W, generator=g)).clamp(0, 255)
    return prediction, target


def run_once(which: str, prediction: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """(seconds for forward + backward, loss value)."""
    p = prediction.clone().requires_grad_()
    t0 = time.perf_counter()
    if which == "vectorised":
        loss = InstanceColoringLoss()(p, target, [False])
    else:
        loss = instance_coloring_loss_loop(p, target, [False])
    loss.backward()
    return time.perf_counter() - t0, float(loss.detach())


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_memory(which: str, instances: int) -> None:
    """Child process: print the peak RSS growth (bytes) of one forward+backward as JSON."""
    torch.set_num_threads(1)
    prediction, target = make_scene(instances)
    run_once(which, prediction[:, :, :8, :8].contiguous(), target[:, :, :8, :8].contiguous())  # load kernels
    before = _status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (the peak RSS) to the current RSS, so building the scene does not count
    run_once(which, prediction, target)
    print(json.dumps({"peak_growth_bytes": _status_bytes("VmHWM") - before, "rss_before_bytes": before}))


def child_memory(which: str, instances: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child-memory", which, "--instances", str(instances)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=7, help="timed vectorised calls (median taken)")
    parser.add_argument("--loop-repeats", type=int, default=3, help="timed loop calls (median taken)")
    parser.add_argument("--memory-instances", type=int, nargs="*", default=[100, 400],
                        help="instance counts for the peak-memory measurement")
    parser.add_argument("--child-memory", choices=("vectorised", "loop"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_memory:
        measure_memory(args.child_memory, args.instances)
        return
    torch.set_num_threads(1)

    prediction, target = make_scene(args.instances)
    run_once("vectorised", prediction, target)  # warm-up
    fast, slow, values = [], [], {}
    for i in range(max(args.repeats, args.loop_repeats)):
        if i < args.repeats:
            t, values["vectorised"] = run_once("vectorised", prediction, target)
            fast.append(t)
        if i < args.loop_repeats:
            t, values["loop"] = run_once("loop", prediction, target)
            slow.append(t)
    fast_ms, slow_ms = 1e3 * float(torch.tensor(fast).median()), 1e3 * float(torch.tensor(slow).median())
    speedup = slow_ms / fast_ms
    rel_diff = abs(values["vectorised"] - values["loop"]) / abs(values["loop"])
    print(f"{H}×{W}, {args.instances} instances + background, batch 1, 1 thread, forward + backward")
    print(f"  vectorised  median {fast_ms:9.1f} ms   (min {1e3 * min(fast):.1f})")
    print(f"  loop        median {slow_ms:9.1f} ms   (min {1e3 * min(slow):.1f})")
    print(f"  speed-up    {speedup:.1f}×  {'PASS' if speedup >= GOAL_SPEEDUP else 'FAIL'} (>= {GOAL_SPEEDUP:g}×); "
          f"loss values differ by {rel_diff:.1e} relative")

    memory = []
    for k in args.memory_instances:
        row = {"instances": k}
        for which in ("vectorised", "loop"):
            row[which] = child_memory(which, k)["peak_growth_bytes"]
        memory.append(row)
        print(f"  peak memory growth, {k} instances: vectorised {row['vectorised'] / 2**20:.1f} MiB, "
              f"loop {row['loop'] / 2**20:.1f} MiB (prediction itself: {prediction.numel() * 4 / 2**20:.1f} MiB)")

    out = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "cwd": os.getcwd(),
        "scene": {"height": H, "width": W, "instances": args.instances, "background": True, "batch": 1},
        "threads": torch.get_num_threads(),
        "vectorised_ms": {"median": fast_ms, "all": [1e3 * t for t in fast]},
        "loop_ms": {"median": slow_ms, "all": [1e3 * t for t in slow]},
        "speedup": speedup,
        "goal_speedup": GOAL_SPEEDUP,
        "pass": speedup >= GOAL_SPEEDUP,
        "loss": values,
        "loss_relative_difference": rel_diff,
        "peak_memory_growth_bytes": memory,
        "memory_method": "VmHWM (reset via /proc/self/clear_refs) minus VmRSS before one forward+backward, "
                         "fresh process per measurement",
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
                    "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                    # The machine is shared: a load above 1 means other processes competed for the core.
                    "loadavg_1_5_15": os.getloadavg()},
    }
    path = ROOT / "bench" / "results" / "loss.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
