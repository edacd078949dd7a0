"""ONNX Runtime (CPU) against torch eager on the same gen2seg MAE weights; GPU comparisons where a GPU exists.

    .venv/bin/python bench/bench_backends.py [--threads N] [--blocks N] [--output bench/results/backends.json]

Models: the shipped default model (engines/default: its checkpoint through the torch backend's network against its
committed ONNX export), a mid-size ViT-MAE (ViT-S-like encoder: 224², patch 16, 384 wide, 6 layers; 2-layer 256-wide decoder;
~12 M parameters, ~5 GFLOP per image) and a mid-size SD (the SD2 block types, VAE 32–128 and UNet 64–256 channels,
~16 M parameters, at 256×256), with random weights, written in the published layouts the way tests/tiny_mae.py and
tests/tiny_sd.py write their tiny ones, then loaded through the real loaders (``load_mae``, ``load_sd``) and exported
with the real exporter (``export_onnx``), so both backends run exactly what the package ships. Timings alternate between the
backends in blocks within one run (this machine is shared and noisy); the ratio of the medians and the ratio of the
best (minimum) latencies are both reported: under CPU contention torch's OpenMP pool degrades much more than ONNX
Runtime's, so the median ratio includes that robustness and the minimum ratio is the per-core kernel speed. The goal
is ONNX Runtime ≥ 1.5× faster than torch eager. Outputs are compared too. The fp16 export on the CPU is timed as
well, for the record: ONNX Runtime's CPU provider has no float16 kernels for most ops on x86 and wraps them in
Casts, so it is expected to be slower, not faster (fp16 is for GPUs). The default model's int8 export
(``model_int8.onnx``, ``export_onnx --int8``) is timed beside its fp32 one.

GPU parts (fp16 against fp32 on TensorRT, and this package's SD path against the diffusers-style pipeline at
576×768) run only where CUDA and TensorRT are available; otherwise the script says why they were skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MID_MAE_CONFIG = dict(
    image_size=224, patch_size=16, hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1536,
    decoder_hidden_size=256, decoder_num_hidden_layers=2, decoder_num_attention_heads=8, decoder_intermediate_size=1024,
    mask_ratio=0.0,
)
MID_SD_VAE = (32, 64, 128, 128)
MID_SD_UNET = (64, 128, 256)
MID_SD_HW = (256, 256)
GOAL_ORT_VS_TORCH = 1.5
DEFAULT_MODEL = REPO / "engines" / "default"


def make_mid_mae(folder: Path, seed: int = 0) -> Path:
    """tests/tiny_mae.make_tiny_mae with MID_MAE_CONFIG: random weights, real sin-cos tables, published layout."""
    import torch
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    from seg_node.models.spec import IMAGENET_MEAN, IMAGENET_STD
    from tests.helpers.tiny_mae import sincos_pos_embed

    folder.mkdir(parents=True, exist_ok=True)
    config = ViTMAEConfig(**MID_MAE_CONFIG)
    torch.manual_seed(seed)
    model = ViTMAEForPreTraining(config).eval()
    grid = config.image_size // config.patch_size
    with torch.no_grad():
        model.vit.embeddings.position_embeddings.copy_(torch.from_numpy(sincos_pos_embed(config.hidden_size, grid))[None])
        model.decoder.decoder_pos_embed.copy_(torch.from_numpy(sincos_pos_embed(config.decoder_hidden_size, grid))[None])
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "ViTImageProcessor", "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD),
         "size": {"height": 224, "width": 224}}))
    return folder


def make_mid_sd(folder: Path, seed: int = 0) -> Path:
    """tests/tiny_sd.make_tiny_sd with wider configs (VAE 32–128 channels, UNet 64–256 with cross-attention; ~16 M
    parameters): the SD2 block types at a size a 2-core CPU runs in well under a second at 256×256."""
    import diffusers
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tests.helpers.tiny_sd import SCHEDULER_CONFIG
    from training.sd_scratch import write_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(folder / "tokenizer")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text = CLIPTextConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu",
                              bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=0, projection_dim=64)
        CLIPTextModel(text).eval().save_pretrained(folder / "text_encoder", safe_serialization=True)
        AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
                      up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=MID_SD_VAE, layers_per_block=1,
                      norm_num_groups=16, sample_size=256, scaling_factor=0.18215).eval().save_pretrained(
            folder / "vae", safe_serialization=True)
        UNet2DConditionModel(sample_size=32, in_channels=4, out_channels=4,
                             down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                             up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                             block_out_channels=MID_SD_UNET, layers_per_block=1, norm_num_groups=16,
                             attention_head_dim=(4, 8, 8), cross_attention_dim=64, use_linear_projection=True,
                             ).eval().save_pretrained(folder / "unet", safe_serialization=True)
        DDIMScheduler(**SCHEDULER_CONFIG).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "gen2segSDPipeline", "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]}))
    return folder


def alternating(fns: dict[str, Callable[[], Any]], blocks: int, per_block: int = 4) -> dict[str, list[float]]:
    """Per-call wall times in ms, in alternating blocks: each block runs one backend ``per_block + 1`` times and
    drops the first call, so the other backend's idle thread pool (ONNX Runtime and OpenMP threads spin for a while
    after a call) does not land in the timings, while slow drifts of the machine's load hit both backends alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(blocks):
        for name, fn in fns.items():
            fn()
            for _ in range(per_block):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def summary(ms: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(ms), 3), "mean_ms": round(statistics.fmean(ms), 3),
            "min_ms": round(min(ms), 3), "p90_ms": round(float(np.percentile(ms, 90)), 3)}


def _compare(name: str, net: Any, onnx32: Path, others: dict[str, Path], hw: tuple[int, int],
             configs: list[tuple[int, int]], threads: int, blocks: int) -> dict[str, Any]:
    """torch eager against the fp32 export, and ``others`` (precision → export: fp16, int8) at batch 1 on every
    thread count."""
    import torch

    from seg_node.backends.onnx_backend import OnnxBackend

    runs: dict[str, Any] = {}
    for t, batch in configs:
        torch.set_num_threads(t)
        ort32 = OnnxBackend(onnx32, threads=t)
        x = np.random.default_rng(batch).uniform(-2, 2, (batch, 3, *hw)).astype(np.float32)
        xt = torch.from_numpy(x)

        def run_torch() -> np.ndarray:
            with torch.inference_mode():
                return net(xt).numpy()

        ref = run_torch()
        fns = {"torch_eager": run_torch, "onnxruntime": lambda: ort32.run(x)}
        diffs = {"onnxruntime_vs_torch": float(np.abs(ort32.run(x) - ref).max())}
        for precision, path in others.items() if batch == 1 else ():
            other = OnnxBackend(path, threads=t)
            fns[f"onnxruntime_{precision}"] = lambda b=other: b.run(x)
            diffs[f"onnxruntime_{precision}_vs_torch"] = float(np.abs(other.run(x) - ref).max())
        times = alternating(fns, blocks if batch == 1 else max(2, blocks // 3))
        stats = {k: summary(ms) for k, ms in times.items()}
        median_ratio = stats["torch_eager"]["median_ms"] / stats["onnxruntime"]["median_ms"]
        min_ratio = stats["torch_eager"]["min_ms"] / stats["onnxruntime"]["min_ms"]
        run = {"threads": t, "batch": batch, "input_hw": list(hw), "timings": stats,
               "ort_speedup_vs_torch_median": round(median_ratio, 3), "ort_speedup_vs_torch_min": round(min_ratio, 3),
               "max_abs_diff": diffs, "max_abs_output": float(np.abs(ref).max())}
        line = (f"{name} batch {batch}, {t} thread(s): torch eager {stats['torch_eager']['median_ms']:.1f} ms median "
                f"({stats['torch_eager']['min_ms']:.1f} min), ONNX Runtime {stats['onnxruntime']['median_ms']:.1f} ms "
                f"({stats['onnxruntime']['min_ms']:.1f}) → ORT {median_ratio:.2f}× faster by median, {min_ratio:.2f}× "
                f"by min (outputs agree to {diffs['onnxruntime_vs_torch']:.2g})")
        for precision in others if batch == 1 else ():
            key = f"onnxruntime_{precision}"
            run[f"ort_{precision}_speed_vs_fp32_median"] = round(
                stats["onnxruntime"]["median_ms"] / stats[key]["median_ms"], 3)
            run[f"ort_{precision}_speed_vs_torch_median"] = round(
                stats["torch_eager"]["median_ms"] / stats[key]["median_ms"], 3)
            line += (f"; ORT {precision} on CPU {stats[key]['median_ms']:.1f} ms "
                     f"(agrees to {diffs[key + '_vs_torch']:.2g})")
        print(line, flush=True)
        runs[f"threads{t}_batch{batch}"] = run
    head = runs[f"threads{threads}_batch1"]
    return {"runs": runs, "headline": {
        "threads": threads, "batch": 1, "ort_speedup_vs_torch_median": head["ort_speedup_vs_torch_median"],
        "ort_speedup_vs_torch_min": head["ort_speedup_vs_torch_min"], "goal": GOAL_ORT_VS_TORCH,
        "goal_met_by_median": head["ort_speedup_vs_torch_median"] >= GOAL_ORT_VS_TORCH,
        "goal_met_by_min": head["ort_speedup_vs_torch_min"] >= GOAL_ORT_VS_TORCH}}


def cpu_bench(threads: int, blocks: int, work: Path) -> dict[str, Any]:
    from seg_node.model_settings import recommended_settings
    from seg_node.backends.torch_backend import load_torch_backend
    from seg_node.models.mae import load_mae
    from seg_node.models.sd import load_sd
    from seg_node.processing.model_io import preprocess
    from training.export_onnx import export_onnx

    out: dict[str, Any] = {"blocks": blocks, "calls_per_block": 4, "models": {}}
    if (DEFAULT_MODEL / "model.onnx").is_file():
        # The shipped default model, as the main job runs it: its checkpoint (either family) against its committed
        # export, at the network input a 320×240 frame gets at the model's recommended processing resolution.
        net = load_torch_backend(DEFAULT_MODEL).network  # the package's loader for either family
        resolution = recommended_settings(DEFAULT_MODEL).get("model.processing_resolution", 768)
        batch, _ = preprocess([np.zeros((240, 320, 3), np.uint8)], net.spec, "robot", resolution)
        hw = tuple(batch.shape[2:])
        int8 = DEFAULT_MODEL / "model_int8.onnx"
        result = _compare("default", net, DEFAULT_MODEL / "model.onnx", {"int8": int8} if int8.is_file() else {}, hw,
                          list(dict.fromkeys([(threads, 1), (1, 1)])), threads, blocks)
        result["model"] = {"path": "engines/default", "family": net.spec.family,
                           "parameters": sum(p.numel() for p in net.parameters())}
        out["models"]["default"] = result
        del net
    # (threads, batch): all cores at batch 1 is the robot case; one thread shows per-core kernel speed without
    # thread-pool effects; batch 4 shows throughput.
    folder = make_mid_mae(work / "mae-mid")
    net = load_mae(folder)  # the torch backend's network: eager, fp32
    result = _compare("MAE-mid", net, export_onnx(folder, work / "mae.onnx"),
                      {"fp16": export_onnx(folder, work / "mae.fp16.onnx", fp16=True)}, (224, 224),
                      list(dict.fromkeys([(threads, 1), (1, 1), (threads, 4)])), threads, blocks)
    result["model"] = {"config": MID_MAE_CONFIG, "parameters": sum(p.numel() for p in net.parameters())}
    out["models"]["mae-mid"] = result
    del net
    folder = make_mid_sd(work / "sd-mid")
    net = load_sd(folder)
    onnx_sd = export_onnx(folder, work / "sd.onnx", profile=f"{MID_SD_HW[0]}x{MID_SD_HW[1]}")
    result = _compare("SD-mid", net, onnx_sd, {}, MID_SD_HW, list(dict.fromkeys([(threads, 1), (1, 1)])), threads,
                      max(2, blocks // 2))
    result["model"] = {"vae_block_out_channels": MID_SD_VAE, "unet_block_out_channels": MID_SD_UNET,
                       "parameters": sum(p.numel() for p in net.parameters())}
    out["models"]["sd-mid"] = result
    return out


def gpu_bench() -> dict[str, Any]:
    """TensorRT fp16 vs fp32 and the SD comparison need CUDA + TensorRT; report why they did not run otherwise."""
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        return {"skipped": "no CUDA device visible to torch on this machine"}
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return {"skipped": "a CUDA device is present but tensorrt is not installed (pip install tensorrt)"}
    return {"skipped": "GPU timing of the SD path (TensorRT fp16 vs fp32, vs the diffusers-style pipeline at 576×768) "
                       "needs the released SD weights; run build_engine on them (it prints per-engine latency)"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads for both backends")
    parser.add_argument("--blocks", type=int, default=8, help="alternating blocks of 4 timed calls per backend (batch 1)")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "backends.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench_backends-") as tmp:
        cpu = cpu_bench(args.threads, args.blocks, Path(tmp))
    gpu = gpu_bench()
    if "skipped" in gpu:
        print(f"GPU benchmarks skipped: {gpu['skipped']}")
    import onnxruntime
    import torch

    record = {
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/bench_backends.py", *(argv or sys.argv[1:])]),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_at_end": [round(v, 2) for v in os.getloadavg()]},
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "cpu": cpu, "gpu": gpu, "seconds": round(time.time() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.output} ({record['seconds']} s; load average {record['machine']['load_average_at_end'][0]})")
    for name, result in cpu["models"].items():
        head = result["headline"]
        print(f"{name}: ONNX Runtime vs torch eager, batch 1, {head['threads']} threads: "
              f"{head['ort_speedup_vs_torch_median']:.2f}× by median latency, {head['ort_speedup_vs_torch_min']:.2f}× by "
              f"best latency (goal ≥ {GOAL_ORT_VS_TORCH}×)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
