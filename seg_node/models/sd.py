"""The gen2seg Stable Diffusion network: one deterministic UNet step between the VAE encoder and decoder.

``Gen2SegSD`` is exactly the official ``gen2segSDPipeline`` forward (docs/design.md, "Models and their output"):
posterior-mean latent, the 2-token empty-prompt context, t = 999, ``x̂0`` from the scheduler's step formula with the
image latent as ``sample``, VAE decode. The batch-global or per-image min/max scaling (steps 10–11) is numpy code in
``seg_node.processing.model_io``, so the same module serves the robot and the reference mode.

Reduced precision (docs/design.md, "Export: ONNX and TensorRT": SD2 attention overflows in fp16): weights and activations use the requested dtype, but
attention (Q·Kᵀ, softmax, ·V) and every GroupNorm / LayerNorm compute in float32, and the output is float32.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import diffusers
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, SchedulerMixin, UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from seg_node.models.checkpoints import CheckpointError, inspect_checkpoint
from seg_node.models.spec import SD_MEAN, SD_STD, ModelSpec

# The official pipeline runs scheduler.set_timesteps(1) with timestep_spacing="trailing", which yields 999; with
# SD2's stock "leading" spacing and steps_offset=1 the same call would give t = 1, so the step is fixed, not derived.
TIMESTEP = 999
NUM_TRAIN_TIMESTEPS = 1000
PREDICTION_TYPES = ("v_prediction", "epsilon", "sample")
REDUCED_DTYPES = (torch.float16, torch.bfloat16)
_FP32_MODULES = (nn.GroupNorm, nn.LayerNorm)


class FP32AttnProcessor:
    """diffusers' ``AttnProcessor2_0`` with the attention product and softmax in float32.

    diffusers' ``Attention.upcast_attention`` / ``upcast_softmax`` flags are honoured only by the legacy
    ``AttnProcessor``, which materialises the full score matrix (6,912² per head at 576×768); the default SDPA
    processor ignores them. Upcasting q, k, v and keeping SDPA keeps the memory-efficient kernels, which accept
    float32. The projections stay in the compute dtype.
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch_size, sequence_length, _ = context.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
            if attention_mask.is_floating_point():
                attention_mask = attention_mask.float()
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        q, k, v = (t.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2).float() for t in (query, key, value))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        hidden_states = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _keep_norm_fp32(module: nn.Module, compute_dtype: torch.dtype) -> None:
    """Keep a norm's parameters and arithmetic in float32 inside a reduced-precision network.

    Hooks rather than wrapper modules, so parameter names (and state dicts) stay those of the checkpoint.
    """
    module.float()
    module.register_forward_pre_hook(lambda _m, args: (args[0].float(), *args[1:]))
    module.register_forward_hook(lambda _m, _args, out: out.to(compute_dtype))


class Gen2SegSD(nn.Module):
    """gen2seg SD: float N×3×H×W images in [-1, 1] → float32 N×3×H×W VAE decoder output (unnormalised).

    Precision is fixed at construction (``dtype``); do not ``.to(dtype)`` the module afterwards, as that would
    also cast the float32 norms. ``.to(device)`` is fine.
    """

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        context: torch.Tensor,
        alpha_bar: float,
        prediction_type: str = "v_prediction",
        clip_sample_range: float | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if dtype not in (torch.float32, *REDUCED_DTYPES):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
        # Parameters keep requires_grad as diffusers loads them, as in the official pipeline: for a permuted input,
        # at::linear takes another kernel path when its weight requires no grad, and on some CPUs that path's bits
        # differ from the official ones (the attention blocks' proj_in). The backends run under inference_mode,
        # so no autograd graph is built either way.
        self.vae = vae.eval()
        self.unet = unet.eval()
        # The empty-prompt text embedding [1, tokens, D]: a constant, so the text encoder is never needed at run time.
        self.register_buffer("context", context.detach().float().clone(), persistent=False)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.prediction_type = prediction_type
        self.clip_sample_range = clip_sample_range
        # Same fp32 arithmetic as DDIMScheduler.step: alphas_cumprod[t] ** 0.5 and (1 - alphas_cumprod[t]) ** 0.5.
        a = torch.tensor(alpha_bar, dtype=torch.float32)
        self.sqrt_alpha_bar = float(a**0.5)
        self.sqrt_one_minus_alpha_bar = float((1 - a) ** 0.5)
        self._dtype = dtype
        if dtype in REDUCED_DTYPES:
            # .half()/.bfloat16() rather than .to(dtype): diffusers' ModelMixin.to warns on every dtype cast.
            cast = nn.Module.half if dtype == torch.float16 else nn.Module.bfloat16
            cast(self.vae)
            cast(self.unet)
            self.vae.set_attn_processor(FP32AttnProcessor())
            self.unet.set_attn_processor(FP32AttnProcessor())
            for m in self.modules():
                if isinstance(m, _FP32_MODULES):
                    _keep_norm_fp32(m, dtype)
        self.eval()

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the convolutions and linear layers (norms and attention run in float32 regardless)."""
        return self._dtype

    @property
    def spec(self) -> ModelSpec:
        # Each VAE block but the last halves the resolution, and so does each UNet down block but the last.
        vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        unet_factor = 2 ** (len(self.unet.config.down_block_types) - 1)
        return ModelSpec(family="sd", input_hw=None, pad_multiple=vae_factor * unet_factor, mean=SD_MEAN, std=SD_STD)

    def _pred_original_sample(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        a, b = self.sqrt_alpha_bar, self.sqrt_one_minus_alpha_bar
        if self.prediction_type == "v_prediction":
            x0 = a * sample - b * model_output
        elif self.prediction_type == "epsilon":
            x0 = (sample - b * model_output) / a
        else:
            x0 = model_output
        if self.clip_sample_range is not None:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        return x0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        z = self.vae.encode(images.to(self._dtype)).latent_dist.mode() * self.scaling_factor
        t = torch.tensor(TIMESTEP, device=z.device)
        # repeat, as the official pipeline does: an expanded (stride-0) batch takes another GEMM path and is
        # no longer bit-identical to it.
        context = self.context.to(z.dtype).repeat(z.shape[0], 1, 1)
        out = self.unet(z, t, encoder_hidden_states=context, return_dict=False)[0]
        # The official step passes the image latent as `sample`, hence the √ᾱ·z term (absent in training).
        x0 = self._pred_original_sample(out.float(), z.float())
        y = self.vae.decode((x0 / self.scaling_factor).to(self._dtype), return_dict=False)[0]
        return y.float()


def _component(root: Path, name: str, load: Callable[[], Any]) -> Any:
    try:
        return load()
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 — any loader failure becomes a CheckpointError naming the folder
        raise CheckpointError(f"{root / name}: cannot load the {name} ({type(exc).__name__}: {exc})") from exc


def _load_scheduler(root: Path) -> SchedulerMixin:
    config_path = root / "scheduler" / "scheduler_config.json"
    class_name = json.loads(config_path.read_text()).get("_class_name")
    cls = getattr(diffusers, str(class_name), None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise CheckpointError(f"{config_path}: _class_name {class_name!r} is not a diffusers scheduler")
    scheduler = cls.from_pretrained(str(root), subfolder="scheduler", local_files_only=True)
    config = scheduler.config
    if config.get("prediction_type") not in PREDICTION_TYPES:
        raise CheckpointError(f"{config_path}: prediction_type {config.get('prediction_type')!r} is not one of {PREDICTION_TYPES}")
    if config.get("num_train_timesteps") != NUM_TRAIN_TIMESTEPS:
        raise CheckpointError(f"{config_path}: num_train_timesteps is {config.get('num_train_timesteps')}, gen2seg uses "
                              f"{NUM_TRAIN_TIMESTEPS} (the single step is t = {TIMESTEP})")
    if config.get("thresholding", False):
        raise CheckpointError(f"{config_path}: dynamic thresholding is not supported (gen2seg does not use it)")
    if not hasattr(scheduler, "alphas_cumprod"):
        raise CheckpointError(f"{config_path}: {class_name} has no alphas_cumprod (not a DDPM-family scheduler)")
    return scheduler


def _empty_prompt_context(root: Path) -> torch.Tensor:
    """The official conditioning: "" tokenised without padding (BOS, EOS) through the CLIP text encoder."""
    tokenizer = _component(root, "tokenizer", lambda: CLIPTokenizer.from_pretrained(
        str(root), subfolder="tokenizer", local_files_only=True))
    text_encoder = _component(root, "text_encoder", lambda: CLIPTextModel.from_pretrained(
        str(root), subfolder="text_encoder", local_files_only=True, weights_only=True))
    ids = tokenizer("", padding="do_not_pad", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    # no_grad, not inference_mode: the constant must stay usable in autograd (training) and tracing (export).
    with torch.no_grad():
        return text_encoder.float().eval()(ids).last_hidden_state.clone()


def load_sd(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Gen2SegSD:
    """Load a gen2seg SD checkpoint folder (diffusers layout) as a ``Gen2SegSD`` on ``device`` in ``dtype``.

    Nothing is downloaded (``local_files_only``); weights load from safetensors, or from ``.bin`` through
    ``torch.load(weights_only=True)`` (what diffusers and transformers both do). The text encoder and tokenizer
    are used once for the constant context and then dropped. Raises CheckpointError naming the missing or broken
    file or component folder.
    """
    info = inspect_checkpoint(path)
    if info.kind != "sd":
        raise CheckpointError(f"{info.path}: a gen2seg {info.kind.upper()} checkpoint, not the SD (diffusers) layout")
    root = info.path
    scheduler = _component(root, "scheduler", lambda: _load_scheduler(root))
    context = _empty_prompt_context(root)
    # Loaded in float32 and cast afterwards, so the norms kept in float32 keep their exact weights.
    vae = _component(root, "vae", lambda: AutoencoderKL.from_pretrained(
        str(root), subfolder="vae", local_files_only=True, torch_dtype=torch.float32))
    unet = _component(root, "unet", lambda: UNet2DConditionModel.from_pretrained(
        str(root), subfolder="unet", local_files_only=True, torch_dtype=torch.float32))
    config = scheduler.config
    clip_range = float(config.get("clip_sample_range", 1.0)) if config.get("clip_sample", False) else None
    model = Gen2SegSD(
        vae,
        unet,
        context,
        alpha_bar=float(scheduler.alphas_cumprod[TIMESTEP]),
        prediction_type=config["prediction_type"],
        clip_sample_range=clip_range,
        dtype=dtype,
    )
    return model.to(device)
