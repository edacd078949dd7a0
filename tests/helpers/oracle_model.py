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

import numpy as np
import onnx
from onnx import TensorProto, helper

from seg_node.models.onnx_format import SPEC_KEY
from seg_node.models.spec import SD_MEAN, SD_STD, ModelSpec


def _io() -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    dims = ["batch", 3, "height", "width"]
    return (helper.make_tensor_value_info("images", TensorProto.FLOAT, dims),
            helper.make_tensor_value_info("colors", TensorProto.FLOAT, dims))


def _save_model(graph: onnx.GraphProto, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="seg_node tests")
    model.ir_version = 8  # readable by older onnxruntime builds too
    spec = ModelSpec(family="sd", pad_multiple=8, mean=SD_MEAN, std=SD_STD)
    model.metadata_props.add(key=SPEC_KEY, value=spec.to_json())
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def make_oracle_onnx(path: Path) -> Path:
    x, y = _io()
    return _save_model(helper.make_graph([helper.make_node("Identity", ["images"], ["colors"])], "oracle", [x], [y]), path)


def make_slow_onnx(path: Path, matmuls: int, size: int = 512) -> Path:
    """The oracle plus a chain of ``matmuls`` size×size MatMul+Tanh that depends on the input (so it cannot be
    folded away) and adds 0 × its sum to the output: a model whose run time is set by the chain, not the frame."""
    from onnx import numpy_helper

    x, y = _io()
    rng = np.random.default_rng(0)
    a = numpy_helper.from_array((rng.uniform(-1, 1, (size, size)) / np.sqrt(size)).astype(np.float32), "A")
    zero = numpy_helper.from_array(np.zeros((), np.float32), "zero")
    nodes = [helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
             helper.make_node("Mul", ["A", "m"], ["h0"])]
    for i in range(matmuls):
        nodes += [helper.make_node("MatMul", [f"h{i}", "A"], [f"p{i}"]),
                  helper.make_node("Tanh", [f"p{i}"], [f"h{i + 1}"])]
    nodes += [helper.make_node("ReduceSum", [f"h{matmuls}"], ["s"], keepdims=0),
              helper.make_node("Mul", ["s", "zero"], ["z"]),
              helper.make_node("Add", ["images", "z"], ["colors"])]
    graph = helper.make_graph(nodes, "slow", [x], [y], initializer=[a, zero])
    return _save_model(graph, path)
