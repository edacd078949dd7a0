"""The networks ``train`` optimises, each wrapped so that its forward is the objective's (through ``forward``, so that
DDP sees it) and its inference forward is the Segmenter's: ``MAETrainModel`` (gen2seg MAE), ``SDTrainModel``
(gen2seg SD, with the generative pre-training stages) and ``ConvTrainModel`` (the conv family), and ``color_scale``, which maps their raw output to the loss's
colours as inference scales it."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seg_node.models.checkpoints import CheckpointError, inspect_checkpoint
from seg_node.models.conv import Gen2SegConv, check_config, load_conv, unshuffle_factor
from seg_node.models.mae import PREPROCESSOR_CONFIG, Gen2SegMAE, mae_spec
from seg_node.models.sd import NUM_TRAIN_TIMESTEPS, TIMESTEP
from seg_node.models.spec import IMAGENET_MEAN, IMAGENET_STD, SD_MEAN, SD_STD, ModelSpec

NORM_EPS = 1e-5


def color_scale(raw: torch.Tensor, family: str, mode: str = "minmax", gain: float = 127.5) -> torch.Tensor:
    """Raw network output → colours for the loss: per-sample min-max to 0..255 as ``seg_node.processing.model_io`` scales it
    at inference, or (``mode="shift"``) shifted so that its minimum is 0, as at inference, and multiplied by a
    fixed ``gain`` instead of divided by its range. Differentiable."""
    if mode == "shift":
        return (raw.float() - raw.float().flatten(1).amin(1)[:, None, None, None]) * gain
    flat = raw.float().flatten(1)
    lo = flat.amin(1).abs()[:, None, None, None]
    if family == "mae":
        hi = flat.amax(1).abs()[:, None, None, None]
        return (raw.float() + lo) / (hi + lo + NORM_EPS) * 255.0
    shifted = raw.float() + lo
    sflat = shifted.flatten(1)
    return shifted / (sflat.amax(1).abs() + sflat.amin(1).abs() + NORM_EPS)[:, None, None, None] * 255.0


def sincos_position_table(dim: int, grid: int) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos position table with a zero CLS row: (1, 1 + grid², dim)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    gh, gw = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij")
    out_w, out_h = torch.outer(gw.flatten(), omega), torch.outer(gh.flatten(), omega)
    table = torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], 1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), table])[None].float()


class MAETrainModel(nn.Module):
    """A ``ViTMAEForPreTraining`` trained through ``Gen2SegMAE``'s deterministic forward (the inference one)."""

    family = "mae"

    def __init__(self, hf_model: Any, spec: ModelSpec, source: Path | None) -> None:
        super().__init__()
        self.net = Gen2SegMAE(hf_model, spec)
        self._hf = [hf_model]  # the same parameters, kept out of the module tree (one state-dict key per tensor)
        self.source = source
        self.spec = spec

    @classmethod
    def load(cls, path: str | Path | None, config_file: str | Path | None) -> MAETrainModel:
        from transformers import ViTMAEConfig, ViTMAEForPreTraining

        if config_file is not None:
            config = ViTMAEConfig.from_json_file(str(config_file))
            config.mask_ratio = 0.0
            model = ViTMAEForPreTraining(config)
            grid = config.image_size // config.patch_size
            with torch.no_grad():
                # transformers 5 leaves the fixed tables at zero in a fresh model; MAE's are sin-cos.
                model.vit.embeddings.position_embeddings.copy_(sincos_position_table(config.hidden_size, grid))
                model.decoder.decoder_pos_embed.copy_(sincos_position_table(config.decoder_hidden_size, grid))
            return cls(model, mae_spec(config), None)
        info = inspect_checkpoint(path)  # type: ignore[arg-type]
        if info.kind != "mae":
            raise CheckpointError(f"{info.path}: a gen2seg {info.kind.upper()} model, but --family mae was given")
        model = ViTMAEForPreTraining.from_pretrained(str(info.path), local_files_only=True, dtype=torch.float32,
                                                     attn_implementation="sdpa")
        model.config.mask_ratio = 0.0
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        pre = info.path / PREPROCESSOR_CONFIG
        if pre.is_file():
            raw = json.loads(pre.read_text())
            mean, std = raw.get("image_mean", mean), raw.get("image_std", std)
        return cls(model, mae_spec(model.config, mean, std), info.path)

    def enable_gradient_checkpointing(self) -> None:
        self._hf[0].gradient_checkpointing_enable()

    def forward(self, images: torch.Tensor, inference: bool = False) -> torch.Tensor:
        return self.net(images)

    def save(self, folder: Path) -> None:
        """``config.json`` + ``model.safetensors`` + ``preprocessor_config.json``: the published MAE layout."""
        folder.mkdir(parents=True, exist_ok=True)
        self._hf[0].save_pretrained(str(folder), safe_serialization=True)
        size = self.spec.input_hw
        assert size is not None
        preprocessor = {"image_processor_type": "ViTImageProcessor", "do_normalize": True, "do_rescale": True,
                        "do_resize": True, "image_mean": list(self.spec.mean), "image_std": list(self.spec.std),
                        "resample": 2, "rescale_factor": 1 / 255, "size": {"height": size[0], "width": size[1]}}
        if self.source is not None and (self.source / PREPROCESSOR_CONFIG).is_file():
            preprocessor = json.loads((self.source / PREPROCESSOR_CONFIG).read_text())
        (folder / PREPROCESSOR_CONFIG).write_text(json.dumps(preprocessor, indent=2) + "\n")


class SDTrainModel(nn.Module):
    """gen2seg SD for training. Which part trains depends on the objective (gen2seg's recipe at small scale):

    * ``autoencode`` (stage 1): the VAE as an image autoencoder (L1 + KL), the UNet untouched;
    * ``denoise`` (stage 2): the UNet as an unconditioned latent diffusion model (v-prediction at random t), VAE frozen;
    * ``instance`` (stage 3, gen2seg proper): the UNet under the instance-colouring loss through the frozen decoder
      (``train_decoder`` also fine-tunes the decoder; ``train_encoder`` the encoder too, end to end).
    The text encoder is used once, for the empty-prompt context."""

    family = "sd"

    def __init__(self, path: str | Path, objective: str = "instance", train_decoder: bool = False,
                 train_encoder: bool = False) -> None:
        super().__init__()
        import diffusers
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        info = inspect_checkpoint(path)
        if info.kind != "sd":
            raise CheckpointError(f"{info.path}: a gen2seg {info.kind.upper()} model, but --family sd was given")
        root = self.source = info.path
        scheduler_config = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
        scheduler = getattr(diffusers, scheduler_config["_class_name"]).from_pretrained(
            str(root), subfolder="scheduler", local_files_only=True)
        if scheduler.config.num_train_timesteps != NUM_TRAIN_TIMESTEPS:
            raise CheckpointError(f"{root}/scheduler: gen2seg uses {NUM_TRAIN_TIMESTEPS} train timesteps")
        self.prediction_type = scheduler.config.prediction_type
        if self.prediction_type not in ("v_prediction", "epsilon"):
            raise CheckpointError(f"{root}/scheduler: prediction_type {self.prediction_type!r} is not trainable here")
        alpha = scheduler.alphas_cumprod[TIMESTEP].float()
        self.sqrt_alpha, self.sqrt_one_minus_alpha = float(alpha**0.5), float((1 - alpha) ** 0.5)
        tokenizer = CLIPTokenizer.from_pretrained(str(root), subfolder="tokenizer", local_files_only=True)
        text_encoder = CLIPTextModel.from_pretrained(str(root), subfolder="text_encoder", local_files_only=True)
        with torch.no_grad():
            # Training used the empty prompt padded to the tokenizer's length (77); inference, unpadded (2 tokens).
            padded = tokenizer("", padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                               return_tensors="pt").input_ids
            bare = tokenizer("", padding="do_not_pad", return_tensors="pt").input_ids
            context_train = text_encoder.eval()(padded).last_hidden_state
            context_infer = text_encoder(bare).last_hidden_state
        self.register_buffer("context_train", context_train.float().clone(), persistent=False)
        self.register_buffer("context_infer", context_infer.float().clone(), persistent=False)
        self.objective = objective
        self.vae = AutoencoderKL.from_pretrained(str(root), subfolder="vae", local_files_only=True)
        self.unet = UNet2DConditionModel.from_pretrained(str(root), subfolder="unet", local_files_only=True)
        self.vae.requires_grad_(objective == "autoencode")
        if train_decoder:
            self.vae.decoder.requires_grad_(True)
            self.vae.post_quant_conv.requires_grad_(True)
        # A small VAE trained briefly as an autoencoder keeps little of what grouping needs (thin gaps, edges
        # between same-coloured objects); fine-tuning its encoder under the instance loss lets it keep them.
        self.train_encoder = train_encoder and objective == "instance"
        if self.train_encoder:
            self.vae.encoder.requires_grad_(True)
            self.vae.quant_conv.requires_grad_(True)
        self.unet.requires_grad_(objective != "autoencode")
        self.trains_vae = objective == "autoencode" or train_decoder or self.train_encoder
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.float().clone(), persistent=False)
        self.scaling = float(self.vae.config.scaling_factor)
        vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        unet_factor = 2 ** (len(self.unet.config.down_block_types) - 1)
        self.spec = ModelSpec(family="sd", input_hw=None, pad_multiple=vae_factor * unet_factor, mean=SD_MEAN, std=SD_STD)

    def train(self, mode: bool = True) -> SDTrainModel:
        super().train(mode)
        if not self.trains_vae:
            self.vae.eval()  # frozen: no dropout or norm-statistics change, in training too
        return self

    def autoencode(self, images: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1: (reconstruction, KL to N(0, I) per latent element) of ``images``."""
        posterior = self.vae.encode(images).latent_dist
        z = posterior.sample() if sample else posterior.mode()
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        return self.vae.decode(z, return_dict=False)[0].float(), kl

    def denoise_loss(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Stage 2: the v-prediction loss of the unconditioned UNet at uniformly drawn t, per sample (N,)."""
        with torch.no_grad():
            z = self.vae.encode(images).latent_dist.mode() * self.scaling
        n = z.shape[0]
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (n,), device=z.device, generator=generator)
        noise = torch.randn(z.shape, device=z.device, generator=generator)
        a = self.alphas_cumprod[t].view(n, 1, 1, 1)
        noisy = a.sqrt() * z + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * z if self.prediction_type == "v_prediction" else noise
        context = self.context_train.to(z.dtype).repeat(n, 1, 1)
        pred = self.unet(noisy, t, encoder_hidden_states=context, return_dict=False)[0]
        return (pred.float() - target.float()).pow(2).flatten(1).mean(1)

    @torch.no_grad()
    def calibrate_scaling(self, images: torch.Tensor) -> float:
        """Set the VAE's scaling factor to 1 / std of the posterior-mean latents of ``images`` (SD's convention:
        unit-variance latents for the diffusion stage) and return it."""
        z = self.vae.encode(images).latent_dist.mode()
        self.scaling = float(1.0 / z.float().std().clamp_min(1e-6))
        self.vae.register_to_config(scaling_factor=self.scaling)
        return self.scaling

    def enable_gradient_checkpointing(self) -> None:
        self.unet.enable_gradient_checkpointing()
        # The decoder's activations are what backprop to the UNet keeps; recompute them too.
        self.vae.enable_gradient_checkpointing()

    def forward(self, images: torch.Tensor, inference: bool = False, maskige: torch.Tensor | None = None) -> Any:
        """The training forward of the objective (through ``forward`` so that DDP sees it), or with ``inference``
        the Segmenter's forward: raw colours. With ``maskige`` (N×3×H×W in [−1, 1]), the latent warm start (GSS
        stage 1): the mean squared error, per sample, between the predicted x̂0 latent and the frozen VAE's latent
        of the maskige, skipping the decoder."""
        if not inference and self.objective == "autoencode":
            return self.autoencode(images)
        if not inference and self.objective == "denoise":
            return self.denoise_loss(images)
        with torch.set_grad_enabled(self.train_encoder and torch.is_grad_enabled()):
            z = self.vae.encode(images).latent_dist.mode() * self.scaling
        context = (self.context_infer if inference else self.context_train).to(z.dtype).repeat(z.shape[0], 1, 1)
        out = self.unet(z, torch.tensor(TIMESTEP, device=z.device), encoder_hidden_states=context, return_dict=False)[0]
        # The scheduler step with sample = z at inference, and with the zero noisy latent of training.
        sample = z if inference else torch.zeros_like(z)
        a, b = self.sqrt_alpha, self.sqrt_one_minus_alpha
        x0 = a * sample - b * out if self.prediction_type == "v_prediction" else (sample - b * out) / a
        if maskige is not None:
            with torch.no_grad():
                target = self.vae.encode(maskige.to(z.dtype)).latent_dist.mode() * self.scaling
            return (x0.float() - target.float()).pow(2).flatten(1).mean(1)
        return self.vae.decode(x0 / self.scaling, return_dict=False)[0].float()

    def save(self, folder: Path) -> None:
        """The published diffusers layout: the trained ``unet/`` (and ``vae/`` when it trained); everything else
        linked (or copied) from the source, with the scheduler set to trailing spacing as gen2seg's train.py saves it."""
        folder.mkdir(parents=True, exist_ok=True)
        own = {"unet", "vae"} if self.trains_vae else {"unet"}
        for src in sorted(self.source.rglob("*")):
            rel = src.relative_to(self.source)
            if not src.is_file() or rel.parts[0] in own:
                continue
            dst = folder / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.exists():
                dst.unlink()
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
        config_path = folder / "scheduler" / "scheduler_config.json"
        config = json.loads(config_path.read_text())
        config["timestep_spacing"] = "trailing"
        config_path.unlink()  # a hard link: rewrite, do not edit the source's file
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        self.unet.save_pretrained(str(folder / "unet"), safe_serialization=True)
        if self.trains_vae:
            self.vae.save_pretrained(str(folder / "vae"), safe_serialization=True)


class ConvTrainModel(nn.Module):
    """The conv family (``seg_node.models.conv``) under the instance-colouring loss: the inference forward is the
    training forward, every parameter trains."""

    family = "conv"

    def __init__(self, network: Gen2SegConv, source: Path | None) -> None:
        super().__init__()
        self.net = network
        self.spec = network.spec
        self.source = source

    @classmethod
    def load(cls, path: str | Path | None, config_file: str | Path | None, unshuffle: int | None = None,
             deepen: int | None = None) -> ConvTrainModel:
        """From ``config_file`` (random weights) or the checkpoint at ``path``; ``unshuffle`` converts a checkpoint
        that reads the image as it is to one that reads it pixel-unshuffled (``unshuffled``), ``deepen`` adds a
        level of that width below its deepest (``deepened``)."""
        if config_file is not None:
            try:
                config = json.loads(Path(config_file).read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise CheckpointError(f"{config_file}: cannot be read as a conv-family config ({exc})") from exc
            if not isinstance(config, dict):
                raise CheckpointError(f"{config_file}: expected a JSON object")
            check_config(config, config_file)
            return cls(Gen2SegConv(config), None)
        info = inspect_checkpoint(path)  # type: ignore[arg-type]
        if info.kind != "conv":
            raise CheckpointError(f"{info.path}: a gen2seg {info.kind.upper()} model, but --family conv was given")
        network = load_conv(info.path)
        if unshuffle is not None and unshuffle != unshuffle_factor(network.config):
            network = unshuffled(network, unshuffle)
        if deepen is not None:
            network = deepened(network, deepen)
        return cls(network.train(), info.path)

    def enable_gradient_checkpointing(self) -> None:
        raise ValueError("--gradient-checkpointing is not implemented for the conv family (its activations are small)")

    def forward(self, images: torch.Tensor, inference: bool = False) -> torch.Tensor:
        return self.net(images)

    def save(self, folder: Path) -> None:
        """``config.json`` + ``model.safetensors`` (``load_conv``'s layout)."""
        self.net.save_pretrained(folder)


def unshuffled(network: Gen2SegConv, factor: int) -> Gen2SegConv:
    """``network`` (unshuffle 1) as a conv network with ``unshuffle`` = ``factor`` that draws the same colours: its
    first convolution averages each factor×factor block (an exact area downscale) and its last repeats each
    colour over the block. Fine-tuning it from there teaches it to read the detail inside the blocks, where
    training a new first and last layer from random weights would first undo what the rest has learnt."""
    if unshuffle_factor(network.config) != 1:
        raise ValueError(f"can only convert a network that reads the image as it is, not one with unshuffle "
                         f"{unshuffle_factor(network.config)}")
    out = Gen2SegConv({**network.config, "unshuffle": factor})
    state = network.state_dict()
    k = factor * factor
    first = state["inc.0.weight"]  # out × (3 image + coordinate) × 3 × 3; pixel_unshuffle puts channel c at c·k..c·k+k-1
    state["inc.0.weight"] = torch.cat([first[:, :3].repeat_interleave(k, 1) / k, first[:, 3:]], 1)
    state["out.weight"] = state["out.weight"].repeat_interleave(k, 0)  # pixel_shuffle reads channel c at c·k..
    state["out.bias"] = state["out.bias"].repeat_interleave(k, 0)
    out.load_state_dict(state)
    return out.to(network.dtype)


def deepened(network: Gen2SegConv, width: int) -> Gen2SegConv:
    """``network`` with one more level of ``width`` channels below its deepest, which doubles the receptive field
    of its bottom (a long cable is then seen whole). Every trained weight keeps its place. The new decoder block,
    which joins the new level to the old deepest features, starts as a pass-through of those features (a centre
    tap of 1 per channel in both convolutions, nothing from the new level), so only its two GroupNorm + SiLU
    separate the new network's colours from the old ones' at the start (8–9 % of the default model's output on
    training scenes, against 18–50 % with the new block's random initialisation), and fine-tuning begins from
    what the network has learnt rather than from colours the new level scrambles."""
    if width < 1 or width % network.config["norm_groups"]:
        raise ValueError(f"width {width} must be a positive multiple of norm_groups {network.config['norm_groups']}")
    widths = network.config["widths"]
    out = Gen2SegConv({**network.config, "widths": [*widths, width]})
    state = out.state_dict()
    for key, value in network.state_dict().items():
        if key.startswith("ups."):  # the decoder list grows at its front: old block i is now block i + 1
            index, rest = key[len("ups."):].split(".", 1)
            key = f"ups.{int(index) + 1}.{rest}"
        state[key] = value
    deepest = widths[-1]
    for name, skip_from in (("ups.0.0", width), ("ups.0.3", 0)):  # input cat(new level ↑, old deepest); then deepest
        weight = torch.zeros_like(state[f"{name}.weight"])
        weight[torch.arange(deepest), skip_from + torch.arange(deepest), 1, 1] = 1.0
        state[f"{name}.weight"], state[f"{name}.bias"] = weight, torch.zeros_like(state[f"{name}.bias"])
    out.load_state_dict(state)
    return out.to(network.dtype)
