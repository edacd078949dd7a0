"""What the numpy side of the pipeline must know about a network: its family and its input contract.

A spec travels with every backend (built from a checkpoint folder, or read back from an exported file's
metadata), so pre- and post-processing are the same code whichever backend runs the network.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal

Family = Literal["sd", "mae", "conv"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# SD's VAE takes images in [-1, 1]: (x - 0.5) / 0.5 for x in [0, 1].
SD_MEAN = (0.5, 0.5, 0.5)
SD_STD = (0.5, 0.5, 0.5)


class SpecError(ValueError):
    """A model spec (or an exported file's embedded spec) is missing or inconsistent."""


@dataclass(frozen=True)
class ModelSpec:
    """Input/output contract of a gen2seg network.

    The network takes float32 ``N×3×H×W`` images normalised as ``(x/255 - mean) / std`` and returns float32
    ``N×3×H×W`` raw colours (SD: the VAE decoder's output; MAE: the unpatchified decoder prediction; conv: the UNet's
    output) at the
    same H×W. Normalisation to 0..255 happens in numpy (``seg_node.processing.model_io``).
    """

    family: Family
    # Fixed network input (height, width): always for MAE, for SD only when the graph is static.
    input_hw: tuple[int, int] | None = None
    # SD: input sides must be multiples of this (VAE factor × UNet down-sampling; 64 for SD2); conv: 2^(levels − 1).
    pad_multiple: int = 1
    mean: tuple[float, float, float] = SD_MEAN
    std: tuple[float, float, float] = SD_STD

    def __post_init__(self) -> None:
        if self.family not in ("sd", "mae", "conv"):
            raise SpecError(f"family must be 'sd', 'mae' or 'conv', got {self.family!r}")
        if self.family == "mae" and self.input_hw is None:
            raise SpecError("an MAE spec needs input_hw (the ViT's fixed image size)")
        if self.input_hw is not None:
            h, w = self.input_hw
            if h <= 0 or w <= 0 or h % self.pad_multiple or w % self.pad_multiple:
                raise SpecError(f"input_hw {self.input_hw} must be positive multiples of pad_multiple {self.pad_multiple}")
        if self.pad_multiple < 1:
            raise SpecError(f"pad_multiple must be >= 1, got {self.pad_multiple}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise SpecError(f"mean and std need 3 values with std > 0, got {self.mean}, {self.std}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        try:
            raw = json.loads(text)
            hw = raw.get("input_hw")
            return cls(
                family=raw["family"],
                input_hw=tuple(hw) if hw is not None else None,
                pad_multiple=int(raw.get("pad_multiple", 1)),
                mean=tuple(float(v) for v in raw["mean"]),
                std=tuple(float(v) for v in raw["std"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SpecError(f"malformed model spec {text!r}: {exc}") from exc
