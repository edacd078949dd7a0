"""The gen2seg conv family: a plain convolutional UNet that draws the instance colour map directly, no VAE.

The network is a four-level encoder–decoder (two 3×3 conv + GroupNorm + SiLU per block, stride-2 conv down,
bilinear up with full-resolution skips) whose input is the normalised image plus two coordinate channels
(y and x from −1 to 1 over the network input). It is the package's default model: at the same CPU budget it
learned grouping faster than the SD miniature, whose small VAE loses thin gaps and edges (docs/default_model.md).

With ``unshuffle`` s > 1 the network reads the image pixel-unshuffled (each s×s block's pixels as 3·s² channels)
and pixel-shuffles its 3·s² output channels back: it runs at 1/s of the input's size, for about the compute of an
input that much smaller, yet sees a 1 px cable that an s× downscale would blend into the table (ESPCN's sub-pixel
layout at both ends).

Checkpoint folder (``seg_node.models.checkpoints``, kind ``conv``): ``config.json`` (``model_type: gen2seg_conv``,
``widths``, ``norm_groups``, ``image_mean``, ``image_std``, optional ``unshuffle``, default 1) and
``model.safetensors``. Training and export go through
``training`` (``train --family conv``, ``export_onnx``); the runtime runs the exported ONNX and never imports this
module. Its raw output is scaled to 0..255 as SD's is (``seg_node.processing.model_io``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from seg_node.models.checkpoints import CheckpointError, inspect_checkpoint
from seg_node.models.spec import SD_MEAN, SD_STD, ModelSpec

MODEL_TYPE = "gen2seg_conv"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
COORD_CHANNELS = 2


class _FP32GroupNorm(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the network's dtype (its statistics overflow fp16 sooner than convs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


def _block(cin: int, cout: int, groups: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), _FP32GroupNorm(groups, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), _FP32GroupNorm(groups, cout), nn.SiLU())


def _coordinates(x: torch.Tensor) -> torch.Tensor:
    """N×2×H×W channels y, x running from −1 to 1 (``linspace``) over the input. Built from cumulative sums rather
    than the input's shape, so that a traced ONNX graph keeps dynamic H and W without shape arithmetic."""
    ones = torch.ones_like(x[:, :1])
    ys, xs = ones.cumsum(2) - 1, ones.cumsum(3) - 1
    return torch.cat([ys * 2 / ys[:, :, -1:, :].clamp_min(1) - 1, xs * 2 / xs[:, :, :, -1:].clamp_min(1) - 1], 1)


def check_config(config: dict[str, Any], where: Path | str) -> None:
    """Raise CheckpointError naming ``where`` if ``config`` is not a usable conv-family config."""
    if config.get("model_type") != MODEL_TYPE:
        raise CheckpointError(f"{where}: model_type is {config.get('model_type')!r}, expected {MODEL_TYPE!r}")
    widths, groups = config.get("widths"), config.get("norm_groups")
    if (not isinstance(widths, list) or len(widths) < 2 or not all(isinstance(w, int) and w > 0 for w in widths)):
        raise CheckpointError(f"{where}: 'widths' must be a list of at least 2 positive integers, got {widths!r}")
    if not isinstance(groups, int) or groups < 1 or any(w % groups for w in widths):
        raise CheckpointError(f"{where}: 'norm_groups' must be a positive integer dividing every width, got {groups!r}")
    unshuffle = config.get("unshuffle", 1)
    if not isinstance(unshuffle, int) or isinstance(unshuffle, bool) or not 1 <= unshuffle <= 8:
        raise CheckpointError(f"{where}: 'unshuffle' must be an integer from 1 to 8, got {unshuffle!r}")
    for key in ("image_mean", "image_std"):
        value = config.get(key)
        if not isinstance(value, list) or len(value) != 3 or not all(isinstance(v, (int, float)) for v in value):
            raise CheckpointError(f"{where}: '{key}' must be a list of 3 numbers, got {value!r}")


class Gen2SegConv(nn.Module):
    """Normalised images (N×3×H×W, H and W multiples of ``spec.pad_multiple``) → raw colours (N×3×H×W, float32)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        check_config(config, CONFIG_FILE)
        self.config = dict(config)
        w, g = config["widths"], config["norm_groups"]
        self.unshuffle = unshuffle_factor(config)
        self.inc = _block(3 * self.unshuffle ** 2 + COORD_CHANNELS, w[0], g)
        self.downs = nn.ModuleList([nn.Sequential(nn.Conv2d(w[i], w[i + 1], 3, stride=2, padding=1), _block(w[i + 1], w[i + 1], g))
                                    for i in range(len(w) - 1)])
        self.ups = nn.ModuleList([_block(w[i + 1] + w[i], w[i], g) for i in reversed(range(len(w) - 1))])
        self.out = nn.Conv2d(w[0], 3 * self.unshuffle ** 2, 1)
        self.spec = conv_spec(config)

    @property
    def dtype(self) -> torch.dtype:
        return self.out.weight.dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.dtype)
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        x = self.inc(torch.cat([x, _coordinates(x)], 1))
        skips = [x]
        for down in self.downs:
            x = down(x)
            skips.append(x)
        skips.pop()
        for up in self.ups:
            skip = skips.pop()
            x = up(torch.cat([F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False), skip], 1))
        x = self.out(x)
        if self.unshuffle > 1:
            x = F.pixel_shuffle(x, self.unshuffle)
        return x.float()

    def save_pretrained(self, folder: str | Path) -> None:
        """``config.json`` + ``model.safetensors``: what ``load_conv`` reads."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_FILE).write_text(json.dumps(self.config, indent=2) + "\n")
        save_file({k: v.detach().float().contiguous() for k, v in self.state_dict().items()}, str(folder / WEIGHTS_FILE))


def conv_spec(config: dict[str, Any]) -> ModelSpec:
    """The spec of a conv-family config: dynamic input, sides a multiple of unshuffle × 2^(levels − 1)."""
    return ModelSpec(family="conv", input_hw=None, pad_multiple=unshuffle_factor(config) * 2 ** (len(config["widths"]) - 1),
                     mean=tuple(float(v) for v in config["image_mean"]), std=tuple(float(v) for v in config["image_std"]))


def unshuffle_factor(config: dict[str, Any]) -> int:
    """The config's pixel-unshuffle factor (1 = the network reads the image as it is)."""
    return int(config.get("unshuffle", 1))


def default_config(widths: list[int] | None = None, norm_groups: int = 4) -> dict[str, Any]:
    """A conv-family config with SD's [−1, 1] input normalisation (the default model's: 16, 32, 64, 96)."""
    return {"model_type": MODEL_TYPE, "widths": list(widths or [16, 32, 64, 96]), "norm_groups": norm_groups,
            "image_mean": list(SD_MEAN), "image_std": list(SD_STD)}


def load_conv(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Gen2SegConv:
    """Load a conv-family checkpoint folder as an eval-mode ``Gen2SegConv``. Weights come from safetensors only.
    Raises CheckpointError naming the offending file (missing, malformed, or weights that do not fit the config)."""
    info = inspect_checkpoint(path)
    if info.kind != "conv":
        raise CheckpointError(f"{info.path}: a gen2seg {info.kind.upper()} checkpoint, not a conv-family folder")
    root = info.path
    config = json.loads((root / CONFIG_FILE).read_text())  # valid JSON: inspect_checkpoint read it
    check_config(config, root / CONFIG_FILE)
    network = Gen2SegConv(config)
    weights = root / WEIGHTS_FILE
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        raise CheckpointError(f"{weights}: cannot be read as safetensors ({type(exc).__name__}: {exc})") from exc
    expected = network.state_dict()
    bad = sorted(set(expected) ^ set(state)) + sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if bad:
        raise CheckpointError(f"{weights}: {len(bad)} tensors missing, unexpected or mis-shaped for {root / CONFIG_FILE}, "
                              f"e.g. {', '.join(bad[:5])}")
    network.load_state_dict(state)
    network.to(device=torch.device(device), dtype=dtype)
    return network.eval()
