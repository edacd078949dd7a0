"""SD from scratch (training.sd_scratch) and gen2seg's pre-training stages: autoencode (VAE), denoise (UNet)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")

from safetensors.torch import load_file  # noqa: E402

from seg_node.models.checkpoints import inspect_checkpoint  # noqa: E402
from seg_node.models.sd import load_sd  # noqa: E402
from seg_node.pipeline import Segmenter  # noqa: E402
from training.sd_scratch import create_sd_checkpoint, load_sd_config  # noqa: E402
from training.train import parse_args, train  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
# The default model's design at test size: f = 4 VAE without mid-block attention, conv-only UNet.
TINY = {
    "vae": {"down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
            "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4, "latent_channels": 4,
            "mid_block_add_attention": False},
    "unet": {"in_channels": 4, "out_channels": 4, "down_block_types": ["DownBlock2D"] * 2,
             "up_block_types": ["UpBlock2D"] * 2, "block_out_channels": [16, 32], "layers_per_block": 1,
             "norm_num_groups": 8, "mid_block_type": "UNetMidBlock2D", "cross_attention_dim": 16},
}
FAST = ["--family", "sd", "--data", "synthetic", "--batch-size", "4", "--grad-accum", "1", "--warmup", "0",
        "--workers", "0", "--synthetic-size", "32x40", "--train-size", "32x40", "--synthetic-scenes", "8",
        "--eval-size", "32x40", "--eval-scenes", "4", "--log-every", "1", "--seed", "4"]


def weights(folder: Path, part: str) -> dict[str, torch.Tensor]:
    return load_file(folder / part / "diffusion_pytorch_model.safetensors")


def changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


def test_shipped_config_builds_a_checkpoint_the_runtime_loads(tmp_path: Path) -> None:
    folder = create_sd_checkpoint(REPO / "training" / "configs" / "sd_default.json", tmp_path / "sd")
    assert inspect_checkpoint(folder).kind == "sd"
    net = load_sd(folder)
    assert net.spec.pad_multiple == 16  # VAE f = 4 times a 3-level UNet
    seg = Segmenter.from_model(folder)
    result = seg.segment(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    assert result.labels.shape == (60, 80)


def test_bad_configs_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"vae": {}}))
    with pytest.raises(ValueError, match="bad.json.*'vae' and 'unet'"):
        load_sd_config(bad)
    bad.write_text(json.dumps({**TINY, "text_encoder": {"hidden_size": 8}}))
    with pytest.raises(ValueError, match="bad.json.*must equal unet.cross_attention_dim 16"):
        load_sd_config(bad)
    bad.write_bytes(b"\xff\x00")
    with pytest.raises(ValueError, match="bad.json: not a readable JSON"):
        load_sd_config(bad)


def test_three_stages_train_their_own_parts(tmp_path: Path) -> None:
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    s1, s2, s3 = tmp_path / "s1", tmp_path / "s2", tmp_path / "s3"

    # Stage 1: only the VAE trains; the reconstruction improves; the scaling factor is fitted to the latents.
    train(parse_args([*FAST, "--model-config", str(config), "--objective", "autoencode", "--output", str(s1),
                      "--steps", "30", "--lr", "3e-3", "--eval-every", "10"]))
    evals = [r["eval"]["psnr_db"] for r in map(json.loads, (s1 / "train_log.jsonl").read_text().splitlines())
             if "eval" in r]
    assert len(evals) == 3 and evals[-1] > evals[0] + 1.0, evals
    assert changed(weights(s1 / "init", "vae"), weights(s1 / "model", "vae"))
    assert not changed(weights(s1 / "init", "unet"), weights(s1 / "model", "unet"))
    scaling = json.loads((s1 / "model" / "vae" / "config.json").read_text())["scaling_factor"]
    assert scaling != 0.18215 and np.isfinite(scaling)

    # Stage 2: only the UNet trains, as a denoiser in that latent space.
    train(parse_args([*FAST, "--model", str(s1 / "model"), "--objective", "denoise", "--output", str(s2),
                      "--steps", "6", "--lr", "1e-3", "--eval-every", "3"]))
    records = [json.loads(line) for line in (s2 / "train_log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
    assert [r["eval"]["denoise_loss"] > 0 for r in records if "eval" in r] == [True, True]
    assert not changed(weights(s1 / "model", "vae"), weights(s2 / "model", "vae"))
    assert changed(weights(s1 / "model", "unet"), weights(s2 / "model", "unet"))

    # Stage 3 with the decoder: UNet and decoder train, the encoder stays; the saved model segments.
    train(parse_args([*FAST, "--model", str(s2 / "model"), "--objective", "instance", "--train-decoder",
                      "--output", str(s3), "--steps", "2", "--lr", "1e-3", "--eval-every", "0",
                      "--color-scale", "shift", "--eval-resolution", "40"]))
    before, after = weights(s2 / "model", "vae"), weights(s3 / "model", "vae")
    assert changed({k: v for k, v in before.items() if k.startswith("decoder.")}, after)
    assert not changed({k: v for k, v in before.items() if k.startswith("encoder.")}, after)
    assert changed(weights(s2 / "model", "unet"), weights(s3 / "model", "unet"))
    assert Segmenter.from_model(s3 / "model").segment(np.zeros((32, 40, 3), np.uint8)).labels.shape == (32, 40)

    # End to end: the encoder trains as well.
    s4 = tmp_path / "s4"
    train(parse_args([*FAST, "--model", str(s2 / "model"), "--objective", "instance", "--train-decoder",
                      "--train-encoder", "--output", str(s4), "--steps", "2", "--lr", "1e-3", "--eval-every", "0",
                      "--color-scale", "shift", "--eval-resolution", "40"]))
    after = weights(s4 / "model", "vae")
    assert changed({k: v for k, v in before.items() if k.startswith("encoder.")}, after)
    assert changed({k: v for k, v in before.items() if k.startswith("decoder.")}, after)


def test_objective_must_fit_the_family() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--family", "mae", "--model", "x", "--objective", "denoise", "--data", "synthetic",
                    "--output", "o"])
    with pytest.raises(SystemExit):
        parse_args(["--family", "sd", "--model", "x", "--objective", "reconstruct", "--data", "synthetic",
                    "--output", "o"])
