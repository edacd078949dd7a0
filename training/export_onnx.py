"""Export a gen2seg checkpoint folder to ONNX for ``seg_node.backends.onnx_backend`` (and ``build_engine``).

Forms:

* one graph (default): input ``images`` (N×3×H×W, normalised as the spec says), output ``colors`` (N×3×H×W raw);
* ``--split`` (SD only): three graphs chained by tensor name, the split of docs/design.md, "Export: ONNX and TensorRT":
  ``<stem>.vae_encoder.onnx`` (``images`` → ``latents`` = posterior mean × scaling factor),
  ``<stem>.unet.onnx`` (``latents`` → ``noise_pred``; t = 999 and the empty-prompt context are constants, so the
  time embedding and the cross-attention K/V of the context fold away and no text encoder ships) and
  ``<stem>.vae_decoder.onnx`` (``latents``, ``noise_pred`` → x̂0 = √ᾱ·z − √(1−ᾱ)·v̂ → VAE decode → ``colors``).
  The model path for the runtime is ``<stem>.vae_encoder.onnx``; every stage carries the chain manifest.

Every file carries its ``ModelSpec``, an export record (precision, profile, stage, IO shapes), the recommended
post-processing and, when split, the chain manifest, as metadata entries (``seg_node.models.onnx_format``), so the
runtime needs no side files.

Options: ``--profile NAME`` (static shapes of a deployment profile, ``PROFILES``), ``--height/--width`` (static,
any multiples of the model's pad), ``--dynamic`` (SD and conv: dynamic H/W; the default when no size is given), ``--fp16``
(weights and most arithmetic in float16, attention scores/softmax, normalisation and constant sub-graphs in
float32, graph IO float32: ``training.onnx_fp16``), ``--int8`` (conv only: int8 weights and activations for ONNX
Runtime on the CPU, ranges from ``--int8-calibration DIR`` images or synthetic scenes: ``training.onnx_int8``). The
batch axis is always dynamic. Files whose weights exceed what
one protobuf can hold (2 GiB) are written in the external-data format (``<file>.data`` beside each file).

Exporter: torch's TorchScript-based exporter (``dynamo=False``). It handles both networks as they are; the
torch.export-based one needs ``onnxscript``, which the training environment does not ship.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import sys
import tempfile
import uuid
import warnings
from collections.abc import Sequence
from typing import Any
from pathlib import Path

import onnx
import torch

from seg_node.backends.base import BackendError
from seg_node.config import load_config
from seg_node.model_settings import file_values, is_carried, recommended_settings
from seg_node.models.checkpoints import CheckpointError, inspect_checkpoint
from seg_node.models.onnx_format import (INPUT_NAME, OUTPUT_NAME, ChainManifest, ChainStage, ExportRecord,
                                         build_metadata, chain_from_metadata, read_onnx_metadata)
from seg_node.models.spec import ModelSpec
from training.onnx_fp16 import convert_to_fp16
from training.onnx_int8 import DEFAULT_FRAMES, quantize_for_export
from training.synthetic import SHAPES

LATENTS_NAME = "latents"
NOISE_NAME = "noise_pred"
SD_STAGES = ("vae_encoder", "unet", "vae_decoder")
# Protobuf cannot serialise a message over 2 GiB; keep headroom for the graph itself.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26
# Deployment profiles: the network input H×W they stand for. SD sizes are rounded up to the model's pad multiple
# (64 for SD2: a 480×640 frame runs in a 512×640 graph with 32 rows of edge padding); MAE's input is fixed by its
# position embeddings, so an MAE profile must equal it (224 for the released MAE-H).
PROFILES: dict[str, tuple[int, int]] = {"480x640": (480, 640), "576x768": (576, 768), "224": (224, 224)}

log = logging.getLogger(__name__)


def _load_network(path: Path) -> torch.nn.Module:
    info = inspect_checkpoint(path)
    if info.kind == "sd":
        from seg_node.models.sd import load_sd

        return load_sd(info.path, "cpu", torch.float32)
    if info.kind == "mae":
        from seg_node.models.mae import load_mae

        return load_mae(info.path, "cpu", torch.float32)
    if info.kind == "conv":
        from seg_node.models.conv import load_conv

        return load_conv(info.path, "cpu", torch.float32)
    raise CheckpointError(f"{info.path}: already an exported .{info.path.suffix.lstrip('.')} file; export needs a "
                          "gen2seg checkpoint folder (SD diffusers layout, MAE transformers layout or conv)")


def parse_profile(name: str) -> tuple[int, int]:
    """A profile name from PROFILES, or an explicit ``HxW`` / ``N`` (square)."""
    if name in PROFILES:
        return PROFILES[name]
    m = re.fullmatch(r"(\d+)(?:x(\d+))?", name)
    if not m or int(m.group(1)) <= 0 or (m.group(2) is not None and int(m.group(2)) <= 0):
        raise ValueError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)} or give HxW (e.g. 480x640)")
    h = int(m.group(1))
    return h, int(m.group(2)) if m.group(2) else h


@dataclasses.dataclass(frozen=True)
class ExportPlan:
    spec: ModelSpec  # spec of the exported graph (input_hw fixed when static)
    trace_hw: tuple[int, int]
    dynamic: bool
    profile: str | None


def _export_plan(spec: ModelSpec, height: int | None, width: int | None, profile: str | None = None,
                 dynamic: bool = False) -> ExportPlan:
    if (height is None) != (width is None):
        raise ValueError("give both --height and --width, or neither")
    if sum((height is not None, profile is not None, dynamic)) > 1:
        raise ValueError("--height/--width, --profile and --dynamic exclude each other")
    if profile is not None:
        ph, pw = parse_profile(profile)
        if spec.family != "mae":
            m = spec.pad_multiple
            height, width = -(-ph // m) * m, -(-pw // m) * m
            if (height, width) != (ph, pw):
                log.info("profile %s: graph input %d×%d (the next multiples of %d; the runtime edge-pads frames)",
                         profile, height, width, m)
        else:
            height, width = ph, pw
    if spec.family == "mae":
        assert spec.input_hw is not None
        if dynamic:
            raise ValueError(f"an MAE model has a fixed input of {spec.input_hw[0]}×{spec.input_hw[1]} (its position "
                             "embeddings); --dynamic applies to SD and conv models only")
        if height is not None and (height, width) != spec.input_hw:
            what = f"--profile {profile} ({height}×{width})" if profile else f"--height {height} --width {width}"
            raise ValueError(f"an MAE model has a fixed input of {spec.input_hw[0]}×{spec.input_hw[1]} (its position "
                             f"embeddings); got {what}")
        return ExportPlan(spec, spec.input_hw, False, profile)
    m = spec.pad_multiple
    if height is None or width is None:
        # Any multiple of pad_multiple takes the same trace-time branch in the UNet (docs/design.md, "Export: ONNX and TensorRT").
        return ExportPlan(spec, (2 * m, 2 * m), True, None)
    if height <= 0 or width <= 0 or height % m or width % m:
        raise ValueError(f"--height and --width must be positive multiples of {m} for this {spec.family.upper()} model, "
                         f"got {height}×{width}")
    return ExportPlan(dataclasses.replace(spec, input_hw=(height, width)), (height, width), False, profile)


def _set_shape(value: onnx.ValueInfoProto, dims: Sequence[int | str]) -> None:
    shape = value.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        if isinstance(d, int):
            shape.dim.add().dim_value = d
        else:
            shape.dim.add().dim_param = d


# ------------------------------------------------------------------------------------------ SD split modules


class _SDEncoder(torch.nn.Module):
    """Stage 1: images → latents (posterior mean × scaling factor), as ``Gen2SegSD.forward``."""

    def __init__(self, sd: torch.nn.Module) -> None:
        super().__init__()
        self.sd = sd

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        sd = self.sd
        return (sd.vae.encode(images.to(sd.dtype)).latent_dist.mode() * sd.scaling_factor).float()


class _SDUNet(torch.nn.Module):
    """Stage 2: latents → v̂ (or ε) at t = 999 with the constant empty-prompt context, as ``Gen2SegSD.forward``."""

    def __init__(self, sd: torch.nn.Module) -> None:
        super().__init__()
        self.sd = sd

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        from seg_node.models.sd import TIMESTEP

        sd = self.sd
        z = latents.to(sd.dtype)
        t = torch.tensor(TIMESTEP, device=z.device)
        context = sd.context.to(z.dtype).repeat(z.shape[0], 1, 1)
        return sd.unet(z, t, encoder_hidden_states=context, return_dict=False)[0].float()


class _SDDecoder(torch.nn.Module):
    """Stage 3: (latents, noise_pred) → x̂0 → VAE decode → raw colours.

    The output stays raw (unnormalised), like the single graph's: the per-image min/max scaling to 0..255 is the
    runtime's numpy post-processing (``seg_node.processing.model_io``, robot mode per image, reference mode per call), which
    every backend shares. Folding it into this graph would give the split export a second post-processing path
    whose NaN handling and reference-mode batch semantics could drift from the numpy one.
    """

    def __init__(self, sd: torch.nn.Module) -> None:
        super().__init__()
        self.sd = sd

    def forward(self, latents: torch.Tensor, noise_pred: torch.Tensor) -> torch.Tensor:
        sd = self.sd
        x0 = sd._pred_original_sample(noise_pred.float(), latents.float())
        return sd.vae.decode((x0 / sd.scaling_factor).to(sd.dtype), return_dict=False)[0].float()


@dataclasses.dataclass(frozen=True)
class _Graph:
    """One graph to trace: module, named inputs with trace shapes, named outputs, and IO dims for the file."""

    name: str
    module: torch.nn.Module
    inputs: tuple[tuple[str, tuple[int, ...]], ...]
    outputs: tuple[str, ...]
    dims: dict[str, list[int | str]]


def _graphs(network: torch.nn.Module, plan: ExportPlan, split: bool) -> list[_Graph]:
    h, w = plan.trace_hw
    img_dims: list[int | str] = ["batch", 3, "height", "width"] if plan.dynamic else ["batch", 3, h, w]
    if not split:
        return [_Graph("model", network, ((INPUT_NAME, (1, 3, h, w)),), (OUTPUT_NAME,),
                       {INPUT_NAME: img_dims, OUTPUT_NAME: img_dims})]
    f = 2 ** (len(network.vae.config.block_out_channels) - 1)
    c = int(network.vae.config.latent_channels)
    lat = (1, c, h // f, w // f)
    lat_dims: list[int | str] = ["batch", c, "latent_height", "latent_width"] if plan.dynamic else ["batch", c, h // f, w // f]
    return [
        _Graph(SD_STAGES[0], _SDEncoder(network), ((INPUT_NAME, (1, 3, h, w)),), (LATENTS_NAME,),
               {INPUT_NAME: img_dims, LATENTS_NAME: lat_dims}),
        _Graph(SD_STAGES[1], _SDUNet(network), ((LATENTS_NAME, lat),), (NOISE_NAME,),
               {LATENTS_NAME: lat_dims, NOISE_NAME: lat_dims}),
        _Graph(SD_STAGES[2], _SDDecoder(network), ((LATENTS_NAME, lat), (NOISE_NAME, lat)), (OUTPUT_NAME,),
               {LATENTS_NAME: lat_dims, NOISE_NAME: lat_dims, OUTPUT_NAME: img_dims}),
    ]


def _trace_to_onnx(graph: _Graph, dynamic: bool, opset: int, path: Path) -> None:
    axes = {name: ({0: "batch", 2: "height", 3: "width"} if dynamic else {0: "batch"})
            for name in [n for n, _ in graph.inputs] + list(graph.outputs)}
    args = tuple(torch.zeros(*shape) for _, shape in graph.inputs)
    with warnings.catch_warnings():
        # The legacy exporter is chosen deliberately (see the module docstring).
        warnings.filterwarnings("ignore", message=r"You are using the legacy TorchScript", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        # diffusers' up-sampling branches on tensor sizes at trace time; spec.pad_multiple keeps every input on the
        # traced branch, and the ONNX backend rejects other sizes.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"(diffusers|torch\.nn\.functional)")
        # SD's timestep tensor is meant to be a constant (t = 999).
        warnings.filterwarnings("ignore", message=r"torch\.tensor results are registered as constants",
                                category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"Constant folding - Only steps=1", category=UserWarning)
        with torch.no_grad():
            torch.onnx.export(
                graph.module, args, str(path), dynamo=False, opset_version=opset,
                input_names=[n for n, _ in graph.inputs], output_names=list(graph.outputs), do_constant_folding=True,
                dynamic_axes=axes,
            )


# --------------------------------------------------------------------------------------------------- export


def stage_path(output: Path, stage: str) -> Path:
    """File of one stage of a split export written for ``--output output``."""
    return output.with_name(f"{output.stem}.{stage}{output.suffix or '.onnx'}")


def _save(model: onnx.ModelProto, path: Path) -> None:
    weight_bytes = sum(t.ByteSize() for t in model.graph.initializer)
    external = weight_bytes > EXTERNAL_DATA_THRESHOLD
    data_file = path.with_name(path.name + ".data")
    # onnx appends to an existing data file, so a previous export's would grow stale bytes.
    data_file.unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=data_file.name)
    # By path, so the checker also reads external data and is not bound by the 2 GiB limit; full_check runs strict
    # shape/type inference, which catches a float16/float32 mismatch the conversion could have left.
    onnx.checker.check_model(str(path), full_check=True)


def export_onnx(model_path: str | Path, output: Path, height: int | None = None, width: int | None = None,
                opset: int = 17, *, split: bool = False, fp16: bool = False, profile: str | None = None,
                dynamic: bool = False, recommended: Path | None = None, int8: bool = False,
                int8_calibration: Path | None = None, int8_shapes: Sequence[str] | None = None,
                int8_frames: int = DEFAULT_FRAMES) -> Path:
    """Export the checkpoint at ``model_path`` and return the model path for the runtime.

    One graph: ``output``. ``split`` (SD only): ``<stem>.vae_encoder.onnx``, ``<stem>.unet.onnx`` and
    ``<stem>.vae_decoder.onnx`` beside ``output`` (which itself is not written); the first is returned.
    MAE graphs are static at the ViT's image size. SD and conv graphs have dynamic H/W (multiples of ``spec.pad_multiple``)
    unless ``height``/``width`` or ``profile`` fix them (the spec's ``input_hw`` then records the size). The batch
    axis is always dynamic. The model's recommended post-processing (``recommended``, a Segmenter config file,
    else the folder's ``segmenter.yaml``) goes into every file's metadata (``seg_node.model_settings``).
    ``int8`` (conv only): activation ranges from ``int8_frames`` images of ``int8_calibration``, else of synthetic
    scenes of ``int8_shapes`` (None: every shape), at the graph's static size or, when dynamic, at the network size of
    a 480×640 frame under the recommended ``processing_resolution``.
    Raises CheckpointError for a bad folder, ValueError for bad options, ConfigError for a bad recommendation.
    """
    output = Path(output).expanduser()
    log.info("loading %s", model_path)
    network = _load_network(Path(model_path).expanduser())
    plan = _export_plan(network.spec, height, width, profile, dynamic)
    if split and plan.spec.family != "sd":
        raise ValueError(f"--split applies to SD models only (a {plan.spec.family.upper()} model is one graph)")
    if int8 and fp16:
        raise ValueError("--int8 and --fp16 exclude each other")
    if int8 and plan.spec.family != "conv":
        raise ValueError(f"--int8 applies to conv-family models only (a {plan.spec.family.upper()} model: its "
                         "attention and norms are not calibrated here; use --fp16, or TensorRT's int8 with --calib-dir)")
    if int8_frames < 1:
        raise ValueError(f"--int8-frames must be >= 1, got {int8_frames}")
    settings = (_recommended_from(recommended) if recommended is not None
                else recommended_settings(Path(model_path).expanduser()))
    output.parent.mkdir(parents=True, exist_ok=True)
    graphs = _graphs(network, plan, split)
    paths = [stage_path(output, g.name) for g in graphs] if split else [output]
    chain = None
    if split:
        chain = ChainManifest(uuid.uuid4().hex, tuple(ChainStage(g.name, p.name, tuple(n for n, _ in g.inputs), g.outputs)
                                                      for g, p in zip(graphs, paths)))
    precision = "int8" if int8 else "fp16" if fp16 else "fp32"
    h, w = plan.trace_hw
    for graph, path in zip(graphs, paths):
        log.info("exporting %s%s (trace at %d×%d, %s H/W, opset %d, %s)", plan.spec.family.upper(),
                 f" stage {graph.name}" if split else "", h, w, "dynamic" if plan.dynamic else "static", opset, precision)
        with tempfile.TemporaryDirectory(dir=output.parent, prefix=".export_onnx-") as tmp:
            traced = Path(tmp) / "model.onnx"
            _trace_to_onnx(graph, plan.dynamic, opset, traced)
            # Loads any tensors the exporter wrote as external files, so the temp folder can go.
            model = onnx.load(str(traced))
        # The exporter leaves dynamic dims unnamed (e.g. "Castcolors_dim_2"); state the real contract.
        for value in (*model.graph.input, *model.graph.output):
            _set_shape(value, graph.dims[value.name])
        if fp16:
            report = convert_to_fp16(model)
            log.info("fp16%s: %s", f" {graph.name}" if split else "", report.summary())
        if int8:
            model = quantize_for_export(model, plan.spec, settings, int8_calibration, int8_shapes, int8_frames)
        record = ExportRecord(precision=precision, stage=graph.name, io=dict(graph.dims),
                              inputs=tuple(n for n, _ in graph.inputs), outputs=graph.outputs, profile=plan.profile,
                              opset=opset, dynamic=plan.dynamic, source=Path(model_path).name,
                              exporter=f"torch {torch.__version__}, onnx {onnx.__version__}")
        for key, value in build_metadata(plan.spec, record, chain, settings).items():
            model.metadata_props.add(key=key, value=value)
        _save(model, path)
        del model
    return paths[0]


def _recommended_from(path: Path) -> dict[str, Any]:
    """The carried part of a Segmenter config file, validated (ConfigError names the file)."""
    load_config(path)
    return {k: v for k, v in file_values(path).items() if is_carried(k)}


def written_files(path: Path) -> list[Path]:
    """Every file an export starting at ``path`` consists of (stages and external-data files)."""
    chain = chain_from_metadata(read_onnx_metadata(path), path)
    stages = chain.stage_paths(path.parent) if chain is not None else [path]
    return [p for s in stages for p in (s, s.with_name(s.name + ".data")) if p.exists()]


def _size(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="export_onnx", description="Export a gen2seg checkpoint folder to ONNX.")
    parser.add_argument("--model", required=True, type=Path, help="gen2seg checkpoint folder (SD, MAE or conv)")
    parser.add_argument("--output", required=True, type=Path,
                        help="ONNX file to write (with --split: the stem of <stem>.<stage>.onnx)")
    parser.add_argument("--height", type=_size, help="fixed input height (SD and conv; default: dynamic H/W)")
    parser.add_argument("--width", type=_size, help="fixed input width (SD and conv; default: dynamic H/W)")
    parser.add_argument("--profile", help=f"static shapes of a deployment profile: {', '.join(PROFILES)}, or HxW")
    parser.add_argument("--dynamic", action="store_true", help="dynamic H/W (SD and conv; the default without a size)")
    parser.add_argument("--split", action="store_true", help="SD: three graphs (VAE encoder, UNet, VAE decoder)")
    parser.add_argument("--fp16", action="store_true",
                        help="float16 weights/arithmetic; attention scores, softmax and norms stay float32; IO float32")
    parser.add_argument("--int8", action="store_true",
                        help="conv only: int8 weights and activations for ONNX Runtime on the CPU; IO float32")
    parser.add_argument("--int8-calibration", type=Path, metavar="DIR",
                        help="--int8: images of the robot's scenes for the activation ranges "
                             "(default: synthetic scenes)")
    parser.add_argument("--int8-shapes", nargs="+", choices=SHAPES, metavar="SHAPE",
                        help=f"--int8 without a folder: shapes of the synthetic scenes ({', '.join(SHAPES)}; "
                             "default all)")
    parser.add_argument("--int8-frames", type=_size, default=DEFAULT_FRAMES,
                        help=f"--int8: calibration frames (default {DEFAULT_FRAMES})")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument("--recommended", type=Path,
                        help="Segmenter config whose post-processing the file carries (default: the folder's segmenter.yaml)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="export_onnx: %(message)s", stream=sys.stderr)
    try:
        path = export_onnx(args.model, args.output, args.height, args.width, args.opset, split=args.split,
                           fp16=args.fp16, profile=args.profile, dynamic=args.dynamic,
                           recommended=args.recommended, int8=args.int8, int8_calibration=args.int8_calibration,
                           int8_shapes=args.int8_shapes, int8_frames=args.int8_frames)
    except (CheckpointError, ValueError, BackendError) as exc:
        print(f"export_onnx: error: {exc}", file=sys.stderr)
        return 1
    files = written_files(path)
    total = sum(p.stat().st_size for p in files)
    if len(files) == 1:
        print(f"wrote {path.resolve()} ({total / 2**20:.1f} MiB)")
    else:
        print(f"wrote {', '.join(str(p.resolve()) for p in files)} ({total / 2**20:.1f} MiB)")
    if args.split:
        print(f"model path for the runtime: {path.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
