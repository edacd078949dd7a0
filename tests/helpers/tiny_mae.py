"""A tiny gen2seg-MAE checkpoint in the published on-disk layout (transformers ``ViTMAEForPreTraining``)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from seg_node.models.spec import IMAGENET_MEAN, IMAGENET_STD

TINY_MAE_CONFIG = dict(
    image_size=32,
    patch_size=8,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    decoder_hidden_size=32,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=2,
    decoder_intermediate_size=64,
    # The gen2seg config was saved with masking off (docs/design.md, "Models and their output").
    mask_ratio=0.0,
)


def sincos_pos_embed(dim: int, grid: int) -> np.ndarray:
    """MAE's fixed 2-D sin-cos table with a zero CLS row: (1 + grid², dim)."""
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))
    gh, gw = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")
    out_w, out_h = np.outer(gw.ravel(), omega), np.outer(gh.ravel(), omega)
    table = np.concatenate([np.sin(out_w), np.cos(out_w), np.sin(out_h), np.cos(out_h)], axis=1)
    return np.concatenate([np.zeros((1, dim)), table]).astype(np.float32)


def make_tiny_mae(folder: Path, seed: int = 0) -> Path:
    """Write a random-weight ViT-MAE (32×32 input, 8×8 patches) plus a facebook/vit-mae-style preprocessor config."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = ViTMAEConfig(**TINY_MAE_CONFIG)
    torch.manual_seed(seed)
    model = ViTMAEForPreTraining(config).eval()
    grid = config.image_size // config.patch_size
    with torch.no_grad():
        # Real checkpoints store the sin-cos tables; a freshly built transformers 5 model leaves them at zero.
        model.vit.embeddings.position_embeddings.copy_(torch.from_numpy(sincos_pos_embed(config.hidden_size, grid))[None])
        model.decoder.decoder_pos_embed.copy_(torch.from_numpy(sincos_pos_embed(config.decoder_hidden_size, grid))[None])
    model.save_pretrained(folder, safe_serialization=True)
    preprocessor = {
        "image_processor_type": "ViTImageProcessor",
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD),
        "resample": 2,
        "rescale_factor": 1 / 255,
        "size": {"height": config.image_size, "width": config.image_size},
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    return folder
