"""The segmenter node's parameters: its own I/O settings (``NodeParams``) plus the flattened ``SegmenterConfig``.

This is the one place that declares ROS parameters, reads them back into typed, validated objects and decides
which of them may change while the node runs. Every parameter has a dotted name (``model.path``,
``sync.slop``); in a params YAML file they nest as maps, which rclpy flattens to the same dotted names::

    segmenter:
      ros__parameters:
        model: {path: /models/gen2seg-mae-h.onnx}
        input: {use_depth: true}
        sync: {mode: approximate, slop: 0.02}

Sections of the node (``NodeParams``): ``input``, ``qos``, ``sync``, ``processing``, ``diagnostics``.
Sections of the Segmenter (``SegmenterConfig``): ``model``, ``backend``, ``instances``, ``prompting``, ``depth``,
``tracking``. The two sets never share a name.

Run time: thresholds (``instances.*``, ``prompting.*``, ``depth.*``, ``tracking.*``) and a few node settings
(``RUNTIME_NODE_PARAMS``) can be set while the node runs; everything else (the model, the backend, topics, QoS,
the sync mode) is read once at start-up and a change is rejected with the reason.

Only rclpy API that Humble, Jazzy and Kilted share is used (declare_parameter, add_on_set_parameters_callback,
ParameterDescriptor with dynamic_typing).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping


from seg_node.model_settings import is_carried
from seg_node.processing.image_codec import DEFAULT_LIMITS, SizeLimits
from seg_node.config import (ConfigError, flatten_mapping, SegmenterConfig, build_dataclass, config_from_dict, flatten,
                             read_yaml_mapping, unflatten)

__all__ = [
    "NODE_NAME",
    "RELIABILITIES",
    "RUNTIME_CONFIG_SECTIONS",
    "RUNTIME_NODE_PARAMS",
    "DiagnosticsParams",
    "InputParams",
    "NodeParams",
    "ParameterHandler",
    "ProcessingParams",
    "QoSParams",
    "SyncParams",
    "TopicQoS",
    "load_params_file",
    "node_params_from_dict",
    "params_from_flat",
]

NODE_NAME = "segmenter"
RELIABILITIES = ("best_effort", "reliable", "system_default")
TRANSPORTS = ("raw", "compressed")
SYNC_MODES = ("exact", "approximate")


def _check(name: str, ok: bool, allowed: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


@dataclass(frozen=True)
class TopicQoS:
    # "best_effort" (REP 2003 SensorDataQoS for camera inputs), "reliable" or "system_default".
    reliability: str = "best_effort"
    # KEEP_LAST history depth.
    depth: int = 5

    def __post_init__(self) -> None:
        _check("reliability", self.reliability in RELIABILITIES, f"one of {', '.join(RELIABILITIES)}", self.reliability)
        _check("depth", 1 <= self.depth <= 1000, "in [1, 1000]", self.depth)


@dataclass(frozen=True)
class QoSParams:
    image: TopicQoS = field(default_factory=TopicQoS)
    depth_image: TopicQoS = field(default_factory=TopicQoS)
    camera_info: TopicQoS = field(default_factory=TopicQoS)
    # Every output topic but /diagnostics (reliable, depth 10). Reliable publishers also serve best-effort readers.
    outputs: TopicQoS = field(default_factory=lambda: TopicQoS("reliable", 5))


@dataclass(frozen=True)
class InputParams:
    # "raw": sensor_msgs/Image on `image`; "compressed": sensor_msgs/CompressedImage on `<image>/compressed`.
    transport: str = "raw"
    # Subscribe to `depth` (32FC1 metres or 16UC1 millimetres, aligned to the colour image) for 3D segments.
    use_depth: bool = False
    # With use_depth: also subscribe to `camera_info` (needed for 3D; without it segments say DEPTH_NO_CAMERA_INFO).
    use_camera_info: bool = True
    # Frames with more pixels are rejected (with a warning) before they are decoded: 16 MP fits 4K, not 8K.
    max_pixels: int = DEFAULT_LIMITS.max_pixels
    # Frames with a longer side, or a longer side more than max_aspect_ratio times the shorter, are rejected the same way.
    max_side: int = DEFAULT_LIMITS.max_side
    max_aspect_ratio: float = DEFAULT_LIMITS.max_aspect_ratio

    def __post_init__(self) -> None:
        _check("transport", self.transport in TRANSPORTS, f"one of {', '.join(TRANSPORTS)}", self.transport)
        _check("max_pixels", 1 <= self.max_pixels <= 2**31 - 1, "in [1, 2147483647]", self.max_pixels)
        _check("max_side", 1 <= self.max_side <= 2**20, "in [1, 1048576]", self.max_side)
        _check("max_aspect_ratio", 1.0 <= self.max_aspect_ratio <= 1e6, "in [1.0, 1000000.0]", self.max_aspect_ratio)

    @property
    def size_limits(self) -> SizeLimits:
        """What image_codec's decoders take as ``limits``."""
        return SizeLimits(self.max_pixels, self.max_side, self.max_aspect_ratio)


@dataclass(frozen=True)
class SyncParams:
    # "exact": depth and camera_info must carry the image's stamp; "approximate": within `slop`.
    mode: str = "approximate"
    # Seconds between the image stamp and the depth / camera_info stamps that still count as one frame.
    slop: float = 0.02
    # Messages kept per input while waiting for their partners.
    queue_size: int = 10
    # Seconds an image waits for depth / camera_info; then it is segmented without them (and counted).
    timeout: float = 0.25

    def __post_init__(self) -> None:
        _check("mode", self.mode in SYNC_MODES, f"one of {', '.join(SYNC_MODES)}", self.mode)
        _check("slop", 0.0 <= self.slop <= 10.0, "in [0.0, 10.0] s", self.slop)
        _check("queue_size", 1 <= self.queue_size <= 1000, "in [1, 1000]", self.queue_size)
        _check("timeout", 0.001 <= self.timeout <= 60.0, "in [0.001, 60.0] s", self.timeout)


@dataclass(frozen=True)
class ProcessingParams:
    # Run the model only when ~/segment_points asks (on the latest frame); topics then publish per request.
    on_demand: bool = False
    # Tint strength of ~/overlay.
    overlay_alpha: float = 0.5
    # Seconds a ~/segment_points call waits for an on-demand inference.
    service_timeout: float = 30.0

    def __post_init__(self) -> None:
        _check("overlay_alpha", 0.0 <= self.overlay_alpha <= 1.0, "in [0.0, 1.0]", self.overlay_alpha)
        _check("service_timeout", 0.1 <= self.service_timeout <= 3600.0, "in [0.1, 3600.0] s", self.service_timeout)


@dataclass(frozen=True)
class DiagnosticsParams:
    # Seconds between /diagnostics messages.
    period: float = 1.0
    # Publish ~/latency (diagnostic_msgs/DiagnosticArray, header copied from the input image): per-frame stage times.
    publish_latency: bool = False
    # Seconds between two warnings with the same reason (bad frames, sync misses).
    warn_period: float = 5.0
    # Frames the latency statistics (median, max) cover.
    window: int = 100
    # Seconds a worker thread may go without progress (one model run, or waiting) before the node exits with code 3
    # for a respawn: a model run that never returns cannot be interrupted.
    stall_timeout: float = 120.0

    def __post_init__(self) -> None:
        _check("period", 0.05 <= self.period <= 3600.0, "in [0.05, 3600.0] s", self.period)
        _check("warn_period", 0.0 <= self.warn_period <= 3600.0, "in [0.0, 3600.0] s", self.warn_period)
        _check("window", 1 <= self.window <= 100000, "in [1, 100000]", self.window)
        _check("stall_timeout", 1.0 <= self.stall_timeout <= 86400.0, "in [1.0, 86400.0] s", self.stall_timeout)


@dataclass(frozen=True)
class NodeParams:
    input: InputParams = field(default_factory=InputParams)
    qos: QoSParams = field(default_factory=QoSParams)
    sync: SyncParams = field(default_factory=SyncParams)
    processing: ProcessingParams = field(default_factory=ProcessingParams)
    diagnostics: DiagnosticsParams = field(default_factory=DiagnosticsParams)


# What may change while the node runs. Everything else is read once (a change is rejected with the reason).
RUNTIME_CONFIG_SECTIONS = ("instances", "prompting", "depth", "tracking")
RUNTIME_NODE_PARAMS = frozenset({
    "input.max_pixels", "input.max_side", "input.max_aspect_ratio", "sync.slop", "sync.timeout", "processing.on_demand",
    "processing.overlay_alpha", "processing.service_timeout", "diagnostics.publish_latency", "diagnostics.warn_period",
    "diagnostics.stall_timeout",
})
_STARTUP_REASONS = {
    "model": "the model is loaded at start-up",
    "backend": "the inference backend is created at start-up",
    "input": "subscriptions are created at start-up",
    "qos": "subscriptions and publishers are created at start-up",
    "sync": "the synchroniser's mode and queues are set up at start-up",
    "diagnostics": "the diagnostics timer and window are set up at start-up",
}
# Names rclpy declares on every node; they may appear in params files.
_ROS_BUILTIN_PREFIXES = ("use_sim_time", "qos_overrides.", "start_type_description_service")


def node_params_from_dict(data: Mapping[str, Any]) -> NodeParams:
    """A validated NodeParams from nested sections (``{"sync": {"slop": 0.05}}``); ConfigError names the parameter."""
    return build_dataclass(NodeParams, data)


NODE_DEFAULTS: dict[str, Any] = flatten(NodeParams())
CONFIG_DEFAULTS: dict[str, Any] = flatten(SegmenterConfig())
_CONFIG_SECTIONS = {name.split(".")[0] for name in CONFIG_DEFAULTS}
_NODE_SECTIONS = {name.split(".")[0] for name in NODE_DEFAULTS}
assert not _CONFIG_SECTIONS & _NODE_SECTIONS, "node and Segmenter parameter sections must not share names"
ALL_DEFAULTS: dict[str, Any] = {**NODE_DEFAULTS, **CONFIG_DEFAULTS}


def params_from_flat(values: Mapping[str, Any]) -> tuple[NodeParams, SegmenterConfig]:
    """Dotted names (any subset; the rest take their defaults) → (NodeParams, SegmenterConfig), validated.

    Unknown names inside the node's or the Segmenter's sections are errors (a typo would otherwise be ignored).
    """
    node_values, config_values = dict(NODE_DEFAULTS), dict(CONFIG_DEFAULTS)
    for name, value in values.items():
        section = name.split(".")[0]
        if name in NODE_DEFAULTS:
            node_values[name] = value
        elif name in CONFIG_DEFAULTS:
            config_values[name] = value
        elif section in _NODE_SECTIONS or section in _CONFIG_SECTIONS:
            siblings = sorted(n for n in ALL_DEFAULTS if n.split(".")[0] == section)
            raise ConfigError(f"{name}: unknown parameter (parameters of '{section}': {', '.join(siblings)})")
    return node_params_from_dict(unflatten(node_values)), config_from_dict(unflatten(config_values))


def unknown_parameters(names: Any) -> list[str]:
    """Names that are neither ours nor rclpy's own (e.g. from a `/**:` section meant for other nodes)."""
    return sorted(n for n in names if n not in ALL_DEFAULTS and not n.startswith(_ROS_BUILTIN_PREFIXES))


def load_params_file(path: str | Path, node_name: str = NODE_NAME,
                     overrides: Mapping[str, Any] | None = None) -> tuple[NodeParams, SegmenterConfig]:
    """Read a ROS 2 params YAML the way rclpy applies it to a node called ``node_name`` (the ``/**`` section, then
    the node's own, which wins; nested maps become dotted names) and validate it. ``overrides`` (dotted names) win
    over the file, as ``-p name:=value`` does. Errors name the file."""
    path = Path(path)
    data = read_yaml_mapping(path, "params file", "node names")
    values: dict[str, Any] = {}
    matched = False
    for key in ("/**", node_name, f"/{node_name}"):
        section = data.get(key)
        if section is None:
            continue
        if not isinstance(section, Mapping) or not isinstance(section.get("ros__parameters"), Mapping):
            raise ConfigError(f"{path}: section '{key}' needs a 'ros__parameters' mapping")
        values.update(flatten_mapping(section["ros__parameters"]))
        matched = True
    if not matched:
        raise ConfigError(f"{path}: no '{node_name}:' or '/**:' section with ros__parameters")
    values.update(overrides or {})
    try:
        return params_from_flat(values)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def runtime_change_problem(name: str) -> str | None:
    """None if ``name`` may change while the node runs, else the reason it may not."""
    if name in RUNTIME_NODE_PARAMS:
        return None
    section = name.split(".")[0]
    if name in CONFIG_DEFAULTS and section in RUNTIME_CONFIG_SECTIONS:
        return None
    if name in ALL_DEFAULTS:
        why = _STARTUP_REASONS.get(section, "it is read at start-up")
        return f"{name} cannot change while the node runs ({why}); set it in the params file and restart the node"
    return None  # not ours (use_sim_time, ...): rclpy handles it


# ------------------------------------------------------------------------------------------------ ROS side


_DESCRIPTIONS = {
    "model.path": "checkpoint folder (gen2seg SD or MAE) or exported .onnx file",
    "input.transport": "raw (sensor_msgs/Image on `image`) or compressed (CompressedImage on `<image>/compressed`)",
    "input.use_depth": "subscribe to `depth` (32FC1 m or 16UC1 mm, aligned to the colour image) for 3D segments",
    "input.use_camera_info": "with use_depth, subscribe to `camera_info` (needed for 3D)",
    "input.max_pixels": "frames with more pixels are rejected before decoding",
    "input.max_side": "frames with a longer side are rejected before decoding",
    "input.max_aspect_ratio": "frames whose longer side exceeds the shorter this many times are rejected before decoding",
    "sync.mode": "exact or approximate time sync of image, depth and camera_info",
    "sync.slop": "seconds between stamps that still count as one frame (approximate)",
    "sync.queue_size": "messages kept per input while waiting for partners",
    "sync.timeout": "seconds an image waits for depth/camera_info before it is segmented without them",
    "processing.on_demand": "run the model only when ~/segment_points is called",
    "processing.overlay_alpha": "tint strength of ~/overlay",
    "processing.service_timeout": "seconds a ~/segment_points call waits for on-demand inference",
    "diagnostics.period": "seconds between /diagnostics messages",
    "diagnostics.publish_latency": "publish per-frame stage latencies on ~/latency",
    "diagnostics.warn_period": "seconds between warnings with the same reason",
    "diagnostics.window": "frames the latency statistics cover",
    "diagnostics.stall_timeout": "seconds a worker may go without progress before the node exits (code 3) for a respawn",
}


class ParameterHandler:
    """Declares every parameter on ``node``, reads them into (NodeParams, SegmenterConfig) and vets changes.

    ``on_change(node_params, config, changed_names)`` is called (from the parameter service's thread) after a
    run-time change has been validated; rejected changes never reach it. Start-up-only parameters may change while
    ``startup_locked()`` is False (a lifecycle node before configure); ``reload`` then reads them again.
    """

    def __init__(self, node: Any, on_change: Callable[[NodeParams, SegmenterConfig, list[str]], None] | None = None,
                 startup_locked: Callable[[], bool] = lambda: True) -> None:
        from rcl_interfaces.msg import ParameterDescriptor

        self._node = node
        self._on_change = on_change
        self._locked = startup_locked
        overrides = getattr(node, "_parameter_overrides", {})  # rclpy keeps the params file / -p values here
        self.ignored = unknown_parameters(overrides)
        # What the user set (params files, -p, later run-time changes): a model's recommendation never overrides it.
        self.user_set = set(overrides)
        self._adopting = False
        for name in sorted(overrides):
            section = name.split(".")[0]
            if name not in ALL_DEFAULTS and (section in _NODE_SECTIONS or section in _CONFIG_SECTIONS):
                siblings = sorted(n for n in ALL_DEFAULTS if n.split(".")[0] == section)
                raise ConfigError(f"{name}: unknown parameter (parameters of '{section}': {', '.join(siblings)})")
        for name, default in ALL_DEFAULTS.items():
            problem = runtime_change_problem(name)
            what = _DESCRIPTIONS.get(name, f"SegmenterConfig {name}" if name in CONFIG_DEFAULTS else name)
            descriptor = ParameterDescriptor(
                name=name,
                description=f"{what} ({'changeable at run time' if problem is None else 'start-up only'})",
                # The typed config does the type checks (ints accepted for floats) and names the parameter.
                dynamic_typing=True,
            )
            node.declare_parameter(name, default, descriptor)
        self.values: dict[str, Any] = {name: node.get_parameter(name).value for name in ALL_DEFAULTS}
        # Registered after declaring, so declarations do not go through it.
        node.add_on_set_parameters_callback(self._on_set)

    def reload(self) -> None:
        """Read and validate every parameter's current value; ConfigError (naming the parameter) when one is
        invalid (the node then fails at start-up, or a lifecycle configure fails)."""
        values = {name: self._node.get_parameter(name).value for name in ALL_DEFAULTS}
        self.node_params, self.config = params_from_flat(values)
        self.values = values

    def adopt_model_settings(self, settings: Mapping[str, Any]) -> list[str]:
        """Take a model's recommended post-processing (``seg_node.model_settings``) for every carried parameter the
        user did not set (the others return to their defaults, so a lifecycle node that configures another model
        keeps nothing of the previous one's). The node's parameters then report what runs. Returns the names
        taken from ``settings``; ConfigError when a value is invalid."""
        carried = [n for n in CONFIG_DEFAULTS if is_carried(n) and n not in self.user_set]
        adopted = {n: settings.get(n, CONFIG_DEFAULTS[n]) for n in carried}
        candidate = {**self.values, **adopted}
        self.node_params, self.config = params_from_flat(candidate)
        self.values = candidate
        from rclpy.parameter import Parameter

        self._adopting = True  # not a user's change: no run-time checks, and it stays the model's
        try:
            self._node.set_parameters([Parameter(n, value=v) for n, v in adopted.items()])
        finally:
            self._adopting = False
        return sorted(n for n in adopted if n in settings)

    def _on_set(self, parameters: list[Any]) -> Any:
        from rcl_interfaces.msg import SetParametersResult

        if self._adopting:
            return SetParametersResult(successful=True)
        changed = {p.name: p.value for p in parameters if p.name in ALL_DEFAULTS}
        for name, value in changed.items():
            if value == self.values[name]:
                continue
            problem = runtime_change_problem(name)
            if problem is not None and self._locked():
                return SetParametersResult(successful=False, reason=problem)
        if not changed:
            return SetParametersResult(successful=True)
        candidate = {**self.values, **changed}
        try:
            node_params, config = params_from_flat(candidate)
        except ConfigError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        names = sorted(n for n, v in changed.items() if v != self.values[n])
        self.values, self.node_params, self.config = candidate, node_params, config
        self.user_set.update(names)
        if names and self._on_change is not None:
            self._on_change(node_params, config, names)
        return SetParametersResult(successful=True)
