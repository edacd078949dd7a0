"""A tiny gen2seg SD checkpoint in the published diffusers layout (same classes as SD2, tiny configs).

Saved with ``save_pretrained`` (safetensors) so tests exercise the real loaders; the tokenizer folder is written by
hand as SD2 publishes it (``vocab.json`` + ``merges.txt``, no ``tokenizer.json``), because that is the layout the
real checkpoint has and transformers 5's ``save_pretrained`` would write a different one.
"""
from __future__ import annotations

import json
from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from training.sd_scratch import write_tokenizer

# SD2's scheduler_config.json as gen2seg's train.py saves it (trailing spacing → t = 999 for one step).
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="v_prediction",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    timestep_spacing="trailing",
)


def _write_models(folder: Path, vocab_size: int) -> None:
    text_config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, hidden_act="gelu", bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
        pad_token_id=0, projection_dim=32,
    )
    text_encoder = CLIPTextModel(text_config).eval()

    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8, sample_size=64,
        scaling_factor=0.18215,
    ).eval()
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8,
        attention_head_dim=(2, 4, 4), cross_attention_dim=text_config.hidden_size, use_linear_projection=True,
    ).eval()

    text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    DDIMScheduler(**SCHEDULER_CONFIG).save_pretrained(folder / "scheduler")


def make_tiny_sd(folder: Path, seed: int = 0) -> Path:
    """Write a tiny SD2-style gen2seg checkpoint to ``folder`` (created) and return it.

    VAE f=8 (4 blocks, as SD2, so the official pad-to-8 is the VAE factor), UNet with 3 levels (2 with
    cross-attention, linear projections), a 2-layer CLIP text model, DDIM with SD2's schedule. ~2 MB.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = write_tokenizer(folder / "tokenizer")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        _write_models(folder, vocab_size)
    model_index = {
        "_class_name": "gen2segSDPipeline",
        "_diffusers_version": diffusers.__version__,
        "default_processing_resolution": 768,
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(model_index, indent=2))
    return folder
