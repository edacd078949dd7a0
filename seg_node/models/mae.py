"""gen2seg MAE network: a transformers ``ViTMAEForPreTraining`` run without masking or token shuffling.

HF's forward draws random noise and shuffles the tokens even at ``mask_ratio = 0`` (docs/design.md, "Models and their output"). The result is order-invariant only up to float rounding, and the exported graph carries
RandomUniformLike/TopK/GatherElements (docs/design.md, "Export: ONNX and TensorRT"). ``Gen2SegMAE`` reuses the same submodules and weights in a fixed token
order, so it is deterministic and exports to a plain ONNX graph.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from seg_node.models.checkpoints import CheckpointError, inspect_checkpoint
from seg_node.models.spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec

PREPROCESSOR_CONFIG = "preprocessor_config.json"
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


class _Fp32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the surrounding dtype: the released weights were only validated in
    fp32 (docs/design.md, "Export: ONNX and TensorRT"), and normalisation statistics are where reduced precision drifts first."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


def _fp32_layer_norms(module: nn.Module) -> None:
    """Swap every nn.LayerNorm under ``module`` for an _Fp32LayerNorm sharing its parameters."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.LayerNorm:
                norm = _Fp32LayerNorm(child.normalized_shape, eps=child.eps, elementwise_affine=child.elementwise_affine,
                                      bias=child.bias is not None)
                norm.weight, norm.bias = child.weight, child.bias
                setattr(parent, name, norm)


def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise ValueError(f"{what} must be an int or two ints, got {value!r}")


def mae_spec(config: ViTMAEConfig, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> ModelSpec:
    """The input contract of a ViT-MAE config: fixed square-patch grid at ``image_size``."""
    if not isinstance(config.patch_size, int):
        raise ValueError(f"patch_size must be a single int (square patches), got {config.patch_size!r}")
    return ModelSpec(family="mae", input_hw=_pair(config.image_size, "image_size"), pad_multiple=config.patch_size,
                     mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std))


class Gen2SegMAE(nn.Module):
    """Deterministic gen2seg MAE forward: normalised N×3×H×W images → float32 N×3×H×W unpatchified prediction.

    Equals ``ViTMAEForPreTraining`` at ``mask_ratio = 0`` followed by ``unpatchify``, up to float rounding. The
    min/max colour normalisation is not part of the network (``seg_node.processing.model_io`` does it).
    """

    def __init__(self, model: ViTMAEForPreTraining, spec: ModelSpec | None = None) -> None:
        super().__init__()
        config = model.config
        self.spec = spec if spec is not None else mae_spec(config)
        self.patch_size = int(config.patch_size)
        self.channels = int(config.num_channels)
        assert self.spec.input_hw is not None  # an MAE spec always has one
        self.input_hw = self.spec.input_hw
        self.grid = (self.input_hw[0] // self.patch_size, self.input_hw[1] // self.patch_size)
        # Submodules (not copies) so the weights stay those of ``model`` and its state_dict keys.
        self.embeddings = model.vit.embeddings
        self.layers = model.vit.layers
        self.layernorm = model.vit.layernorm
        self.decoder = model.decoder
        _fp32_layer_norms(self)

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.decoder_pred.weight.dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Under the TorchScript tracer shapes are tensors; the exported graph's static dims enforce this instead.
        if not torch.jit.is_tracing() and (images.ndim != 4 or tuple(images.shape[1:]) != (self.channels, *self.input_hw)):
            raise ValueError(f"expected images of shape (N, {self.channels}, {self.input_hw[0]}, {self.input_hw[1]}), "
                             f"got {tuple(images.shape)}")
        emb = self.embeddings
        pos = emb.position_embeddings
        x = emb.patch_embeddings.projection(images.to(self.dtype)).flatten(2).transpose(1, 2)
        x = x + pos[:, 1:, :]
        cls = (emb.cls_token + pos[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1)
        for layer in self.layers:
            x = layer(x)
        x = self.layernorm(x)

        dec = self.decoder
        x = dec.decoder_embed(x) + dec.decoder_pos_embed
        for layer in dec.decoder_layers:
            x = layer(x)
        x = dec.decoder_pred(dec.decoder_norm(x))[:, 1:, :]
        return self.unpatchify(x).float()

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """N×(h·w)×(p·p·c) → N×c×(h·p)×(w·p), channel fastest within a patch (as HF's ``unpatchify``)."""
        gh, gw = self.grid
        p, c = self.patch_size, self.channels
        # -1 keeps the batch axis free of Shape ops in an exported graph.
        x = patches.reshape(-1, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(-1, c, gh * p, gw * p)


def _read_normalisation(root: Path) -> tuple[Sequence[float], Sequence[float]]:
    path = root / PREPROCESSOR_CONFIG
    if not path.is_file():
        return IMAGENET_MEAN, IMAGENET_STD
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot be read as JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    mean, std = raw.get("image_mean", IMAGENET_MEAN), raw.get("image_std", IMAGENET_STD)
    for key, values in (("image_mean", mean), ("image_std", std)):
        if not (isinstance(values, list | tuple) and len(values) == 3
                and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)):
            raise CheckpointError(f"{path}: '{key}' must be 3 numbers (one per RGB channel), got {values!r}")
    if min(std) <= 0:
        raise CheckpointError(f"{path}: 'image_std' must be positive, got {std!r}")
    return mean, std


def _weights_file(root: Path) -> Path:
    return next((root / n for n in _WEIGHT_FILES if (root / n).is_file()), root / _WEIGHT_FILES[0])


def load_mae(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Gen2SegMAE:
    """Load a gen2seg MAE folder (transformers ``ViTMAEForPreTraining`` layout) as an eval-mode ``Gen2SegMAE``.

    Weights come from safetensors (or a ``.bin`` through ``torch.load(weights_only=True)``); nothing is downloaded.
    In fp16/bf16, LayerNorms and attention softmax stay in float32 and the output is float32.
    Raises CheckpointError naming the offending file.
    """
    info = inspect_checkpoint(path)
    root = info.path
    if info.kind != "mae":
        raise CheckpointError(f"{root}: is a gen2seg {info.kind.upper()} model, not an MAE folder")
    mean, std = _read_normalisation(root)
    config_path = root / "config.json"
    try:
        config = ViTMAEConfig.from_pretrained(str(root), local_files_only=True)
        spec = mae_spec(config, mean, std)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: {exc}") from exc
    except OSError as exc:
        raise CheckpointError(f"{config_path}: cannot be loaded ({exc})") from exc

    weights = _weights_file(root)
    try:
        # Eager attention: HF runs its softmax in float32 whatever the dtype, and it traces to a plain
        # MatMul/Softmax graph (the SDPA wrapper branches on tensor shapes, which the ONNX tracer warns about).
        # At 257 tokens (MAE-H at 224²) the attention matrix is small, so SDPA would save little.
        model, loading = ViTMAEForPreTraining.from_pretrained(
            str(root), config=config, local_files_only=True, output_loading_info=True, dtype=torch.float32,
            attn_implementation="eager")
    except Exception as exc:  # transformers/safetensors raise many types; all mean "this file does not load"
        raise CheckpointError(f"{weights}: cannot load ViTMAEForPreTraining weights ({type(exc).__name__}: {exc})") from exc
    incomplete = sorted(loading["missing_keys"]) + sorted(str(k) for k in loading["mismatched_keys"])
    if incomplete:
        # transformers would silently leave these randomly initialised.
        raise CheckpointError(f"{weights}: missing or mis-shaped weights for {len(incomplete)} tensors, "
                              f"e.g. {', '.join(incomplete[:5])}")

    network = Gen2SegMAE(model, spec)
    network.to(device=torch.device(device), dtype=dtype)
    for module in network.modules():
        if isinstance(module, _Fp32LayerNorm):
            module.float()
    return network.eval()
