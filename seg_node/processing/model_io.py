"""Per-family pre- and post-processing around the network, in numpy (shared by every backend).

Two modes:

* ``robot`` (default) fixes what the official scripts get wrong for a robot (docs/design.md, "Models and their output"):
  per-image normalisation (the official SD pipeline normalises over the whole batch, so a frame's colours depend
  on its batch-mates); output at the input's resolution with bilinear resampling (the official scripts truncate to
  uint8 and Lanczos-resize, which rings colours at instance borders); non-finite outputs are zeroed and counted
  (one NaN would otherwise poison the global min/max); SD inputs padded to a multiple of 64 (the UNet's trace-time
  branch for other sizes breaks exported graphs); no PIL round trips; MAE without the inference-only gamma 0.7
  (training never saw it, and it bends the colour distances the instance grouping relies on).
* ``reference`` reproduces the official pipelines numerically for parity checks: SD resizes the long edge to the
  processing resolution (floor, antialiased bilinear), replicate-pads to a multiple of 8, normalises each call's
  frames together (the official decode batch) with its two-step shift-and-scale; MAE squashes to the ViT size with
  PIL bicubic, normalises per image with ``+1e-5`` and applies gamma 0.7; both then truncate to uint8 and
  Lanczos-resize to the input size as ``inference_{sd,mae}.py`` do.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import cv2
import numpy as np
from PIL import Image

from seg_node.models.spec import ModelSpec
from seg_node.processing.resample import area_chw, normalise_chw

Mode = Literal["robot", "reference"]
MODES: tuple[str, ...] = ("robot", "reference")

# The official SD pipeline pads to the VAE factor only.
REFERENCE_SD_PAD = 8
REFERENCE_MAE_GAMMA = 0.7
NORM_EPS = 1e-5


@dataclass(frozen=True)
class FrameGeometry:
    """Where an input frame sits inside the network input."""

    input_hw: tuple[int, int]
    content_hw: tuple[int, int]


@dataclass
class ColorMap:
    """The model's instance colouring of one frame, float32 H×W×3 in 0..255.

    ``native`` is the frame's part of the network output, at the network's resolution; ``colors`` is the same map
    at the input resolution (``input_hw``), resized on first use, so a caller that only needs labels at the
    network's resolution never pays for it. ``prompt_colors`` is the map point prompts read: ``colors``, unless
    ``prompt_source`` makes another one, at the network's resolution (scaled up like ``colors``) or the frame's
    (called on first use: most frames get no click).
    """

    native: np.ndarray
    # Pixels of the raw network output that were NaN or Inf (zeroed before normalisation).
    nonfinite: int = 0
    # The frame's size (H, W); None when ``native`` is at it already.
    input_hw: tuple[int, int] | None = None
    prompt_source: Callable[[], np.ndarray] | None = field(default=None, repr=False, compare=False)
    _colors: np.ndarray | None = field(default=None, repr=False, compare=False)
    _prompt_colors: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def colors(self) -> np.ndarray:
        if self.input_hw is None or self.native.shape[:2] == tuple(self.input_hw):
            return self.native
        if self._colors is None:
            self._colors = _resize(self.native, self.input_hw)
        return self._colors

    @property
    def prompt_colors(self) -> np.ndarray:
        if self.prompt_source is None:
            return self.colors
        if self._prompt_colors is None:
            native = self.prompt_source()
            self._prompt_colors = native if self.input_hw is None else _resize(native, tuple(self.input_hw))
        return self._prompt_colors


def _check_rgb(rgb: np.ndarray) -> tuple[int, int]:
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        shape = getattr(rgb, "shape", None)
        dtype = getattr(rgb, "dtype", type(rgb).__name__)
        raise ValueError(f"expected a uint8 H×W×3 RGB image, got shape {shape} dtype {dtype}")
    h, w = rgb.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"empty image of shape {rgb.shape}")
    return h, w


def _resize(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    h, w = img.shape[:2]
    if (h, w) == hw:
        return img
    shrinking = hw[0] * hw[1] < h * w
    return cv2.resize(img, (hw[1], hw[0]), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def _sd_color_scale(lo: float, hi: float, eps: float) -> tuple[float, float]:
    """gen2seg SD's ``decode_prediction`` as (gain, offset) of ``y·gain + offset`` for an output y in [lo, hi]: shift
    by |min|, then divide by |max| + |min| *of the shifted values*."""
    shift = abs(lo)
    gain = 1.0 / (abs(hi + shift) + abs(lo + shift) + eps)
    return gain, shift * gain


def _mae_color_scale(lo: float, hi: float, eps: float) -> tuple[float, float]:
    """gen2seg MAE's per-sample ``(y + |min|) / (|max| + |min| + eps)`` (min and max of the unshifted values) as
    (gain, offset)."""
    lo, hi = abs(lo), abs(hi)
    gain = 1.0 / (hi + lo + eps)
    return gain, lo * gain


# Both equal (y - min) / (max - min) whenever the raw output spans zero, as trained outputs do.
# The conv family was trained with SD's shift-by-minimum and is scaled as SD is.
_COLOR_SCALE = {"sd": _sd_color_scale, "mae": _mae_color_scale, "conv": _sd_color_scale}


# --------------------------------------------------------------------------------------------------- robot mode


def robot_network_size(input_hw: tuple[int, int], spec: ModelSpec, processing_resolution: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(content_hw, network_hw) for a frame in robot mode."""
    h, w = input_hw
    if spec.family == "mae":
        assert spec.input_hw is not None
        # The ViT has a fixed token grid and was fine-tuned on squashed frames.
        return spec.input_hw, spec.input_hw
    if spec.input_hw is not None:
        th, tw = spec.input_hw
        scale = min(th / h, tw / w)
        content = (min(th, max(1, round(h * scale))), min(tw, max(1, round(w * scale))))
        return content, spec.input_hw
    scale = processing_resolution / max(h, w) if processing_resolution > 0 else 1.0
    content = (max(1, round(h * scale)), max(1, round(w * scale)))
    m = spec.pad_multiple
    return content, (_round_up(content[0], m), _round_up(content[1], m))


def _robot_preprocess(rgb: np.ndarray, spec: ModelSpec, processing_resolution: int) -> tuple[np.ndarray, FrameGeometry]:
    hw = _check_rgb(rgb)
    content, net = robot_network_size(hw, spec, processing_resolution)
    geometry = FrameGeometry(hw, content)
    shrinking = content[0] <= hw[0] and content[1] <= hw[1] and content != hw
    blob = np.empty((3, *net), np.float32)
    scale, bias = _normalisation(spec)
    if shrinking and (hw[0] % content[0] or hw[1] % content[1]):
        # A fractional ratio (1280×720 → 768×432): OpenCV's slow INTER_AREA path, so resample.area_chw.
        area_chw(np.ascontiguousarray(rgb), blob, scale, bias, content)
    else:
        normalise_chw(_resize(rgb, content), blob, scale, bias)
    # Edge padding up to the network's multiple.
    blob[:, content[0]:, : content[1]] = blob[:, content[0] - 1 : content[0], : content[1]]
    blob[:, :, content[1]:] = blob[:, :, content[1] - 1 : content[1]]
    return blob, geometry


def _normalisation(spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, bias) taking uint8 values v to (v/255 - mean) / std."""
    std = np.asarray(spec.std, np.float32)
    return 1.0 / (255.0 * std), -np.asarray(spec.mean, np.float32) / std


def _normalise_chw(img: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """uint8 H×W×3 → float32 3×H×W as (x/255 - mean) / std."""
    return normalise_chw(img, np.empty((3, *img.shape[:2]), np.float32), *_normalisation(spec))


def _robot_postprocess(raw: np.ndarray, geometries: Sequence[FrameGeometry], spec: ModelSpec) -> list[ColorMap]:
    scale = _COLOR_SCALE[spec.family]
    out = []
    for y, geo in zip(raw, geometries):
        ch, cw = geo.content_hw
        y = y[:, :ch, :cw]
        nonfinite = 0
        lo, hi = float(y.min()), float(y.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            y = np.array(y, dtype=np.float32)
            bad = ~np.isfinite(y)
            nonfinite = int(bad.any(axis=0).sum())
            y[bad] = 0.0
            lo, hi = float(y.min()), float(y.max())
        gain, offset = scale(lo, hi, NORM_EPS)
        # OpenCV interleaves the planes into H×W×3 several times faster than a strided numpy copy; the affine
        # colour scale then runs in place. ColorMap resizes on demand.
        colors = cv2.merge([np.asarray(plane, np.float32) for plane in y])
        colors *= np.float32(gain * 255.0)
        colors += np.float32(offset * 255.0)
        out.append(ColorMap(colors, nonfinite, geo.input_hw))
    return out


# ----------------------------------------------------------------------------------------------- reference mode


def _pil_resize_float(x: np.ndarray, hw: tuple[int, int], resample: int) -> np.ndarray:
    """Resize a float32 C×H×W array channel by channel with PIL's mode 'F' (antialiased when shrinking)."""
    chans = [np.asarray(Image.fromarray(c, mode="F").resize((hw[1], hw[0]), resample=resample)) for c in x]
    return np.stack(chans).astype(np.float32)


def _reference_preprocess(rgb: np.ndarray, spec: ModelSpec, processing_resolution: int) -> tuple[np.ndarray, FrameGeometry]:
    hw = _check_rgb(rgb)
    if spec.family == "mae":
        assert spec.input_hw is not None
        ih, iw = spec.input_hw
        # inference_mae.py: PIL Image.resize with its default filter (bicubic), then the ViT processor
        # (an identity resize at this size, /255, ImageNet mean/std).
        small = np.asarray(Image.fromarray(rgb).resize((iw, ih)))
        return _normalise_chw(small, spec), FrameGeometry(hw, spec.input_hw)
    if spec.input_hw is not None:
        raise ValueError("reference mode reproduces the official dynamic-shape SD pipeline; this model has a fixed "
                         f"input of {spec.input_hw}. Use robot mode, or a checkpoint folder / dynamic ONNX export.")
    h, w = hw
    res = processing_resolution if processing_resolution > 0 else max(h, w)
    content = (h * res // max(h, w), w * res // max(h, w))
    x = _normalise_chw(rgb, spec)
    if content != hw:
        x = _pil_resize_float(x, content, Image.Resampling.BILINEAR)
    net = (_round_up(content[0], REFERENCE_SD_PAD), _round_up(content[1], REFERENCE_SD_PAD))
    x = np.pad(x, ((0, 0), (0, net[0] - content[0]), (0, net[1] - content[1])), mode="edge")
    return x, FrameGeometry(hw, content)


def reference_processing_output(raw: np.ndarray, geometries: Sequence[FrameGeometry], spec: ModelSpec) -> list[np.ndarray]:
    """The official pipeline's float output (N of h×w×3, 0..255, at processing resolution), before the scripts'
    uint8 truncation and Lanczos resize. Exposed for parity tests against the official pipeline."""
    raw = raw.astype(np.float32)
    if spec.family == "sd":
        # The official pipeline normalises each decode chunk of `batch_size` frames together; here the chunk is
        # the frames passed in one call (inference_sd.py passes one).
        # decode_prediction's operation order (shift, then divide), so uint8 truncation rounds as the official does.
        shifted = raw + abs(float(raw.min()))
        scaled = shifted / (abs(float(shifted.max())) + abs(float(shifted.min()))) * 255.0
    else:
        scaled = np.empty_like(raw)
        for i, y in enumerate(raw):
            # The official operation order, (y + |min|) / (...): gain·y + offset can round below 0 and NaN the gamma.
            lo, hi = abs(float(y.min())), abs(float(y.max()))
            scaled[i] = ((y + lo) / (hi + lo + NORM_EPS)) ** REFERENCE_MAE_GAMMA * 255.0
    return [np.ascontiguousarray(y[:, : g.content_hw[0], : g.content_hw[1]].transpose(1, 2, 0)) for y, g in zip(scaled, geometries)]


def _reference_postprocess(raw: np.ndarray, geometries: Sequence[FrameGeometry], spec: ModelSpec) -> list[ColorMap]:
    out = []
    for y, geo in zip(reference_processing_output(raw, geometries, spec), geometries):
        img = Image.fromarray(y.astype(np.uint8)).resize((geo.input_hw[1], geo.input_hw[0]), Image.Resampling.LANCZOS)
        out.append(ColorMap(np.asarray(img, dtype=np.float32)))
    return out


# ----------------------------------------------------------------------------------------------------- public API


def check_mode(spec: ModelSpec, mode: str) -> None:
    """Raise ValueError if ``mode`` is unknown or cannot run a model of this spec."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "reference" and spec.family == "conv":
        raise ValueError("reference mode reproduces the official gen2seg SD and MAE pipelines; a conv-family model has "
                         "no official pipeline: use robot mode")


def preprocess(rgbs: Sequence[np.ndarray], spec: ModelSpec, mode: Mode = "robot", processing_resolution: int = 768) -> tuple[np.ndarray, list[FrameGeometry]]:
    """uint8 RGB frames → one float32 N×3×H×W network batch and where each frame sits in it.

    Frames of different sizes that map to different network sizes cannot share a batch (ValueError).
    """
    check_mode(spec, mode)
    if not rgbs:
        raise ValueError("no images to preprocess")
    fn = _robot_preprocess if mode == "robot" else _reference_preprocess
    items = [fn(rgb, spec, processing_resolution) for rgb in rgbs]
    shapes = {x.shape for x, _ in items}
    if len(shapes) > 1:
        raise ValueError(f"frames map to different network input sizes {sorted(shapes)}; run them in separate batches")
    # One frame (the node's case) is its own batch: no copy of a frame-sized float array.
    batch = items[0][0][None] if len(items) == 1 else np.stack([x for x, _ in items])
    return batch, [g for _, g in items]


def postprocess(raw: np.ndarray, geometries: Sequence[FrameGeometry], spec: ModelSpec, mode: Mode = "robot") -> list[ColorMap]:
    """Raw network output N×3×H×W → one colour map per frame at that frame's input resolution."""
    if raw.ndim != 4 or raw.shape[1] != 3 or raw.shape[0] != len(geometries):
        raise ValueError(f"expected raw output of shape ({len(geometries)}, 3, H, W), got {raw.shape}")
    if mode == "robot":
        return _robot_postprocess(raw, geometries, spec)
    return _reference_postprocess(raw, geometries, spec)
