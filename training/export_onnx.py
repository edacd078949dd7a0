"""Export a gen2seg checkpoint folder to one float32 ONNX graph for ``seg_node.backends.onnx_backend``.

The graph has input ``images`` (N×3×H×W, normalised as the spec says) and output ``colors`` (N×3×H×W raw), and
carries its ``ModelSpec`` as JSON in the model metadata, so the runtime needs no checkpoint folder and no torch.

Exporter: torch's TorchScript-based exporter (``dynamo=False``). It handles both networks as they are; the
torch.export-based one needs ``onnxscript``, which the training environment does not ship.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch

from seg_node.models.checkpoints import CheckpointError, inspect_checkpoint
from seg_node.models.spec import METADATA_KEY, ModelSpec

INPUT_NAME = "images"
OUTPUT_NAME = "colors"
# Protobuf cannot serialise a message over 2 GiB; keep headroom for the graph itself.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26

log = logging.getLogger(__name__)


def _load_network(path: Path) -> torch.nn.Module:
    info = inspect_checkpoint(path)
    if info.kind == "sd":
        from seg_node.models.sd import load_sd

        return load_sd(info.path, "cpu", torch.float32)
    if info.kind == "mae":
        from seg_node.models.mae import load_mae

        return load_mae(info.path, "cpu", torch.float32)
    raise CheckpointError(f"{info.path}: already an exported .{info.path.suffix.lstrip('.')} file; export needs a "
                          "gen2seg checkpoint folder (SD diffusers layout or MAE transformers layout)")


def _export_plan(spec: ModelSpec, height: int | None, width: int | None) -> tuple[ModelSpec, tuple[int, int], bool]:
    """(spec of the exported graph, trace size, dynamic H/W?)."""
    if (height is None) != (width is None):
        raise ValueError("give both --height and --width, or neither")
    if spec.family == "mae":
        assert spec.input_hw is not None
        if height is not None and (height, width) != spec.input_hw:
            raise ValueError(f"an MAE model has a fixed input of {spec.input_hw[0]}×{spec.input_hw[1]} (its position "
                             f"embeddings); got --height {height} --width {width}")
        return spec, spec.input_hw, False
    m = spec.pad_multiple
    if height is None or width is None:
        # Any multiple of pad_multiple takes the same trace-time branch in the UNet (shared/reference/gen2seg.md §6).
        return spec, (2 * m, 2 * m), True
    if height <= 0 or width <= 0 or height % m or width % m:
        raise ValueError(f"--height and --width must be positive multiples of {m} for this SD model, got {height}×{width}")
    return dataclasses.replace(spec, input_hw=(height, width)), (height, width), False


def _set_shape(value: onnx.ValueInfoProto, dims: Sequence[int | str]) -> None:
    shape = value.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        if isinstance(d, int):
            shape.dim.add().dim_value = d
        else:
            shape.dim.add().dim_param = d


def _trace_to_onnx(network: torch.nn.Module, hw: tuple[int, int], dynamic: bool, opset: int, path: Path) -> None:
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic else {0: "batch"}
    with warnings.catch_warnings():
        # The legacy exporter is chosen deliberately (see the module docstring).
        warnings.filterwarnings("ignore", message=r"You are using the legacy TorchScript", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        # diffusers' up-sampling branches on tensor sizes at trace time; spec.pad_multiple keeps every input on the
        # traced branch, and the ONNX backend rejects other sizes.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"(diffusers|torch\.nn\.functional)")
        # SD's timestep tensor is meant to be a constant (t = 999).
        warnings.filterwarnings("ignore", message=r"torch\.tensor results are registered as constants",
                                category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"Constant folding - Only steps=1", category=UserWarning)
        with torch.no_grad():
            torch.onnx.export(
                network, (torch.zeros(1, 3, *hw),), str(path), dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True,
                dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
            )


def export_onnx(model_path: str | Path, output: Path, height: int | None = None, width: int | None = None,
                opset: int = 17) -> Path:
    """Export the checkpoint at ``model_path`` to ``output`` (float32) and return ``output``.

    MAE graphs are static at the ViT's image size. SD graphs have dynamic H/W (multiples of ``spec.pad_multiple``)
    unless ``height`` and ``width`` are given, in which case the graph and its spec's ``input_hw`` are fixed. The
    batch axis is always dynamic. Weights go to ``<output>.data`` beside the file when the model exceeds what one
    protobuf can hold (2 GiB). Raises CheckpointError for a bad folder, ValueError for a bad size.
    """
    output = Path(output).expanduser()
    log.info("loading %s", model_path)
    network = _load_network(Path(model_path).expanduser())
    spec, hw, dynamic = _export_plan(network.spec, height, width)
    output.parent.mkdir(parents=True, exist_ok=True)
    log.info("exporting the %s network (trace at %d×%d, %s H/W, opset %d)", spec.family.upper(), hw[0], hw[1],
             "dynamic" if dynamic else "static", opset)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".export_onnx-") as tmp:
        traced = Path(tmp) / "model.onnx"
        _trace_to_onnx(network, hw, dynamic, opset, traced)
        del network
        # Loads any tensors the exporter wrote as external files, so the temp folder can go.
        model = onnx.load(str(traced))

    model.metadata_props.add(key=METADATA_KEY, value=spec.to_json())
    # The exporter leaves the output's spatial dims unnamed (e.g. "Castcolors_dim_2"); state the real contract.
    dims: list[int | str] = ["batch", 3, *(("height", "width") if dynamic else hw)]
    _set_shape(model.graph.input[0], dims)
    _set_shape(model.graph.output[0], dims)

    weight_bytes = sum(t.ByteSize() for t in model.graph.initializer)
    external = weight_bytes > EXTERNAL_DATA_THRESHOLD
    data_file = output.with_name(output.name + ".data")
    # onnx appends to an existing data file, so a previous export's would grow stale bytes.
    data_file.unlink(missing_ok=True)
    onnx.save_model(model, str(output), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=data_file.name)
    # By path, so the checker also reads external data and is not bound by the 2 GiB limit.
    onnx.checker.check_model(str(output))
    return output


def _size(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="export_onnx", description="Export a gen2seg checkpoint folder to ONNX (float32).")
    parser.add_argument("--model", required=True, type=Path, help="gen2seg checkpoint folder (SD or MAE)")
    parser.add_argument("--output", required=True, type=Path, help="ONNX file to write")
    parser.add_argument("--height", type=_size, help="fixed input height (SD only; default: dynamic H/W)")
    parser.add_argument("--width", type=_size, help="fixed input width (SD only; default: dynamic H/W)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="export_onnx: %(message)s", stream=sys.stderr)
    try:
        path = export_onnx(args.model, args.output, args.height, args.width, args.opset)
    except (CheckpointError, ValueError) as exc:
        print(f"export_onnx: error: {exc}", file=sys.stderr)
        return 1
    data_file = path.with_name(path.name + ".data")
    total = path.stat().st_size + (data_file.stat().st_size if data_file.exists() else 0)
    extra = f" + {data_file.name}" if data_file.exists() else ""
    print(f"wrote {path.resolve()}{extra} ({total / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
