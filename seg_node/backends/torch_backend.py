"""Run a gen2seg network in PyTorch (CPU or CUDA), straight from a checkpoint folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from seg_node.backends.base import Backend, BackendError, MissingDependencyError
from seg_node.models.checkpoints import inspect_checkpoint
from seg_node.models.spec import ModelSpec

try:
    import torch
except ImportError as exc:
    raise MissingDependencyError("torch", "torch", "the torch backend") from exc

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise BackendError(f"invalid torch device {device!r} ({exc})") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise BackendError(f"device {device!r} requested, but CUDA is not available (torch {torch.__version__} is {build}, "
                           "or no GPU is visible); use device 'cpu' or install a CUDA build of torch")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise BackendError(f"device {device!r} requested, but MPS is not available")
    return dev


def _dtype(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise BackendError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def _network_dtype(network: torch.nn.Module) -> torch.dtype:
    """The dtype a network computes in: its ``dtype`` attribute, else that of its first floating-point parameter."""
    dtype = getattr(network, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    for p in network.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


class TorchBackend(Backend):
    """A loaded ``torch.nn.Module`` with a ``spec`` property behind the Backend interface.

    Precision belongs to the network (the loaders keep attention and norms in float32 for fp16/bf16), so
    ``precision`` must match how it was loaded; ``load_torch_backend`` does both.
    """

    name = "torch"

    def __init__(self, network: torch.nn.Module, device: str = "cpu", precision: str = "fp32", threads: int = 0) -> None:
        dtype = _dtype(precision)
        if threads < 0:
            raise BackendError(f"threads must be >= 0 (0 = torch's default), got {threads}")
        dev = _device(device)
        if _network_dtype(network) != dtype:
            raise BackendError(f"the network computes in {_network_dtype(network)}, but precision {precision!r} was "
                               f"requested; load it with dtype={dtype} (load_torch_backend does this)")
        if threads > 0:
            # Process-wide in torch: the last backend created decides.
            torch.set_num_threads(threads)
        self._spec: ModelSpec = network.spec
        self._network: torch.nn.Module | None = network.to(dev).eval()
        self._device = dev
        self._dtype = dtype
        self._precision = precision

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    @property
    def network(self) -> torch.nn.Module:
        """The wrapped module (for export and inspection)."""
        if self._network is None:
            raise BackendError("the torch backend is closed")
        return self._network

    def run(self, batch: np.ndarray) -> np.ndarray:
        network = self.network
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise BackendError(f"expected a float32 N×3×H×W batch, got shape {batch.shape}")
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self._device, self._dtype)
            y = network(x)
            return y.float().cpu().numpy()

    def describe(self) -> str:
        threads = f", {torch.get_num_threads()} threads" if self._device.type == "cpu" else ""
        return f"torch {torch.__version__} on {self._device} ({self._precision}{threads}), {self._spec.family.upper()} model"

    def close(self) -> None:
        if self._network is None:
            return
        self._network = None
        if self._device.type == "cuda":
            torch.cuda.empty_cache()


def load_torch_backend(path: str | Path, device: str = "cpu", precision: str = "fp32", threads: int = 0) -> TorchBackend:
    """Load a gen2seg checkpoint folder (SD diffusers layout, MAE transformers layout or conv) into a TorchBackend."""
    dtype = _dtype(precision)
    _device(device)
    info = inspect_checkpoint(path)
    if info.kind in ("onnx", "engine"):
        other = "onnxruntime" if info.kind == "onnx" else "tensorrt"
        raise BackendError(f"{info.path} is a .{info.path.suffix.lstrip('.')} file; use backend {other}")
    try:
        if info.kind == "sd":
            from seg_node.models.sd import load_sd as load
        elif info.kind == "conv":
            from seg_node.models.conv import load_conv as load
        else:
            from seg_node.models.mae import load_mae as load
    except ImportError as exc:
        package = (exc.name or "torch").split(".")[0]
        if package == "seg_node":
            raise
        raise MissingDependencyError(package, "torch", f"the torch backend ({info.kind.upper()} models)") from exc
    return TorchBackend(load(info.path, device, dtype), device=device, precision=precision, threads=threads)
