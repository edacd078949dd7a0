"""Build TensorRT 10 engines for an exported gen2seg ONNX model into the engine cache (``build_engine`` CLI).

    build_engine --onnx FILE [--precision fp32|fp16|bf16|int8] [--calib-dir DIR] [--dla N] [--workspace-mb N]
                 [--build-only] [--cache-dir DIR] [--batch N] [--hw HxW] [--device cuda:N] [--iterations N]
                 [--cuda-graph]

Each graph of the model (one, or the three stages of a ``--split`` SD export) gets an engine under its full cache
key (``seg_node.backends.tensorrt.cache``); an engine already in the cache is reported and left alone, so running
this twice builds nothing the second time. ``--build-only`` stops there: run it on the Jetson once after install
(or from the launch file's pre-start step), and the node then finds every engine in the cache. Without it, the
engines are then loaded through the runtime backend and timed (latency over ``--iterations`` runs).

Precision and calibration: ``seg_node.backends.tensorrt.builder``. ``--dla N`` targets DLA core N with GPU fallback
(fp16/int8 only).

Imports no torch: it runs on a Jetson with only the runtime dependencies plus TensorRT.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from seg_node.backends.base import PRECISIONS, BackendError, MissingDependencyError
from seg_node.backends.tensorrt.backend import TensorRTBackend
from seg_node.backends.tensorrt.builder import resolve_engines, say
from seg_node.backends.tensorrt.cache import EngineCache
from seg_node.backends.tensorrt.cuda import device_facts, device_index, import_tensorrt, open_cuda
from seg_node.cli.common import hw_size, non_negative, positive

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="build_engine", description="Build TensorRT engines for an exported gen2seg "
                                     "ONNX model into the engine cache (nothing is rebuilt that is already there).")
    parser.add_argument("--onnx", required=True, type=Path, help="export_onnx file (any stage of a --split export)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp16", help="default fp16")
    parser.add_argument("--calib-dir", type=Path, help="int8: folder of calibration images")
    parser.add_argument("--dla", type=int, default=-1, metavar="N", help="DLA core (Jetson; GPU fallback on)")
    parser.add_argument("--workspace-mb", type=non_negative, default=0, help="builder workspace limit (0 = TensorRT's)")
    parser.add_argument("--build-only", action="store_true", help="build (or find) the engines and exit; no timing run")
    parser.add_argument("--cache-dir", type=Path, help="engine cache folder (default: engines/cache of a checkout, "
                        "else ~/.cache/seg_node/engines; $SEG_NODE_ENGINE_CACHE overrides)")
    parser.add_argument("--batch", type=positive, default=1, help="largest batch the engine takes (default 1)")
    parser.add_argument("--hw", type=hw_size, help="H×W for a single graph exported with dynamic H/W")
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N")
    parser.add_argument("--iterations", type=positive, default=20, help="timed runs after building (default 20)")
    parser.add_argument("--cuda-graph", action="store_true", help="time with CUDA graph replay")
    args = parser.parse_args(argv)
    if args.dla < -1:
        parser.error("--dla must be >= 0 (or -1 for the GPU)")
    if args.precision == "int8" and args.calib_dir is None:
        parser.error("--precision int8 needs --calib-dir")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="build_engine: %(message)s", stream=sys.stderr)
    try:
        index = device_index(args.device)
        trt = import_tensorrt()
        cuda = open_cuda(index)
    except MissingDependencyError as exc:
        print(f"build_engine: error: {exc}", file=sys.stderr)
        return 2
    except BackendError as exc:
        print(f"build_engine: error: {exc}", file=sys.stderr)
        return 2
    cache = EngineCache(args.cache_dir)
    try:
        with cuda.activate():
            facts = device_facts(trt, cuda)
            calib_dir = args.calib_dir if args.precision == "int8" else None
            _, engines = resolve_engines(args.onnx, trt, cuda, facts, cache, args.precision, max_batch=args.batch,
                                            hw=args.hw, dla_core=args.dla, workspace_mb=args.workspace_mb,
                                            calib_dir=calib_dir)
            say(f"{facts.gpu_name} (sm{facts.compute_capability}), TensorRT {facts.trt_version}, CUDA "
                 f"{facts.cuda_version or '?'}; cache {cache.root}")
            plans = []
            for resolved in engines:
                entry = resolved.entry
                state = f"built in {entry.meta['built']['seconds']} s" if resolved.built else "already cached"
                print(f"{resolved.plan.stage.name}: {entry.engine} ({state}; key in {entry.sidecar.name})")
                plans.append(resolved.plan)
    except BackendError as exc:
        print(f"build_engine: error: {exc}", file=sys.stderr)
        return 1
    finally:
        cuda.close()
    if args.build_only:
        return 0
    backend = TensorRTBackend(args.onnx, args.device, args.precision, cache_dir=cache.root, on_missing="fail",
                              cuda_graph=args.cuda_graph, dla_core=args.dla, workspace_mb=args.workspace_mb,
                              max_batch=args.batch, calib_dir=args.calib_dir, hw=args.hw)
    try:
        x = np.random.default_rng(0).standard_normal((args.batch, *plans[0].shapes[plans[0].stage.inputs[0]][1:]))
        x = x.astype(np.float32)
        for _ in range(3):
            backend.run(x)
        times = []
        for _ in range(args.iterations):
            t0 = time.perf_counter()
            backend.run(x)
            times.append((time.perf_counter() - t0) * 1e3)
        t = np.asarray(times)
        print(f"{backend.describe()}: {t.mean():.2f} ms mean, {np.median(t):.2f} ms median, {np.percentile(t, 90):.2f} "
              f"ms p90 over {args.iterations} runs of batch {args.batch} (host copies included)")
    finally:
        backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
