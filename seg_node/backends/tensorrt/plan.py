"""Which engines an exported ONNX model needs on a device, and the IO each must have: no GPU touched."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seg_node.backends.base import PRECISIONS, BackendError, format_errors
from seg_node.backends.tensorrt.cache import DeviceFacts, EngineKey, TensorIO, onnx_digest
from seg_node.models.onnx_format import (INPUT_NAME, OUTPUT_NAME, ChainStage, ExportRecord, chain_from_metadata,
                                         check_chain_member, read_onnx_metadata, spec_from_metadata)
from seg_node.models.spec import ModelSpec


@dataclass(frozen=True)
class EnginePlan:
    """One graph to run on TensorRT: where it comes from, its cache key and the IO contract its engine must meet."""

    stage: ChainStage
    onnx: Path
    key: EngineKey
    shapes: dict[str, tuple[int, ...]]  # every IO tensor at the largest batch
    expected_io: tuple[TensorIO, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def stem(self) -> str:
        return self.onnx.name[: -len(".onnx")] if self.onnx.name.endswith(".onnx") else self.onnx.stem


def _static_dims(dims: Sequence[Any], max_batch: int, hw: tuple[int, int] | None, where: str) -> tuple[int, ...]:
    out = []
    for i, d in enumerate(dims):
        if isinstance(d, int) and d > 0:
            out.append(d)
        elif i == 0:
            out.append(max_batch)
        elif hw is not None and d in ("height", "width"):
            out.append(hw[0] if d == "height" else hw[1])
        else:
            raise BackendError(f"{where}: dimension {i} is dynamic ({d!r}); TensorRT engines are built for static "
                               "H×W: export with export_onnx --profile NAME (or --height/--width), or give the size "
                               "(build_engine --hw HxW) for a single dynamic graph")
    return tuple(out)


def plan_engines(path: str | Path, facts: DeviceFacts, precision: str = "fp16", *, max_batch: int = 1,
                 hw: tuple[int, int] | None = None, dla_core: int = -1, workspace_mb: int = 0, calibration: str = "",
                 memo_dir: Path | None = None) -> tuple[ModelSpec, list[EnginePlan]]:
    """The engines an exported ONNX model (one graph or a chain) needs on the machine ``facts`` describes."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise BackendError(f"{path}: ONNX model file does not exist")
    if max_batch < 1:
        raise BackendError(f"max_batch must be >= 1, got {max_batch}")
    if precision not in PRECISIONS:
        raise BackendError(f"precision must be one of {', '.join(PRECISIONS)} for TensorRT, got {precision!r}")
    with format_errors():
        meta = read_onnx_metadata(path)
        spec = spec_from_metadata(meta, path)
        chain = chain_from_metadata(meta, path)
    if hw is not None and spec.input_hw is not None and tuple(hw) != spec.input_hw:
        raise BackendError(f"{path}: the graph's input is fixed at {spec.input_hw[0]}×{spec.input_hw[1]}, not {hw[0]}×{hw[1]}")
    if chain is None:
        stages = [(ChainStage.single(path.name), path, meta)]
    else:
        stages = []
        for stage, stage_path in zip(chain.stages, chain.stage_paths(path.parent)):
            if not stage_path.is_file():
                raise BackendError(f"{stage_path}: missing; {path.name} is one stage of a split export")
            with format_errors():
                stage_meta = meta if stage_path.name == path.name else read_onnx_metadata(stage_path)
                check_chain_member(chain, stage_path, stage_meta, spec)
            stages.append((stage, stage_path, stage_meta))
    if chain is not None and hw is not None and spec.input_hw is None:
        raise BackendError(f"{path}: a split export needs static shapes for TensorRT (export_onnx --split --profile NAME)")
    plans = []
    for stage, stage_path, stage_meta in stages:
        record = ExportRecord.from_metadata(stage_meta)
        io_dims: dict[str, Any] = dict(record.io or {})
        if not io_dims:  # exported before the export record existed: one graph, shape from the spec
            dims = ["batch", 3, *(spec.input_hw if spec.input_hw else ("height", "width"))]
            io_dims = {INPUT_NAME: dims, OUTPUT_NAME: dims}
        shapes = {}
        for name in (*stage.inputs, *stage.outputs):
            if name not in io_dims:
                raise BackendError(f"{stage_path}: the export record has no shape for {name!r}")
            shapes[name] = _static_dims(io_dims[name], max_batch, hw, f"{stage_path.name}: {name}")
        expected = tuple(TensorIO(n, "input" if n in stage.inputs else "output", (-1, *shapes[n][1:]), "float32")
                         for n in (*stage.inputs, *stage.outputs))
        key = EngineKey.for_device(facts, precision=precision, input_shape=shapes[stage.inputs[0]],
                                   onnx_sha256=onnx_digest(stage_path, memo_dir), dla_core=dla_core,
                                   workspace_mb=workspace_mb, calibration=calibration if precision == "int8" else "")
        plan_meta = {"spec": spec.to_json(), "stage": stage.name, "onnx": str(stage_path.resolve()),
                     "onnx_precision": record.precision}
        plans.append(EnginePlan(stage, stage_path, key, shapes, expected, plan_meta))
    return spec, plans
