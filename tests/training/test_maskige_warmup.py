"""train --maskige-warmup: SD fine-tuning starts by regressing the latent of the target's maskige (GSS stage 1)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")

from tests.training.test_maskige_check import TINY  # noqa: E402
from training.sd_scratch import create_sd_checkpoint  # noqa: E402
from training.train import main, parse_args  # noqa: E402

FAST = ["--family", "sd", "--data", "synthetic", "--batch-size", "2", "--grad-accum", "1", "--warmup", "0",
        "--workers", "0", "--synthetic-size", "32x40", "--train-size", "32x40", "--synthetic-scenes", "4",
        "--eval-size", "32x40", "--eval-scenes", "2", "--eval-every", "0", "--log-every", "1", "--lr", "1e-3",
        "--seed", "4"]


def test_warmup_regresses_maskige_latents_then_hands_over_to_the_instance_loss(tmp_path: Path) -> None:
    sd = create_sd_checkpoint(TINY, tmp_path / "sd", seed=2)
    out = tmp_path / "run"
    assert main([*FAST, "--model", str(sd), "--output", str(out), "--steps", "22", "--maskige-warmup", "20"]) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    warm = [r["maskige_latent"] for r in steps[:20]]
    assert all("maskige_latent" in r and "variance" not in r for r in steps[:20])
    assert all("variance" in r and "maskige_latent" not in r for r in steps[20:]) and len(steps) == 22
    assert sum(warm[-4:]) < sum(warm[:4])  # the UNet learns to produce the maskige's latent
    assert (out / "model" / "unet").is_dir()


def test_warmup_is_only_for_the_sd_instance_stage() -> None:
    base = ["--data", "synthetic", "--output", "x", "--maskige-warmup", "5"]
    with pytest.raises(SystemExit):
        parse_args(["--family", "mae", "--model", "m", *base])
    with pytest.raises(SystemExit):
        parse_args(["--family", "sd", "--model", "m", "--objective", "denoise", *base])
    with pytest.raises(SystemExit):
        parse_args(["--family", "sd", "--model", "m", "--data", "synthetic", "--output", "x", "--maskige-warmup", "-1"])
    assert parse_args(["--family", "sd", "--model", "m", *base]).maskige_warmup == 5
