"""GPU entry points: this package's SD path against the official pipeline, and the default model's training at a budget.

    python bench/bench_gpu.py sd-pipeline [--size 576x768] [--dtypes fp32,fp16] [--toy] [--output FILE]
    python bench/bench_gpu.py train --budget-min M --output DIR [--toy] [--last-steps N] [--batch-size B]
                                    [--model-config FILE.json]
    python bench/bench_gpu.py pack DIR PREFIX

Both run on whatever device is there (CUDA if available, else the CPU); ``--toy`` runs the same code at toy sizes
so the test suite exercises it on the CPU. bench/gpu_session.sh is the one script the GPU machine runs; docs/gpu.md
says how to launch it and how to resume training from what it brings back.

``sd-pipeline``: SD2-sized random weights (VAE 128/256/512/512, UNet 320/640/1280/1280 with SD2's attention layout,
cross-attention 1024), built in memory on the device, run at batch 1 through (a) ``seg_node.models.sd.Gen2SegSD``
(what the torch backend runs: fp32 attention and norms in reduced precision) and (b) the official
``gen2segSDPipeline.__call__`` steps from diffusers primitives, with the whole pipeline in the requested dtype as
``torch_dtype=`` gives it. The text encoder is a 1-layer CLIP text model 1024 wide (SD2's has 23 layers): it only
ever encodes the 2-token empty prompt, which the official pipeline redoes on each call (inside its timed region;
~1.4 GFLOP for the real tower, nothing against the ~7.7 TFLOP of the rest) and ours holds as a constant. Timed:
from the preprocessed image tensor on the device to the VAE decoder's output (CUDA events, warm-up, the two paths
alternating, medians). Both outputs then go through the official min/max to the 0..255 colour scale and are compared
per dtype and against the official fp32 output.

``train``: runs ``training.train`` for the stages of scripts/train_default_model.sh (their arguments are read from
that script), skipping a stage whose model is there, with a larger batch, bf16 autocast on CUDA and the number of
steps fitted to the budget from a timed probe segment; checkpoints every ``--save-minutes`` so that a killed call
loses little, and a later call resumes each stage from its latest checkpoint. ``pack`` writes what a later call
needs to resume (finished stages' models, the running stage's latest checkpoint, logs) as tar parts small enough
to come back from the GPU machine.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import re
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.gpu_training import (first_stage_to_run, latest_checkpoint, pack_runs, recipe_stages,  # noqa: E402
                                 stage_done, train_at_budget)

DTYPES = ("fp32", "fp16", "bf16")

# SD2 (stabilityai/stable-diffusion-2) component configs.
SD2_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
               up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
               norm_num_groups=32, sample_size=768, scaling_factor=0.18215)
SD2_UNET = dict(sample_size=96, in_channels=4, out_channels=4,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, norm_num_groups=32,
                attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True)
SD2_TEXT = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=1, num_attention_heads=16)
# The same block types and levels at toy widths (the suite runs them on the CPU).
TOY_VAE = {**SD2_VAE, "block_out_channels": (8, 16, 16, 16), "layers_per_block": 1, "norm_num_groups": 8,
           "sample_size": 64}
TOY_UNET = {**SD2_UNET, "sample_size": 8, "block_out_channels": (16, 32, 32, 32), "layers_per_block": 1,
            "norm_num_groups": 8, "attention_head_dim": (2, 4, 4, 4), "cross_attention_dim": 32}
TOY_TEXT = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4)
TOY_SIZE = (64, 128)


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected HxW, got {text!r}")
    return int(match[1]), int(match[2])


def device_record() -> dict[str, Any]:
    import diffusers
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    return {"device": torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.processor() or platform.machine()})",
            "torch": torch.__version__, "cuda": torch.version.cuda if cuda else None, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def command_line(argv: Sequence[str]) -> str:
    return shlex.join(["python", "bench/bench_gpu.py", *argv])


# --------------------------------------------------------------------------------------------------- sd-pipeline


@dataclass
class SDModules:
    """Randomly initialised SD2-layout components, in float32 on one device, and the scheduler."""

    vae: Any
    unet: Any
    text_encoder: Any
    input_ids: Any
    scheduler: Any
    tokenizer_dir: Path


def build_sd2(toy: bool, device: str, workdir: Path, seed: int = 0) -> SDModules:
    """SD2's VAE and UNet (or their toy versions) and a 1-layer CLIP text model, random weights, made on ``device``."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from tests.helpers.tiny_sd import SCHEDULER_CONFIG
    from training.sd_scratch import write_tokenizer

    tokenizer_dir = workdir / "tokenizer"
    vocab = write_tokenizer(tokenizer_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    # The official conditioning: "" without padding, i.e. BOS, EOS.
    ids = tokenizer("", padding="do_not_pad", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    text = dict(TOY_TEXT if toy else SD2_TEXT, vocab_size=vocab, max_position_embeddings=77, hidden_act="gelu",
                bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=0)
    text["projection_dim"] = text["hidden_size"]
    torch.manual_seed(seed)
    # Made on the device: SD2's ~950 M parameters would take minutes to initialise on the CPU.
    with torch.device(device):
        vae = AutoencoderKL(**(TOY_VAE if toy else SD2_VAE)).eval().requires_grad_(False)
        unet = UNet2DConditionModel(**(TOY_UNET if toy else SD2_UNET)).eval().requires_grad_(False)
        text_encoder = CLIPTextModel(CLIPTextConfig(**text)).eval().requires_grad_(False)
    return SDModules(vae, unet, text_encoder, ids, DDIMScheduler(**SCHEDULER_CONFIG), tokenizer_dir)


def save_sd(modules: SDModules, folder: Path) -> Path:
    """Write the modules in the published layout (for tests that check against the official pipeline from disk)."""
    shutil.copytree(modules.tokenizer_dir, folder / "tokenizer", dirs_exist_ok=True)
    modules.text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    modules.vae.save_pretrained(folder / "vae", safe_serialization=True)
    modules.unet.save_pretrained(folder / "unet", safe_serialization=True)
    modules.scheduler.save_pretrained(folder / "scheduler")
    index = {"_class_name": "gen2segSDPipeline", "scheduler": ["diffusers", "DDIMScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return folder


class OfficialSD:
    """``gen2segSDPipeline.__call__`` (the official gen2seg pipeline) with every component in ``dtype``.

    tests/test_sd_model.py's ``official_gen2seg_sd`` is the same call loading from disk on the CPU in float32;
    tests/test_bench_gpu.py checks that the two agree there."""

    def __init__(self, modules: SDModules, dtype: Any) -> None:
        from diffusers.pipelines.marigold.marigold_image_processing import MarigoldImageProcessor
        from torch import nn

        # nn.Module.to: diffusers' ModelMixin.to warns on every dtype cast; the pipeline's torch_dtype= gives the same.
        self.vae = nn.Module.to(modules.vae, dtype)
        self.unet = nn.Module.to(modules.unet, dtype)
        self.text_encoder = nn.Module.to(modules.text_encoder, dtype)
        self.input_ids = modules.input_ids
        self.scheduler = modules.scheduler
        self.dtype = dtype
        self.processor = MarigoldImageProcessor(vae_scale_factor=2 ** (len(self.vae.config.block_out_channels) - 1))

    def preprocess(self, images: list[np.ndarray], processing_resolution: int, device: str) -> tuple[Any, Any]:
        import torch

        image, padding, _ = self.processor.preprocess(images, processing_resolution, "bilinear", torch.device(device),
                                                      self.dtype)
        return image, padding

    def network(self, image: Any) -> Any:
        """Steps 4–9: text conditioning (redone on each call, as the pipeline does), encode, one UNet step, decode."""
        import torch

        with torch.no_grad():
            empty_text_embedding = self.text_encoder(self.input_ids)[0]
            latent = self.vae.encode(image).latent_dist.mode() * self.vae.config.scaling_factor
            text = empty_text_embedding.repeat(len(latent), 1, 1)
            self.scheduler.set_timesteps(1)
            for t in self.scheduler.timesteps:
                noise = self.unet(latent, t, encoder_hidden_states=text, return_dict=False)[0]
                latent = self.scheduler.step(noise, t, latent).pred_original_sample
            return self.vae.decode(latent / self.vae.config.scaling_factor, return_dict=False)[0]

    def colors(self, decoded: Any, padding: Any) -> np.ndarray:
        """Steps 10–11 verbatim (batch-global; the second line's min/max are those of the shifted tensor)."""
        prediction = decoded + decoded.min().abs()
        prediction = prediction / (prediction.max().abs() + prediction.min().abs()) * 255.0
        return self.processor.pt_to_numpy(self.processor.unpad_image(prediction, padding)).astype(np.float32)


def ours_sd(modules: SDModules, dtype: Any) -> Any:
    """``Gen2SegSD`` on copies of the modules (it casts them in place in reduced precision), as ``load_sd`` builds it."""
    import torch

    from seg_node.models.sd import TIMESTEP, Gen2SegSD

    with torch.no_grad():
        context = modules.text_encoder.float()(modules.input_ids).last_hidden_state
    config = modules.scheduler.config
    return Gen2SegSD(copy.deepcopy(modules.vae).float(), copy.deepcopy(modules.unet).float(), context,
                     alpha_bar=float(modules.scheduler.alphas_cumprod[TIMESTEP]),
                     prediction_type=config["prediction_type"], dtype=dtype)


def sample_image(hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A smooth scene with flat rectangles and mild noise (never zeros: they hide wrong indexing and time faster)."""
    rng = np.random.default_rng(seed)
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([127 + 90 * np.sin(xx / 23), 127 + 90 * np.cos(yy / 17), 60 + (xx + yy) * 150 / (h + w)], axis=-1)
    for _ in range(4):
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        img[y0 : y0 + h // 3, x0 : x0 + w // 3] = rng.integers(0, 256, 3)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def _timer(device: str) -> Callable[[Callable[[], Any]], float]:
    import torch

    if device == "cuda":
        def run(fn: Callable[[], Any]) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))
    else:
        def run(fn: Callable[[], Any]) -> float:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
    return run


def _param_mb(*modules: Any) -> float:
    return sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()]) / 2**20


def _peak_mb(fn: Callable[[], Any], device: str) -> float | None:
    """Peak device memory above what was allocated before one call (activations and workspaces)."""
    import torch

    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def _diff(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return {"max": float(d.max()), "mean": float(d.mean())}


def bench_sd_pipeline(size: tuple[int, int], dtypes: Sequence[str], toy: bool, warmup: int, repeats: int,
                      device: str) -> dict[str, Any]:
    import torch

    torch_dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    skipped: dict[str, str] = {}
    if device == "cpu" and "fp16" in dtypes:
        # Not run: CPU float16 convolutions are a slow fallback, so neither the timing nor the rounding says anything
        # about the GPU kernels this comparison is for (bf16 has native CPU kernels and runs).
        skipped["fp16"] = "no CUDA device: fp16 is measured on the GPU only (CPU fp16 kernels are a slow fallback)"
    run_dtypes = [d for d in dtypes if d not in skipped]
    image = sample_image(size)
    timer = _timer(device)
    results: dict[str, Any] = {}
    reference: np.ndarray | None = None
    with tempfile.TemporaryDirectory() as tmp:
        modules = build_sd2(toy, device, Path(tmp))
        params = {"vae": sum(p.numel() for p in modules.vae.parameters()),
                  "unet": sum(p.numel() for p in modules.unet.parameters()),
                  "text_encoder": sum(p.numel() for p in modules.text_encoder.parameters())}
        # fp32 first: it is the reference the reduced-precision outputs are compared with.
        for name in sorted(run_dtypes, key=lambda d: d != "fp32"):
            dtype = torch_dtypes[name]
            ours = ours_sd(modules, dtype)
            official = OfficialSD(copy.deepcopy(modules) if dtype != torch.float32 else modules, dtype)
            official_input, padding = official.preprocess([image], max(size), device)
            ours_input = official_input.float()
            with torch.no_grad():
                fns = {"ours": lambda: ours(ours_input), "official": lambda: official.network(official_input)}
                for _ in range(warmup):
                    for fn in fns.values():
                        fn()
                times: dict[str, list[float]] = {k: [] for k in fns}
                for _ in range(repeats):  # alternating, so slow drifts of the machine hit both alike
                    for key, fn in fns.items():
                        times[key].append(timer(fn))
                peaks = {key: _peak_mb(fn, device) for key, fn in fns.items()}
                ours_colors = official.colors(ours(ours_input), padding)
                official_colors = official.colors(official.network(official_input), padding)
            entry: dict[str, Any] = {}
            for key, weights in (("ours", _param_mb(ours.vae, ours.unet)),
                                 ("official", _param_mb(official.vae, official.unet, official.text_encoder))):
                entry[key] = {"median_ms": statistics.median(times[key]), "min_ms": min(times[key]),
                              "times_ms": times[key], "weights_mb": weights, "activation_peak_mb": peaks[key],
                              "finite": bool(np.isfinite(ours_colors if key == "ours" else official_colors).all())}
            entry["official_over_ours"] = entry["official"]["median_ms"] / entry["ours"]["median_ms"]
            entry["ours_vs_official"] = _diff(ours_colors, official_colors)
            if name == "fp32":
                reference = official_colors
            elif reference is not None:
                entry["ours_vs_official_fp32"] = _diff(ours_colors, reference)
                entry["official_vs_official_fp32"] = _diff(official_colors, reference)
            results[name] = entry
            ours = official = fns = None  # free the networks before the next precision is built
            if device == "cuda":
                torch.cuda.empty_cache()
    return {"size": list(size), "batch": 1, "toy": toy, "params": params, "warmup": warmup, "repeats": repeats,
            "dtypes": results, "skipped": skipped}


def print_sd_table(record: dict[str, Any]) -> None:
    print(f"{'dtype':<6}{'ours ms':>10}{'official ms':>13}{'off/ours':>10}{'max|Δ| 0..255':>15}{'vs fp32 ours/off':>20}"
          f"{'act MB ours/off':>18}")
    for name, e in record["dtypes"].items():
        vs32 = (f"{e['ours_vs_official_fp32']['max']:.3g}/{e['official_vs_official_fp32']['max']:.3g}"
                if "ours_vs_official_fp32" in e else "-")
        act = "/".join("-" if e[k]["activation_peak_mb"] is None else f"{e[k]['activation_peak_mb']:.0f}"
                       for k in ("ours", "official"))
        print(f"{name:<6}{e['ours']['median_ms']:>10.2f}{e['official']['median_ms']:>13.2f}"
              f"{e['official_over_ours']:>10.2f}{e['ours_vs_official']['max']:>15.3g}{vs32:>20}{act:>18}")
    for name, reason in record["skipped"].items():
        print(f"{name}: skipped ({reason})")


# ----------------------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="bench_gpu.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sd = sub.add_parser("sd-pipeline", help="this package's SD path against the official pipeline")
    sd.add_argument("--size", type=parse_size, help="HxW processed (default 576x768; --toy: 64x128)")
    sd.add_argument("--dtypes", default="fp32,fp16", help=f"comma-separated, of {','.join(DTYPES)}")
    sd.add_argument("--toy", action="store_true", help="toy widths (the suite's CPU run)")
    sd.add_argument("--warmup", type=int, default=3)
    sd.add_argument("--repeats", type=int, default=20)
    sd.add_argument("--output", type=Path, help="JSON record")
    tr = sub.add_parser("train", help="the default model's training at a wall-clock budget (resumable)")
    tr.add_argument("--budget-min", type=float, required=True)
    tr.add_argument("--output", type=Path, required=True, help="runs folder (sd1/, sd2/, sd3/ as the recipe)")
    tr.add_argument("--toy", action="store_true", help="tiny frames, scenes and steps (the suite's CPU run)")
    # --stage3-steps: the name from when stage 3 was the recipe's last
    tr.add_argument("--last-steps", "--stage3-steps", type=int, help="the last stage's total steps (default: the recipe's)")
    tr.add_argument("--pretrain-steps", type=int, help="steps of each pre-training stage (default: the recipe's; "
                    "--toy: 2)")
    tr.add_argument("--model-config", type=Path, help="the network stage 1 builds (default: the recipe's, "
                    "training/configs/conv_default.json); training/configs/conv_wide.json is twice as wide")
    tr.add_argument("--batch-size", type=int, help="default 32 on CUDA (the recipe's 8 is CPU-shaped), else 8")
    tr.add_argument("--workers", type=int, help="data-loading processes (default 12 on CUDA, else the recipe's)")
    tr.add_argument("--save-minutes", type=float, default=2.0, help="checkpoint interval")
    tr.add_argument("--probe-steps", type=int, help="steps of each stage's timing probe (default 3 log windows)")
    pk = sub.add_parser("pack", help="tar what a later call needs to resume, in parts of <= 15 MiB")
    pk.add_argument("runs", type=Path)
    pk.add_argument("prefix", type=Path, help="parts are PREFIX.00, PREFIX.01, ...")
    pk.add_argument("--last-steps", "--stage3-steps", type=int, help="as given to train (decides which stages are done)")
    pk.add_argument("--pretrain-steps", type=int, help="as given to train")
    args = parser.parse_args(argv)

    if args.command == "pack":
        for part in pack_runs(args.runs, args.prefix, last_steps=args.last_steps,
                              pretrain_steps=args.pretrain_steps):
            print(f"{part} {part.stat().st_size / 2**20:.1f} MiB")
        return 0

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    record: dict[str, Any] = {"command": command_line(argv), **device_record()}
    if args.command == "sd-pipeline":
        dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
        if not dtypes or set(dtypes) - set(DTYPES):
            parser.error(f"--dtypes must be a comma-separated subset of {','.join(DTYPES)}")
        size = args.size or (TOY_SIZE if args.toy else (576, 768))
        record.update(bench_sd_pipeline(size, dtypes, args.toy, args.warmup, args.repeats, device))
        print_sd_table(record)
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(record, indent=2) + "\n")
        return 0

    cuda = device == "cuda"
    overrides = {"--batch-size": str(args.batch_size or (32 if cuda else 8)),
                 "--mixed-precision": "bf16" if cuda else "no"}
    if args.workers is not None or cuda:
        overrides["--workers"] = str(args.workers if args.workers is not None else 12)
    if args.toy:
        overrides.update({"--synthetic-size": "32x48", "--train-size": "32x48", "--synthetic-scenes": "16",
                          "--eval-size": "32x48", "--eval-resolution": "48", "--eval-scenes": "2", "--log-every": "1",
                          "--workers": str(args.workers or 0), "--batch-size": str(args.batch_size or 2)})
    log_every = int(overrides.get("--log-every", 10))
    overrides.setdefault("--log-every", str(log_every))
    args.output.mkdir(parents=True, exist_ok=True)
    try:
        stages = recipe_stages(args.output, args.last_steps, args.pretrain_steps or (2 if args.toy else None),
                               model_config=args.model_config)
        segments = train_at_budget(args.output, args.budget_min * 60, stages, overrides,
                                   probe_steps=args.probe_steps or 3 * log_every, save_minutes=args.save_minutes,
                                   margin_s=0 if args.toy else 20)
    except ValueError as error:
        print(f"bench_gpu train: {error}", file=sys.stderr)
        return 2
    first = first_stage_to_run(stages)
    record.update({"budget_min": args.budget_min, "overrides": overrides, "segments": segments,
                   "stages": {s.name: {"done": i < first or stage_done(s),
                                       "step": (latest_checkpoint(s.folder) or (None, 0))[1], "of_steps": s.steps}
                              for i, s in enumerate(stages)}})
    summary = args.output / "bench_train.json"
    calls = json.loads(summary.read_text())["calls"] if summary.is_file() else []
    summary.write_text(json.dumps({"calls": [*calls, record]}, indent=2) + "\n")
    for name, state in record["stages"].items():
        print(f"{name}: {'done' if state['done'] else 'at'} step {state['step']} of {state['of_steps']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
