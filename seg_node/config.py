"""The Segmenter's configuration: one typed, validated object that YAML files (and, in the node, ROS
parameters) map onto. A bad value fails at start-up with its dotted name, the allowed values and the source."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from seg_node.processing.model_io import MODES
from seg_node.processing.geometry3d import DepthParams
from seg_node.backends.base import BACKEND_NAMES, PRECISIONS
from seg_node.instances import InstanceParams
from seg_node.processing.prompting import PromptParams
from seg_node.processing.tracking import TrackerParams

LABEL_RESOLUTIONS = ("network", "input")


class ConfigError(ValueError):
    """A configuration value or file is invalid. The message names the parameter (or file) and the problem."""


@dataclass(frozen=True)
class ModelConfig:
    # Checkpoint folder (gen2seg SD or MAE layout) or an exported .onnx file.
    path: str = ""
    # "robot" (fixes for deployment) or "reference" (numerically the official gen2seg pipeline); see processing/model_io.py.
    mode: str = "robot"
    # SD: long edge the frame is resized to before the network (0 = the frame's own size). MAE ignores it.
    processing_resolution: int = 768
    # Where instances are found when the network's output is smaller than the frame: "network" (at the output's
    # resolution; the label image is then scaled up to the frame, nearest neighbour) or "input" (the colour map
    # is scaled up first). "network" costs a fraction at high resolutions; "input" gives smoother borders.
    label_resolution: str = "network"
    # Robot mode: guided-filter the colour map with the frame (seg_node.processing.refine) at the network's resolution, so
    # borders follow the frame's edges; window radius in network pixels (0 = off) and regularisation.
    refine_radius: int = 0
    refine_eps: float = 1e-4
    # Fit the filter's local models on the map and frame downscaled by this factor (the fast guided filter; 1 = at
    # full size): for a map at the frame's own size, 2 costs about a third and moves borders by under a pixel.
    refine_subsample: int = 1
    # The radius for the map that point prompts read (-1 = refine_radius): a wide window rounds instances for
    # segment-everything but bleeds a clicked mask into its neighbours; made on the first click of a frame.
    prompt_refine_radius: int = -1
    # Point prompts on a frame larger than the network's output read the map guided-filtered once more at the
    # frame's resolution, with the frame, instead of only scaled up (bilinear blurs borders by the scale factor);
    # radius in network pixels (times the scale in frame pixels), 0 = off. Made on the first click of a frame
    # (about 45 ms at 640×480 on one core).
    prompt_upsample_radius: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 0 <= self.refine_radius <= 64:
            raise ValueError(f"refine_radius must be in [0, 64] (0 = off), got {self.refine_radius}")
        if not 1 <= self.refine_subsample <= 8:
            raise ValueError(f"refine_subsample must be in [1, 8] (1 = full size), got {self.refine_subsample}")
        if not 0 < self.refine_eps <= 1:
            raise ValueError(f"refine_eps must be in (0, 1], got {self.refine_eps}")
        if not -1 <= self.prompt_refine_radius <= 64:
            raise ValueError(f"prompt_refine_radius must be in [-1, 64] (-1 = refine_radius, 0 = off), "
                             f"got {self.prompt_refine_radius}")
        if not 0 <= self.prompt_upsample_radius <= 16:
            raise ValueError(f"prompt_upsample_radius must be in [0, 16] (0 = off), got {self.prompt_upsample_radius}")
        filtered = self.refine_radius or self.prompt_refine_radius > 0 or self.prompt_upsample_radius
        if filtered and self.mode != "robot":
            raise ValueError("refine_radius, prompt_refine_radius and prompt_upsample_radius need mode robot "
                             "(reference mode reproduces the official pipeline)")
        if self.label_resolution not in LABEL_RESOLUTIONS:
            raise ValueError(f"label_resolution must be one of {', '.join(LABEL_RESOLUTIONS)}, got {self.label_resolution!r}")
        if not 0 <= self.processing_resolution <= 8192:
            raise ValueError(f"processing_resolution must be in [0, 8192] (0 = input size), got {self.processing_resolution}")


@dataclass(frozen=True)
class BackendConfig:
    # "auto" picks by model path: folder → torch, .onnx → onnxruntime.
    name: str = "auto"
    # "cpu", "cuda" or "cuda:N".
    device: str = "cpu"
    precision: str = "fp32"
    # Intra-op threads (0 = the library's default).
    threads: int = 0
    # TensorRT: engine cache folder ("" = engines/cache of a checkout, else ~/.cache/seg_node/engines;
    # $SEG_NODE_ENGINE_CACHE overrides).
    engine_cache_dir: str = ""
    # TensorRT: a missing or stale engine is built once ("build") or stops start-up with the build_engine command ("fail").
    engine_on_missing: str = "build"
    cuda_graph: bool = False
    # TensorRT: DLA core on Jetson (-1 = GPU only), builder workspace limit (0 = TensorRT's default), largest batch.
    dla_core: int = -1
    workspace_mb: int = 0
    max_batch: int = 1
    # TensorRT int8 from an .onnx path: calibration images (part of the engine key).
    calib_dir: str = ""

    def __post_init__(self) -> None:
        if self.name not in BACKEND_NAMES:
            raise ValueError(f"name must be one of {', '.join(BACKEND_NAMES)}, got {self.name!r}")
        if not (self.device == "cpu" or self.device == "cuda" or (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not 0 <= self.threads <= 256:
            raise ValueError(f"threads must be in [0, 256], got {self.threads}")
        if self.engine_on_missing not in ("build", "fail"):
            raise ValueError(f"engine_on_missing must be build or fail, got {self.engine_on_missing!r}")
        if self.dla_core < -1:
            raise ValueError(f"dla_core must be >= -1 (-1 = GPU only), got {self.dla_core}")
        if self.workspace_mb < 0:
            raise ValueError(f"workspace_mb must be >= 0, got {self.workspace_mb}")
        if not 1 <= self.max_batch <= 64:
            raise ValueError(f"max_batch must be in [1, 64], got {self.max_batch}")


@dataclass(frozen=True)
class SegmenterConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    instances: InstanceParams = field(default_factory=InstanceParams)
    prompting: PromptParams = field(default_factory=PromptParams)
    depth: DepthParams = field(default_factory=DepthParams)
    # Stable ids across frames of one stream; segment_images turns it off (its images are unrelated).
    tracking: TrackerParams = field(default_factory=TrackerParams)


def _coerce(value: Any, kind: Any, name: str) -> Any:
    # YAML and ROS parameters give ints for floats and lists for tuples; anything else is a type error.
    origin = typing.get_origin(kind)
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is str:
        if isinstance(value, str):
            return value
    elif origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(kind)
        item = args[0]
        if len(args) != 2 or args[1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{name}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return tuple(_coerce(v, item, f"{name}[{i}]") for i, v in enumerate(value))
    else:
        return value
    raise ConfigError(f"{name}: expected {getattr(kind, '__name__', kind)}, got {value!r} ({type(value).__name__})")


def build_dataclass(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """A validated instance of a (nested) config dataclass from plain data; ConfigError names the dotted parameter."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{prefix + '.' if prefix else ''}{unknown[0]}: unknown parameter (allowed: {', '.join(sorted(names))})")
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        kind = hints[key]
        kwargs[key] = build_dataclass(kind, value, name) if dataclasses.is_dataclass(kind) else _coerce(value, kind, name)
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ConfigError(f"{prefix}.{exc}" if prefix else str(exc)) from exc


def config_from_dict(data: Mapping[str, Any]) -> SegmenterConfig:
    """Build a validated SegmenterConfig from nested sections (``{"model": {...}, "instances": {...}}``)."""
    return build_dataclass(SegmenterConfig, data)


def config_to_dict(config: Any) -> dict[str, Any]:
    """Nested plain-data form (lists for tuples), the inverse of config_from_dict."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        return list(v) if isinstance(v, tuple) else v
    return plain(config)


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted names → values (``model.path``), the shape ROS parameters take."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def flatten_mapping(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections of plain data (a YAML file, ROS ``ros__parameters``) → dotted names; the inverse of unflatten."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_mapping(value, name + "."))
        else:
            out[name] = value
    return out


def unflatten(values: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of flatten: dotted names → nested sections."""
    nested: dict[str, Any] = {}
    for name, value in values.items():
        node = nested
        *parents, leaf = name.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return nested


def read_yaml_mapping(path: Path, what: str, top_level: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping (empty file = {}); ConfigError names the file and the problem."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:  # YAML is text: random bytes fail here, before the parser
        raise ConfigError(f"{path}: not a text file, so not YAML {what} (byte {exc.start} is not UTF-8)") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of {top_level} at the top level, got {type(data).__name__}")
    return data


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> SegmenterConfig:
    """Read a YAML config file; ``overrides`` (dotted names) win over the file. Errors name the file."""
    path = Path(path)
    data = read_yaml_mapping(path, "config", "sections")
    try:
        config = config_from_dict(data)
        return config_from_dict(unflatten({**flatten(config), **overrides})) if overrides else config
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
