"""training.train: short CPU runs on the tiny MAE and SD checkpoints with synthetic data."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")

from safetensors.torch import load_file  # noqa: E402

from seg_node.models.checkpoints import CheckpointError  # noqa: E402
from seg_node.models.conv import Gen2SegConv, default_config, load_conv  # noqa: E402
from seg_node.models.mae import load_mae  # noqa: E402
from seg_node.models.sd import load_sd  # noqa: E402
from seg_node.pipeline import Segmenter  # noqa: E402
from training.train import build_datasets, lr_factor, parse_args, parse_data_spec, train  # noqa: E402
from training.train_models import color_scale, deepened, unshuffled  # noqa: E402

# Small and quick: 48×64 scenes squashed to the tiny MAE's 32×32, few distinct scenes so the loss falls fast.
FAST = ["--data", "synthetic", "--batch-size", "4", "--grad-accum", "1", "--warmup", "2", "--workers", "0",
        "--synthetic-size", "48x64", "--synthetic-scenes", "16", "--eval-size", "48x64", "--eval-scenes", "2",
        "--log-every", "1", "--seed", "3"]
# The conv family at its smallest: three levels (pad 4), 32×48 frames, two evaluation scenes.
CONV_FAST = ["--family", "conv", "--data", "synthetic", "--batch-size", "2", "--grad-accum", "1", "--warmup", "0",
             "--workers", "0", "--synthetic-size", "32x48", "--synthetic-scenes", "8", "--eval-size", "32x48",
             "--eval-scenes", "2", "--eval-every", "0", "--log-every", "1", "--lr", "1e-3", "--seed", "3"]


def log_records(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]


def test_lr_schedule_and_color_scale() -> None:
    assert lr_factor(0, 100, 40000) == 0 and lr_factor(50, 100, 40000) == 0.5
    assert lr_factor(100, 100, 40000) == 1.0
    assert math.isclose(lr_factor(30100, 100, 40000), 0.05 ** 0.75)  # ≈ 0.106 after gen2seg's 30 k steps
    assert lr_factor(50000, 100, 40000) == 0.05
    raw = torch.randn(2, 3, 4, 5) * torch.tensor([1.0, 5.0]).view(2, 1, 1, 1)
    for family in ("mae", "sd"):
        y = color_scale(raw, family)
        for i in range(2):  # per sample: each spans 0..255 (the raw values straddle zero)
            assert abs(float(y[i].min())) < 1e-3 and abs(float(y[i].max()) - 255) < 1e-2
    shifted = color_scale(torch.tensor([-3.0, -1.0, 2.0]).view(1, 1, 1, 3).expand(1, 3, 1, 3), "mae", "shift", 10.0)
    assert shifted[0, 0, 0].tolist() == [0.0, 20.0, 50.0]
    assert parse_data_spec("hypersim:/d/hs@4").weight == 4 and parse_data_spec("vkitti:/d/vk").weight == 1
    with pytest.raises(Exception, match="needs a folder"):
        parse_data_spec("hypersim")


def test_mae_loss_falls_and_checkpoint_round_trips(tmp_path: Path, tiny_mae_path: Path) -> None:
    out = tmp_path / "run"
    result = train(parse_args(["--family", "mae", "--model", str(tiny_mae_path), "--output", str(out),
                               "--steps", "24", "--lr", "2e-3", "--eval-every", "0", *FAST]))
    losses = [r["loss"] for r in log_records(out) if "loss" in r]
    assert len(losses) == 24 and all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4]), losses
    assert result["eval"]["instances"] > 0 and result["eval"]["miou_1"] is not None

    # The saved folder is the published layout: the runtime loader gives the trained network's outputs.
    from training.train_models import MAETrainModel

    trained = MAETrainModel.load(out / "checkpoint-24" / "model", None).eval()
    loaded = load_mae(out / "model")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trained(x), rtol=1e-5, atol=1e-5)
    assert json.loads((out / "model" / "config.json").read_text())["mask_ratio"] == 0.0
    seg = Segmenter.from_model(out / "model")
    assert seg.segment(np.zeros((48, 64, 3), np.uint8)).labels.shape == (48, 64)


def test_reconstruction_warm_start(tmp_path: Path, tiny_mae_path: Path) -> None:
    out = tmp_path / "pre"
    train(parse_args(["--family", "mae", "--model", str(tiny_mae_path), "--objective", "reconstruct", "--output",
                      str(out), "--steps", "12", "--lr", "3e-3", "--eval-every", "0", *FAST]))
    losses = [r["loss"] for r in log_records(out) if "loss" in r]
    assert losses[-1] < 0.8 * losses[0] and set(log_records(out)[0]) >= {"loss", "lr", "samples_per_s"}
    assert load_mae(out / "model")(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def test_resume_continues_exactly(tmp_path: Path, tiny_mae_path: Path) -> None:
    common = ["--family", "mae", "--model", str(tiny_mae_path), "--lr", "1e-3", "--eval-every", "0",
              "--save-every", "3", "--keep-checkpoints", "0", *FAST]
    train(parse_args([*common, "--output", str(tmp_path / "straight"), "--steps", "6"]))
    train(parse_args([*common, "--output", str(tmp_path / "split"), "--steps", "3"]))
    train(parse_args([*common, "--output", str(tmp_path / "split"), "--steps", "6", "--resume", str(tmp_path / "split")]))
    a = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    b = load_file(tmp_path / "split" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    steps = [r["step"] for r in log_records(tmp_path / "split") if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_sd_two_steps(tmp_path: Path, tiny_sd_path: Path) -> None:
    out = tmp_path / "sd"
    train(parse_args(["--family", "sd", "--model", str(tiny_sd_path), "--output", str(out), "--steps", "2",
                      "--lr", "1e-3", "--eval-every", "0", "--gradient-checkpointing", "--data", "synthetic",
                      "--batch-size", "1", "--grad-accum", "2", "--warmup", "0", "--workers", "0",
                      "--synthetic-size", "32x32", "--synthetic-scenes", "8", "--eval-size", "32x32",
                      "--eval-scenes", "1", "--log-every", "1"]))
    before = load_file(tiny_sd_path / "unet" / "diffusion_pytorch_model.safetensors")
    after = load_file(out / "model" / "unet" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the UNet trained
    vae_before = load_file(tiny_sd_path / "vae" / "diffusion_pytorch_model.safetensors")
    vae_after = load_file(out / "model" / "vae" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(vae_before[k], vae_after[k]) for k in vae_before)  # the VAE did not
    scheduler = json.loads((out / "model" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["timestep_spacing"] == "trailing"
    model = load_sd(out / "model")
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    records = log_records(out)
    assert [r["step"] for r in records if "loss" in r] == [1, 2]


def test_evaluate_and_stream_clis(tmp_path: Path, tiny_mae_path: Path, capsys: pytest.CaptureFixture) -> None:
    from training import evaluate, stream

    out = tmp_path / "metrics.json"
    assert evaluate.main(["--model", str(tiny_mae_path), "--shapes", "blob", "box", "--scenes", "2",
                          "--size", "48x64", "--output", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["instances"] > 0 and set(metrics["miou_1_by_shape"]) <= {"blob", "box"}
    assert metrics["shapes"] == ["blob", "box"]
    assert 0 <= metrics["miou_1"] <= 1 and metrics["AP50"] is not None

    frames = tmp_path / "stream"
    assert stream.main(["--model", str(tiny_mae_path), "--output", str(frames), "--frames", "4", "--shot", "2",
                        "--size", "48x64", "--overlay-every", "2", "--families", "box"]) == 0
    records = [json.loads(line) for line in (frames / "frames.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in records] == [0, 1, 2, 3] and [r["shot"] for r in records] == [0, 0, 1, 1]
    assert sorted(p.name for p in frames.glob("overlay_*.png")) == ["overlay_00000.png", "overlay_00002.png"]
    summary = json.loads((frames / "summary.json").read_text())
    assert summary["frames"] == 4 and summary["fps"] > 0 and summary["shapes"] == ["box"]  # --families: old spelling
    assert "Hz mean over 4 frames" in capsys.readouterr().out
    assert stream.main(["--model", str(tmp_path / "missing"), "--output", str(tmp_path / "x")]) == 2


def test_shape_flags_keep_their_old_spellings() -> None:
    base = ["--family", "mae", "--model", "m", "--data", "synthetic", "--output", "x"]
    new = parse_args([*base, "--eval-shapes", "box,flat", "--synthetic-exclude", "cable"])
    assert new.eval_shapes == ("box", "flat") and new.synthetic_exclude == ("cable",)
    assert parse_args([*base, "--eval-families", "box,flat"]).eval_shapes == ("box", "flat")
    with pytest.raises(SystemExit):
        parse_args([*base, "--eval-shapes", "sphere"])


def test_constant_lr_schedule() -> None:
    # Linear warm-up as the exponential schedule's, then the full rate, also past --lr-total-iters.
    assert [lr_factor(s, 10, 100, schedule="constant") for s in (0, 5, 10, 50, 100, 10_000)] == [0, 0.5, 1, 1, 1, 1]
    assert lr_factor(0, 0, 100, schedule="constant") == 1.0
    assert lr_factor(50, 10, 100) < 1.0  # the default still decays
    base = ["--family", "conv", "--model-config", "c.json", "--data", "synthetic", "--output", "x"]
    assert parse_args(base).lr_schedule == "exponential"
    assert parse_args([*base, "--lr-schedule", "constant"]).lr_schedule == "constant"
    with pytest.raises(SystemExit):
        parse_args([*base, "--lr-schedule", "cosine"])


def test_target_min_share_reaches_the_training_frames() -> None:
    base = ["--family", "conv", "--model-config", "c.json", "--data", "synthetic", "--output", "x",
            "--synthetic-size", "64x80", "--train-size", "32x40", "--seed", "7"]
    args = parse_args([*base, "--target-min-share", "0.25"])
    (shared,) = build_datasets(args.data, "conv", None, args)
    (nearest,) = build_datasets(args.data, "conv", None, parse_args(base))
    assert shared.augment.min_share == 0.25 and nearest.augment.min_share is None
    # The same scene and flip: only how the instances were shrunk differs, and the shared one keeps more object pixels.
    a, b = shared.get(0, np.random.default_rng(1))["target"], nearest.get(0, np.random.default_rng(1))["target"]
    assert a.shape == b.shape == (3, 32, 40) and bool((a != b).any())
    assert int(a.any(0).sum()) > int(b.any(0).sum())
    for bad in ("0", "1.5"):
        with pytest.raises(SystemExit):
            parse_args([*base, "--target-min-share", bad])


def _tiny_conv_config(path: Path) -> Path:
    path.write_text(json.dumps(default_config([4, 8, 8], 2)))
    return path


def test_conv_from_config_trains_saves_and_resumes(tmp_path: Path) -> None:
    config, out = _tiny_conv_config(tmp_path / "conv.json"), tmp_path / "conv"
    common = ["--model-config", str(config), "--output", str(out), "--lr-schedule", "constant", "--save-every", "1",
              "--keep-checkpoints", "0", *CONV_FAST]
    result = train(parse_args([*common, "--steps", "2"]))
    assert result["step"] == 2 and result["model"] == str(out / "model")
    model = load_conv(out / "model")
    assert model.spec.family == "conv" and model.spec.pad_multiple == 4
    assert json.loads((out / "model" / "config.json").read_text()) == json.loads(config.read_text())
    first, second = (load_file(out / f"checkpoint-{k}" / "model" / "model.safetensors") for k in (1, 2))
    assert any(not torch.equal(first[k], second[k]) for k in first)  # the weights moved between steps
    final = load_file(out / "model" / "model.safetensors")
    assert all(torch.equal(final[k], second[k]) for k in final)
    records = log_records(out)
    losses = [r for r in records if "loss" in r]
    assert [r["step"] for r in losses] == [1, 2] and all(np.isfinite(r["loss"]) for r in losses)
    assert [r["lr"] for r in losses] == [1e-3, 1e-3]  # constant, no warm-up: the full rate from the first step
    evals = [r for r in records if "eval" in r]
    assert [r["step"] for r in evals] == [2] and evals[0]["eval"]["instances"] > 0
    assert evals[0]["eval"]["miou_1"] is not None

    # Resumed with more steps: it goes on from step 2 (one log, one more step, one more evaluation).
    result = train(parse_args([*common, "--steps", "3", "--resume", str(out)]))
    assert result["step"] == 3
    records = log_records(out)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    assert [r["step"] for r in records if "eval" in r] == [2, 3]
    third = load_file(out / "model" / "model.safetensors")
    assert any(not torch.equal(third[k], second[k]) for k in third)
    # Exactly where an uninterrupted run of 3 steps ends (weights, optimiser, schedule and data order restored).
    straight = tmp_path / "straight"
    train(parse_args([*common, "--steps", "3", "--output", str(straight)]))
    reference = load_file(straight / "model" / "model.safetensors")
    for k in reference:
        torch.testing.assert_close(third[k], reference[k], rtol=0, atol=0, msg=k)


def _trained_from(tmp_path: Path, source: Gen2SegConv, *flags: str) -> Gen2SegConv:
    """``train --model`` (``source``, saved) with the conversion ``flags`` for two steps: the model it writes."""
    source.save_pretrained(tmp_path / "source")
    out = tmp_path / "out"
    train(parse_args(["--model", str(tmp_path / "source"), *flags, "--output", str(out), "--steps", "2",
                      *[a if a != "32x48" else "32x64" for a in CONV_FAST]]))
    return load_conv(out / "model")


def test_unshuffled_starts_from_the_downscaled_colors_and_trains(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    source = Gen2SegConv(default_config([4, 8, 8], 2)).eval()
    converted = unshuffled(source, 2).eval()
    assert converted.config["unshuffle"] == 2 and converted.spec.pad_multiple == 8
    x = torch.randn(2, 3, 16, 24)
    with torch.no_grad():
        expected = torch.nn.functional.interpolate(source(torch.nn.functional.avg_pool2d(x, 2)), scale_factor=2)
        got = converted(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="not one with unshuffle 2"):
        unshuffled(converted, 2)

    # train --unshuffle: the saved model reads the frame unshuffled and moved away from its start.
    trained = _trained_from(tmp_path, source, "--unshuffle", "2")
    assert trained.config["unshuffle"] == 2
    start = converted.state_dict()
    assert any(not torch.equal(v, start[k]) for k, v in trained.state_dict().items())
    base = ["--family", "conv", "--data", "synthetic", "--output", "x", "--unshuffle", "2"]
    for args in (["--model-config", "c.json"], ["--model", "m", "--unshuffle", "0"]):
        with pytest.raises(SystemExit):
            parse_args([*base, *args])
        assert "--unshuffle is for --family conv with --model" in capsys.readouterr().err


def test_deepened_keeps_the_trained_weights_starts_near_their_colors_and_trains(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    source = Gen2SegConv(default_config([4, 8, 8], 2)).eval()
    deep = deepened(source, 12).eval()
    assert deep.config["widths"] == [4, 8, 8, 12] and deep.spec.pad_multiple == 8
    state = deep.state_dict()
    for key, value in source.state_dict().items():  # every trained weight is there, the decoder's one level on
        if key.startswith("ups."):
            index, rest = key[4:].split(".", 1)
            key = f"ups.{int(index) + 1}.{rest}"
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)
    # Its colours start nearer the source's than with the new decoder block left at its random initialisation.
    torch.manual_seed(1)
    scrambled = Gen2SegConv(default_config([4, 8, 8, 12], 2)).eval()
    scrambled.load_state_dict({**state, **{k: v for k, v in scrambled.state_dict().items() if k.startswith("ups.0.")}})
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        expected = source(x)
        near, far = ((net(x) - expected).norm() / expected.norm() for net in (deep, scrambled))
    assert near < 0.5 * far
    with pytest.raises(ValueError, match="multiple of norm_groups 2"):
        deepened(source, 5)

    # train --deepen: the saved model has the extra level and moved away from its start.
    trained = _trained_from(tmp_path, source, "--deepen", "12")
    assert trained.config["widths"] == [4, 8, 8, 12]
    assert any(not torch.equal(v, state[k]) for k, v in trained.state_dict().items())
    base = ["--family", "conv", "--data", "synthetic", "--output", "x", "--deepen", "12"]
    with pytest.raises(SystemExit):
        parse_args([*base, "--model-config", "c.json"])
    assert "--deepen is for --family conv with --model" in capsys.readouterr().err


def test_conv_refuses_other_objectives(capsys: pytest.CaptureFixture) -> None:
    base = ["--family", "conv", "--model-config", "c.json", "--data", "synthetic", "--output", "x"]
    for objective in ("denoise", "reconstruct"):
        with pytest.raises(SystemExit):
            parse_args([*base, "--objective", objective])
        assert f"--objective {objective} is not for --family conv" in capsys.readouterr().err


def test_conv_family_mismatches_name_the_model(tmp_path: Path, tiny_mae_path: Path) -> None:
    with pytest.raises(CheckpointError, match="a gen2seg MAE model, but --family conv was given"):
        train(parse_args(["--model", str(tiny_mae_path), "--output", str(tmp_path / "a"), "--steps", "1", *CONV_FAST]))
    Gen2SegConv(default_config([4, 8], 4)).save_pretrained(tmp_path / "conv")
    with pytest.raises(CheckpointError, match="a gen2seg CONV model, but --family mae was given"):
        train(parse_args(["--family", "mae", "--model", str(tmp_path / "conv"), "--output", str(tmp_path / "b"),
                          "--steps", "1", *FAST]))
    # A bad --model-config is named as given, not as the folder's config.json.
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**default_config([4, 8], 4), "norm_groups": 3}))
    with pytest.raises(CheckpointError, match=rf"{bad}: 'norm_groups' must be"):
        train(parse_args(["--model-config", str(bad), "--output", str(tmp_path / "c"), "--steps", "1", *CONV_FAST]))
