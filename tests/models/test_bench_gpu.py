"""bench/bench_gpu.py's GPU entry points, run on the CPU at toy sizes (what the GPU machine runs at full size)."""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from bench import gpu_training  # noqa: E402
from seg_node.models.conv import load_conv  # noqa: E402
from seg_node.models.sd import load_sd  # noqa: E402
from tests.models.test_sd_model import official_gen2seg_sd  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "bench" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_sd2_configs_have_sd2_parameter_counts(bench: ModuleType) -> None:
    """The bench's configs are SD2's: SD2 has UNet 865.9 M, VAE 83.7 M."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**bench.SD2_UNET)
        vae = AutoencoderKL(**bench.SD2_VAE)
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6, 1) == 865.9
    assert round(sum(p.numel() for p in vae.parameters()) / 1e6, 1) == 83.7


def test_in_memory_paths_match_the_official_pipeline_and_the_loader(bench: ModuleType, tmp_path: Path) -> None:
    """The bench's official path == tests' official_gen2seg_sd from disk, and its Gen2SegSD == load_sd's."""
    modules = bench.build_sd2(toy=True, device="cpu", workdir=tmp_path / "work", seed=3)
    root = bench.save_sd(modules, tmp_path / "sd")
    image = bench.sample_image(bench.TOY_SIZE, seed=1)
    official = bench.OfficialSD(modules, torch.float32)
    x, padding = official.preprocess([image], max(bench.TOY_SIZE), "cpu")
    ours = bench.ours_sd(modules, torch.float32)
    with torch.no_grad():
        ours_out = ours(x)
        np.testing.assert_array_equal(ours_out.numpy(), load_sd(root)(x).numpy())
        colors = official.colors(official.network(x), padding)
    reference, _ = official_gen2seg_sd(root, [image], max(bench.TOY_SIZE), 1)
    assert colors.shape == reference.shape == (1, *bench.TOY_SIZE, 3)
    assert np.abs(colors - reference).max() <= 1e-4
    assert np.abs(official.colors(ours_out, padding) - reference).max() <= 1e-3
    assert colors.std() > 1.0  # a real image through the network, not a constant


def test_sd_pipeline_toy_record(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "sd.json"
    argv = ["sd-pipeline", "--toy", "--dtypes", "fp32,fp16,bf16", "--warmup", "1", "--repeats", "2", "--output", str(out)]
    assert bench.main(argv) == 0
    record = json.loads(out.read_text())
    assert record["command"] == "python bench/bench_gpu.py " + " ".join(argv)
    assert {"device", "torch", "diffusers", "transformers", "python"} <= set(record)
    assert record["size"] == list(bench.TOY_SIZE) and record["batch"] == 1 and record["toy"] is True
    assert set(record["dtypes"]) == {"fp32", "bf16"}
    assert "fp16" in record["skipped"] and "CUDA" in record["skipped"]["fp16"]
    fp32, bf16 = record["dtypes"]["fp32"], record["dtypes"]["bf16"]
    for entry in (fp32, bf16):
        for path in ("ours", "official"):
            assert len(entry[path]["times_ms"]) == 2 and entry[path]["median_ms"] > 0 and entry[path]["finite"]
        assert entry["official_over_ours"] == pytest.approx(entry["official"]["median_ms"] / entry["ours"]["median_ms"])
    # Same weights, same input: fp32 agrees to rounding; bf16 moves, and is compared with the fp32 reference too.
    assert fp32["ours_vs_official"]["max"] <= 1e-3
    assert 0 < bf16["ours_vs_official_fp32"]["max"] < 255 and 0 < bf16["official_vs_official_fp32"]["max"] < 255
    # Ours keeps norms in float32 in reduced precision, so its bf16 weights are larger than the official's all-bf16.
    assert fp32["ours"]["weights_mb"] > 1.9 * bf16["ours"]["weights_mb"] > bf16["official"]["weights_mb"] * 0.9


def test_recipe_stages_are_read_from_the_script(bench: ModuleType, tmp_path: Path) -> None:
    from training.train import parse_args

    # The default recipe: the conv family, from scratch at a constant rate, then a decaying stage from its end.
    stages = gpu_training.recipe_stages(tmp_path, last_steps=77)
    assert [s.folder for s in stages] == [tmp_path / "conv1", tmp_path / "conv2"]
    assert [gpu_training._flag(s.args, "--output") for s in stages] == [str(s.folder) for s in stages]
    assert all(gpu_training._flag(s.args, "--family") == "conv" for s in stages)
    assert [s.steps for s in stages] == [8000, 77]  # stage 1 at its default, the last as asked
    first, second = stages
    assert gpu_training._flag(first.args, "--model-config") == str(REPO / "training" / "configs" / "conv_default.json")
    assert gpu_training._flag(first.args, "--lr-schedule") == "constant" and "--model" not in first.args
    assert gpu_training._flag(second.args, "--model") == str(tmp_path / "conv1" / "model")
    assert gpu_training._flag(second.args, "--lr-total-iters") == "77" and "--lr-schedule" not in second.args
    for stage in stages:  # what the script passes is what train accepts
        args = parse_args(stage.args)
        assert args.family == "conv" and args.objective == "instance" and args.steps == stage.steps
    defaults = gpu_training.recipe_stages(tmp_path)
    assert [s.steps for s in defaults] == [8000, 5000] and gpu_training._flag(defaults[1].args, "--lr-total-iters") == "5000"
    assert [s.steps for s in gpu_training.recipe_stages(tmp_path, last_steps=9, pretrain_steps=3)] == [3, 9]

    # The SD miniature's recipe, read from its own script.
    sd_script = REPO / "scripts" / "train_sd_miniature.sh"
    stages = gpu_training.recipe_stages(tmp_path, last_steps=77, script=sd_script)
    assert [gpu_training._flag(s.args, "--objective") for s in stages] == ["autoencode", "denoise", *["instance"] * 4]
    assert [s.folder for s in stages] == [tmp_path / f"sd{i}" for i in (1, 2, 3, 4, 5, 6)]
    assert [s.steps for s in stages] == [800, 800, 5000, 5000, 5000, 77]  # stages 4, 5 at their defaults, the last as asked
    assert [gpu_training._flag(s.args, "--lr-total-iters") for s in stages[3:]] == ["5000", "5000", "77"]
    for i in (2, 3, 4, 5):
        assert gpu_training._flag(stages[i].args, "--model") == str(tmp_path / f"sd{i}" / "model")
    assert gpu_training._flag(stages[0].args, "--model-config") == str(REPO / "training" / "configs" / "sd_default.json")
    # The script's INSTANCE array reaches every instance stage; the last three train the encoder too.
    assert all("--train-decoder" in s.args and gpu_training._flag(s.args, "--eval-resolution") == "160" for s in stages[2:])
    assert ["--train-encoder" in s.args for s in stages] == [False, False, False, True, True, True]
    assert gpu_training._flag(stages[2].args, "--batch-size") == "8"
    sd_pretrain = gpu_training.recipe_stages(tmp_path, pretrain_steps=3, script=sd_script)
    assert [s.steps for s in sd_pretrain][:5] == [3, 3, 3, 3, 3]


def test_train_on_another_network_and_not_over_a_run_of_another(bench: ModuleType, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    wide = REPO / "training" / "configs" / "conv_wide.json"
    stages = gpu_training.recipe_stages(tmp_path, model_config=wide)
    assert gpu_training._flag(stages[0].args, "--model-config") == str(wide)
    assert gpu_training.recipe_stages(tmp_path)[1].args == stages[1].args  # later stages load stage 1's model
    resumed = tmp_path / "resume.sh"  # a recipe that starts from a trained model has no network to replace
    resumed.write_text('STEPS1=${2:-5}\nCOMMON=(--family conv)\nstage "one" "$RUNS/a" --model m --steps "$STEPS1"\n')
    with pytest.raises(ValueError, match="no network"):
        gpu_training.recipe_stages(tmp_path, model_config=wide, script=resumed)

    runs = tmp_path / "runs"
    small = tmp_path / "small.json"
    small.write_text(json.dumps({**json.loads(wide.read_text()), "widths": [4, 8, 8]}))
    common = ["train", "--toy", "--budget-min", "30", "--output", str(runs), "--probe-steps", "1", "--last-steps", "1",
              "--pretrain-steps", "1"]
    assert bench.main([*common, "--model-config", str(small)]) == 0
    assert load_conv(runs / "conv2" / "model").config["widths"] == [4, 8, 8]
    # Asked to go on in that folder with the recipe's own network (stage 1 given more steps, stage 2 not started):
    # refused, naming both configs, and nothing trained.
    shutil.rmtree(runs / "conv2")
    log = (runs / "conv1" / "train_log.jsonl").read_text()
    capsys.readouterr()
    assert bench.main([*common[:-4], "--last-steps", "1", "--pretrain-steps", "2"]) == 2
    error = capsys.readouterr().err
    assert "small.json" in error and "conv_default.json" in error
    assert (runs / "conv1" / "train_log.jsonl").read_text() == log


def _steps(log: Path) -> list[int]:
    return [r["step"] for r in map(json.loads, log.read_text().splitlines()) if "loss" in r]


def test_train_toy_checkpoints_resumes_and_packs(bench: ModuleType, tmp_path: Path) -> None:
    """The default (conv) recipe through bench_gpu train at toy sizes, then pack/unpack and resume."""
    runs = tmp_path / "runs"
    common = ["train", "--toy", "--budget-min", "30", "--output", str(runs), "--probe-steps", "2"]
    assert bench.main([*common, "--last-steps", "4"]) == 0
    call = json.loads((runs / "bench_train.json").read_text())["calls"][0]
    assert call["overrides"]["--mixed-precision"] == "no"  # bf16 autocast only on CUDA
    assert len(call["stages"]) == 2 and all(s["done"] for s in call["stages"].values())
    # Stage 1 (2 steps in --toy) is all probe; the last stage: the timing probe (2 steps, no model/ left behind),
    # then the rest of its steps.
    spans = [(s["stage"][:7], s["from_step"], s["to_step"]) for s in call["segments"]]
    assert spans == [("stage 1", 0, 2), ("stage 2", 0, 2), ("stage 2", 2, 4)]
    assert all(s["steps_per_s"] > 0 for s in call["segments"])
    assert gpu_training.latest_checkpoint(runs / "conv1")[1] == 2 and (runs / "conv1" / "model" / "config.json").is_file()
    assert gpu_training.latest_checkpoint(runs / "conv2")[1] == 4 and (runs / "conv2" / "model" / "config.json").is_file()
    assert _steps(runs / "conv2" / "train_log.jsonl") == [1, 2, 3, 4]
    assert json.loads((runs / "conv2" / "args.json").read_text())["model"] == str(runs / "conv1" / "model")
    assert load_conv(runs / "conv2" / "model").spec.family == "conv"
    stage1_log = (runs / "conv1" / "train_log.jsonl").read_text()

    # A later call with more steps resumes stage 2 from its checkpoint; the finished stage is left alone.
    assert bench.main([*common, "--last-steps", "6"]) == 0
    call = json.loads((runs / "bench_train.json").read_text())["calls"][1]
    assert [(s["stage"][:7], s["from_step"], s["to_step"]) for s in call["segments"]] == [("stage 2", 4, 6)]
    assert _steps(runs / "conv2" / "train_log.jsonl") == [1, 2, 3, 4, 5, 6]
    assert (runs / "conv1" / "train_log.jsonl").read_text() == stage1_log

    # Packed and unpacked elsewhere, the runs resume: the last stage's state, the model it starts from, the logs.
    parts = gpu_training.pack_runs(runs, tmp_path / "out" / "runs.tar", part_mib=1, last_steps=6, pretrain_steps=2)
    assert len(parts) > 1 and all(p.stat().st_size <= 2**20 for p in parts)
    copy = tmp_path / "copy"
    gpu_training.unpack_runs(parts, copy)
    assert (copy / "conv1" / "model" / "config.json").is_file() and (copy / "conv1" / "model" / "model.safetensors").is_file()
    assert not list((copy / "conv1").glob("checkpoint-*"))  # a finished stage's checkpoints stay behind
    assert gpu_training.latest_checkpoint(copy / "conv2")[1] == 6 and (copy / "conv2" / "checkpoint-6" / "state").is_dir()
    assert not (copy / "conv2" / "checkpoint-6" / "model").exists()
    stages = gpu_training.recipe_stages(copy, last_steps=6, pretrain_steps=2)
    assert gpu_training.first_stage_to_run(stages) == 1 and gpu_training.stage_done(stages[1])
    assert bench.main(["train", "--toy", "--budget-min", "30", "--output", str(copy), "--probe-steps", "2",
                       "--last-steps", "7"]) == 0
    call = json.loads((copy / "bench_train.json").read_text())["calls"][-1]
    assert [(s["stage"][:7], s["from_step"], s["to_step"]) for s in call["segments"]] == [("stage 2", 6, 7)]
    assert all(s["done"] for s in call["stages"].values())
    assert _steps(copy / "conv2" / "train_log.jsonl") == [1, 2, 3, 4, 5, 6, 7]
