"""Inference backends behind one interface (``base.Backend``); ``create_backend`` picks one for a model path."""
from __future__ import annotations

from pathlib import Path

from seg_node.backends.base import Backend, BackendError, MissingDependencyError
from seg_node.models.checkpoints import inspect_checkpoint

__all__ = ["Backend", "BackendError", "MissingDependencyError", "create_backend"]

_AUTO = {"sd": "torch", "mae": "torch", "onnx": "onnxruntime"}


def create_backend(path: str | Path, name: str = "auto", device: str = "cpu", precision: str = "fp32", threads: int = 0) -> Backend:
    """Load the model at ``path`` on the named backend ("auto": checkpoint folder → torch, .onnx → onnxruntime).

    Raises CheckpointError for a missing or incomplete model, MissingDependencyError for an absent optional
    package, BackendError for a model/backend mismatch.
    """
    info = inspect_checkpoint(path)
    if info.kind == "engine":
        raise BackendError(f"{info.path}: TensorRT engines are not supported by this build (backends: torch, onnxruntime)")
    chosen = _AUTO[info.kind] if name == "auto" else name
    if chosen == "torch":
        if info.kind == "onnx":
            raise BackendError(f"{info.path}: an .onnx file runs on the onnxruntime backend, not torch")
        try:
            from seg_node.backends.torch_backend import load_torch_backend
        except ModuleNotFoundError as exc:
            raise MissingDependencyError(exc.name or "torch", "torch", "the torch backend") from exc
        return load_torch_backend(info.path, device=device, precision=precision, threads=threads)
    if chosen == "onnxruntime":
        if info.kind != "onnx":
            raise BackendError(f"{info.path}: the onnxruntime backend needs an .onnx file; export one with export_onnx")
        if precision != "fp32":
            raise BackendError(f"precision {precision!r} is fixed at export time for ONNX models; use precision fp32 here")
        from seg_node.backends.onnx_backend import OnnxBackend
        return OnnxBackend(info.path, device=device, threads=threads)
    raise BackendError(f"unknown backend {name!r} (choose auto, torch or onnxruntime)")
