"""Recognise a model path and check it is complete before anything heavy is imported or loaded.

Layouts (nothing is ever downloaded; every path is local):

* ``sd``: the published gen2seg SD folder in diffusers layout (``model_index.json``, ``unet/``, ``vae/``,
  ``scheduler/``, ``text_encoder/``, ``tokenizer/``).
* ``mae``: the published gen2seg MAE folder in transformers ``ViTMAEForPreTraining`` layout (``config.json`` with
  ``model_type: vit_mae`` + weights).
* ``conv``: a gen2seg conv-family folder (``config.json`` with ``model_type: gen2seg_conv`` + ``model.safetensors``;
  ``seg_node.models.conv``).
* ``onnx``: an ``.onnx`` file exported by ``export_onnx`` (spec embedded in its metadata).
* ``engine``: a TensorRT ``.engine`` / ``.plan`` file.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

CheckpointKind = Literal["sd", "mae", "conv", "onnx", "engine"]

# Weights load with safetensors, or torch.load(weights_only=True) for .bin; either file satisfies the check.
_WEIGHTS = {
    "diffusers": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "transformers": ("model.safetensors", "pytorch_model.bin"),
}
_SD_PARTS = {
    "unet": ("config.json", "diffusers"),
    "vae": ("config.json", "diffusers"),
    "text_encoder": ("config.json", "transformers"),
    "scheduler": ("scheduler_config.json", None),
    "tokenizer": (None, None),
}


class CheckpointError(FileNotFoundError):
    """A model path is missing, of an unknown layout, or incomplete. The message names the file and the problem."""


@dataclass(frozen=True)
class CheckpointInfo:
    kind: CheckpointKind
    path: Path


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _require_weights(folder: Path, style: str) -> None:
    names = _WEIGHTS[style]
    if not any((folder / n).is_file() for n in names) and not any(folder.glob(f"{Path(names[0]).stem}*.safetensors")):
        raise CheckpointError(f"{folder}: no weights file ({' or '.join(names)}, or sharded *.safetensors)")


def _check_sd(root: Path) -> None:
    if not (root / "model_index.json").is_file():
        _missing(root / "model_index.json", "sd")
    _read_json(root / "model_index.json")
    for part, (config, weights) in _SD_PARTS.items():
        folder = root / part
        if not folder.is_dir():
            _missing(folder, "sd")
        if config is not None:
            cfg = folder / config
            if not cfg.is_file():
                _missing(cfg, "sd")
            _read_json(cfg)
        if weights is not None:
            _require_weights(folder, weights)
    if not any((root / "tokenizer").iterdir()):
        raise CheckpointError(f"{root / 'tokenizer'}: empty folder (needs the CLIP tokenizer files)")


def _check_mae(root: Path, config: dict) -> None:
    for key in ("image_size", "patch_size", "hidden_size", "decoder_hidden_size"):
        if key not in config:
            raise CheckpointError(f"{root / 'config.json'}: missing '{key}' (not a ViTMAEForPreTraining config?)")
    _require_weights(root, "transformers")


def _missing(path: Path, kind: str) -> None:
    raise CheckpointError(f"{path}: missing (required by the gen2seg {kind.upper()} layout)")


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    """Identify the layout at ``path`` and check that every required file is there.

    Raises CheckpointError naming the first missing or malformed file.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise CheckpointError(f"{root}: model path does not exist")
    if root.is_file():
        suffix = root.suffix.lower()
        if suffix == ".onnx":
            return CheckpointInfo("onnx", root)
        if suffix in (".engine", ".plan"):
            return CheckpointInfo("engine", root)
        raise CheckpointError(f"{root}: unknown model file type '{suffix}' (expected a folder, .onnx, .engine or .plan)")
    if (root / "model_index.json").is_file() or (root / "unet").is_dir():
        _check_sd(root)
        return CheckpointInfo("sd", root)
    if (root / "config.json").is_file():
        config = _read_json(root / "config.json")
        if config.get("model_type") == "gen2seg_conv":
            if not (root / "model.safetensors").is_file():
                _missing(root / "model.safetensors", "conv")
            return CheckpointInfo("conv", root)
        if config.get("model_type") != "vit_mae":
            raise CheckpointError(f"{root / 'config.json'}: model_type is {config.get('model_type')!r}, expected 'vit_mae' "
                                  "(gen2seg MAE) or 'gen2seg_conv' — or a diffusers folder with model_index.json (gen2seg SD)")
        _check_mae(root, config)
        return CheckpointInfo("mae", root)
    raise CheckpointError(f"{root}: not a gen2seg checkpoint: found neither model_index.json (SD, diffusers layout) "
                          "nor config.json (MAE, transformers layout; or conv)")
