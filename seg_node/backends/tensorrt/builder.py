"""Build TensorRT 10 engines for an exported gen2seg ONNX model, and find or build the engines a model needs in the
engine cache (``resolve_engines``: the one loop that the backend and the ``build_engine`` CLI share).

Precision: an fp32 ONNX file is built weakly typed with the FP16 / BF16 / INT8 builder flags; layers that
must stay float32 (softmax, normalisation, the attention-score MatMuls; docs/design.md) get float32 precision
constraints (preferred, not forced). An ``export_onnx --fp16`` file already carries its float32 islands as Casts and
is built as a strongly typed network, which follows the ONNX types exactly (``--precision fp16`` only). fp32 turns
TF32 off. int8 is calibrated (IInt8EntropyCalibrator2) from a folder of images through the runtime's own numpy
pre-processing (``seg_node.backends.tensorrt.calibration``); the calibration cache sits beside the engines. (TensorRT
10.1+ deprecates implicit int8 calibration in favour of explicit Q/DQ models, and 10.12 the FP16/BF16 builder flags in
favour of strongly typed networks; both still work in TensorRT 10.) A DLA core builds with GPU fallback (fp16/int8
only).
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from seg_node.backends.base import BackendError
from seg_node.backends.tensorrt.cache import BuildResult, CacheEntry, EngineCache, calibration_digest, resolve_engine
from seg_node.backends.tensorrt.calibration import calibration_batches, calibration_cache, calibration_files
from seg_node.backends.tensorrt.cuda import CudaApi, engine_io, trt_logger
from seg_node.backends.tensorrt.plan import EnginePlan, plan_engines
from seg_node.models.spec import ModelSpec

PROGRESS_INTERVAL_S = 5.0

log = logging.getLogger(__name__)


def say(text: str) -> None:
    print(f"build_engine: {text}", file=sys.stderr, flush=True)


def _progress_monitor(trt: ModuleType) -> Any:
    """A trt.IProgressMonitor printing phase starts/ends and, at most every few seconds, step counts."""

    class Monitor(trt.IProgressMonitor):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()
            self._phases: dict[str, tuple[str | None, int, float]] = {}
            self._last = 0.0

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                self._phases[phase_name] = (parent_phase, num_steps, time.monotonic())
                if parent_phase is None:
                    say(f"{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self._lock:
                now = time.monotonic()
                if now - self._last >= PROGRESS_INTERVAL_S:
                    self._last = now
                    _, steps, start = self._phases.get(phase_name, (None, 0, now))
                    say(f"  {phase_name}: step {step + 1}/{steps} ({now - start:.0f} s)")
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                parent, _, start = self._phases.pop(phase_name, (None, 0, time.monotonic()))
                if parent is None:
                    say(f"{phase_name} done in {time.monotonic() - start:.1f} s")

    return Monitor()


def _entropy_calibrator(trt: ModuleType, cuda: CudaApi, batches: Any, shape: Sequence[int], cache_file: Path) -> Any:
    """IInt8EntropyCalibrator2 over numpy batches of ``shape``; the cache file makes a rebuild skip calibration."""

    class Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = iter(batches)
            self._stream = cuda.create_stream()
            self._host = cuda.pinned(tuple(shape), np.float32)
            self._device = cuda.malloc(self._host.nbytes)
            self.count = 0

        def get_batch_size(self) -> int:
            return int(shape[0])

        def get_batch(self, names: list[str]) -> list[int] | None:
            try:
                batch = next(self._batches)
            except StopIteration:
                return None
            self._host[...] = batch
            cuda.htod(self._device, self._host, self._stream)
            cuda.sync(self._stream)
            self.count += 1
            if self.count % 10 == 0:
                say(f"  calibration batch {self.count}")
            return [self._device]

        def read_calibration_cache(self) -> bytes | None:
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            cache_file.write_bytes(bytes(cache))

        def release(self) -> None:
            cuda.free(self._device)
            cuda.free_pinned(self._host)

    return Calibrator()


def _keep_fp32_islands(trt: ModuleType, network: Any) -> int:
    """Float32 precision constraints on softmax, normalisation and the MatMuls around each softmax."""
    producer: dict[str, Any] = {}
    consumers: dict[str, list[Any]] = {}
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    for layer in layers:
        for j in range(layer.num_outputs):
            producer[layer.get_output(j).name] = layer
        for j in range(layer.num_inputs):
            t = layer.get_input(j)
            if t is not None:
                consumers.setdefault(t.name, []).append(layer)
    keep: list[Any] = []
    for layer in layers:
        if layer.type == trt.LayerType.NORMALIZATION:
            keep.append(layer)
        if layer.type == trt.LayerType.SOFTMAX:
            keep.append(layer)
            t, steps = layer.get_input(0), 0
            while t is not None and t.name in producer and steps < 6:
                p = producer[t.name]
                if p.type not in (trt.LayerType.MATRIX_MULTIPLY, trt.LayerType.ELEMENTWISE):
                    break
                keep.append(p)
                if p.type == trt.LayerType.MATRIX_MULTIPLY:
                    break
                # Follow the non-constant operand of the scale/mask op.
                t = next((p.get_input(k) for k in range(p.num_inputs) if p.get_input(k) is not None
                          and producer.get(p.get_input(k).name) is not None
                          and producer[p.get_input(k).name].type != trt.LayerType.CONSTANT), None)
                steps += 1
            keep.extend(c for c in consumers.get(layer.get_output(0).name, []) if c.type == trt.LayerType.MATRIX_MULTIPLY)
    seen = set()
    for layer in keep:
        if layer.name in seen:
            continue
        seen.add(layer.name)
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
    return len(seen)


def build_serialized(plan: EnginePlan, trt: ModuleType, cuda: CudaApi, *, calib_files: Sequence[Path] = (),
                     spec: ModelSpec | None = None, calib_cache: Path | None = None) -> BuildResult:
    """Build one engine for ``plan`` with the TensorRT 10 Python API; returns its bytes, IO and build time."""
    key = plan.key
    logger = trt_logger(trt)
    if plan.meta.get("onnx_precision") == "int8":
        # Its QDQ ranges were calibrated for ONNX Runtime's CPU kernels; TensorRT's own int8 calibrates the fp32 graph.
        raise BackendError(f"{plan.onnx}: exported in int8 for ONNX Runtime on the CPU (export_onnx --int8); build "
                           "TensorRT engines from an fp32 export (for int8: --precision int8 --calib-dir DIR)")
    strongly_typed = plan.meta.get("onnx_precision") == "fp16"
    if strongly_typed and key.precision != "fp16":
        raise BackendError(f"{plan.onnx}: exported in fp16 (export_onnx --fp16); build it with --precision fp16, or "
                           f"export in fp32 for {key.precision}")
    if key.dla_core >= 0 and key.precision not in ("fp16", "int8"):
        raise BackendError(f"DLA runs fp16 or int8 only, not {key.precision}")
    if key.precision == "int8":
        if len(plan.stage.inputs) != 1 or spec is None:
            raise BackendError("int8 calibration feeds images: it needs a single-graph export (not --split)")
        if not calib_files:
            raise BackendError("precision int8 needs calibration images (--calib-dir)")
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    say(f"parsing {plan.onnx}")
    if not parser.parse_from_file(str(plan.onnx)):  # by path, so external data next to the file is found
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"{plan.onnx}: the TensorRT ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    if key.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, key.workspace_mb << 20)
    if hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = _progress_monitor(trt)
    islands = 0
    if not strongly_typed:
        if key.precision == "fp32":
            config.clear_flag(trt.BuilderFlag.TF32)
        elif key.precision == "bf16":
            if not hasattr(trt.BuilderFlag, "BF16"):
                raise BackendError(f"TensorRT {trt.__version__} has no BF16 builder flag")
            config.set_flag(trt.BuilderFlag.BF16)
        else:
            config.set_flag(trt.BuilderFlag.FP16)  # int8 also falls back to fp16 where int8 has no kernel
        if key.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
        if key.precision != "fp32":
            islands = _keep_fp32_islands(trt, network)
            config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    if key.dla_core >= 0:
        if key.dla_core >= builder.num_DLA_cores:
            raise BackendError(f"DLA core {key.dla_core} requested, but this device has {builder.num_DLA_cores}")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = key.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        full = plan.shapes.get(tensor.name)
        if full is None:
            raise BackendError(f"{plan.onnx}: network input {tensor.name!r} is not in the export record "
                               f"({', '.join(plan.shapes)}); re-export with export_onnx")
        if any(d < 0 for d in tensor.shape):
            smallest = (1, *full[1:]) if tensor.shape[0] < 0 else full
            profile.set_shape(tensor.name, smallest, full, full)
    config.add_optimization_profile(profile)
    calibrator = None
    if key.precision == "int8":
        assert spec is not None
        shape = plan.shapes[network.get_input(0).name]
        cache_file = calib_cache or calibration_cache(plan.onnx.parent, plan)
        calibrator = _entropy_calibrator(trt, cuda, calibration_batches(calib_files, spec, shape), shape, cache_file)
        config.int8_calibrator = calibrator
        config.set_calibration_profile(profile)
    say(f"building {plan.stage.name} for {key.gpu_name} (sm{key.compute_capability}), TensorRT {key.trt_version}, "
         f"{key.precision}{' (strongly typed)' if strongly_typed else ''}, input {'×'.join(map(str, key.input_shape))}"
         f"{f', {islands} layers kept fp32' if islands else ''}{f', DLA {key.dla_core}' if key.dla_core >= 0 else ''}")
    start = time.monotonic()
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.release()
    seconds = time.monotonic() - start
    if serialized is None:
        raise BackendError(f"{plan.onnx}: TensorRT failed to build the engine (see the TensorRT log above)")
    data = bytes(serialized)
    engine = trt.Runtime(logger).deserialize_cuda_engine(data)
    if engine is None:
        raise BackendError(f"{plan.onnx}: the freshly built engine does not deserialize")
    say(f"built {plan.stage.name} in {seconds:.1f} s ({len(data) / 2**20:.1f} MiB)")
    return BuildResult(data, engine_io(trt, engine), seconds,
                       {"strongly_typed": strongly_typed, "fp32_layers": islands})


@dataclass
class ResolvedEngine:
    """One graph's engine, found in the cache or just built; ``rebuild`` discards it and builds it again."""

    plan: EnginePlan
    entry: CacheEntry
    built: bool
    rebuild: Callable[[], CacheEntry]


def resolve_engines(onnx: Path, trt: ModuleType, cuda: CudaApi, facts: Any, cache: EngineCache, precision: str, *,
                    max_batch: int = 1, hw: tuple[int, int] | None = None, dla_core: int = -1, workspace_mb: int = 0,
                    calib_dir: Path | None = None, on_missing: str = "build", hint: str = "",
                    ) -> tuple[ModelSpec, Iterator[ResolvedEngine]]:
    """Plan the engines ``onnx`` needs on this device, then find each in ``cache`` or build it (``on_missing``).

    The engines are resolved lazily, one graph at a time, so a caller can check each before the next is built."""
    calib_files: list[Path] = []
    if precision == "int8":
        if calib_dir is None:
            raise BackendError("precision int8 needs calibration images (calib_dir)")
        calib_files = calibration_files(Path(calib_dir))
    calibration = calibration_digest(calib_files) if calib_files else ""
    spec, plans = plan_engines(onnx, facts, precision, max_batch=max_batch, hw=hw, dla_core=dla_core,
                               workspace_mb=workspace_mb, calibration=calibration, memo_dir=cache.root)

    def resolve() -> Iterator[ResolvedEngine]:
        for plan in plans:
            def build(plan: EnginePlan = plan) -> BuildResult:
                return build_serialized(plan, trt, cuda, calib_files=calib_files, spec=spec,
                                        calib_cache=calibration_cache(cache.root, plan))

            entry, built = resolve_engine(cache, plan.key, plan.stem, build, on_missing=on_missing,
                                          expected_io=plan.expected_io, meta=plan.meta, hint=hint)

            def rebuild(plan: EnginePlan = plan, build: Callable[[], BuildResult] = build,
                        stale: CacheEntry = entry) -> CacheEntry:
                cache.discard(stale)
                return resolve_engine(cache, plan.key, plan.stem, build, on_missing="build",
                                      expected_io=plan.expected_io, meta=plan.meta)[0]

            yield ResolvedEngine(plan, entry, built, rebuild)

    return spec, resolve()
