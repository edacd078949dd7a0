"""TensorRT and CUDA as the backend and the builder load them: imported on first use, so a machine without them
still imports the rest of the package (and is told what to install). CUDA goes through pycuda (preferred) or
cuda-python; both use the device's primary context, the one TensorRT's runtime API uses."""
from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from seg_node.backends.base import BackendError, MissingDependencyError
from seg_node.backends.tensorrt.cache import DeviceFacts, TensorIO

TRT_INSTALL = ("TensorRT ships with JetPack on a Jetson (apt: python3-libnvinfer, nvidia-tensorrt); on an x86 "
               "CUDA machine: pip install tensorrt")
_TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "INT32": "int32",
               "INT64": "int64", "BOOL": "bool", "UINT8": "uint8", "FP8": "float8"}

CUDA_INSTALL = ("pip install pycuda (on a Jetson it builds against JetPack's CUDA: put /usr/local/cuda/bin on PATH "
                "first) or pip install cuda-python matching the CUDA version")
# TensorRT 11 removed BuilderFlag.FP16/BF16/INT8, IInt8EntropyCalibrator2 and per-layer precision (measured against
# the 11.4 bindings); tests/backends/test_tensorrt_names.py checks every name used here against each supported major.
SUPPORTED_TRT_MAJORS = (10,)
# The names this package uses on TensorRT objects (ast cannot see their types; the `trt.X.Y` names are collected
# from the source by the test). "a|b": either one (the code checks with hasattr).
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


def gather_device_facts(device_index: int = 0) -> DeviceFacts:
    """GPU name and compute capability (through pycuda or cuda-python) and the TensorRT version of this machine."""
    trt = import_tensorrt()
    cuda = open_cuda(device_index)
    try:
        return device_facts(trt, cuda)
    finally:
        cuda.close()
