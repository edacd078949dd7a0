"""Run an exported gen2seg ONNX graph with ONNX Runtime (CPU or CUDA). Imports no torch.

The graph comes from ``training.export_onnx``: input ``images`` (float32 N×3×H×W, normalised), output ``colors``
(float32 N×3×H×W raw), and the ``ModelSpec`` as JSON in the model metadata under ``METADATA_KEY``.
"""
from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from seg_node.backends.base import Backend, BackendError, MissingDependencyError
from seg_node.models.spec import METADATA_KEY, ModelSpec, SpecError

INPUT_NAME = "images"
OUTPUT_NAME = "colors"
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"


def _import_ort() -> ModuleType:
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependencyError("onnxruntime", "onnx", "the onnxruntime backend") from exc
    return onnxruntime


def _providers(ort: ModuleType, device: str) -> list[Any]:
    if device == "cpu":
        return [CPU_PROVIDER]
    if device == "cuda" or device.startswith("cuda:"):
        index = device.partition(":")[2] or "0"
        if not index.isdigit():
            raise BackendError(f"invalid device {device!r}: expected 'cpu', 'cuda' or 'cuda:N'")
        available = ort.get_available_providers()
        if CUDA_PROVIDER not in available:
            raise BackendError(f"device {device!r} requested, but onnxruntime {ort.__version__} has no {CUDA_PROVIDER} "
                               f"(available: {', '.join(available)}); install onnxruntime-gpu or use device 'cpu'")
        return [(CUDA_PROVIDER, {"device_id": int(index)}), CPU_PROVIDER]
    raise BackendError(f"invalid device {device!r}: expected 'cpu', 'cuda' or 'cuda:N'")


class OnnxBackend(Backend):
    """An ``export_onnx`` graph in an ONNX Runtime session; the spec is read from the file's metadata."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, device: str = "cpu", threads: int = 0) -> None:
        ort = _import_ort()
        self._path = Path(path).expanduser()
        if not self._path.is_file():
            raise BackendError(f"{self._path}: ONNX model file does not exist")
        if threads < 0:
            raise BackendError(f"threads must be >= 0 (0 = onnxruntime's default), got {threads}")
        providers = _providers(ort, device)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(self._path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT's pybind errors share no useful base class
            raise BackendError(f"{self._path}: onnxruntime cannot load this model ({type(exc).__name__}: {exc})") from exc
        if providers[0] != CPU_PROVIDER and CUDA_PROVIDER not in session.get_providers():
            # ORT falls back to CPU silently when the CUDA/cuDNN libraries do not load.
            raise BackendError(f"{self._path}: {CUDA_PROVIDER} failed to initialise for device {device!r} (session "
                               f"providers: {', '.join(session.get_providers())}); check the CUDA and cuDNN libraries")
        self._spec = self._read_spec(session)
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = {o.name for o in session.get_outputs()}
        if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
            raise BackendError(f"{self._path}: expected input '{INPUT_NAME}' and output '{OUTPUT_NAME}', found inputs "
                               f"{sorted(inputs)} and outputs {sorted(outputs)}; it was not exported by export_onnx")
        # Static dims are ints; dynamic ones are names (or None).
        self._input_shape = [d if isinstance(d, int) else None for d in inputs[INPUT_NAME].shape]
        self._session: Any = session
        self._device = device
        self._threads = threads
        self._ort_version = ort.__version__

    def _read_spec(self, session: Any) -> ModelSpec:
        text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if text is None:
            raise BackendError(f"{self._path}: no '{METADATA_KEY}' entry in the model metadata; it was not exported by "
                               "export_onnx (re-export it with: export_onnx --model PATH --output FILE.onnx)")
        try:
            return ModelSpec.from_json(text)
        except SpecError as exc:
            raise BackendError(f"{self._path}: malformed '{METADATA_KEY}' metadata ({exc}); it was not exported by "
                               "export_onnx, or by an incompatible version") from exc

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def _check_batch(self, batch: np.ndarray) -> None:
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise BackendError(f"expected a float32 N×3×H×W batch, got shape {batch.shape}")
        expected = list(self._input_shape)
        if self._spec.input_hw is not None:
            expected[2:] = [d if d is not None else s for d, s in zip(expected[2:], self._spec.input_hw)]
        if len(expected) != 4 or any(d is not None and d != s for d, s in zip(expected, batch.shape)):
            want = "×".join("?" if d is None else str(d) for d in expected)
            raise BackendError(f"{self._path.name}: batch shape {'×'.join(map(str, batch.shape))} does not fit the "
                               f"graph's input {want} (? = any)")
        m = self._spec.pad_multiple
        if batch.shape[2] % m or batch.shape[3] % m:
            raise BackendError(f"{self._path.name}: input H×W {batch.shape[2]}×{batch.shape[3]} must be multiples of {m}")

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self._session is None:
            raise BackendError("the onnxruntime backend is closed")
        self._check_batch(batch)
        x = np.ascontiguousarray(batch, dtype=np.float32)
        try:
            (y,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: x})
        except Exception as exc:  # ORT's pybind errors share no useful base class
            raise BackendError(f"{self._path.name}: onnxruntime failed on a {x.shape} batch ({type(exc).__name__}: {exc})") from exc
        return np.asarray(y, dtype=np.float32)

    def describe(self) -> str:
        if self._session is None:
            return f"onnxruntime {self._ort_version} (closed)"
        threads = f", {self._threads} threads" if self._threads else ""
        return (f"onnxruntime {self._ort_version} on {self._device} ({self._session.get_providers()[0]}{threads}), "
                f"{self._spec.family.upper()} model {self._path.name}")

    def close(self) -> None:
        self._session = None
