"""Run an exported gen2seg ONNX model with ONNX Runtime (CPU or CUDA). Imports no torch (and no ``onnx``).

A model comes from ``training.export_onnx`` in one of two forms; both carry everything the runtime needs in the
ONNX files' own metadata, so there are no side files:

* **one graph**: input ``images`` (float32 N×3×H×W, normalised), output ``colors`` (float32 N×3×H×W raw).
* **a graph chain** (``export_onnx --split``, SD only): ``<stem>.vae_encoder.onnx`` (``images`` → ``latents``),
  ``<stem>.unet.onnx`` (``latents`` → ``noise_pred``, t = 999 and the empty-prompt context folded in as constants)
  and ``<stem>.vae_decoder.onnx`` (``latents``, ``noise_pred`` → ``colors``). Every stage file holds the same
  manifest under ``CHAIN_KEY``: the chain id, and per stage its name, file name (relative to the stage's own
  folder), inputs and outputs. The model path is any stage file (by convention the first); the runtime loads the
  others from the same folder, checks that they carry the same chain id, and runs them in manifest order, feeding
  each stage's inputs by tensor name from ``images`` and the earlier stages' outputs.

Metadata keys: ``METADATA_KEY`` (the ``ModelSpec``, required), ``EXPORT_KEY`` (precision, profile, stage, the IO
shapes; informative, read by describe() and the TensorRT backend) and ``CHAIN_KEY`` (chains only).
``read_onnx_metadata`` reads them from a file without onnxruntime or the onnx package (a few-field protobuf scan).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO

import numpy as np

from seg_node.backends.base import Backend, BackendError, MissingDependencyError
from seg_node.models.spec import METADATA_KEY, ModelSpec, SpecError

INPUT_NAME = "images"
OUTPUT_NAME = "colors"
CHAIN_KEY = "seg_node.chain"
EXPORT_KEY = "seg_node.export"
CHAIN_FORMAT = 1
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


# ------------------------------------------------------------------------------------------ metadata, no onnx


def _varint(f: BinaryIO) -> int:
    shift = value = 0
    while True:
        b = f.read(1)
        if not b:
            raise EOFError
        value |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _entry(data: bytes) -> tuple[str, str]:
    """A StringStringEntryProto: field 1 key, field 2 value."""
    import io

    f, out = io.BytesIO(data), {1: "", 2: ""}
    while f.tell() < len(data):
        tag = _varint(f)
        if tag & 7 != 2:
            raise ValueError("unexpected wire type in a metadata entry")
        n = _varint(f)
        out[tag >> 3] = f.read(n).decode("utf-8")
    return out[1], out[2]


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """``metadata_props`` of an ONNX file as a dict, without onnxruntime or onnx.

    Scans the top-level fields of the ``ModelProto`` and seeks over everything else (the graph included), so it
    costs a few reads even for a model of hundreds of MB. Raises BackendError if the file is not an ONNX protobuf.
    """
    path = Path(path)
    meta: dict[str, str] = {}
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            while f.tell() < size:
                tag = _varint(f)
                field, wire = tag >> 3, tag & 7
                if field == 0:
                    raise ValueError("field number 0")
                if wire == 0:
                    _varint(f)
                elif wire == 1:
                    f.seek(8, os.SEEK_CUR)
                elif wire == 5:
                    f.seek(4, os.SEEK_CUR)
                elif wire == 2:
                    n = _varint(f)
                    if f.tell() + n > size:
                        raise ValueError("truncated field")
                    if field == 14:  # ModelProto.metadata_props
                        key, value = _entry(f.read(n))
                        meta[key] = value
                    else:
                        f.seek(n, os.SEEK_CUR)
                else:
                    raise ValueError(f"wire type {wire}")
    except OSError as exc:
        raise BackendError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    except (EOFError, ValueError, UnicodeDecodeError) as exc:
        raise BackendError(f"{path}: not an ONNX model file (protobuf scan failed: {exc or 'truncated'})") from exc
    return meta


def spec_from_metadata(meta: dict[str, str], path: Path) -> ModelSpec:
    text = meta.get(METADATA_KEY)
    if text is None:
        raise BackendError(f"{path}: no '{METADATA_KEY}' entry in the model metadata; it was not exported by "
                           "export_onnx (re-export it with: export_onnx --model PATH --output FILE.onnx)")
    try:
        return ModelSpec.from_json(text)
    except SpecError as exc:
        raise BackendError(f"{path}: malformed '{METADATA_KEY}' metadata ({exc}); it was not exported by "
                           "export_onnx, or by an incompatible version") from exc


def export_info(meta: dict[str, str]) -> dict[str, Any]:
    """The ``EXPORT_KEY`` record ({} for files exported before it existed, or unreadable)."""
    try:
        info = json.loads(meta.get(EXPORT_KEY, "{}"))
    except json.JSONDecodeError:
        return {}
    return info if isinstance(info, dict) else {}


@dataclass(frozen=True)
class ChainStage:
    name: str
    file: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class ChainManifest:
    """The stages of a split export, in run order; ``file`` names are relative to the stage files' folder."""

    chain_id: str
    stages: tuple[ChainStage, ...]

    def to_json(self) -> str:
        return json.dumps({"format": CHAIN_FORMAT, "id": self.chain_id,
                           "stages": [{"name": s.name, "file": s.file, "inputs": list(s.inputs), "outputs": list(s.outputs)}
                                      for s in self.stages]}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: Path) -> ChainManifest:
        try:
            raw = json.loads(text)
            if raw.get("format") != CHAIN_FORMAT:
                raise ValueError(f"chain format {raw.get('format')!r}, this runtime reads format {CHAIN_FORMAT}")
            stages = tuple(ChainStage(str(s["name"]), str(s["file"]), tuple(map(str, s["inputs"])), tuple(map(str, s["outputs"])))
                           for s in raw["stages"])
            manifest = cls(str(raw["id"]), stages)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BackendError(f"{source}: malformed '{CHAIN_KEY}' metadata ({exc}); re-export with export_onnx --split") from exc
        manifest.validate(source)
        return manifest

    def validate(self, source: Path) -> None:
        """Every stage's inputs exist by the time it runs, the chain ends in ``colors``, files stay in the folder."""
        if not self.stages:
            raise BackendError(f"{source}: '{CHAIN_KEY}' lists no stages")
        available = {INPUT_NAME}
        for stage in self.stages:
            if Path(stage.file).name != stage.file or not stage.file.endswith(".onnx"):
                raise BackendError(f"{source}: chain stage {stage.name!r} names file {stage.file!r}; stage files must be "
                                   ".onnx files in the same folder")
            missing = [n for n in stage.inputs if n not in available]
            if missing:
                raise BackendError(f"{source}: chain stage {stage.name!r} needs {missing}, which no earlier stage produces")
            available.update(stage.outputs)
        if OUTPUT_NAME not in self.stages[-1].outputs:
            raise BackendError(f"{source}: the last chain stage ({self.stages[-1].name!r}) does not produce '{OUTPUT_NAME}'")

    def stage_paths(self, folder: Path) -> list[Path]:
        return [folder / s.file for s in self.stages]


def chain_from_metadata(meta: dict[str, str], path: Path) -> ChainManifest | None:
    text = meta.get(CHAIN_KEY)
    return None if text is None else ChainManifest.from_json(text, path)


def check_chain_member(manifest: ChainManifest, stage_path: Path, meta: dict[str, str], spec: ModelSpec) -> None:
    """A stage file belongs to this export: same chain id and spec (not a stage left over from another export)."""
    other = chain_from_metadata(meta, stage_path)
    if other is None or other.chain_id != manifest.chain_id:
        found = "no chain manifest" if other is None else f"chain id {other.chain_id}"
        raise BackendError(f"{stage_path}: belongs to another export ({found}, expected chain id {manifest.chain_id}); "
                           "re-export all stages together with export_onnx --split")
    if spec_from_metadata(meta, stage_path) != spec:
        raise BackendError(f"{stage_path}: its model spec differs from the other stages'; re-export all stages together")


# ---------------------------------------------------------------------------------------------------- backend


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
        self._spec = spec_from_metadata(meta, self._path)
        self._info = export_info(meta)
        chain = chain_from_metadata(meta, self._path)
        self._stages: list[tuple[ChainStage, Any]]
        if chain is None:
            stage = ChainStage("model", self._path.name, (INPUT_NAME,), (OUTPUT_NAME,))
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
                check_chain_member(chain, stage_path, dict(session.get_modelmeta().custom_metadata_map), self._spec)
            self._check_io(session, stage, stage_path)
            stages.append((stage, session))
        return stages

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    @property
    def precision(self) -> str:
        """The exported precision ("fp32" or "fp16"); IO is float32 either way."""
        return str(self._info.get("precision", "fp32"))

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
