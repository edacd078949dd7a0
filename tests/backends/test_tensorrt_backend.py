"""The TensorRT backend and build_engine.

Without a GPU: the import graph (no torch/diffusers/transformers), missing-package messages, engine planning from
real exported ONNX files, and the backend's host-side logic (cache use, build-once, stage chaining through shared
device buffers, batch chunking, CUDA-graph replay, prebuilt engines, freeing) against a fake ``tensorrt`` module
and a fake CUDA API that execute a simple per-sample formula. The fake mirrors the TensorRT 10 names the backend
calls (num_io_tensors, get_tensor_name/mode/shape/dtype, set_input_shape, set_tensor_address, execute_async_v3).

With a GPU, TensorRT and pycuda or cuda-python (``@pytest.mark.gpu``): real engines from tiny exports against
ONNX Runtime. Elsewhere those tests skip and say why (shown with ``pytest -rs``).

This module imports no torch at module level: the import-graph test loads its fakes in a subprocess.
"""
from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest

from seg_node.backends.base import BackendError, MissingDependencyError
from seg_node.backends.tensorrt.cache import (
    BuildResult,
    DeviceFacts,
    EngineCacheError,
    TensorIO,
    sidecar_path,
)
from seg_node.models.onnx_format import OnnxFormatError, read_onnx_metadata

REPO = Path(__file__).resolve().parents[2]
FACTS = DeviceFacts("Fake Orin", "8.7", "10.3.0", "12.2")
HEAVY = ("torch", "diffusers", "transformers")

# ------------------------------------------------------------------------------------------------ the fakes


class FakeStream:
    def __init__(self, handle: int) -> None:
        self.handle = handle
        self.capture: list[Any] | None = None


_ACTIVE: list[FakeCuda] = []


class FakeCuda:
    """Device memory as numpy byte arrays keyed by integer 'pointers'; stream work runs at once unless captured."""

    name = "fake-cuda"

    def __init__(self) -> None:
        self.memory: dict[int, np.ndarray] = {}
        self.streams: dict[int, FakeStream] = {}
        self.pinned_live = 0
        self.graph_launches = 0
        self.closed = False
        self._next = 0x1000

    def _ptr(self) -> int:
        self._next += 0x1000
        return self._next

    def device_facts(self) -> tuple[str, str, str]:
        return FACTS.gpu_name, FACTS.compute_capability, FACTS.cuda_version

    @contextlib.contextmanager
    def activate(self) -> Any:
        # The fake engines run on the device current in this thread, like TensorRT on the current CUDA context.
        _ACTIVE.append(self)
        try:
            yield
        finally:
            _ACTIVE.pop()

    def create_stream(self) -> FakeStream:
        s = FakeStream(self._ptr())
        self.streams[s.handle] = s
        return s

    def stream_handle(self, stream: FakeStream) -> int:
        return stream.handle

    def submit(self, handle: int, fn: Any) -> None:
        stream = self.streams[handle]
        if stream.capture is not None:
            stream.capture.append(fn)
        else:
            fn()

    def malloc(self, nbytes: int) -> int:
        ptr = self._ptr()
        self.memory[ptr] = np.zeros(nbytes, np.uint8)
        return ptr

    def free(self, ptr: int) -> None:
        del self.memory[ptr]

    def pinned(self, shape: Any, dtype: Any) -> np.ndarray:
        self.pinned_live += 1
        return np.zeros(shape, dtype)

    def free_pinned(self, array: np.ndarray) -> None:
        self.pinned_live -= 1

    def htod(self, dst: int, src: np.ndarray, stream: FakeStream) -> None:
        def copy() -> None:
            raw = np.ascontiguousarray(src).view(np.uint8).reshape(-1)
            self.memory[dst][: raw.size] = raw
        self.submit(stream.handle, copy)

    def dtoh(self, dst: np.ndarray, src: int, stream: FakeStream) -> None:
        def copy() -> None:
            raw = dst.view(np.uint8).reshape(-1)
            raw[:] = self.memory[src][: raw.size]
        self.submit(stream.handle, copy)

    def sync(self, stream: FakeStream) -> None:
        pass

    def begin_capture(self, stream: FakeStream) -> None:
        stream.capture = []

    def end_capture(self, stream: FakeStream) -> list[Any]:
        ops, stream.capture = stream.capture, None
        return ops

    def launch_graph(self, graph: list[Any], stream: FakeStream) -> None:
        self.graph_launches += 1
        for fn in graph:
            fn()

    def destroy_graph(self, graph: Any) -> None:
        pass

    def destroy_stream(self, stream: FakeStream) -> None:
        self.streams.pop(stream.handle, None)

    def close(self) -> None:
        self.closed = True


class _Enum:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def fake_engine_bytes(io: list[TensorIO], a: float, c: float, trt_version: str = FACTS.trt_version) -> bytes:
    return json.dumps({"magic": "fake-trt", "trt": trt_version, "a": a, "c": c,
                       "io": [t.to_dict() for t in io]}).encode()


def make_fake_tensorrt(version: str = FACTS.trt_version) -> types.ModuleType:
    """A 'tensorrt' module whose engines compute, per sample b: out[b] = a · Σ_inputs mean(in[b]) + c, on the
    FakeCuda active in this thread."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.TensorIOMode = types.SimpleNamespace(INPUT=_Enum("INPUT"), OUTPUT=_Enum("OUTPUT"))
    trt.ExecutionContextAllocationStrategy = types.SimpleNamespace(STATIC=_Enum("STATIC"), USER_MANAGED=_Enum("USER_MANAGED"))
    dtypes = {"float32": _Enum("FLOAT"), "float16": _Enum("HALF")}

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            self.level = level

    class Context:
        def __init__(self, engine: Engine, strategy: _Enum) -> None:
            self.engine = engine
            self.strategy = strategy.name
            self.device_memory: tuple[int, int] | None = None
            self.shapes = {t.name: tuple(t.shape) for t in engine.io}
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            self.shapes[name] = tuple(shape)
            for t in self.engine.io:
                if t.mode == "output":
                    self.shapes[t.name] = (shape[0], *t.shape[1:])
            return True

        def set_device_memory(self, ptr: int, size: int) -> None:
            self.device_memory = (ptr, size)

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            self.addresses[name] = ptr
            return True

        def execute_async_v3(self, handle: int) -> bool:
            cuda = _ACTIVE[-1]
            io = self.engine.io
            shapes = dict(self.shapes)
            addresses = dict(self.addresses)

            def run() -> None:
                total = None
                for t in io:
                    if t.mode == "input":
                        n = int(np.prod(shapes[t.name]))
                        x = cuda.memory[addresses[t.name]][: n * 4].view(np.float32).reshape(shapes[t.name])
                        m = x.reshape(x.shape[0], -1).mean(axis=1)
                        total = m if total is None else total + m
                for t in io:
                    if t.mode == "output":
                        shape = shapes[t.name]
                        y = np.empty(shape, np.float32)
                        y[...] = (self.engine.a * total + self.engine.c).reshape(-1, *([1] * (len(shape) - 1)))
                        cuda.memory[addresses[t.name]][: y.nbytes] = y.view(np.uint8).reshape(-1)
            cuda.submit(handle, run)
            return True

    class Engine:
        def __init__(self, raw: dict[str, Any]) -> None:
            self.io = [TensorIO.from_dict(t) for t in raw["io"]]
            self.a, self.c = raw["a"], raw["c"]
            self.num_io_tensors = len(self.io)
            self.device_memory_size_v2 = int(1000 * abs(self.a))  # activation memory this engine asks for
            self.contexts: list[Context] = []

        def get_tensor_name(self, i: int) -> str:
            return self.io[i].name

        def _t(self, name: str) -> TensorIO:
            return next(t for t in self.io if t.name == name)

        def get_tensor_mode(self, name: str) -> _Enum:
            return trt.TensorIOMode.INPUT if self._t(name).mode == "input" else trt.TensorIOMode.OUTPUT

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return self._t(name).shape

        def get_tensor_dtype(self, name: str) -> _Enum:
            return dtypes[self._t(name).dtype]

        def create_execution_context(self, strategy: _Enum = trt.ExecutionContextAllocationStrategy.STATIC) -> Context:
            self.contexts.append(Context(self, strategy))
            return self.contexts[-1]

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            self.DLA_core = -1
            self.deserialized = 0

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            try:
                raw = json.loads(data)
            except ValueError:
                return None
            if raw.get("magic") != "fake-trt" or raw.get("trt") != version:
                return None  # what TensorRT does with another version's engine
            return Engine(raw)

    trt.Logger, trt.Runtime = Logger, Runtime
    return trt


# Stage formulas of the fake builder: (a, c) per stage name.
STAGE_AC = {"model": (2.0, 1.0), "vae_encoder": (3.0, 0.5), "unet": (-0.5, 2.0), "vae_decoder": (0.5, -1.0)}


class FakeBuilder:
    """Stands in for seg_node.backends.tensorrt.builder.build_serialized: an engine with exactly the plan's expected IO."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, plan: Any, trt: Any, cuda: Any, **_: Any) -> BuildResult:
        self.calls.append(plan.stage.name)
        io = list(plan.expected_io)
        a, c = STAGE_AC[plan.stage.name]
        return BuildResult(fake_engine_bytes(io, a, c, trt.__version__), tuple(io), 0.01)


def expected_colors(x: np.ndarray, stages: list[str]) -> np.ndarray:
    """The fake engines' result for the images ``x``; every tensor is constant per sample."""
    values = {"images": x.reshape(len(x), -1).mean(axis=1)}
    wiring = {"model": (["images"], "colors"), "vae_encoder": (["images"], "latents"),
              "unet": (["latents"], "noise_pred"), "vae_decoder": (["latents", "noise_pred"], "colors")}
    for stage in stages:
        ins, out = wiring[stage]
        a, c = STAGE_AC[stage]
        values[out] = a * sum(values[i] for i in ins) + c
    return np.broadcast_to(values["colors"][:, None, None, None], x.shape).astype(np.float32)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """Fake tensorrt + CUDA installed; the builder replaced by FakeBuilder."""
    cuda = FakeCuda()
    trt = make_fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    builder = FakeBuilder()
    import seg_node.backends.tensorrt.builder as build_module

    monkeypatch.setattr(build_module, "build_serialized", builder)
    return types.SimpleNamespace(cuda=cuda, trt=trt, builder=builder)


# --------------------------------------------------------------------------------------------- ONNX models


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("trt_onnx")


@pytest.fixture(scope="module")
def mae_onnx(tiny_mae_path: Path, onnx_dir: Path) -> Path:
    from training.export_onnx import export_onnx

    return export_onnx(tiny_mae_path, onnx_dir / "mae.onnx")


@pytest.fixture(scope="module")
def sd_split_static(tiny_sd_path: Path, onnx_dir: Path) -> Path:
    from training.export_onnx import export_onnx

    return export_onnx(tiny_sd_path, onnx_dir / "sd.onnx", split=True, profile="64x96")


@pytest.fixture(scope="module")
def sd_dynamic(tiny_sd_path: Path, onnx_dir: Path) -> Path:
    from training.export_onnx import export_onnx

    return export_onnx(tiny_sd_path, onnx_dir / "sd_dyn.onnx")


def _images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-2, 2, (n, 3, h, w)).astype(np.float32)


# ------------------------------------------------------------------------------------------ import graph


def test_import_graph_has_no_torch(mae_onnx: Path, tmp_path: Path) -> None:
    """Importing the TensorRT path and running it end to end (on the fakes) pulls in no torch, diffusers or
    transformers, nor the onnx package."""
    code = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
import numpy as np
import seg_node.backends.tensorrt.backend, seg_node.backends.tensorrt.cache, seg_node.cli.build_engine
import seg_node.backends as backends
loaded = sorted(m for m in {HEAVY + ('onnx',)!r} if m in sys.modules)
assert not loaded, f'import pulled in {{loaded}}'
import tests.backends.test_tensorrt_backend as t
cuda = t.FakeCuda()
sys.modules['tensorrt'] = t.make_fake_tensorrt()
import seg_node.backends.tensorrt.builder as b
b.build_serialized = t.FakeBuilder()
from seg_node.backends.tensorrt.backend import TensorRTBackend
backend = TensorRTBackend({str(mae_onnx)!r}, cache_dir={str(tmp_path)!r}, cuda=cuda)
out = backend.run(np.zeros((1, 3, 32, 32), np.float32))
assert out.shape == (1, 3, 32, 32)
backend.close()
loaded = sorted(m for m in {HEAVY!r} if m in sys.modules)
assert not loaded, f'running pulled in {{loaded}}'
print('ok')
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr


# ------------------------------------------------------------------------------------- missing packages


def test_missing_tensorrt_names_jetpack_and_pip(mae_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from seg_node.backends.tensorrt.cuda import gather_device_facts
    from seg_node.backends.tensorrt.backend import TensorRTBackend

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingDependencyError, match=r"'tensorrt'.*JetPack.*pip install tensorrt") as info:
        TensorRTBackend(mae_onnx)
    assert info.value.package == "tensorrt"
    with pytest.raises(MissingDependencyError, match="tensorrt"):
        gather_device_facts()


def test_missing_cuda_bindings(mae_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from seg_node.backends.tensorrt.backend import TensorRTBackend

    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt())
    for name in ("pycuda", "pycuda.driver", "cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingDependencyError, match=r"'pycuda'.*pip install pycuda.*cuda-python"):
        TensorRTBackend(mae_onnx)


@pytest.mark.parametrize("version", ["8.6.1", "11.4.0"])
def test_unsupported_tensorrt_and_cpu_device(mae_onnx: Path, monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    from seg_node.backends.tensorrt.backend import TensorRTBackend

    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt(version=version))
    with pytest.raises(BackendError, match=rf"TensorRT 10\.x only, found tensorrt {re.escape(version)}.*<11"):
        TensorRTBackend(mae_onnx, cuda=FakeCuda())
    with pytest.raises(BackendError, match=r"runs on a CUDA device.*'cpu'"):
        TensorRTBackend(mae_onnx, device="cpu")


def test_create_backend_routes_engines(mae_onnx: Path, fake: types.SimpleNamespace, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """create_backend: name 'tensorrt' takes .onnx and .engine paths; .engine files default to tensorrt."""
    from seg_node import backends

    if "tensorrt" not in getattr(backends, "BACKEND_NAMES", ()):
        pytest.skip("seg_node.backends.create_backend is not wired to the tensorrt backend yet")
    from seg_node.backends.tensorrt import backend as tensorrt_backend

    monkeypatch.setattr(tensorrt_backend, "open_cuda", lambda index=0: fake.cuda)
    monkeypatch.setenv("SEG_NODE_ENGINE_CACHE", str(tmp_path))
    backend = backends.create_backend(mae_onnx, "tensorrt", device="cuda", precision="fp16")
    assert backend.name == "tensorrt"
    engine = backend.engines[0]
    backend.close()
    fake.cuda.closed = False
    again = backends.create_backend(engine, "auto", device="cuda", precision="fp16")
    assert again.name == "tensorrt" and again.spec.family == "mae"
    again.close()


# --------------------------------------------------------------------------------------------- planning


def test_plan_single_graph(mae_onnx: Path, tmp_path: Path) -> None:
    from seg_node.backends.tensorrt.plan import plan_engines

    spec, plans = plan_engines(mae_onnx, FACTS, "fp16", max_batch=4, dla_core=0, workspace_mb=512, memo_dir=tmp_path)
    assert spec.family == "mae" and len(plans) == 1
    (plan,) = plans
    key = plan.key
    assert (key.gpu_name, key.compute_capability, key.trt_version) == ("Fake Orin", "8.7", "10.3.0")
    assert (key.precision, key.input_shape, key.dla_core, key.workspace_mb) == ("fp16", (4, 3, 32, 32), 0, 512)
    assert len(key.onnx_sha256) == 64 and key.calibration == ""
    assert plan.shapes == {"images": (4, 3, 32, 32), "colors": (4, 3, 32, 32)}
    assert plan.expected_io == (TensorIO("images", "input", (-1, 3, 32, 32), "float32"),
                                TensorIO("colors", "output", (-1, 3, 32, 32), "float32"))
    assert plan.stem == "mae" and key.file_name(plan.stem).startswith("mae.Fake-Orin.sm87.trt10.3.0.fp16.4x3x32x32.dla0.")
    # int8 keys carry the calibration set; other precisions ignore it.
    _, (p8,) = plan_engines(mae_onnx, FACTS, "int8", calibration="ab" * 32)
    _, (p16,) = plan_engines(mae_onnx, FACTS, "fp16", calibration="ab" * 32)
    assert p8.key.calibration == "ab" * 32 and p16.key.calibration == ""


def test_plan_split_chain(sd_split_static: Path, tiny_sd_path: Path) -> None:
    from seg_node.backends.tensorrt.plan import plan_engines

    spec, plans = plan_engines(sd_split_static, FACTS, "fp32", max_batch=2)
    assert spec.input_hw == (64, 96)
    assert [p.stage.name for p in plans] == ["vae_encoder", "unet", "vae_decoder"]
    assert [p.key.input_shape for p in plans] == [(2, 3, 64, 96), (2, 4, 8, 12), (2, 4, 8, 12)]
    assert plans[2].shapes == {"latents": (2, 4, 8, 12), "noise_pred": (2, 4, 8, 12), "colors": (2, 3, 64, 96)}
    assert len({p.key.onnx_sha256 for p in plans}) == 3
    # Any stage file is a valid model path and yields the same plans.
    _, again = plan_engines(sd_split_static.with_name("sd.unet.onnx"), FACTS, "fp32", max_batch=2)
    assert [p.key for p in again] == [p.key for p in plans]


def test_plan_rejects_dynamic_hw(sd_dynamic: Path) -> None:
    from seg_node.backends.tensorrt.plan import plan_engines

    with pytest.raises(BackendError, match=r"dynamic \('height'\).*--profile"):
        plan_engines(sd_dynamic, FACTS)
    _, (plan,) = plan_engines(sd_dynamic, FACTS, hw=(64, 128))
    assert plan.key.input_shape == (1, 3, 64, 128)


def test_plan_missing_stage(sd_split_static: Path, tmp_path: Path) -> None:
    from seg_node.backends.tensorrt.plan import plan_engines

    for name in ("sd.vae_encoder.onnx", "sd.unet.onnx"):
        (tmp_path / name).write_bytes(sd_split_static.with_name(name).read_bytes())
    with pytest.raises(BackendError, match=r"sd\.vae_decoder\.onnx: missing"):
        plan_engines(tmp_path / "sd.vae_encoder.onnx", FACTS)


# ------------------------------------------------------------------------------------ backend on the fakes


def test_builds_once_then_uses_the_cache(mae_onnx: Path, fake: types.SimpleNamespace, tmp_path: Path) -> None:
    from seg_node.backends.tensorrt.backend import TensorRTBackend

    backend = TensorRTBackend(mae_onnx, cache_dir=tmp_path, cuda=fake.cuda)
    assert fake.builder.calls == ["model"] and backend.spec.family == "mae"
    assert backend._stages[0].context.strategy == "STATIC"  # one graph: TensorRT manages its activation memory
    x = _images(1, 32, 32)
    np.testing.assert_allclose(backend.run(x), expected_colors(x, ["model"]), rtol=1e-6)
    (engine,) = backend.engines
    assert engine.parent == tmp_path and sidecar_path(engine).is_file()
    assert "tensorrt 10.3.0 on Fake Orin (sm87, fake-cuda), fp16, MAE model mae.onnx" in backend.describe()
    backend.close()
    assert fake.cuda.memory == {} and fake.cuda.pinned_live == 0 and fake.cuda.closed
    with pytest.raises(BackendError, match="closed"):
        backend.run(x)
    # Second launch: found in the cache, nothing built; the sidecar records the key and the IO.
    again = TensorRTBackend(mae_onnx, cache_dir=tmp_path, cuda=FakeCuda())
    assert fake.builder.calls == ["model"] and again.engines == [engine]
    sidecar = json.loads(sidecar_path(engine).read_text())
    assert sidecar["key"]["trt_version"] == "10.3.0" and sidecar["stage"] == "model"
    assert [t["name"] for t in sidecar["io"]] == ["images", "colors"]
    again.close()


def test_chain_shares_device_buffers(sd_split_static: Path, fake: types.SimpleNamespace, tmp_path: Path) -> None:
    from seg_node.backends.tensorrt.backend import TensorRTBackend

    backend = TensorRTBackend(sd_split_static, precision="fp32", cache_dir=tmp_path, cuda=fake.cuda, max_batch=2)
    assert fake.builder.calls == ["vae_encoder", "unet", "vae_decoder"]
    # images, latents, noise_pred, colors: one device buffer each, shared between the stages; plus one activation
    # buffer of the largest stage's size that all three contexts use in turn.
    assert len(fake.cuda.memory) == 5
    contexts = [st.context for st in backend._stages]
    assert {c.strategy for c in contexts} == {"USER_MANAGED"}
    (memory,) = {c.device_memory for c in contexts}
    assert memory[1] == 3000 == fake.cuda.memory[memory[0]].size
    x = _images(3, 64, 96, seed=2)  # 3 frames at batch ≤ 2: two chunks
    np.testing.assert_allclose(backend.run(x), expected_colors(x, ["vae_encoder", "unet", "vae_decoder"]), rtol=1e-5)
    assert "(3 stages)" in backend.describe()
    with pytest.raises(BackendError, match=r"1×3×64×64 does not fit the engine's input N×3×64×96"):
        backend.run(_images(1, 64, 64))
    backend.close()


def test_cuda_graph_replay(mae_onnx: Path, fake: types.SimpleNamespace, tmp_path: Path) -> None:
    from seg_node.backends.tensorrt.backend import TensorRTBackend

    backend = TensorRTBackend(mae_onnx, cache_dir=tmp_path, cuda=fake.cuda, cuda_graph=True, max_batch=2)
    for seed in range(3):
        x = _images(2, 32, 32, seed)
        np.testing.assert_allclose(backend.run(x), expected_colors(x, ["model"]), rtol=1e-6)
    x = _images(1, 32, 32, 9)  # another batch size: its own graph
    np.testing.assert_allclose(backend.run(x), expected_colors(x, ["model"]), rtol=1e-6)
    assert fake.cuda.graph_launches == 4 and sorted(backend._graphs) == [1, 2]
    assert "CUDA graph" in backend.describe()
    backend.close()


def test_fail_instead_of_build(mae_onnx: Path, fake: types.SimpleNamespace, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    from seg_node.backends.tensorrt.backend import TensorRTBackend

    with pytest.raises(EngineCacheError, match=r"no cached engine for mae.*build_engine --onnx .*mae\.onnx "
                                               r"--precision fp16 --build-only"):
        TensorRTBackend(mae_onnx, cache_dir=tmp_path, cuda=fake.cuda, on_missing="fail")
    assert fake.builder.calls == []
    TensorRTBackend(mae_onnx, cache_dir=tmp_path, cuda=FakeCuda()).close()
    # Same model on a machine with a newer TensorRT: the message names the differing key field.
    newer = FakeCuda()
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt(version="10.7.0"))
    with pytest.raises(EngineCacheError, match=r"differs in trt_version: cached 10\.3\.0, needed 10\.7\.0"):
        TensorRTBackend(mae_onnx, cache_dir=tmp_path, cuda=newer, on_missing="fail")


def test_stale_engine_is_rebuilt(mae_onnx: Path, fake: types.SimpleNamespace, tmp_path: Path) -> None:
    from seg_node.backends.tensorrt.backend import TensorRTBackend

    TensorRTBackend(mae_onnx, cache_dir=tmp_path, cuda=FakeCuda()).close()
    (engine,) = tmp_path.glob("*.engine")
    engine.write_bytes(b"corrupt")  # TensorRT refuses it
    with pytest.raises(EngineCacheError, match="cached engine unusable"):
        TensorRTBackend(mae_onnx, cache_dir=tmp_path, cuda=FakeCuda(), on_missing="fail")
    backend = TensorRTBackend(mae_onnx, cache_dir=tmp_path, cuda=FakeCuda())
    assert fake.builder.calls == ["model", "model"] and backend.engines == [engine]
    x = _images(1, 32, 32)
    np.testing.assert_allclose(backend.run(x), expected_colors(x, ["model"]), rtol=1e-6)
    backend.close()


def test_cached_engine_with_wrong_io_is_rebuilt(mae_onnx: Path, fake: types.SimpleNamespace, tmp_path: Path) -> None:
    from seg_node.backends.tensorrt.backend import TensorRTBackend

    TensorRTBackend(mae_onnx, cache_dir=tmp_path, cuda=FakeCuda()).close()
    (engine,) = tmp_path.glob("*.engine")
    wrong = [TensorIO("images", "input", (-1, 3, 32, 32), "float32"), TensorIO("logits", "output", (-1, 10), "float32")]
    engine.write_bytes(fake_engine_bytes(wrong, 1.0, 0.0))
    with pytest.raises(EngineCacheError, match=r"missing output colors.*unexpected output logits"):
        TensorRTBackend(mae_onnx, cache_dir=tmp_path, cuda=FakeCuda(), on_missing="fail")
    TensorRTBackend(mae_onnx, cache_dir=tmp_path, cuda=FakeCuda()).close()
    assert fake.builder.calls == ["model", "model"]


def test_prebuilt_engine_path(mae_onnx: Path, fake: types.SimpleNamespace, tmp_path: Path) -> None:
    from seg_node.backends.tensorrt.backend import TensorRTBackend

    TensorRTBackend(mae_onnx, cache_dir=tmp_path, cuda=FakeCuda()).close()
    (engine,) = tmp_path.glob("*.engine")
    backend = TensorRTBackend(engine, cuda=FakeCuda())
    assert backend.spec.family == "mae" and fake.builder.calls == ["model"]
    x = _images(1, 32, 32)
    np.testing.assert_allclose(backend.run(x), expected_colors(x, ["model"]), rtol=1e-6)
    backend.close()
    # The same file on another GPU: refused, naming the fields.
    other = FakeCuda()
    other.device_facts = lambda: ("Jetson Xavier", "7.2", "11.4")  # type: ignore[method-assign]
    with pytest.raises(EngineCacheError, match=r"gpu_name: cached Fake Orin, needed Jetson Xavier.*compute_capability"):
        TensorRTBackend(engine, cuda=other)
    sidecar_path(engine).unlink()
    with pytest.raises(EngineCacheError, match=r"\.engine\.json: missing; an engine without its key"):
        TensorRTBackend(engine, cuda=FakeCuda())


# --------------------------------------------------------------------------------------------- builder


def _mock_trt() -> mock.MagicMock:
    trt = mock.MagicMock(name="tensorrt")
    trt.__version__ = "10.3.0"
    # Classes the builder subclasses must be real classes.
    trt.IProgressMonitor = type("IProgressMonitor", (), {"__init__": lambda self: None})
    trt.IInt8EntropyCalibrator2 = type("IInt8EntropyCalibrator2", (), {"__init__": lambda self: None})
    return trt


def test_build_serialized_uses_the_trt10_api(mae_onnx: Path, sd_split_static: Path) -> None:
    """build_serialized's calls against a mock of the TensorRT 10 Python API (names checked against its docs)."""
    from seg_node.backends.tensorrt.plan import plan_engines
    from seg_node.backends.tensorrt.builder import build_serialized

    trt = _mock_trt()
    fake_io = [TensorIO("images", "input", (-1, 3, 32, 32), "float32"), TensorIO("colors", "output", (-1, 3, 32, 32), "float32")]
    real = make_fake_tensorrt()
    trt.TensorIOMode = real.TensorIOMode
    trt.Runtime.return_value.deserialize_cuda_engine.side_effect = lambda data: real.Runtime(None).deserialize_cuda_engine(data)
    builder = trt.Builder.return_value
    builder.build_serialized_network.return_value = fake_engine_bytes(fake_io, 1.0, 0.0, "10.3.0")
    builder.num_DLA_cores = 2
    network = builder.create_network.return_value
    network.num_layers = 0
    network.num_inputs = 1
    net_input = network.get_input.return_value
    net_input.name, net_input.shape = "images", (-1, 3, 32, 32)
    parser = trt.OnnxParser.return_value
    parser.parse_from_file.return_value = True
    config = builder.create_builder_config.return_value

    _, (plan,) = plan_engines(mae_onnx, FACTS, "fp16", max_batch=2, dla_core=1, workspace_mb=256)
    result = build_serialized(plan, trt, FakeCuda())
    builder.create_network.assert_called_once_with(0)
    parser.parse_from_file.assert_called_once_with(str(mae_onnx))
    config.set_memory_pool_limit.assert_called_once_with(trt.MemoryPoolType.WORKSPACE, 256 << 20)
    config.set_flag.assert_any_call(trt.BuilderFlag.FP16)
    config.set_flag.assert_any_call(trt.BuilderFlag.GPU_FALLBACK)
    config.set_flag.assert_any_call(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    assert config.default_device_type == trt.DeviceType.DLA and config.DLA_core == 1
    builder.create_optimization_profile.return_value.set_shape.assert_called_once_with(
        "images", (1, 3, 32, 32), (2, 3, 32, 32), (2, 3, 32, 32))
    config.add_optimization_profile.assert_called_once()
    assert result.io == tuple(fake_io) and result.engine_bytes.startswith(b"{")

    parser.parse_from_file.return_value = False
    parser.num_errors = 1
    parser.get_error.return_value = "Unsupported ONNX op Foo"
    with pytest.raises(BackendError, match="ONNX parser failed: Unsupported ONNX op Foo"):
        build_serialized(plan, trt, FakeCuda())
    parser.parse_from_file.return_value = True
    _, (p32,) = plan_engines(mae_onnx, FACTS, "fp32", dla_core=0)
    with pytest.raises(BackendError, match="DLA runs fp16 or int8 only"):
        build_serialized(p32, trt, FakeCuda())
    _, chain = plan_engines(sd_split_static, FACTS, "int8", calibration="0" * 64)
    with pytest.raises(BackendError, match="single-graph export"):
        build_serialized(chain[2], trt, FakeCuda(), spec=None)


def test_fp16_onnx_builds_strongly_typed(tiny_mae_path: Path, tmp_path: Path) -> None:
    from seg_node.backends.tensorrt.plan import plan_engines
    from seg_node.backends.tensorrt.builder import build_serialized
    from training.export_onnx import export_onnx

    path = export_onnx(tiny_mae_path, tmp_path / "mae16.onnx", fp16=True)
    _, (plan,) = plan_engines(path, FACTS, "fp16")
    assert plan.meta["onnx_precision"] == "fp16"
    trt = _mock_trt()
    trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED = 5
    trt.Builder.return_value.build_serialized_network.return_value = None
    trt.Builder.return_value.create_network.return_value.num_inputs = 0
    with pytest.raises(BackendError, match="failed to build"):
        build_serialized(plan, trt, FakeCuda())
    trt.Builder.return_value.create_network.assert_called_once_with(1 << 5)
    trt.Builder.return_value.create_builder_config.return_value.set_flag.assert_not_called()
    _, (p32,) = plan_engines(path, FACTS, "fp32")
    with pytest.raises(BackendError, match=r"exported in fp16.*--precision fp16"):
        build_serialized(p32, trt, FakeCuda())


def test_int8_onnx_for_onnx_runtime_is_not_built(tmp_path: Path) -> None:
    """An export_onnx --int8 file carries ranges calibrated for ONNX Runtime's CPU kernels: the builder names it and
    says to build from an fp32 export, before TensorRT parses anything."""
    torch = pytest.importorskip("torch")
    import cv2

    from seg_node.backends.tensorrt.builder import build_serialized
    from seg_node.backends.tensorrt.plan import plan_engines
    from seg_node.models.conv import Gen2SegConv, default_config
    from training.export_onnx import export_onnx

    torch.manual_seed(0)
    Gen2SegConv(default_config([4, 8], 2)).eval().save_pretrained(tmp_path / "conv")
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), np.full((32, 32, 3), 90, np.uint8))
    path = export_onnx(tmp_path / "conv", tmp_path / "int8.onnx", 32, 32, int8=True,
                       int8_calibration=tmp_path / "images")
    trt = _mock_trt()
    for precision in ("fp16", "int8"):
        _, (plan,) = plan_engines(path, FACTS, precision, calibration="0" * 64)
        with pytest.raises(BackendError, match=r"int8\.onnx: exported in int8 for ONNX Runtime.*fp32 export"):
            build_serialized(plan, trt, FakeCuda(), spec=None)
    trt.Builder.assert_not_called()


def test_calibration_batches_use_runtime_preprocessing(tmp_path: Path) -> None:
    import cv2

    from seg_node.processing.model_io import preprocess
    from seg_node.models.spec import ModelSpec
    from seg_node.backends.tensorrt.calibration import calibration_batches, calibration_files

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    for i, rgb in enumerate(frames):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (tmp_path / "notes.txt").write_text("not an image")
    files = calibration_files(tmp_path)
    assert [f.name for f in files] == ["f0.png", "f1.png", "f2.png"]
    spec = ModelSpec("sd", None, 32)
    batches = list(calibration_batches(files, spec, (2, 3, 64, 96)))
    assert [b.shape for b in batches] == [(2, 3, 64, 96), (2, 3, 64, 96)]
    ref, _ = preprocess(frames[:2], ModelSpec("sd", (64, 96), 32), "robot")
    np.testing.assert_array_equal(batches[0], ref)
    np.testing.assert_array_equal(batches[1][0], batches[1][1])  # the partial batch repeats its frame
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackendError, match="no calibration images"):
        calibration_files(tmp_path / "empty")


def test_build_engine_cli_without_tensorrt(mae_onnx: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from seg_node.cli.build_engine import main

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert main(["--onnx", str(mae_onnx), "--build-only"]) == 2
    assert "'tensorrt'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--onnx", str(mae_onnx), "--precision", "int8"])
    assert "--calib-dir" in capsys.readouterr().err


def test_build_engine_cli_on_fakes(mae_onnx: Path, fake: types.SimpleNamespace, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from seg_node.backends.tensorrt import backend as tensorrt_backend
    from seg_node.cli import build_engine

    monkeypatch.setattr(build_engine, "open_cuda", lambda index=0: FakeCuda())
    monkeypatch.setattr(tensorrt_backend, "open_cuda", lambda index=0: FakeCuda())
    args = ["--onnx", str(mae_onnx), "--cache-dir", str(tmp_path), "--build-only"]
    assert build_engine.main(args) == 0
    assert "model: " in (out := capsys.readouterr().out) and "(built in" in out
    assert build_engine.main(args) == 0
    assert "already cached" in capsys.readouterr().out and fake.builder.calls == ["model"]
    assert build_engine.main(args[:-1] + ["--iterations", "3"]) == 0
    assert "ms median" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------- on a GPU


def _gpu_unavailable() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed (JetPack ships it; pip install tensorrt on x86)"
    try:
        from seg_node.backends.tensorrt.cuda import open_cuda

        open_cuda(0).close()
    except MissingDependencyError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 — any CUDA failure means no usable device
        return f"no usable CUDA device ({type(exc).__name__}: {exc})"
    return None


@pytest.fixture(scope="module")
def gpu() -> None:
    reason = _gpu_unavailable()
    if reason:
        print(f"GPU tests skipped: {reason}")
        pytest.skip(f"GPU test: {reason}")


@pytest.mark.gpu
@pytest.mark.parametrize("precision, tol", [("fp32", 1e-3), ("fp16", 5e-2)])
def test_gpu_mae_matches_onnxruntime(gpu: None, mae_onnx: Path, tmp_path: Path, precision: str, tol: float) -> None:
    from seg_node.backends.onnx_backend import OnnxBackend
    from seg_node.backends.tensorrt.backend import TensorRTBackend

    x = _images(2, 32, 32)
    ref = OnnxBackend(mae_onnx).run(x)
    for graph in (False, True):
        with TensorRTBackend(mae_onnx, precision=precision, cache_dir=tmp_path, cuda_graph=graph, max_batch=2) as b:
            out = b.run(x)
        diff = float(np.abs(out - ref).max())
        print(f"TensorRT {precision} (CUDA graph {graph}) vs ORT: max abs diff {diff:.3g}")
        assert diff <= tol * max(1.0, float(np.abs(ref).max()))
    assert len(list(tmp_path.glob("*.engine"))) == 1  # the second backend used the cached engine


@pytest.mark.gpu
def test_gpu_sd_chain_matches_onnxruntime(gpu: None, sd_split_static: Path, tmp_path: Path) -> None:
    from seg_node.backends.onnx_backend import OnnxBackend
    from seg_node.backends.tensorrt.backend import TensorRTBackend

    x = _images(1, 64, 96)
    ref = OnnxBackend(sd_split_static).run(x)
    with TensorRTBackend(sd_split_static, precision="fp32", cache_dir=tmp_path) as b:
        out = b.run(x)
    diff = float(np.abs(out - ref).max())
    print(f"TensorRT fp32 SD chain vs ORT: max abs diff {diff:.3g}")
    assert diff <= 1e-3 * max(1.0, float(np.abs(ref).max()))
    assert len(list(tmp_path.glob("*.engine"))) == 3


def test_metadata_reader_matches_onnx(mae_onnx: Path, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    meta = {p.key: p.value for p in onnx.load(str(mae_onnx), load_external_data=False).metadata_props}
    assert read_onnx_metadata(mae_onnx) == meta
    bad = tmp_path / "bad.onnx"
    for data in (b"this is not a protobuf" * 7, mae_onnx.read_bytes()[:1000]):
        bad.write_bytes(data)
        with pytest.raises(OnnxFormatError, match=r"bad\.onnx: not an ONNX model file"):
            read_onnx_metadata(bad)
    # The TensorRT backend names the file in its own error.
    from seg_node.backends.tensorrt.plan import plan_engines

    with pytest.raises(BackendError, match=r"bad\.onnx: not an ONNX model file"):
        plan_engines(bad, FACTS)


def test_both_cuda_bindings_record_the_runtime_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """pycuda and cuda-python must write the same "CUDA version" into an engine's record on one machine: the
    runtime (toolkit) 12.6 here, while the driver supports 12.8."""
    from seg_node.backends.tensorrt import cuda as tb

    class Device:
        count = staticmethod(lambda: 1)

        def __init__(self, index: int) -> None: ...
        def retain_primary_context(self) -> object: return object()
        def compute_capability(self) -> tuple[int, int]: return (8, 7)
        def name(self) -> str: return "Orin"

    driver = types.SimpleNamespace(init=lambda: None, Device=Device, get_version=lambda: (12, 6, 0),
                                   get_driver_version=lambda: 12080)
    monkeypatch.setitem(sys.modules, "pycuda", types.SimpleNamespace(driver=driver))
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    prop = types.SimpleNamespace(name=b"Orin\0\0", major=8, minor=7)
    runtime = types.SimpleNamespace(cudaGetDeviceCount=lambda: (0, 1), cudaSetDevice=lambda i: (0,),
                                    cudaGetDeviceProperties=lambda i: (0, prop), cudaRuntimeGetVersion=lambda: (0, 12060),
                                    cudaDriverGetVersion=lambda: (0, 12080))
    bindings = types.SimpleNamespace(runtime=runtime)
    monkeypatch.setitem(sys.modules, "cuda", types.SimpleNamespace(bindings=bindings))
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", runtime)
    facts = tb.PyCudaApi(0).device_facts(), tb.CudaPythonApi(0).device_facts()
    assert facts[0] == facts[1] == ("Orin", "8.7", "12.6")
