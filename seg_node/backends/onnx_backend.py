"""Run an exported gen2seg ONNX model with ONNX Runtime (CPU or CUDA). Imports no torch (and no ``onnx``).

The model is one graph or a chain of stage graphs from ``training.export_onnx``; the format (graph IO names, the
spec, export record and chain manifest in the files' metadata) is ``seg_node.models.onnx_format``.
"""
from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from seg_node.backends.base import Backend, BackendError, MissingDependencyError, format_errors
from seg_node.models.onnx_format import (INPUT_NAME, OUTPUT_NAME, ChainManifest, ChainStage, ExportRecord,
                                         chain_from_metadata, check_chain_member, spec_from_metadata)
from seg_node.models.spec import ModelSpec

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
    """An ``export_onnx`` model (one graph or a stage chain) in ONNX Runtime sessions; the spec is read from the files."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, device: str = "cpu", threads: int = 0) -> None:
        ort = _import_ort()
        self._path = Path(path).expanduser()
        if not self._path.is_file():
            raise BackendError(f"{self._path}: ONNX model file does not exist")
        if threads < 0:
            raise BackendError(f"threads must be >= 0 (0 = onnxruntime's default), got {threads}")
        self._ort = ort
        self._providers = _providers(ort, device)
        self._device = device
        self._threads = threads
        self._ort_version = ort.__version__
        session = self._open(self._path)
        meta = dict(session.get_modelmeta().custom_metadata_map)
        with format_errors():
            self._spec = spec_from_metadata(meta, self._path)
            chain = chain_from_metadata(meta, self._path)
        self._record = ExportRecord.from_metadata(meta)
        self._stages: list[tuple[ChainStage, Any]]
        if chain is None:
            stage = ChainStage.single(self._path.name)
            self._check_io(session, stage, self._path)
            self._stages = [(stage, session)]
        else:
            self._stages = self._open_chain(chain, session)
        self._chain = chain
        first = self._stages[0][1]
        images = {i.name: i for i in first.get_inputs()}[INPUT_NAME]
        # Static dims are ints; dynamic ones are names (or None).
        self._input_shape = [d if isinstance(d, int) else None for d in images.shape]
        self._closed = False

    def _open(self, path: Path) -> Any:
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        try:
            session = self._ort.InferenceSession(str(path), sess_options=options, providers=self._providers)
        except Exception as exc:  # ORT's pybind errors share no useful base class
            raise BackendError(f"{path}: onnxruntime cannot load this model ({type(exc).__name__}: {exc})") from exc
        if self._providers[0] != CPU_PROVIDER and CUDA_PROVIDER not in session.get_providers():
            # ORT falls back to CPU silently when the CUDA/cuDNN libraries do not load.
            raise BackendError(f"{path}: {CUDA_PROVIDER} failed to initialise for device {self._device!r} (session "
                               f"providers: {', '.join(session.get_providers())}); check the CUDA and cuDNN libraries")
        return session

    @staticmethod
    def _check_io(session: Any, stage: ChainStage, path: Path) -> None:
        inputs = {i.name for i in session.get_inputs()}
        outputs = {o.name for o in session.get_outputs()}
        if inputs != set(stage.inputs) or not set(stage.outputs) <= outputs:
            if stage.name == "model":
                raise BackendError(f"{path}: expected input '{INPUT_NAME}' and output '{OUTPUT_NAME}', found inputs "
                                   f"{sorted(inputs)} and outputs {sorted(outputs)}; it was not exported by export_onnx")
            raise BackendError(f"{path}: chain stage {stage.name!r} should have inputs {list(stage.inputs)} and outputs "
                               f"{list(stage.outputs)}, found inputs {sorted(inputs)} and outputs {sorted(outputs)}")

    def _open_chain(self, chain: ChainManifest, given: Any) -> list[tuple[ChainStage, Any]]:
        folder = self._path.parent
        stages = []
        for stage, stage_path in zip(chain.stages, chain.stage_paths(folder)):
            if stage_path.name == self._path.name:
                session = given
            else:
                if not stage_path.is_file():
                    raise BackendError(f"{stage_path}: missing; {self._path.name} is one stage of a split export and "
                                       f"needs all of {', '.join(s.file for s in chain.stages)} in {folder}")
                session = self._open(stage_path)
                with format_errors():
                    check_chain_member(chain, stage_path, dict(session.get_modelmeta().custom_metadata_map), self._spec)
            self._check_io(session, stage, stage_path)
            stages.append((stage, session))
        return stages

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    @property
    def precision(self) -> str:
        """The exported precision ("fp32", "fp16" or "int8"); IO is float32 either way."""
        return self._record.precision

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s, _ in self._stages]

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
        if self._closed:
            raise BackendError("the onnxruntime backend is closed")
        self._check_batch(batch)
        tensors: dict[str, np.ndarray] = {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)}
        for stage, session in self._stages:
            feeds = {name: tensors[name] for name in stage.inputs}
            try:
                outputs = session.run(list(stage.outputs), feeds)
            except Exception as exc:  # ORT's pybind errors share no useful base class
                where = self._path.name if len(self._stages) == 1 else f"{self._path.name} (stage {stage.name})"
                raise BackendError(f"{where}: onnxruntime failed on a {tensors[INPUT_NAME].shape} batch "
                                   f"({type(exc).__name__}: {exc})") from exc
            tensors.update(zip(stage.outputs, outputs))
        return np.asarray(tensors[OUTPUT_NAME], dtype=np.float32)

    def describe(self) -> str:
        if self._closed:
            return f"onnxruntime {self._ort_version} (closed)"
        threads = f", {self._threads} threads" if self._threads else ""
        provider = self._stages[0][1].get_providers()[0]
        chain = f" ({len(self._stages)} stages: {', '.join(self.stage_names)})" if self._chain is not None else ""
        return (f"onnxruntime {self._ort_version} on {self._device} ({provider}{threads}), {self._spec.family.upper()} "
                f"model {self._path.name}{chain}, {self.precision}")

    def close(self) -> None:
        self._stages = []
        self._closed = True
