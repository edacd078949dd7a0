"""The one interface every inference backend implements (torch, onnxruntime, tensorrt)."""
from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator

import numpy as np

from seg_node.models.onnx_format import OnnxFormatError
from seg_node.models.spec import ModelSpec

# The names a configuration, a CLI and create_backend accept; "auto" picks by the model file.
BACKEND_NAMES = ("auto", "torch", "onnxruntime", "tensorrt")
# int8: tensorrt only.
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


class BackendError(RuntimeError):
    """A backend could not be created or could not run the network."""


class MissingDependencyError(BackendError, ImportError):
    """An optional package a backend needs is not installed."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the Python package '{package}', which is not installed. "
            f"Install it with: pip install 'seg_node[{extra}]' (or pip install {package})"
        )
        self.package = package
        self.extra = extra


@contextlib.contextmanager
def format_errors() -> Iterator[None]:
    """A model file's format problems (``OnnxFormatError``, naming the file) raised as the backend's BackendError."""
    try:
        yield
    except OnnxFormatError as exc:
        raise BackendError(str(exc)) from exc


class Backend(abc.ABC):
    """Runs a gen2seg network: float32 N×3×H×W normalised images in, float32 N×3×H×W raw colours out.

    Everything before and after the network (resize, pad, normalise, colour-map scaling) is numpy code shared
    by all backends, so backends differ only in how they execute the graph.
    """

    name: str = "base"

    @property
    @abc.abstractmethod
    def spec(self) -> ModelSpec:
        """Input contract of the loaded network."""

    @abc.abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run the network on a normalised float32 batch; returns float32 raw colours of the same N×3×H×W shape."""

    def close(self) -> None:
        """Release devices and sessions. Safe to call twice."""

    def describe(self) -> str:
        """One line for logs: backend, device, precision."""
        return self.name

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
