"""The ONNX format of an exported gen2seg model: graph IO names and the metadata ``training.export_onnx`` writes and
the ONNX Runtime and TensorRT backends read. Pure Python: no onnx, onnxruntime, numpy or torch.

A model comes in one of two forms; both carry everything the runtime needs in the ONNX files' own metadata
(``metadata_props``), so there are no side files:

* **one graph**: input ``images`` (float32 N×3×H×W, normalised), output ``colors`` (float32 N×3×H×W raw).
* **a graph chain** (``export_onnx --split``, SD only): ``<stem>.vae_encoder.onnx`` (``images`` → ``latents``),
  ``<stem>.unet.onnx`` (``latents`` → ``noise_pred``, t = 999 and the empty-prompt context folded in as constants)
  and ``<stem>.vae_decoder.onnx`` (``latents``, ``noise_pred`` → ``colors``). Every stage file holds the same
  manifest under ``CHAIN_KEY``: the chain id, and per stage its name, file name (relative to the stage's own
  folder), inputs and outputs. The model path is any stage file (by convention the first); the runtime loads the
  others from the same folder, checks that they carry the same chain id, and runs them in manifest order, feeding
  each stage's inputs by tensor name from ``images`` and the earlier stages' outputs.

Metadata entries, each a JSON string:

* ``SPEC_KEY``: the ``ModelSpec`` (required);
* ``EXPORT_KEY``: the ``ExportRecord`` (precision, profile, stage, the IO shapes; informative, read by describe()
  and the TensorRT backend);
* ``CHAIN_KEY``: the ``ChainManifest`` (chains only);
* ``RECOMMENDED_KEY``: the post-processing the model recommends, dotted names (``seg_node.model_settings``).

``read_onnx_metadata`` reads them from a file without onnx (a few-field protobuf scan); ``build_metadata`` makes
them for the exporter, which stores them with onnx. A bad file or entry raises ``OnnxFormatError`` naming the file:
the backends raise it as their ``BackendError``, ``model_settings`` as a ``ConfigError``.
"""
from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO

from seg_node.models.spec import ModelSpec, SpecError

__all__ = ["CHAIN_KEY", "EXPORT_KEY", "INPUT_NAME", "OUTPUT_NAME", "RECOMMENDED_KEY", "SPEC_KEY", "ChainManifest",
           "ChainStage", "ExportRecord", "OnnxFormatError", "build_metadata", "chain_from_metadata",
           "check_chain_member", "read_onnx_metadata", "recommended_from_metadata", "spec_from_metadata"]

INPUT_NAME = "images"
OUTPUT_NAME = "colors"
SPEC_KEY = "seg_node.spec"
EXPORT_KEY = "seg_node.export"
CHAIN_KEY = "seg_node.chain"
RECOMMENDED_KEY = "seg_node.recommended"
EXPORT_FORMAT = 1
CHAIN_FORMAT = 1


class OnnxFormatError(ValueError):
    """A file is not an exported gen2seg model, or one of its metadata entries is missing or malformed."""


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
    costs a few reads even for a model of hundreds of MB. Raises OnnxFormatError if the file cannot be read or is
    not an ONNX protobuf.
    """
    path = Path(path)
    meta: dict[str, str] = {}
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            while f.tell() < size:
                tag = _varint(f)
                number, wire = tag >> 3, tag & 7
                if number == 0:
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
                    if number == 14:  # ModelProto.metadata_props
                        key, value = _entry(f.read(n))
                        meta[key] = value
                    else:
                        f.seek(n, os.SEEK_CUR)
                else:
                    raise ValueError(f"wire type {wire}")
    except OSError as exc:
        raise OnnxFormatError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    except (EOFError, ValueError, UnicodeDecodeError) as exc:
        raise OnnxFormatError(f"{path}: not an ONNX model file (protobuf scan failed: {exc or 'truncated'})") from exc
    return meta


# ---------------------------------------------------------------------------------------------------- entries


def spec_from_metadata(meta: Mapping[str, str], path: Path) -> ModelSpec:
    """The ``SPEC_KEY`` entry of the file at ``path``."""
    text = meta.get(SPEC_KEY)
    if text is None:
        raise OnnxFormatError(f"{path}: no '{SPEC_KEY}' entry in the model metadata; it was not exported by "
                              "export_onnx (re-export it with: export_onnx --model PATH --output FILE.onnx)")
    try:
        return ModelSpec.from_json(text)
    except SpecError as exc:
        raise OnnxFormatError(f"{path}: malformed '{SPEC_KEY}' metadata ({exc}); it was not exported by "
                              "export_onnx, or by an incompatible version") from exc


@dataclass(frozen=True)
class ExportRecord:
    """How a file was exported (``EXPORT_KEY``); the defaults stand for files exported before the record existed."""

    precision: str = "fp32"  # of the weights and arithmetic (fp32, fp16, int8); graph IO is float32 either way
    stage: str = "model"
    io: Mapping[str, Sequence[int | str]] = field(default_factory=dict)  # IO tensor → dims, names for dynamic axes
    inputs: Sequence[str] = ()
    outputs: Sequence[str] = ()
    profile: str | None = None
    opset: int | None = None
    dynamic: bool = False
    source: str = ""  # the checkpoint folder's name
    exporter: str = ""  # library versions

    def to_json(self) -> str:
        return json.dumps({"format": EXPORT_FORMAT, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str]) -> ExportRecord:
        """The file's record; the defaults when it has none or an unreadable one (the record is informative)."""
        try:
            raw = json.loads(meta.get(EXPORT_KEY, "{}"))
        except json.JSONDecodeError:
            return cls()
        if not isinstance(raw, dict):
            return cls()
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


@dataclass(frozen=True)
class ChainStage:
    name: str
    file: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @classmethod
    def single(cls, file: str) -> ChainStage:
        """The one stage of a single-graph model."""
        return cls("model", file, (INPUT_NAME,), (OUTPUT_NAME,))


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
            raise OnnxFormatError(f"{source}: malformed '{CHAIN_KEY}' metadata ({exc}); re-export with export_onnx --split") from exc
        manifest.validate(source)
        return manifest

    def validate(self, source: Path) -> None:
        """Every stage's inputs exist by the time it runs, the chain ends in ``colors``, files stay in the folder."""
        if not self.stages:
            raise OnnxFormatError(f"{source}: '{CHAIN_KEY}' lists no stages")
        available = {INPUT_NAME}
        for stage in self.stages:
            if Path(stage.file).name != stage.file or not stage.file.endswith(".onnx"):
                raise OnnxFormatError(f"{source}: chain stage {stage.name!r} names file {stage.file!r}; stage files must "
                                      "be .onnx files in the same folder")
            missing = [n for n in stage.inputs if n not in available]
            if missing:
                raise OnnxFormatError(f"{source}: chain stage {stage.name!r} needs {missing}, which no earlier stage "
                                      "produces")
            available.update(stage.outputs)
        if OUTPUT_NAME not in self.stages[-1].outputs:
            raise OnnxFormatError(f"{source}: the last chain stage ({self.stages[-1].name!r}) does not produce "
                                  f"'{OUTPUT_NAME}'")

    def stage_paths(self, folder: Path) -> list[Path]:
        return [folder / s.file for s in self.stages]


def chain_from_metadata(meta: Mapping[str, str], path: Path) -> ChainManifest | None:
    """The ``CHAIN_KEY`` manifest of the file at ``path``; None for a single graph."""
    text = meta.get(CHAIN_KEY)
    return None if text is None else ChainManifest.from_json(text, path)


def check_chain_member(manifest: ChainManifest, stage_path: Path, meta: Mapping[str, str], spec: ModelSpec) -> None:
    """A stage file belongs to this export: same chain id and spec (not a stage left over from another export)."""
    other = chain_from_metadata(meta, stage_path)
    if other is None or other.chain_id != manifest.chain_id:
        found = "no chain manifest" if other is None else f"chain id {other.chain_id}"
        raise OnnxFormatError(f"{stage_path}: belongs to another export ({found}, expected chain id "
                              f"{manifest.chain_id}); re-export all stages together with export_onnx --split")
    if spec_from_metadata(meta, stage_path) != spec:
        raise OnnxFormatError(f"{stage_path}: its model spec differs from the other stages'; re-export all stages "
                              "together")


def recommended_from_metadata(meta: Mapping[str, str], path: Path) -> dict[str, Any]:
    """The ``RECOMMENDED_KEY`` entry as dotted names ({} when the file carries none); not yet validated."""
    text = meta.get(RECOMMENDED_KEY)
    if text is None:
        return {}
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OnnxFormatError(f"{path}: malformed '{RECOMMENDED_KEY}' metadata ({exc})") from exc
    if not isinstance(values, dict):
        raise OnnxFormatError(f"{path}: '{RECOMMENDED_KEY}' metadata must be a JSON object of dotted names")
    return values


def build_metadata(spec: ModelSpec, record: ExportRecord, chain: ChainManifest | None = None,
                   recommended: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The metadata entries of one exported file, for the exporter to store as ``metadata_props``."""
    meta = {SPEC_KEY: spec.to_json(), EXPORT_KEY: record.to_json()}
    if chain is not None:
        meta[CHAIN_KEY] = chain.to_json()
    if recommended:
        meta[RECOMMENDED_KEY] = json.dumps(dict(recommended), sort_keys=True)
    return meta
