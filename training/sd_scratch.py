"""A gen2seg SD checkpoint with random weights, from one JSON of component configs: the start of a from-scratch SD.

The published gen2seg SD folder is a diffusers layout (``model_index.json``, ``vae/``, ``unet/``, ``scheduler/``,
``text_encoder/``, ``tokenizer/``). A model trained here from scratch is written in that same layout, so
``Segmenter``, ``export_onnx`` and ``train --family sd`` load it through the loaders the published weights use.

The JSON (e.g. ``training/configs/sd_default.json``) holds the keyword arguments of each component:
``{"vae": AutoencoderKL(...), "unet": UNet2DConditionModel(...), "text_encoder": CLIPTextConfig(...),
"scheduler": DDIMScheduler(...)}``. The text encoder only ever encodes the empty prompt (gen2seg runs
unconditioned), so a one-layer CLIP text model is enough; its hidden size must equal the UNet's
``cross_attention_dim``. The tokenizer is written as SD2 publishes it (``vocab.json`` + ``merges.txt``, CLIP's
byte-level vocabulary with a few merges); transformers' ``save_pretrained`` would write a different layout.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

__all__ = ["check_sd_config", "create_sd_checkpoint", "load_sd_config", "write_tokenizer"]

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
# A few merges so the BPE is not purely byte-level (the tokenizer only ever sees the empty prompt).
_MERGES = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"), ("o", "b"), ("ob", "j")]
COMPONENTS = ("vae", "unet", "text_encoder", "scheduler")


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP byte-level alphabet, in CLIP's vocab order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tokenizer(folder: Path) -> int:
    """CLIP's vocab layout: 256 byte symbols, the same with ``</w>``, merged symbols, then BOS and EOS.

    Returns the vocabulary size (the text encoder's ``vocab_size``; BOS and EOS are its last two ids)."""
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = _bytes_to_unicode()
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in _MERGES] + [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    # CLIP's merges.txt starts with a version line, which the BPE loaders skip.
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in _MERGES))
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": "!"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = dict(special, tokenizer_class="CLIPTokenizer", model_max_length=77, do_lower_case=True,
                  add_prefix_space=False, errors="replace")
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return len(vocab)


def load_sd_config(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read and check a component-config JSON; ValueError naming the file and the problem."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON file ({exc})") from None
    return check_sd_config(raw, str(path))


def check_sd_config(raw: Any, where: str = "SD config") -> dict[str, dict[str, Any]]:
    """Fill the text encoder's defaults into a component-config dict; ValueError naming ``where`` and the problem."""
    if not isinstance(raw, dict) or set(raw) - set(COMPONENTS) or not {"vae", "unet"} <= set(raw):
        raise ValueError(f"{where}: expected an object with 'vae' and 'unet' (and optionally 'text_encoder', "
                         f"'scheduler') component configs")
    text = raw.setdefault("text_encoder", {})
    cross = raw["unet"].get("cross_attention_dim", 1280)
    if text.setdefault("hidden_size", cross) != cross:
        raise ValueError(f"{where}: text_encoder.hidden_size {text['hidden_size']} must equal unet.cross_attention_dim {cross}")
    return raw


def create_sd_checkpoint(config: str | Path | dict[str, dict[str, Any]], folder: str | Path, seed: int = 0) -> Path:
    """Write a randomly initialised gen2seg SD checkpoint (published diffusers layout) to ``folder``; return it."""
    parts = check_sd_config(dict(config)) if isinstance(config, dict) else load_sd_config(config)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = write_tokenizer(folder / "tokenizer")
    text = dict(vocab_size=vocab_size, intermediate_size=2 * parts["text_encoder"]["hidden_size"], num_hidden_layers=1,
                num_attention_heads=1, max_position_embeddings=77, hidden_act="gelu", bos_token_id=vocab_size - 2,
                eos_token_id=vocab_size - 1, pad_token_id=0)
    text.update(parts["text_encoder"])
    text.setdefault("projection_dim", text["hidden_size"])
    # SD2's schedule as gen2seg's train.py saves it (trailing spacing: one step lands on t = 999).
    scheduler = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                     prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                     timestep_spacing="trailing")
    scheduler.update(parts.get("scheduler", {}))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        CLIPTextModel(CLIPTextConfig(**text)).eval().save_pretrained(folder / "text_encoder", safe_serialization=True)
        AutoencoderKL(**parts["vae"]).save_pretrained(folder / "vae", safe_serialization=True)
        UNet2DConditionModel(**parts["unet"]).save_pretrained(folder / "unet", safe_serialization=True)
    DDIMScheduler(**scheduler).save_pretrained(folder / "scheduler")
    model_index = {
        "_class_name": "gen2segSDPipeline",
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(model_index, indent=2) + "\n")
    return folder
