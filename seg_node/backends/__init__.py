"""Inference backends behind one interface (``base.Backend``); ``create_backend`` picks one for a model path."""
from __future__ import annotations

from pathlib import Path

from seg_node.backends.base import BACKEND_NAMES, Backend, BackendError, MissingDependencyError
from seg_node.models.checkpoints import inspect_checkpoint

__all__ = ["BACKEND_NAMES", "Backend", "BackendError", "MissingDependencyError", "create_backend"]

_AUTO = {"sd": "torch", "mae": "torch", "conv": "torch", "onnx": "onnxruntime", "engine": "tensorrt"}


def create_backend(path: str | Path, name: str = "auto", device: str = "cpu", precision: str = "fp32", threads: int = 0,
                   *, engine_cache_dir: str | Path | None = None, engine_on_missing: str = "build",
                   cuda_graph: bool = False, dla_core: int = -1, workspace_mb: int = 0, max_batch: int = 1,
                   calib_dir: str | Path | None = None) -> Backend:
    """Load the model at ``path`` on the named backend.

    "auto": checkpoint folder → torch, .onnx → onnxruntime, .engine/.plan → tensorrt. The tensorrt backend takes an
    .onnx file (engines come from the engine cache, built once when missing unless ``engine_on_missing="fail"``)
    or a prebuilt .engine/.plan with its sidecar; the keyword-only options apply to it alone.
    Raises CheckpointError for a missing or incomplete model, MissingDependencyError for an absent optional
    package, BackendError for a model/backend mismatch.
    """
    info = inspect_checkpoint(path)
    chosen = _AUTO[info.kind] if name == "auto" else name
    if chosen == "torch":
        if info.kind in ("onnx", "engine"):
            raise BackendError(f"{info.path}: an .{info.path.suffix.lstrip('.')} file runs on the "
                               f"{_AUTO[info.kind]} backend, not torch")
        try:
            from seg_node.backends.torch_backend import load_torch_backend
        except ModuleNotFoundError as exc:
            raise MissingDependencyError(exc.name or "torch", "torch", "the torch backend") from exc
        return load_torch_backend(info.path, device=device, precision=precision, threads=threads)
    if chosen == "onnxruntime":
        if info.kind != "onnx":
            raise BackendError(f"{info.path}: the onnxruntime backend needs an .onnx file; export one with export_onnx")
        if precision != "fp32":
            raise BackendError(f"precision {precision!r} is fixed at export time for ONNX models (export_onnx --fp16 "
                               "or --int8); use precision fp32 here")
        from seg_node.backends.onnx_backend import OnnxBackend
        return OnnxBackend(info.path, device=device, threads=threads)
    if chosen == "tensorrt":
        if info.kind not in ("onnx", "engine"):
            raise BackendError(f"{info.path}: the tensorrt backend needs an .onnx file from export_onnx (or an .engine "
                               "from build_engine); export one with export_onnx --profile NAME")
        from seg_node.backends.tensorrt.backend import TensorRTBackend
        return TensorRTBackend(info.path, device=device, precision=precision, cache_dir=engine_cache_dir,
                               on_missing=engine_on_missing, cuda_graph=cuda_graph, dla_core=dla_core,
                               workspace_mb=workspace_mb, max_batch=max_batch, calib_dir=calib_dir)
    raise BackendError(f"unknown backend {name!r} (choose {', '.join(BACKEND_NAMES)})")
