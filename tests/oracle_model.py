"""An "oracle" gen2seg model for tests: an ONNX graph that returns its input image as the colour map.

The graph is one Identity node from ``images`` to ``colors`` with the ModelSpec JSON in its metadata (family "sd",
pad_multiple 8, mean/std 0.5), the layout ``training.export_onnx`` writes and ``seg_node.backends.onnx_backend``
reads. SD's per-image min/max colour scaling turns the normalised input back into the frame up to one global scale
(exactly the frame when it holds black and a 255 channel value), so flat colours stay flat: a frame of flat-coloured
objects on black is its own perfect instance colouring and the Segmenter finds exactly its objects. Run it with
``model.processing_resolution: 0`` so frames are not resampled.
"""
from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from seg_node.models.spec import METADATA_KEY, SD_MEAN, SD_STD, ModelSpec


def make_oracle_onnx(path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dims = ["batch", 3, "height", "width"]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["colors"])], "oracle",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("colors", TensorProto.FLOAT, dims)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="seg_node tests")
    model.ir_version = 8  # readable by older onnxruntime builds too
    spec = ModelSpec(family="sd", pad_multiple=8, mean=SD_MEAN, std=SD_STD)
    model.metadata_props.add(key=METADATA_KEY, value=spec.to_json())
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path
