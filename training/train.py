"""``train``: fine-tune a gen2seg MAE or SD model with the instance-colouring loss, on accelerate.

    train --family mae|sd|conv (--model PATH | --model-config FILE.json) --data SPEC [SPEC ...] --output DIR
          [--steps 30000] [--batch-size 2] [--grad-accum 4] [--lr 6e-5] [--warmup 100] [--lr-total-iters 40000]
          [--mixed-precision no|fp16|bf16] [--gradient-checkpointing] [--resume PATH] [--eval-every N] [--seed 500]

Data SPECs: ``synthetic``, ``hypersim:DIR``, ``vkitti:DIR`` (trees in ``training.data``) and ``shards:DIR``
(MaskSyn/ImgSyn shards written by ``masksyn``, ``training.imgsyn``), each optionally with a mixing weight ``@W``
(defaults: hypersim 9, vkitti 1, synthetic 1, shards 1, i.e. gen2seg's 9:1). Batches are drawn whole
from one source and sharded across processes (``MixedBatchSampler``).

One CPU or GPU: ``train ...``. Several GPUs or nodes: ``accelerate launch [--multi_gpu] [--num_processes N]
[--num_machines M --machine_rank R --main_process_ip IP --main_process_port P] -m training.train ...`` or
``torchrun --nproc_per_node N -m training.train ...``; ``--batch-size`` is per process.

What is trained (docs/design.md, "Training recipe"):

* MAE: every parameter of the ``ViTMAEForPreTraining``, through the deterministic, unshuffled forward that
  inference uses (``seg_node.models.mae.Gen2SegMAE``). ``--model-config`` starts from a random initialisation
  of a transformers ``ViTMAEConfig`` JSON (with MAE's fixed sin-cos position tables).
* SD: the UNet only; VAE and text encoder frozen. Training forward as gen2seg's train.py: posterior-mean latent
  × scaling, t = 999, the empty prompt padded to 77 tokens, a zero noisy latent, so x̂0 = −√(1−ᾱ)·v̂, then the
  VAE decoder (gradients flow through it to the UNet). Evaluation uses the inference forward the saved model
  runs in the Segmenter (2-token context, x̂0 = √ᾱ·z − √(1−ᾱ)·v̂).
  ``--maskige-warmup N`` (GSS's stage 1): for the first N steps the loss is instead the squared error between
  x̂0 and the frozen VAE's latent of the target's maskige (``seg_node.processing.maskige``), without the decoder.
* conv (``seg_node.models.conv``): every parameter, through the inference forward; ``--model-config`` starts from
  a random initialisation of a conv-family ``config.json`` (``training/configs/conv_default.json``).
* Output colours are min-max scaled to 0..255 per sample inside the graph (gen2seg SD scaled per batch, which
  couples samples), with the same formula as the family's inference post-processing. ``--color-scale shift``
  shifts each output so that its minimum is black, as inference does, but scales it by a fixed ``--color-gain``
  (colour units per raw unit) instead of dividing by its range; inference's min-max is then a monotone stretch of
  what the loss saw. Models trained from scratch need it: under the min-max, a few outlier pixels can hold the range
  while every other colour shrinks to within a few units of black, which lowers the variance terms more than it
  raises the separation terms (pre-trained models, gen2seg's, do not go there). With a fixed gain, the loss
  settles where a model that cannot yet make instances uniform keeps its colours 15..20 units apart (variance
  grows with the spread, the Cauchy terms fall only as 1/d²); a lower gain makes those units a larger part of the
  raw range, which inference's min-max stretches to 0..255. The shift keeps the background at the minimum.
* ``--objective reconstruct`` trains instead to reproduce the (normalised) input image, mean squared error on the
  raw output: MAE pre-training without masking, a warm start for models trained from scratch (the instance loss
  from a random initialisation starts with all colours alike, where the Cauchy kernels of the separation terms
  are flat and give little gradient).

Optimiser and schedule (§3): AdamW (β 0.9/0.999, weight decay 1e-2 on all parameters, ε 1e-8), gradient clipping at
1.0, linear warm-up over ``--warmup`` optimiser steps, then lr·exp((s − warmup)/L · ln 0.05) with
L = ``--lr-total-iters``, held at 0.05·lr beyond L (Marigold's IterExponential), or with ``--lr-schedule constant``
the full rate after the warm-up (a from-scratch stage whose decay a later stage does). Lengths count optimiser steps: the
schedule is stepped once per step, not once per process (gen2seg scaled both lengths by the process count to
compensate for accelerate's per-process stepping).

Outputs in DIR: ``checkpoint-<step>/model`` (published layout: ``Segmenter.from_model`` loads it),
``checkpoint-<step>/state`` (optimiser, schedule, RNG; for ``--resume``), ``model/`` (the final model),
``train_log.jsonl`` (loss terms, learning rate, throughput, evaluations) and ``args.json``. ``--resume`` takes a
checkpoint folder or DIR itself (its latest checkpoint) and continues with the same data order.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seg_node.models.spec import ModelSpec
from seg_node.processing.maskige import encode_maskige
from training.augment import resize_rgb
from training.data import (
    HypersimDataset, MixedBatchSampler, MixedDataset, ShardDataset, SyntheticDataset, VKitti2Dataset, family_augment,
    labels_from_colors,
)
from training.loss import InstanceColoringLoss
from training.train_models import ConvTrainModel, MAETrainModel, SDTrainModel, color_scale
from training.sd_scratch import create_sd_checkpoint
from training.synthetic import SHAPES, SceneGenerator, scene_size

__all__ = ["main", "lr_factor", "DataSpec", "parse_data_spec"]

FINAL_LR_RATIO = 0.05
DEFAULT_WEIGHTS = {"hypersim": 9.0, "vkitti": 1.0, "synthetic": 1.0, "shards": 1.0}
FAMILY_OBJECTIVES = {"mae": ("instance", "reconstruct"), "sd": ("instance", "autoencode", "denoise"),
                     "conv": ("instance",)}
OBJECTIVES = ("instance", "reconstruct", "autoencode", "denoise")


# ------------------------------------------------------------------------------------------------- schedule


def lr_factor(step: int, warmup: int, total: int, final_ratio: float = FINAL_LR_RATIO,
              schedule: str = "exponential") -> float:
    """Marigold's IterExponential: linear warm-up, then exp((step − warmup)/total · ln final_ratio), floored; or
    (``schedule="constant"``) the full rate after the warm-up."""
    if warmup > 0 and step < warmup:
        return step / warmup
    if schedule == "constant":
        return 1.0
    if step >= total:
        return final_ratio
    return math.exp((step - warmup) / total * math.log(final_ratio))


def build_model(args: argparse.Namespace) -> MAETrainModel | SDTrainModel | ConvTrainModel:
    if args.family == "mae":
        return MAETrainModel.load(args.model, args.model_config)
    if args.family == "conv":
        return ConvTrainModel.load(args.model, args.model_config, args.unshuffle, args.deepen)
    path = args.model
    if args.model_config is not None:
        # A from-scratch SD: random weights in the published layout, written once (a resumed run finds them).
        init = args.output / "init"
        if not (init / "model_index.json").is_file():
            create_sd_checkpoint(args.model_config, init, seed=args.seed)
        path = init
    return SDTrainModel(path, args.objective, args.train_decoder, args.train_encoder)


@torch.no_grad()
def evaluate_generative(model: SDTrainModel, images: torch.Tensor, objective: str, batch: int = 8) -> dict[str, float]:
    """Held-out numbers of the SD pre-training stages: reconstruction PSNR (dB, 0..255 scale) for ``autoencode``,
    the mean v-prediction loss at fixed draws of t and noise for ``denoise``."""
    values = []
    generator = torch.Generator(device=images.device).manual_seed(0)
    for i in range(0, len(images), batch):
        x = images[i:i + batch]
        if objective == "autoencode":
            recon = model.autoencode(x, sample=False)[0].clamp(-1, 1)
            mse = ((recon - x) * 127.5).pow(2).flatten(1).mean(1)
            values.append(10 * torch.log10(255.0**2 / mse.clamp_min(1e-6)))
        else:
            values.append(model.denoise_loss(x, generator))
    mean = float(torch.cat(values).mean())
    return {"psnr_db": round(mean, 3)} if objective == "autoencode" else {"denoise_loss": round(mean, 6)}


class _InferenceView(nn.Module):
    """The inference forward of a training model, for evaluation through a Segmenter."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images, inference=True)


# ----------------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DataSpec:
    source: str  # hypersim | vkitti | synthetic
    path: str | None
    weight: float


def parse_data_spec(text: str) -> DataSpec:
    """``synthetic``, ``hypersim:DIR`` or ``vkitti:DIR``, optionally followed by ``@WEIGHT``."""
    body, weight = text, None
    if "@" in text:
        body, _, w = text.rpartition("@")
        try:
            weight = float(w)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: the weight after @ must be a number") from None
        if weight < 0:
            raise argparse.ArgumentTypeError(f"{text!r}: the weight must be >= 0")
    source, _, path = body.partition(":")
    if source not in DEFAULT_WEIGHTS:
        raise argparse.ArgumentTypeError(f"{text!r}: the source must be synthetic, hypersim:DIR, vkitti:DIR or "
                                         "shards:DIR")
    if (source == "synthetic") != (path == ""):
        raise argparse.ArgumentTypeError(f"{text!r}: " + ("synthetic takes no folder" if source == "synthetic"
                                                           else f"{source} needs a folder ({source}:DIR)"))
    return DataSpec(source, path or None, DEFAULT_WEIGHTS[source] if weight is None else weight)


def _shapes(text: str) -> tuple[str, ...]:
    names = tuple(s for s in text.split(",") if s)
    unknown = set(names) - set(SHAPES)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown shapes {sorted(unknown)} (known: {', '.join(SHAPES)})")
    return names


def build_datasets(specs: Sequence[DataSpec], family: str, spec: ModelSpec, args: argparse.Namespace) -> list[Any]:
    out = []
    share = args.target_min_share
    for d in specs:
        size = spec.input_hw if family == "mae" else args.train_size
        if d.source == "hypersim":
            out.append(HypersimDataset(d.path, family_augment("hypersim", family, size, share), args.hypersim_instances))
        elif d.source == "vkitti":
            out.append(VKitti2Dataset(d.path, family_augment("vkitti", family, size, share)))
        elif d.source == "shards":  # MaskSyn/ImgSyn pairs (training.imgsyn), resized as synthetic scenes are
            out.append(ShardDataset(d.path, family_augment("synthetic", family, size or args.synthetic_size, share)))
        else:
            generator = SceneGenerator(*args.synthetic_size, exclude=args.synthetic_exclude, seed=args.seed,
                                       randomize=args.synthetic_randomize)
            augment = family_augment("synthetic", family, size or args.synthetic_size, share)
            out.append(SyntheticDataset(generator, args.synthetic_scenes, augment))
    return out


# -------------------------------------------------------------------------------------------------- training


class TrainerState:
    """Where training is: optimiser steps done, epoch and batches of it consumed (saved with each checkpoint)."""

    def __init__(self) -> None:
        self.step = self.epoch = self.batch = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step, self.epoch, self.batch = int(state["step"]), int(state["epoch"]), int(state["batch"])


def _resume_folder(path: Path) -> Path:
    if (path / "trainer.json").is_file():
        return path
    checkpoints = sorted(path.glob("checkpoint-*/trainer.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not checkpoints:
        raise FileNotFoundError(f"{path}: neither a checkpoint (trainer.json) nor a folder with checkpoint-*/")
    return checkpoints[-1].parent


def _maskiges(targets: torch.Tensor) -> torch.Tensor:
    """uint8 N×3×H×W instance colours → their maskiges, N×3×H×W in [−1, 1] (the VAE's input range)."""
    out = [encode_maskige(labels_from_colors(t.permute(1, 2, 0).numpy())) for t in targets]
    return torch.from_numpy(np.stack(out).transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0)


def _normalise(rgb: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    mean = torch.tensor(spec.mean, device=rgb.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=rgb.device).view(1, 3, 1, 1)
    return (rgb.float() / 255.0 - mean) / std


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="train", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--family", choices=("mae", "sd", "conv"), required=True)
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", help="checkpoint folder to start from (published gen2seg / HF layout)")
    model.add_argument("--model-config", help="start from random weights: a transformers ViTMAEConfig JSON (MAE) or "
                       "an SD component-config JSON (training.sd_scratch, e.g. training/configs/sd_default.json) or a "
                       "conv-family config.json (seg_node.models.conv, e.g. training/configs/conv_default.json)")
    p.add_argument("--unshuffle", type=int, help="conv, with --model: read the image pixel-unshuffled by this "
                   "factor (seg_node.models.conv), starting from --model's colours on the area-downscaled image")
    p.add_argument("--deepen", type=int, help="conv, with --model: add a level of this many channels below the "
                   "deepest (a receptive field twice as large), starting near --model's colours")
    p.add_argument("--data", nargs="+", type=parse_data_spec, required=True,
                   help="synthetic | hypersim:DIR | vkitti:DIR | shards:DIR (masksyn), each optionally @WEIGHT")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--steps", type=int, default=30000, help="optimiser steps")
    p.add_argument("--batch-size", type=int, default=2, help="per process")
    p.add_argument("--grad-accum", type=int, default=4)
    p.add_argument("--lr", type=float, default=6e-5)
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--lr-total-iters", type=int, default=40000)
    p.add_argument("--lr-schedule", choices=("exponential", "constant"), default="exponential",
                   help="after the warm-up: IterExponential decay over --lr-total-iters, or the constant --lr")
    p.add_argument("--separation-weight", type=float, default=10.0, help="w of w/√|S| (gen2seg: 10; 30 for SD2?)")
    p.add_argument("--color-scale", "--colour-scale", choices=("minmax", "shift"), default="minmax",
                   help="per-sample min-max to 0..255 (gen2seg), or min-shift with a fixed gain (models from scratch)")
    p.add_argument("--color-gain", "--colour-gain", type=float, default=127.5,
                   help="--color-scale shift: color units per unit of raw output")
    p.add_argument("--objective", choices=OBJECTIVES, default="instance",
                   help="instance: the instance-colouring loss; reconstruct (MAE): input reconstruction; SD stages: "
                        "autoencode (1: the VAE), denoise (2: the UNet as a latent diffusion model)")
    p.add_argument("--train-decoder", action="store_true", help="SD instance stage: fine-tune the VAE decoder too")
    p.add_argument("--train-encoder", action="store_true",
                   help="SD instance stage: fine-tune the VAE encoder too (with --train-decoder: the whole model)")
    p.add_argument("--maskige-warmup", type=int, default=0, metavar="STEPS",
                   help="SD instance stage: for the first STEPS steps regress the latent of the target's maskige "
                        "(GSS stage 1, seg_node.processing.maskige) instead of the instance loss")
    p.add_argument("--kl-weight", type=float, default=1e-4, help="autoencode: weight of the KL term")
    p.add_argument("--train-size", type=scene_size,
                   help="SD and conv: HxW the training frames are resized to (default: --synthetic-size)")
    p.add_argument("--target-min-share", type=float, metavar="SHARE",
                   help="when frames are shrunk, each target pixel takes the instance covering most of it, or "
                        "background where none covers SHARE of it (default: nearest neighbour, which breaks "
                        "objects 1-2 px wide into dashes)")
    p.add_argument("--eval-resolution", type=int, default=0,
                   help="instance evaluation: the Segmenter's processing_resolution (0 = the long edge of --eval-size)")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--resume", type=Path, help="a checkpoint folder, or an output folder (its latest checkpoint)")
    p.add_argument("--save-every", type=int, default=1000)
    p.add_argument("--keep-checkpoints", type=int, default=2, help="most recent checkpoints kept (0 = all)")
    p.add_argument("--eval-every", type=int, default=1000, help="0 = only at the end")
    # --eval-families: the old spelling, still in scripts and users' commands
    p.add_argument("--eval-shapes", "--eval-families", type=_shapes, default=("cable", "blob"),
                   help="comma-separated synthetic shapes to evaluate on")
    p.add_argument("--eval-scenes", type=int, default=50)
    p.add_argument("--eval-size", type=scene_size, default=(240, 320), help="HxW of evaluation frames")
    p.add_argument("--synthetic-size", type=scene_size, default=(240, 320), help="HxW synthetic scenes are drawn at")
    p.add_argument("--synthetic-scenes", type=int, default=1_000_000, help="distinct synthetic training scenes")
    p.add_argument("--synthetic-exclude", type=_shapes, default=("cable", "blob"),
                   help="comma-separated shapes held out of training")
    p.add_argument("--synthetic-randomize", action="store_true",
                   help="domain randomisation of the synthetic scenes (backgrounds, clutter, scale, clusters, camera "
                        "crops, photometry; training.randomize)")
    p.add_argument("--hypersim-instances", help="instance PNG root for hypersim data (default DIR/instance-rgb)")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes per training process")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=500)
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "grad_accum", "lr_total_iters", "save_every", "log_every", "eval_scenes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.eval_every < 0 or args.workers < 0 or args.keep_checkpoints < 0:
        p.error("--warmup, --eval-every, --workers and --keep-checkpoints must be >= 0")
    if args.color_gain <= 0:
        p.error("--color-gain must be > 0")
    if args.target_min_share is not None and not 0 < args.target_min_share <= 1:
        p.error("--target-min-share must lie in (0, 1]")
    if args.objective not in FAMILY_OBJECTIVES[args.family]:
        p.error(f"--objective {args.objective} is not for --family {args.family} "
                f"(choose from {', '.join(FAMILY_OBJECTIVES[args.family])})")
    if args.kl_weight < 0 or args.eval_resolution < 0 or args.maskige_warmup < 0:
        p.error("--kl-weight, --eval-resolution and --maskige-warmup must be >= 0")
    if args.maskige_warmup and (args.family, args.objective) != ("sd", "instance"):
        p.error("--maskige-warmup is for --family sd --objective instance")
    if args.unshuffle is not None and (args.family != "conv" or args.model is None or not 1 <= args.unshuffle <= 8):
        p.error("--unshuffle is for --family conv with --model, from 1 to 8 (a --model-config sets 'unshuffle' itself)")
    if args.deepen is not None and (args.family != "conv" or args.model is None or args.deepen < 1):
        p.error("--deepen is for --family conv with --model, a positive width (a --model-config sets 'widths' itself)")
    return args


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run training as configured; returns the final evaluation and where the model went."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm import tqdm

    from training.evaluate import evaluate_scenes, evaluation_scenes, segmenter_for_module

    accelerator = Accelerator(mixed_precision=args.mixed_precision, gradient_accumulation_steps=args.grad_accum)
    main_process = accelerator.is_main_process
    set_seed(args.seed)
    output: Path = args.output
    if main_process:
        output.mkdir(parents=True, exist_ok=True)
        record = {k: (str(v) if isinstance(v, Path) else [vars(x) for x in v] if k == "data" else v)
                  for k, v in vars(args).items()}
        (output / "args.json").write_text(json.dumps(record, indent=2, default=str) + "\n")

    model = build_model(args)
    spec = model.spec
    if args.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    datasets = build_datasets(args.data, args.family, spec, args)
    sampler = MixedBatchSampler([len(d) for d in datasets], [d.weight for d in args.data], args.batch_size,
                                accelerator.num_processes, accelerator.process_index, seed=args.seed)
    # The sampler shards by rank already, so the loader is not passed through accelerator.prepare.
    loader = torch.utils.data.DataLoader(MixedDataset(datasets), batch_sampler=sampler, num_workers=args.workers,
                                         pin_memory=accelerator.device.type == "cuda")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), weight_decay=args.weight_decay, eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, args.warmup, args.lr_total_iters, schedule=args.lr_schedule))
    model, optimizer = accelerator.prepare(model, optimizer)
    progress = TrainerState()
    accelerator.register_for_checkpointing(scheduler, progress)
    if args.resume is not None:
        folder = _resume_folder(args.resume)
        accelerator.load_state(str(folder / "state"))
        progress.load_state_dict(json.loads((folder / "trainer.json").read_text()))
        accelerator.print(f"resumed from {folder} at step {progress.step}")

    loss_fn = InstanceColoringLoss(separation_weight=args.separation_weight)
    eval_scenes = evaluation_scenes(args.eval_shapes, args.eval_scenes, args.eval_size) if main_process else []
    log_path = output / "train_log.jsonl"

    def log(record: dict[str, Any]) -> None:
        if main_process:
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    eval_images = None
    if main_process and args.objective in ("autoencode", "denoise"):
        hw = args.train_size or args.synthetic_size
        eval_images = torch.stack([_normalise(torch.from_numpy(resize_rgb(s.rgb, hw).transpose(2, 0, 1))[None], spec)[0]
                                   for s in eval_scenes]).to(accelerator.device)

    def evaluate() -> dict[str, Any]:
        result: dict[str, Any] = {}
        if main_process:
            inner = accelerator.unwrap_model(model)
            inner.eval()
            if eval_images is not None:
                result = evaluate_generative(inner, eval_images, args.objective)
                tqdm.write(f"step {progress.step}: held-out {','.join(args.eval_shapes)} "
                           + ", ".join(f"{k} {v}" for k, v in result.items()))
            else:
                segmenter = segmenter_for_module(_InferenceView(inner), spec, accelerator.device,
                                                 processing_resolution=args.eval_resolution or max(args.eval_size))
                result = evaluate_scenes(segmenter, eval_scenes)
                tqdm.write(f"step {progress.step}: held-out {','.join(args.eval_shapes)} single-point mIoU "
                           f"{result['miou_1']}, AP {result['AP']}, AP50 {result['AP50']} ({result['instances']} instances)")
            inner.train()
            log({"step": progress.step, "eval": result, "shapes": list(args.eval_shapes)})
        accelerator.wait_for_everyone()
        return result

    def save(step: int) -> Path:
        folder = output / f"checkpoint-{step}"
        accelerator.save_state(str(folder / "state"))
        if main_process:
            inner = accelerator.unwrap_model(model)
            if args.objective == "autoencode" and eval_images is not None:
                inner.calibrate_scaling(eval_images)
            inner.save(folder / "model")
            (folder / "trainer.json").write_text(json.dumps(progress.state_dict()) + "\n")
            if args.keep_checkpoints:
                old = sorted(output.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
                for stale in old[:-args.keep_checkpoints]:
                    shutil.rmtree(stale)
        accelerator.wait_for_everyone()
        return folder

    model.train()
    bar = tqdm(total=args.steps, initial=progress.step, disable=not main_process, desc="train", unit="step")
    window: list[dict[str, float]] = []
    t_last, samples = time.perf_counter(), 0
    while progress.step < args.steps:
        sampler.set_epoch(progress.epoch, skip_batches=progress.batch)
        for batch in loader:
            progress.batch += 1
            with accelerator.accumulate(model):
                images = _normalise(batch["rgb"].to(accelerator.device, non_blocking=True), spec)
                warmup = progress.step < args.maskige_warmup
                raw = model(images, maskige=_maskiges(batch["target"]).to(accelerator.device)) if warmup else model(images)
                if warmup:
                    loss = raw.mean()
                    parts = {"loss": float(loss.detach()), "maskige_latent": float(loss.detach())}
                elif args.objective == "reconstruct":
                    loss = torch.nn.functional.mse_loss(raw.float(), images)
                    parts = {"loss": float(loss.detach())}
                elif args.objective == "autoencode":
                    recon, kl = raw
                    l1 = (recon - images.float()).abs().mean()
                    loss = l1 + args.kl_weight * kl
                    parts = {"loss": float(loss.detach()), "l1": float(l1.detach()), "kl": float(kl.detach())}
                elif args.objective == "denoise":
                    loss = raw.mean()
                    parts = {"loss": float(loss.detach())}
                else:
                    target = batch["target"].to(accelerator.device, non_blocking=True)
                    terms = loss_fn.terms(color_scale(raw, args.family, args.color_scale, args.color_gain), target, batch["no_bg"])
                    loss = terms.per_sample.mean()
                    parts = {"loss": float(loss.detach()), "variance": float(terms.variance.detach().mean()),
                             "separation": float(terms.separation.detach().mean()),
                             "mean_repulsion": float(terms.mean_repulsion.detach().mean())}
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            samples += len(images)
            window.append(parts)
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            progress.step += 1
            bar.update(1)
            if progress.step % args.log_every == 0 or progress.step == args.steps:
                # A window can straddle the end of the maskige warm-up, whose steps log other terms.
                keys = dict.fromkeys(k for w in window for k in w)
                means = {k: float(np.mean([w[k] for w in window if k in w])) for k in keys}
                means = {k: float(accelerator.reduce(torch.tensor(v, device=accelerator.device), "mean"))
                         for k, v in means.items()}
                now = time.perf_counter()
                record = {"step": progress.step, "epoch": progress.epoch, **means, "lr": scheduler.get_last_lr()[0],
                          "samples_per_s": samples * accelerator.num_processes / (now - t_last)}
                log(record)
                bar.set_postfix(loss=f"{means['loss']:.3f}", lr=f"{record['lr']:.2e}")
                window, t_last, samples = [], now, 0
            if args.eval_every and progress.step % args.eval_every == 0 and progress.step < args.steps:
                evaluate()
            if progress.step % args.save_every == 0 and progress.step < args.steps:
                save(progress.step)
            if progress.step >= args.steps:
                break
        else:
            progress.epoch, progress.batch = progress.epoch + 1, 0
    bar.close()
    save(progress.step)
    final = evaluate()
    if main_process:
        inner = accelerator.unwrap_model(model)
        if args.objective == "autoencode" and eval_images is not None:
            inner.calibrate_scaling(eval_images)
        inner.save(output / "model")
        print(f"wrote the model to {output / 'model'} (checkpoints in {output}/checkpoint-*, log {log_path})")
    accelerator.end_training()
    return {"model": str(output / "model"), "eval": final, "step": progress.step}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        train(args)
    except FileNotFoundError as exc:  # a missing or mismatched model (CheckpointError) or dataset
        print(f"train: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
