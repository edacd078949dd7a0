"""Run gen2seg through TensorRT 10 engines from the engine cache. Imports no torch, diffusers or transformers, and
imports tensorrt and pycuda / cuda-python only when a backend is created.

Model paths:

* an ``.onnx`` file from ``export_onnx`` (one graph, or any stage of a ``--split`` chain): each graph's engine is
  looked up in the engine cache (``seg_node.backends.tensorrt.cache``) under its full key (GPU, compute capability, TensorRT version,
  precision, input shape, ONNX hash, DLA core, workspace) and built once if missing (``on_missing="build"``) or
  refused with the reason (``on_missing="fail"``; prebuild with ``build_engine --build-only``). The graphs must
  have static H×W (``export_onnx --profile NAME`` or ``--height/--width``); the batch axis may be dynamic.
* an ``.engine`` / ``.plan`` file written by ``build_engine`` (one graph): used as is after its sidecar's GPU and
  TensorRT version are checked against this machine.

Execution: one CUDA stream; page-locked (pinned) host buffers for ``images`` and ``colors``; device buffers
shared by tensor name, so a chain's ``latents`` and ``noise_pred`` never leave the GPU; async copies, one
``execute_async_v3`` per stage, one synchronisation per call. With ``cuda_graph=True`` the whole sequence (copy in,
all stages, copy out) is captured once per batch size and replayed. CUDA through pycuda (preferred) or
cuda-python; both use the device's primary context, the one TensorRT's runtime API uses.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seg_node.backends.base import Backend, BackendError
from seg_node.backends.tensorrt.builder import resolve_engines
from seg_node.backends.tensorrt.cache import CacheEntry, EngineCache, EngineCacheError, TensorIO, check_prebuilt, io_differences
from seg_node.backends.tensorrt.cuda import (CudaApi, device_facts, device_index, engine_io, import_tensorrt, open_cuda,
                                             trt_logger)
from seg_node.models.onnx_format import INPUT_NAME, OUTPUT_NAME, ChainStage
from seg_node.models.spec import ModelSpec

log = logging.getLogger(__name__)

_SCRATCH = "__activations__"  # the chain's shared activation memory, among the device buffers


@dataclass
class _Stage:
    plan_stage: ChainStage
    entry: CacheEntry
    engine: Any
    context: Any


class TensorRTBackend(Backend):
    """gen2seg on TensorRT engines from the engine cache (see the module docstring)."""

    name = "tensorrt"

    def __init__(self, path: str | Path, device: str = "cuda", precision: str = "fp16", *,
                 cache_dir: str | Path | None = None, on_missing: str = "build", cuda_graph: bool = False,
                 dla_core: int = -1, workspace_mb: int = 0, max_batch: int = 1, calib_dir: str | Path | None = None,
                 hw: tuple[int, int] | None = None, cuda: CudaApi | None = None) -> None:
        self._path = Path(path).expanduser()
        index = device_index(device)
        trt = import_tensorrt()
        self._trt = trt
        self._cuda = cuda if cuda is not None else open_cuda(index)
        self._closed = False
        self._stream: Any = None
        self._device_buffers: dict[str, int] = {}
        self._host_in: np.ndarray | None = None
        self._host_out: np.ndarray | None = None
        self._graphs: dict[int, Any] = {}
        self._stages: list[_Stage] = []
        try:
            with self._cuda.activate():
                self._facts = device_facts(trt, self._cuda)
                self._runtime = trt.Runtime(trt_logger(trt))
                if dla_core >= 0:
                    self._runtime.DLA_core = dla_core
                if self._path.suffix.lower() in (".engine", ".plan"):
                    self._spec, entries = self._prebuilt()
                else:
                    self._spec, entries = self._from_onnx(precision, cache_dir, on_missing, dla_core, workspace_mb,
                                                          max_batch, calib_dir, hw)
                self._allocate(entries)
        except BaseException:
            self.close()
            raise
        self._precision = self._stages[0].entry.key.precision
        self._cuda_graph = cuda_graph
        self._bound_batch = 0

    # -------------------------------------------------------------------------------------------- loading

    def _prebuilt(self) -> tuple[ModelSpec, list[tuple[CacheEntry, ChainStage, Any]]]:
        entry = check_prebuilt(self._path, self._facts)
        if entry.key.dla_core >= 0:
            self._runtime.DLA_core = entry.key.dla_core
        try:
            spec = ModelSpec.from_json(entry.meta["spec"])
        except (KeyError, ValueError) as exc:
            raise EngineCacheError(f"{entry.sidecar}: no valid model spec in the sidecar ({exc})") from exc
        stage = ChainStage.single(self._path.name)
        if entry.meta.get("stage", "model") != "model":
            raise BackendError(f"{self._path}: an engine of chain stage {entry.meta.get('stage')!r}; give the chain's "
                               ".onnx model path instead, so every stage's engine is found in the cache")
        engine = self._deserialize(entry.engine)
        actual = engine_io(self._trt, engine)
        diffs = io_differences(entry.io, actual)
        if diffs:
            raise EngineCacheError(f"{self._path}: engine IO differs from its sidecar ({'; '.join(diffs)}); rebuild it")
        expected = (TensorIO(INPUT_NAME, "input", (-1, *entry.key.input_shape[1:]), "float32"),
                    TensorIO(OUTPUT_NAME, "output", (-1, *entry.key.input_shape[1:]), "float32"))
        diffs = io_differences(expected, actual)
        if diffs:
            raise EngineCacheError(f"{self._path}: not a gen2seg engine ({'; '.join(diffs)})")
        return spec, [(entry, stage, engine)]

    def _from_onnx(self, precision: str, cache_dir: str | Path | None, on_missing: str, dla_core: int,
                   workspace_mb: int, max_batch: int, calib_dir: str | Path | None, hw: tuple[int, int] | None,
                   ) -> tuple[ModelSpec, list[tuple[CacheEntry, ChainStage, Any]]]:
        cache = EngineCache(cache_dir)
        hint = (f"prebuild it with: build_engine --onnx {self._path} --precision {precision} --build-only"
                f"{f' --batch {max_batch}' if max_batch != 1 else ''}{f' --dla {dla_core}' if dla_core >= 0 else ''}"
                f"{f' --workspace-mb {workspace_mb}' if workspace_mb else ''} --cache-dir {cache.root}")
        spec, engines = resolve_engines(self._path, self._trt, self._cuda, self._facts, cache, precision,
                                        max_batch=max_batch, hw=hw, dla_core=dla_core, workspace_mb=workspace_mb,
                                        calib_dir=Path(calib_dir) if calib_dir is not None else None,
                                        on_missing=on_missing, hint=hint)
        out = []
        for resolved in engines:
            plan, entry, built = resolved.plan, resolved.entry, resolved.built
            engine = self._deserialize(entry.engine, allow_missing=not built)
            actual = engine_io(self._trt, engine) if engine is not None else ()
            diffs = io_differences(plan.expected_io, actual) if engine is not None else ["TensorRT cannot load it"]
            if diffs and not built:
                # A cached engine that does not deserialize or whose real IO is off: stale or corrupt.
                if on_missing == "fail":
                    raise EngineCacheError(f"{entry.engine}: cached engine unusable ({'; '.join(diffs)}); {hint}")
                log.warning("cached engine %s unusable (%s); rebuilding", entry.engine.name, "; ".join(diffs))
                entry, built = resolved.rebuild(), True
                engine = self._deserialize(entry.engine)
                diffs = io_differences(plan.expected_io, engine_io(self._trt, engine))
            if diffs:
                raise EngineCacheError(f"{entry.engine}: engine IO does not match {plan.stage.name!r}: {'; '.join(diffs)}")
            log.info("%s engine %s (%s)", "built" if built else "cached", entry.engine.name, plan.stage.name)
            out.append((entry, plan.stage, engine))
        return spec, out

    def _deserialize(self, path: Path, allow_missing: bool = False) -> Any:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise EngineCacheError(f"{path}: cannot read the engine ({exc.strerror or exc})") from exc
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            if allow_missing:
                return None
            raise EngineCacheError(f"{path}: TensorRT {self._facts.trt_version} cannot deserialize this engine (built "
                                   "by another TensorRT version or for another GPU, or corrupt; see the TensorRT log)")
        return engine

    def _allocate(self, entries: list[tuple[CacheEntry, ChainStage, Any]]) -> None:
        cuda = self._cuda
        self._stream = cuda.create_stream()
        shapes: dict[str, tuple[tuple[int, ...], str]] = {}
        # The stages of a chain run one after the other on one stream, so they can share one activation buffer
        # (the largest engine's) instead of each context holding its own: on a Jetson's shared memory the split
        # SD export would otherwise need the sum of the three (docs/jetson.md).
        strategy = getattr(self._trt, "ExecutionContextAllocationStrategy", None)
        share = len(entries) > 1 and strategy is not None
        for entry, stage, engine in entries:
            context = engine.create_execution_context(strategy.USER_MANAGED) if share else engine.create_execution_context()
            if context is None:
                raise BackendError(f"{entry.engine}: TensorRT could not create an execution context (out of GPU memory?)")
            self._stages.append(_Stage(stage, entry, engine, context))
            batch = entry.key.input_shape[0]
            for t in engine_io(self._trt, engine):
                shape = (batch, *t.shape[1:])
                if t.name in shapes and shapes[t.name] != (shape, t.dtype):
                    raise BackendError(f"tensor {t.name!r} is {shapes[t.name]} in one stage and {(shape, t.dtype)} in "
                                       "another; the chain's engines do not fit together")
                shapes[t.name] = (shape, t.dtype)
        self._max_batch = min(e.key.input_shape[0] for e, _, _ in entries)
        for name, (shape, dtype) in shapes.items():
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            self._device_buffers[name] = cuda.malloc(nbytes)
        if share:
            size = max(int(getattr(st.engine, "device_memory_size_v2", 0) or st.engine.device_memory_size)
                       for st in self._stages)
            scratch = cuda.malloc(size)
            self._device_buffers[_SCRATCH] = scratch
            for st in self._stages:
                if hasattr(st.context, "set_device_memory"):  # TensorRT >= 10.1
                    st.context.set_device_memory(scratch, size)
                else:
                    st.context.device_memory = scratch
        for st in self._stages:
            for t in engine_io(self._trt, st.engine):
                if not st.context.set_tensor_address(t.name, self._device_buffers[t.name]):
                    raise BackendError(f"{st.entry.engine.name}: set_tensor_address({t.name!r}) failed")
        self._io_shape = shapes[INPUT_NAME][0]
        self._host_in = cuda.pinned(shapes[INPUT_NAME][0], np.float32)
        self._host_out = cuda.pinned(shapes[OUTPUT_NAME][0], np.float32)

    # -------------------------------------------------------------------------------------------- running

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    @property
    def engines(self) -> list[Path]:
        return [s.entry.engine for s in self._stages]

    def _bind(self, n: int) -> None:
        """Set the dynamic batch of every stage's inputs to ``n`` (engines with a static batch ignore this)."""
        if n == self._bound_batch:
            return
        for st in self._stages:
            for t in engine_io(self._trt, st.engine):
                if t.mode == "input" and t.shape[0] == -1:
                    if not st.context.set_input_shape(t.name, (n, *t.shape[1:])):
                        raise BackendError(f"{st.entry.engine.name}: set_input_shape({t.name!r}, batch {n}) failed")
        self._bound_batch = n

    def _enqueue(self, n: int) -> None:
        cuda, stream = self._cuda, self._stream
        assert self._host_in is not None and self._host_out is not None
        handle = cuda.stream_handle(stream)
        cuda.htod(self._device_buffers[INPUT_NAME], self._host_in[:n], stream)
        for st in self._stages:
            if not st.context.execute_async_v3(handle):
                raise BackendError(f"{st.entry.engine.name}: execute_async_v3 failed (see the TensorRT log)")
        cuda.dtoh(self._host_out[:n], self._device_buffers[OUTPUT_NAME], stream)

    def _graph(self, n: int) -> Any:
        graph = self._graphs.get(n)
        if graph is None:
            # TensorRT allocates lazily on the first enqueue, which must not happen inside a capture.
            self._enqueue(n)
            self._cuda.sync(self._stream)
            self._cuda.begin_capture(self._stream)
            try:
                self._enqueue(n)
            finally:
                graph = self._cuda.end_capture(self._stream)
            self._graphs[n] = graph
        return graph

    def _run_chunk(self, chunk: np.ndarray) -> np.ndarray:
        n = chunk.shape[0]
        assert self._host_in is not None and self._host_out is not None
        self._host_in[:n] = chunk
        self._bind(n)
        if self._cuda_graph:
            self._cuda.launch_graph(self._graph(n), self._stream)
        else:
            self._enqueue(n)
        self._cuda.sync(self._stream)
        return self._host_out[:n].copy()

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self._closed:
            raise BackendError("the tensorrt backend is closed")
        if batch.ndim != 4 or tuple(batch.shape[1:]) != tuple(self._io_shape[1:]):
            want = "×".join(map(str, self._io_shape[1:]))
            raise BackendError(f"{self._path.name}: batch shape {'×'.join(map(str, batch.shape))} does not fit the "
                               f"engine's input N×{want}")
        x = np.ascontiguousarray(batch, dtype=np.float32)
        with self._cuda.activate():
            parts = [self._run_chunk(x[i:i + self._max_batch]) for i in range(0, len(x), self._max_batch)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def describe(self) -> str:
        if self._closed:
            return "tensorrt (closed)"
        f = self._facts
        stages = f" ({len(self._stages)} stages)" if len(self._stages) > 1 else ""
        graph = ", CUDA graph" if self._cuda_graph else ""
        return (f"tensorrt {f.trt_version} on {f.gpu_name} (sm{f.compute_capability.replace('.', '')}, "
                f"{self._cuda.name}), {self._precision}{graph}, {self._spec.family.upper()} model "
                f"{self._path.name}{stages}, batch ≤ {self._max_batch}")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        cuda = self._cuda
        with contextlib.suppress(Exception), cuda.activate():
            if self._stream is not None:
                cuda.sync(self._stream)
            for graph in self._graphs.values():
                cuda.destroy_graph(graph)
            self._graphs.clear()
            for st in self._stages:
                st.context = None
                st.engine = None
            self._stages.clear()
            for ptr in self._device_buffers.values():
                cuda.free(ptr)
            self._device_buffers.clear()
            for arr in (self._host_in, self._host_out):
                if arr is not None:
                    cuda.free_pinned(arr)
            self._host_in = self._host_out = None
            if self._stream is not None:
                cuda.destroy_stream(self._stream)
            self._stream = None
        with contextlib.suppress(Exception):
            cuda.close()
