"""Run gen2seg through TensorRT 10 engines from the engine cache. Imports no torch, diffusers or transformers, and
imports tensorrt and pycuda / cuda-python only when a backend is created.

Model paths:

* an ``.onnx`` file from ``export_onnx`` (one graph, or any stage of a ``--split`` chain): each graph's engine is
  looked up in the engine cache (``engine_cache``) under its full key (GPU, compute capability, TensorRT version,
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
import ctypes
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from seg_node.backends.base import Backend, BackendError, MissingDependencyError
from seg_node.backends.engine_cache import (
    PRECISIONS,
    CacheEntry,
    DeviceFacts,
    EngineCache,
    EngineCacheError,
    EngineKey,
    TensorIO,
    calibration_digest,
    check_prebuilt,
    io_differences,
    onnx_digest,
    resolve_engine,
)
from seg_node.backends.onnx_backend import (
    INPUT_NAME,
    OUTPUT_NAME,
    ChainStage,
    chain_from_metadata,
    check_chain_member,
    export_info,
    read_onnx_metadata,
    spec_from_metadata,
)
from seg_node.models.spec import ModelSpec

log = logging.getLogger(__name__)

TRT_INSTALL = ("TensorRT ships with JetPack on a Jetson (apt: python3-libnvinfer, nvidia-tensorrt); on an x86 "
               "CUDA machine: pip install tensorrt")
CUDA_INSTALL = ("pip install pycuda (on a Jetson it builds against JetPack's CUDA: put /usr/local/cuda/bin on PATH "
                "first) or pip install cuda-python matching the CUDA version")
# TensorRT 11 removed BuilderFlag.FP16/BF16/INT8, IInt8EntropyCalibrator2 and per-layer precision (measured against
# the 11.4 bindings); tests/test_tensorrt_names.py checks every name used here against each supported major.
SUPPORTED_TRT_MAJORS = (10,)
# The names this backend and training/build_engine.py use on TensorRT objects (ast cannot see their types; the
# `trt.X.Y` names are collected from the source by the test). "a|b": either one (the code checks with hasattr).
TRT_OBJECT_API = {
    "Builder": ("create_network", "create_builder_config", "create_optimization_profile", "build_serialized_network",
                "num_DLA_cores"),
    "IBuilderConfig": ("set_flag", "clear_flag", "set_memory_pool_limit", "set_calibration_profile",
                       "add_optimization_profile", "progress_monitor", "int8_calibrator", "default_device_type",
                       "DLA_core"),
    "INetworkDefinition": ("get_input", "num_inputs", "num_layers", "get_layer"),
    "ILayer": ("type", "name", "num_inputs", "num_outputs", "get_input", "get_output", "precision", "set_output_type"),
    "ITensor": ("name", "shape"),
    "IOptimizationProfile": ("set_shape",),
    "OnnxParser": ("parse_from_file", "num_errors", "get_error"),
    "Runtime": ("deserialize_cuda_engine", "DLA_core"),
    "ICudaEngine": ("num_io_tensors", "get_tensor_name", "get_tensor_mode", "get_tensor_dtype", "get_tensor_shape",
                    "create_execution_context", "device_memory_size_v2|device_memory_size"),
    "IExecutionContext": ("set_tensor_address", "set_input_shape", "execute_async_v3", "set_device_memory|device_memory"),
}
_SCRATCH = "__activations__"  # the chain's shared activation memory, among the device buffers
_TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "INT32": "int32",
               "INT64": "int64", "BOOL": "bool", "UINT8": "uint8", "FP8": "float8"}


def _missing(package: str, purpose: str, how: str) -> MissingDependencyError:
    err = MissingDependencyError(package, "tensorrt", purpose)
    err.args = (f"{purpose} needs the Python package '{package}', which is not installed. {how}",)
    return err


def import_tensorrt() -> ModuleType:
    try:
        import tensorrt
    except ImportError as exc:
        raise _missing("tensorrt", "the tensorrt backend", TRT_INSTALL) from exc
    version = str(getattr(tensorrt, "__version__", "?"))
    major = version.split(".")[0]
    if not major.isdigit() or int(major) not in SUPPORTED_TRT_MAJORS:
        raise BackendError(
            f"the tensorrt backend supports TensorRT 10.x only, found tensorrt {version}. TensorRT 8 lacks the "
            "name-based tensor API; TensorRT 11 removed the builder flags and the int8 calibrator this backend uses "
            "for fp16/bf16/int8 engines (docs/jetson.md, 'TensorRT versions'). Install TensorRT 10: JetPack 6.1+ "
            "on a Jetson, or pip install 'tensorrt>=10,<11' on an x86 CUDA machine")
    return tensorrt


_LOGGER: Any = None


def trt_logger(trt: ModuleType) -> Any:
    """One logger for the process (TensorRT requires it to outlive every builder and runtime)."""
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


def device_index(device: str) -> int:
    if device == "cuda":
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise BackendError(f"the tensorrt backend runs on a CUDA device ('cuda' or 'cuda:N'), got device {device!r}")


# ---------------------------------------------------------------------------------------------------- CUDA


def cuda_version_string(version: int) -> str:
    """CUDA's integer version (1000·major + 10·minor, e.g. 12060) as "12.6"."""
    return f"{version // 1000}.{version % 1000 // 10}"


class CudaApi:
    """The few CUDA calls the backend and the int8 calibrator make. Device pointers and stream handles are ints."""

    name = "cuda"

    def device_facts(self) -> tuple[str, str, str]:
        """(GPU name, compute capability "M.m", CUDA version).

        The CUDA version is the CUDA runtime (toolkit) version as "M.m" in both implementations, so an engine's
        record does not depend on which Python binding built it: not the driver's version, which on a desktop is
        usually newer than the toolkit (pycuda used to record the driver's, cuda-python the runtime's).
        """
        raise NotImplementedError

    def activate(self) -> contextlib.AbstractContextManager[None]:
        """Make the device current in this thread (ROS executors may call from any thread)."""
        raise NotImplementedError

    def create_stream(self) -> Any: ...
    def stream_handle(self, stream: Any) -> int: ...
    def malloc(self, nbytes: int) -> int: ...
    def free(self, ptr: int) -> None: ...
    def pinned(self, shape: Sequence[int], dtype: np.dtype) -> np.ndarray: ...
    def free_pinned(self, array: np.ndarray) -> None: ...
    def htod(self, dst: int, src: np.ndarray, stream: Any) -> None: ...
    def dtoh(self, dst: np.ndarray, src: int, stream: Any) -> None: ...
    def sync(self, stream: Any) -> None: ...
    def begin_capture(self, stream: Any) -> None: ...
    def end_capture(self, stream: Any) -> Any: ...
    def launch_graph(self, graph: Any, stream: Any) -> None: ...
    def destroy_graph(self, graph: Any) -> None: ...
    def destroy_stream(self, stream: Any) -> None: ...
    def close(self) -> None: ...


class _DriverGraphs:
    """CUDA graph capture through the driver API (libcuda, via ctypes): pycuda's own graph API varies by version."""

    THREAD_LOCAL = 1  # CU_STREAM_CAPTURE_MODE_THREAD_LOCAL: other threads' CUDA calls cannot invalidate the capture

    def __init__(self) -> None:
        try:
            self._lib = ctypes.CDLL("libcuda.so.1")
        except OSError as exc:
            raise BackendError(f"CUDA graphs need the CUDA driver library libcuda.so.1 ({exc})") from exc

    def _check(self, result: int, what: str) -> None:
        if result != 0:
            raise BackendError(f"CUDA driver call {what} failed with CUresult {result}")

    def begin(self, stream: int) -> None:
        self._check(self._lib.cuStreamBeginCapture_v2(ctypes.c_void_p(stream), ctypes.c_int(self.THREAD_LOCAL)),
                    "cuStreamBeginCapture")

    def end(self, stream: int) -> tuple[ctypes.c_void_p, ctypes.c_void_p]:
        graph, exe = ctypes.c_void_p(), ctypes.c_void_p()
        self._check(self._lib.cuStreamEndCapture(ctypes.c_void_p(stream), ctypes.byref(graph)), "cuStreamEndCapture")
        self._check(self._lib.cuGraphInstantiateWithFlags(ctypes.byref(exe), graph, ctypes.c_ulonglong(0)),
                    "cuGraphInstantiateWithFlags")
        return graph, exe

    def launch(self, graph: tuple[ctypes.c_void_p, ctypes.c_void_p], stream: int) -> None:
        self._check(self._lib.cuGraphLaunch(graph[1], ctypes.c_void_p(stream)), "cuGraphLaunch")

    def destroy(self, graph: tuple[ctypes.c_void_p, ctypes.c_void_p]) -> None:
        self._lib.cuGraphExecDestroy(graph[1])
        self._lib.cuGraphDestroy(graph[0])


class PyCudaApi(CudaApi):
    name = "pycuda"

    def __init__(self, index: int) -> None:
        import pycuda.driver as cuda

        cuda.init()
        if index >= cuda.Device.count():
            raise BackendError(f"device cuda:{index} requested, but pycuda sees {cuda.Device.count()} CUDA device(s)")
        self._cuda = cuda
        self._dev = cuda.Device(index)
        self._ctx = self._dev.retain_primary_context()
        self._allocs: dict[int, Any] = {}
        self._graphs: _DriverGraphs | None = None

    def device_facts(self) -> tuple[str, str, str]:
        major, minor = self._dev.compute_capability()
        # The toolkit pycuda was built against (it calls the driver API and does not load a CUDA runtime).
        rt_major, rt_minor = self._cuda.get_version()[:2]
        return self._dev.name(), f"{major}.{minor}", cuda_version_string(rt_major * 1000 + rt_minor * 10)

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        self._ctx.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    def create_stream(self) -> Any:
        return self._cuda.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def malloc(self, nbytes: int) -> int:
        alloc = self._cuda.mem_alloc(max(1, nbytes))
        self._allocs[int(alloc)] = alloc
        return int(alloc)

    def free(self, ptr: int) -> None:
        alloc = self._allocs.pop(ptr, None)
        if alloc is not None:
            alloc.free()

    def pinned(self, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
        return self._cuda.pagelocked_empty(tuple(shape), dtype)

    def free_pinned(self, array: np.ndarray) -> None:
        base = array.base
        while base is not None and not hasattr(base, "free"):
            base = getattr(base, "base", None)
        if base is not None:
            base.free()

    def htod(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self._cuda.memcpy_htod_async(dst, src, stream)

    def dtoh(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self._cuda.memcpy_dtoh_async(dst, src, stream)

    def sync(self, stream: Any) -> None:
        stream.synchronize()

    def _driver_graphs(self) -> _DriverGraphs:
        if self._graphs is None:
            self._graphs = _DriverGraphs()
        return self._graphs

    def begin_capture(self, stream: Any) -> None:
        self._driver_graphs().begin(self.stream_handle(stream))

    def end_capture(self, stream: Any) -> Any:
        return self._driver_graphs().end(self.stream_handle(stream))

    def launch_graph(self, graph: Any, stream: Any) -> None:
        self._driver_graphs().launch(graph, self.stream_handle(stream))

    def destroy_graph(self, graph: Any) -> None:
        self._driver_graphs().destroy(graph)

    def destroy_stream(self, stream: Any) -> None:
        pass  # pycuda frees the stream with its Python object

    def close(self) -> None:
        if self._allocs:
            with self.activate():
                for ptr in list(self._allocs):
                    self.free(ptr)
        with contextlib.suppress(Exception):
            self._ctx.detach()


class CudaPythonApi(CudaApi):
    name = "cuda-python"

    def __init__(self, index: int) -> None:
        try:
            from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
        except ImportError:
            from cuda import cudart  # older layout
        self._rt = cudart
        self._index = index
        count = self._call(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if index >= count:
            raise BackendError(f"device cuda:{index} requested, but cuda-python sees {count} CUDA device(s)")
        self._call(cudart.cudaSetDevice(index), "cudaSetDevice")
        self._pinned: dict[int, int] = {}

    def _call(self, result: Any, what: str) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise BackendError(f"CUDA runtime call {what} failed: {err}")
        return rest[0] if len(rest) == 1 else (rest or None)

    def device_facts(self) -> tuple[str, str, str]:
        prop = self._call(self._rt.cudaGetDeviceProperties(self._index), "cudaGetDeviceProperties")
        name = prop.name.split(b"\0")[0].decode() if isinstance(prop.name, bytes) else str(prop.name)
        version = self._call(self._rt.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")
        return name, f"{prop.major}.{prop.minor}", cuda_version_string(int(version))

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        self._call(self._rt.cudaSetDevice(self._index), "cudaSetDevice")
        yield

    def create_stream(self) -> Any:
        return self._call(self._rt.cudaStreamCreate(), "cudaStreamCreate")

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def malloc(self, nbytes: int) -> int:
        return int(self._call(self._rt.cudaMalloc(max(1, nbytes)), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        self._call(self._rt.cudaFree(ptr), "cudaFree")

    def pinned(self, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape)) if len(shape) else 1
        nbytes = max(1, count * dtype.itemsize)
        ptr = int(self._call(self._rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        buf = (ctypes.c_uint8 * nbytes).from_address(ptr)
        array = np.frombuffer(buf, dtype=dtype, count=count).reshape(tuple(shape))
        self._pinned[array.ctypes.data] = ptr
        return array

    def free_pinned(self, array: np.ndarray) -> None:
        ptr = self._pinned.pop(array.ctypes.data, None)
        if ptr is not None:
            self._call(self._rt.cudaFreeHost(ptr), "cudaFreeHost")

    def htod(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self._call(self._rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes,
                                            self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync")

    def dtoh(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self._call(self._rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes,
                                            self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync")

    def sync(self, stream: Any) -> None:
        self._call(self._rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def begin_capture(self, stream: Any) -> None:
        mode = self._rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._call(self._rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")

    def end_capture(self, stream: Any) -> Any:
        graph = self._call(self._rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        exe = self._call(self._rt.cudaGraphInstantiateWithFlags(graph, 0), "cudaGraphInstantiateWithFlags")
        return graph, exe

    def launch_graph(self, graph: Any, stream: Any) -> None:
        self._call(self._rt.cudaGraphLaunch(graph[1], stream), "cudaGraphLaunch")

    def destroy_graph(self, graph: Any) -> None:
        self._rt.cudaGraphExecDestroy(graph[1])
        self._rt.cudaGraphDestroy(graph[0])

    def destroy_stream(self, stream: Any) -> None:
        self._rt.cudaStreamDestroy(stream)

    def close(self) -> None:
        for ptr in list(self._pinned.values()):
            self._rt.cudaFreeHost(ptr)
        self._pinned.clear()


def open_cuda(index: int = 0) -> CudaApi:
    """pycuda if installed, else cuda-python; MissingDependencyError naming both if neither is."""
    try:
        import pycuda.driver  # noqa: F401
    except ImportError:
        pass
    else:
        return PyCudaApi(index)
    try:
        import cuda.bindings.runtime  # noqa: F401
    except ImportError:
        try:
            from cuda import cudart  # noqa: F401
        except ImportError as exc:
            raise _missing("pycuda", "the tensorrt backend (CUDA buffers and streams)", CUDA_INSTALL) from exc
    return CudaPythonApi(index)


def device_facts(trt: ModuleType, cuda: CudaApi) -> DeviceFacts:
    name, cc, cuda_version = cuda.device_facts()
    return DeviceFacts(gpu_name=name, compute_capability=cc, trt_version=str(trt.__version__), cuda_version=cuda_version)


def engine_io(trt: ModuleType, engine: Any) -> tuple[TensorIO, ...]:
    """The IO tensors of a deserialized engine (TensorRT 10 name-based API)."""
    out = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        mode = "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
        dt = engine.get_tensor_dtype(name)
        dtype = _TRT_DTYPES.get(getattr(dt, "name", str(dt).rsplit(".", 1)[-1]), str(dt))
        out.append(TensorIO(name, mode, tuple(int(d) for d in engine.get_tensor_shape(name)), dtype))
    return tuple(out)


# ---------------------------------------------------------------------------------------- planning (no GPU)


@dataclass(frozen=True)
class EnginePlan:
    """One graph to run on TensorRT: where it comes from, its cache key and the IO contract its engine must meet."""

    stage: ChainStage
    onnx: Path
    key: EngineKey
    shapes: dict[str, tuple[int, ...]]  # every IO tensor at the largest batch
    expected_io: tuple[TensorIO, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def stem(self) -> str:
        return self.onnx.name[: -len(".onnx")] if self.onnx.name.endswith(".onnx") else self.onnx.stem


def _static_dims(dims: Sequence[Any], max_batch: int, hw: tuple[int, int] | None, where: str) -> tuple[int, ...]:
    out = []
    for i, d in enumerate(dims):
        if isinstance(d, int) and d > 0:
            out.append(d)
        elif i == 0:
            out.append(max_batch)
        elif hw is not None and d in ("height", "width"):
            out.append(hw[0] if d == "height" else hw[1])
        else:
            raise BackendError(f"{where}: dimension {i} is dynamic ({d!r}); TensorRT engines are built for static "
                               "H×W: export with export_onnx --profile NAME (or --height/--width), or give the size "
                               "(build_engine --hw HxW) for a single dynamic graph")
    return tuple(out)


def plan_engines(path: str | Path, facts: DeviceFacts, precision: str = "fp16", *, max_batch: int = 1,
                 hw: tuple[int, int] | None = None, dla_core: int = -1, workspace_mb: int = 0, calibration: str = "",
                 memo_dir: Path | None = None) -> tuple[ModelSpec, list[EnginePlan]]:
    """The engines an exported ONNX model (one graph or a chain) needs on the machine ``facts`` describes."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise BackendError(f"{path}: ONNX model file does not exist")
    if max_batch < 1:
        raise BackendError(f"max_batch must be >= 1, got {max_batch}")
    if precision not in PRECISIONS:
        raise BackendError(f"precision must be one of {', '.join(PRECISIONS)} for TensorRT, got {precision!r}")
    meta = read_onnx_metadata(path)
    spec = spec_from_metadata(meta, path)
    if hw is not None and spec.input_hw is not None and tuple(hw) != spec.input_hw:
        raise BackendError(f"{path}: the graph's input is fixed at {spec.input_hw[0]}×{spec.input_hw[1]}, not {hw[0]}×{hw[1]}")
    chain = chain_from_metadata(meta, path)
    if chain is None:
        stages = [(ChainStage("model", path.name, (INPUT_NAME,), (OUTPUT_NAME,)), path, meta)]
    else:
        stages = []
        for stage, stage_path in zip(chain.stages, chain.stage_paths(path.parent)):
            if not stage_path.is_file():
                raise BackendError(f"{stage_path}: missing; {path.name} is one stage of a split export")
            stage_meta = meta if stage_path.name == path.name else read_onnx_metadata(stage_path)
            check_chain_member(chain, stage_path, stage_meta, spec)
            stages.append((stage, stage_path, stage_meta))
    if chain is not None and hw is not None and spec.input_hw is None:
        raise BackendError(f"{path}: a split export needs static shapes for TensorRT (export_onnx --split --profile NAME)")
    plans = []
    for stage, stage_path, stage_meta in stages:
        info = export_info(stage_meta)
        io_dims: dict[str, Any] = info.get("io") or {}
        if not io_dims:  # exported before the export record existed: one graph, shape from the spec
            dims = ["batch", 3, *(spec.input_hw if spec.input_hw else ("height", "width"))]
            io_dims = {INPUT_NAME: dims, OUTPUT_NAME: dims}
        shapes = {}
        for name in (*stage.inputs, *stage.outputs):
            if name not in io_dims:
                raise BackendError(f"{stage_path}: the export record has no shape for {name!r}")
            shapes[name] = _static_dims(io_dims[name], max_batch, hw, f"{stage_path.name}: {name}")
        expected = tuple(TensorIO(n, "input" if n in stage.inputs else "output", (-1, *shapes[n][1:]), "float32")
                         for n in (*stage.inputs, *stage.outputs))
        key = EngineKey.for_device(facts, precision=precision, input_shape=shapes[stage.inputs[0]],
                                   onnx_sha256=onnx_digest(stage_path, memo_dir), dla_core=dla_core,
                                   workspace_mb=workspace_mb, calibration=calibration if precision == "int8" else "")
        plan_meta = {"spec": spec.to_json(), "stage": stage.name, "onnx": str(stage_path.resolve()),
                     "onnx_precision": info.get("precision", "fp32")}
        plans.append(EnginePlan(stage, stage_path, key, shapes, expected, plan_meta))
    return spec, plans


# ------------------------------------------------------------------------------------------------- backend


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
        stage = ChainStage("model", self._path.name, (INPUT_NAME,), (OUTPUT_NAME,))
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
        calib_files: list[Path] = []
        calibration = ""
        if precision == "int8":
            if calib_dir is None:
                raise BackendError("precision int8 needs calibration images (calib_dir)")
            calib_files = calibration_files(Path(calib_dir))
            calibration = calibration_digest(calib_files)
        spec, plans = plan_engines(self._path, self._facts, precision, max_batch=max_batch, hw=hw, dla_core=dla_core,
                                   workspace_mb=workspace_mb, calibration=calibration, memo_dir=cache.root)
        out = []
        for plan in plans:
            def build(plan: EnginePlan = plan) -> Any:
                from training.build_engine import build_serialized

                return build_serialized(plan, self._trt, self._cuda, calib_files=calib_files, spec=spec,
                                        calib_cache=cache.root / f"{plan.stem}.{plan.key.calibration[:12]}.calib")

            hint = (f"prebuild it with: build_engine --onnx {self._path} --precision {precision} --build-only"
                    f"{f' --batch {max_batch}' if max_batch != 1 else ''}{f' --dla {dla_core}' if dla_core >= 0 else ''}"
                    f"{f' --workspace-mb {workspace_mb}' if workspace_mb else ''} --cache-dir {cache.root}")
            entry, built = resolve_engine(cache, plan.key, plan.stem, build, on_missing=on_missing,
                                          expected_io=plan.expected_io, meta=plan.meta, hint=hint)
            engine = self._deserialize(entry.engine, allow_missing=not built)
            actual = engine_io(self._trt, engine) if engine is not None else ()
            diffs = io_differences(plan.expected_io, actual) if engine is not None else ["TensorRT cannot load it"]
            if diffs and not built:
                # A cached engine that does not deserialize or whose real IO is off: stale or corrupt.
                if on_missing == "fail":
                    raise EngineCacheError(f"{entry.engine}: cached engine unusable ({'; '.join(diffs)}); {hint}")
                log.warning("cached engine %s unusable (%s); rebuilding", entry.engine.name, "; ".join(diffs))
                cache.discard(entry)
                entry, built = resolve_engine(cache, plan.key, plan.stem, build, on_missing="build",
                                              expected_io=plan.expected_io, meta=plan.meta)
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


# ----------------------------------------------------------------------------------------- calibration data

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def calibration_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise BackendError(f"{folder}: calibration folder does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise BackendError(f"{folder}: no calibration images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def calibration_batches(files: Sequence[Path], spec: ModelSpec, shape: Sequence[int]) -> Iterator[np.ndarray]:
    """Normalised float32 batches of ``shape`` (N×3×H×W) from image files, through the runtime's own numpy
    pre-processing (robot mode), so int8 ranges are calibrated on exactly what the engine will see. A last partial
    batch is filled up by repeating its frames."""
    import dataclasses

    import cv2

    from seg_node.families import preprocess

    n, _, h, w = shape
    fixed = spec if spec.input_hw == (h, w) else dataclasses.replace(spec, input_hw=(h, w))
    frames: list[np.ndarray] = []
    for f in files:
        bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if bgr is None:
            log.warning("calibration: cannot read %s, skipped", f)
            continue
        x, _ = preprocess([cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)], fixed, "robot", max(h, w))
        frames.append(x[0])
        if len(frames) == n:
            yield np.stack(frames)
            frames = []
    if frames:
        while len(frames) < n:
            frames.append(frames[len(frames) % max(1, len(frames))])
        yield np.stack(frames)
