"""seg_node: category-agnostic instance masks and grasp-ready segments from the gen2seg models.

Importing this package (and everything outside ``seg_node.models`` and ``seg_node.backends.torch_backend``)
never imports torch, so the runtime runs on a robot with only numpy, OpenCV and an inference backend.
``Segmenter`` and ``SegmenterConfig`` are importable from here; they load on first use, so ``import seg_node``
alone stays light.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from seg_node.config import SegmenterConfig
    from seg_node.pipeline import Segmenter

__version__ = "0.1.0"
__all__ = ["Segmenter", "SegmenterConfig", "__version__"]

_LAZY = {"Segmenter": "seg_node.pipeline", "SegmenterConfig": "seg_node.config"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'seg_node' has no attribute {name!r}")
