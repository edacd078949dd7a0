"""ImgSyn (SegGen): images for MaskSyn layouts, written as dataset shards that ``train`` mixes in (``shards:DIR@W``).

    masksyn --output DIR [--count 500] [--source synthetic | hypersim:DIR | vkitti:DIR] [--bank-frames 200]
            [--synthetic-exclude SHAPES] [--renderer copy_paste|procedural|controlnet] [--controlnet PATH --sd PATH]
            [--prompt TEXT] [--steps 20] [--guidance 7.5] [--size 240x320] [--objects 4 14] [--scale 0.5 1.5]
            [--rotation 180] [--seed 0]

Renderers:

* ``copy_paste`` (default, no weights): the objects' own source pixels, recomposed, over a procedural background;
* ``procedural`` (no weights): each object filled with a procedural texture and dome shading over a procedural
  background, so a model cannot key on source appearance at all;
* ``controlnet`` (the user's weights): a mask-conditioned diffusers ``StableDiffusionControlNetPipeline``, a
  ControlNet (``ControlNetModel`` folder, e.g. trained on maskiges or segmentation maps) on the layout's maskige
  (``seg_node.processing.maskige``) with the components of a local SD checkpoint folder. Nothing is downloaded.

A shard is a folder: ``NNNNNN_rgb.png``, ``NNNNNN_labels.png`` (uint16, 0 = background) and ``manifest.json``
with the settings and, per sample, its renderer, seed and every object's provenance (source frame and instance,
scale, angle, flip, visible pixels).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from seg_node.processing.maskige import encode_maskige
from training import randomize
from training.masksyn import Layout, LayoutParams, MaskBank, compose_layout
from training.synthetic import scene_size

__all__ = ["ControlNetRenderer", "procedural_background", "render_procedural", "write_shard", "main", "MANIFEST"]

MANIFEST = "manifest.json"
RENDERERS = ("copy_paste", "procedural", "controlnet")


def _color(rng: np.random.Generator) -> np.ndarray:
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(0.1, 1) * 255, rng.uniform(0.25, 1) * 255]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255.0


def _textures(rng: np.random.Generator) -> list[np.ndarray]:
    """Smooth noise tiles at a few scales (mixing weights in 0..1) for ``randomize.background``."""
    return [cv2.resize(rng.random((k, k)).astype(np.float32), (64, 64), interpolation=cv2.INTER_CUBIC).clip(0, 1)
            for k in (3, 6, 12, 24)]


def procedural_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """uint8 H×W×3: a gradient, stripes, checks or noise texture in two colours (``training.randomize``)."""
    # randomize.background draws pattern periods from the frame size; small frames are cut from a 32 px one.
    rgb = randomize.background(rng, max(h, 32), max(w, 32), _textures(rng), _color)[:h, :w]
    return (rgb * 255).clip(0, 255).astype(np.uint8)


def render_procedural(layout: Layout, rng: np.random.Generator) -> np.ndarray:
    """uint8 H×W×3: every object a textured, dome-shaded fill of its visible mask over a procedural background."""
    h, w = layout.labels.shape
    out = procedural_background(rng, h, w).astype(np.float32)
    for k in range(1, int(layout.labels.max()) + 1):
        mask = layout.labels == k
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        fill = procedural_background(rng, y1 - y0, x1 - x0).astype(np.float32)
        dist = cv2.distanceTransform(np.pad(mask[y0:y1, x0:x1], 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
        shade = 0.55 + 0.45 * np.sqrt(dist / max(float(dist.max()), 1.0))  # darker towards the rim, like a dome
        region = out[y0:y1, x0:x1]
        sel = mask[y0:y1, x0:x1]
        region[sel] = (fill * shade[..., None])[sel]
    return cv2.GaussianBlur(out, (0, 0), 0.6).clip(0, 255).astype(np.uint8)


class ControlNetRenderer:
    """A ControlNet (diffusers ``ControlNetModel`` folder) plus a local SD checkpoint folder (``vae/``, ``unet/``,
    ``text_encoder/``, ``tokenizer/``, ``scheduler/``), run as ``StableDiffusionControlNetPipeline`` on maskiges."""

    def __init__(self, controlnet: str | Path, sd: str | Path, prompt: str = "objects on a table", steps: int = 20,
                 guidance: float = 7.5, device: str | None = None) -> None:
        import diffusers
        import torch
        from diffusers import AutoencoderKL, ControlNetModel, StableDiffusionControlNetPipeline, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        sd = Path(sd)
        for path, what in ((Path(controlnet) / "config.json", "a ControlNetModel folder"),
                           (sd / "scheduler" / "scheduler_config.json", "an SD checkpoint folder")):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing; expected {what} (diffusers layout)")
        scheduler_class = json.loads((sd / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
        local = {"local_files_only": True}
        self.pipe = StableDiffusionControlNetPipeline(
            vae=AutoencoderKL.from_pretrained(str(sd), subfolder="vae", **local),
            text_encoder=CLIPTextModel.from_pretrained(str(sd), subfolder="text_encoder", **local),
            tokenizer=CLIPTokenizer.from_pretrained(str(sd), subfolder="tokenizer", **local),
            unet=UNet2DConditionModel.from_pretrained(str(sd), subfolder="unet", **local),
            controlnet=ControlNetModel.from_pretrained(str(controlnet), **local),
            scheduler=getattr(diffusers, scheduler_class).from_pretrained(str(sd), subfolder="scheduler", **local),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.prompt, self.steps, self.guidance = prompt, steps, guidance
        self.sources = {"controlnet": str(controlnet), "sd": str(sd)}

    def __call__(self, layout: Layout, seed: int) -> np.ndarray:
        import torch
        from PIL import Image

        h, w = layout.labels.shape
        condition = Image.fromarray(encode_maskige(layout.labels))
        generator = torch.Generator(device=self.device).manual_seed(seed)
        image = self.pipe(self.prompt, image=condition, height=h, width=w, num_inference_steps=self.steps,
                          guidance_scale=self.guidance, generator=generator, output_type="np").images[0]
        return (np.asarray(image) * 255).round().clip(0, 255).astype(np.uint8)


def write_shard(output: Path, bank: MaskBank, params: LayoutParams, count: int, renderer: str, seed: int = 0,
                controlnet: ControlNetRenderer | None = None, settings: dict[str, Any] | None = None,
                progress: Any = None) -> Path:
    """``count`` new layouts with images into the shard folder ``output``; returns its manifest path."""
    if renderer not in RENDERERS:
        raise ValueError(f"renderer must be one of {RENDERERS}, got {renderer!r}")
    if renderer == "controlnet" and controlnet is None:
        raise ValueError("the controlnet renderer needs --controlnet and --sd weights")
    output.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        h, w = params.size
        layout = compose_layout(bank, params, rng, procedural_background(rng, h, w))
        if renderer == "procedural":
            rgb = render_procedural(layout, rng)
        elif renderer == "controlnet":
            rgb = controlnet(layout, seed * 1_000_003 + i)
        else:
            rgb = layout.rgb
        stem = f"{i:06d}"
        cv2.imwrite(str(output / f"{stem}_rgb.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(output / f"{stem}_labels.png"), layout.labels)
        samples.append({"image": f"{stem}_rgb.png", "labels": f"{stem}_labels.png", "renderer": renderer,
                        "seed": [seed, i], "objects": layout.objects})
        if progress is not None:
            progress.update(1)
    manifest = {"kind": "seg_node.masksyn", "version": 1, "renderer": renderer, "size": list(params.size),
                "layout": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(params).items()},
                "bank_objects": len(bank), **(settings or {}),
                **({"weights": controlnet.sources} if controlnet is not None else {}), "samples": samples}
    path = output / MANIFEST
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return path


def _bank(source: str, frames: int, size: tuple[int, int], seed: int, exclude: Sequence[str] = ()) -> MaskBank:
    """A mask bank from a data spec the trainer reads (``synthetic``, ``hypersim:DIR``, ``vkitti:DIR``); ``exclude``:
    synthetic shapes kept out (held-out shapes must not leak into training data)."""
    from training.augment import Augment
    from training.data import HypersimDataset, SyntheticDataset, VKitti2Dataset
    from training.synthetic import SceneGenerator

    kind, _, path = source.partition(":")
    augment = Augment(size, flip=0.0)
    if kind == "synthetic":
        dataset: Any = SyntheticDataset(SceneGenerator(*size, exclude=exclude, seed=seed + 17), frames, augment)
    elif kind == "hypersim" and path:
        dataset = HypersimDataset(path, augment)
    elif kind == "vkitti" and path:
        dataset = VKitti2Dataset(path, Augment(size, "crop", flip=0.0))
    else:
        raise ValueError(f"{source!r}: the source must be synthetic, hypersim:DIR or vkitti:DIR")
    return MaskBank.from_dataset(dataset, frames, source)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="masksyn", description="MaskSyn layouts + ImgSyn images as a training shard.")
    p.add_argument("--output", type=Path, required=True, help="shard folder to write")
    p.add_argument("--count", type=int, default=500)
    p.add_argument("--source", default="synthetic",
                   help="where object masks come from: synthetic | hypersim:DIR | vkitti:DIR")
    p.add_argument("--bank-frames", type=int, default=200, help="source frames cut into the mask bank")
    p.add_argument("--synthetic-exclude", default="", help="synthetic source: comma-separated shapes left out")
    p.add_argument("--renderer", choices=RENDERERS, default="copy_paste")
    p.add_argument("--controlnet", help="ControlNetModel folder (controlnet renderer)")
    p.add_argument("--sd", help="SD checkpoint folder (controlnet renderer)")
    p.add_argument("--prompt", default="objects on a table")
    p.add_argument("--steps", type=int, default=20, help="controlnet renderer: denoising steps")
    p.add_argument("--guidance", type=float, default=7.5, help="controlnet renderer: classifier-free guidance scale")
    p.add_argument("--size", type=scene_size, default=(240, 320))
    p.add_argument("--objects", type=int, nargs=2, default=(4, 14), metavar=("MIN", "MAX"), help="objects per layout")
    p.add_argument("--scale", type=float, nargs=2, default=(0.5, 1.5), metavar=("MIN", "MAX"))
    p.add_argument("--rotation", type=float, default=180.0, help="max rotation, degrees either way")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.count < 1 or args.bank_frames < 1:
        p.error("--count and --bank-frames must be >= 1")
    if (args.renderer == "controlnet") != bool(args.controlnet and args.sd):
        p.error("--renderer controlnet needs --controlnet and --sd (and they are only for it)")
    from tqdm import tqdm

    try:
        params = LayoutParams(size=args.size, objects=tuple(args.objects), scale=tuple(args.scale),
                              rotation=args.rotation)
        renderer = ControlNetRenderer(args.controlnet, args.sd, args.prompt, args.steps, args.guidance) \
            if args.controlnet else None
        print(f"cutting object masks from {args.source} ({args.bank_frames} frames)", file=sys.stderr)
        exclude = tuple(s for s in args.synthetic_exclude.split(",") if s)
        bank = _bank(args.source, args.bank_frames, args.size, args.seed, exclude)
    except (OSError, ValueError) as exc:
        print(f"masksyn: {exc}", file=sys.stderr)
        return 2
    with tqdm(total=args.count, desc=f"masksyn ({args.renderer})", unit="sample") as bar:
        manifest = write_shard(args.output, bank, params, args.count, args.renderer, args.seed, renderer,
                               {"source": args.source, "bank_frames": args.bank_frames,
                                "synthetic_exclude": list(exclude)}, bar)
    print(f"wrote {args.count} samples ({len(bank)} objects in the bank) to {args.output}, manifest {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
