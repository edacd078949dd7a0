"""ROS 2 node ``segmenter``: camera topics in, instance masks and grasp-ready segments out.

Topics (all remappable; parameters in ``seg_node.ros.params``):

=====================  ===================================  =====================================================
in  ``image``          sensor_msgs/Image                    ``input.transport: raw`` (SensorData QoS by default)
in  ``image/compressed`` sensor_msgs/CompressedImage        ``input.transport: compressed`` (base name remapped)
in  ``depth``          sensor_msgs/Image 32FC1 m / 16UC1 mm ``input.use_depth``; aligned to the colour image
in  ``camera_info``    sensor_msgs/CameraInfo               ``input.use_depth`` and ``input.use_camera_info``
out ``~/labels``       sensor_msgs/Image mono16             0 = background, k = segment id k (track id)
out ``~/segments``     seg_msgs/SegmentArray                2D shape; with depth 3D centroid, box, normal, grasp
out ``~/colors``       sensor_msgs/Image rgb8               the model's colour map, only while subscribed
out ``~/overlay``      sensor_msgs/Image rgb8               only while subscribed
out ``~/markers``      visualization_msgs/MarkerArray       3D boxes and grasps, only while subscribed
out ``~/latency``      diagnostic_msgs/DiagnosticArray      per-frame stage times (``diagnostics.publish_latency``)
out ``/diagnostics``   diagnostic_msgs/DiagnosticArray      rates, drops, sync misses, bad frames, latencies
srv ``~/segment_points`` seg_msgs/SegmentPoints             point prompts on the latest frame → masks
srv ``~/complete_masks`` seg_msgs/CompleteMasks              partial label image → completed one (latest frame)
=====================  ===================================  =====================================================

Every output carries the input image's header, copied exactly.

Threads: the main thread spins the node (NodeExecutor); its callbacks only queue messages (the synchroniser, then a
one-slot mailbox: a newer frame replaces an unprocessed one, which is counted as dropped). Two threads run the
Segmenter as a two-stage pipeline (``seg_node.ros.stages``), handing one frame at a time: the worker decodes a frame, runs the network and
finds its instances; the finisher scales, tracks and measures them and publishes while the worker starts the next
frame. ~/segment_points runs on its own thread, as on demand it waits for the worker. Latency therefore stays near
one model run at any input rate, and memory holds one pending frame besides the two in the pipeline.
Bad frames (unsupported encoding, step/size mismatch, truncated or corrupt data, too many pixels, unusable depth
or camera_info) are logged with the reason (rate-limited per reason), counted in /diagnostics, and skipped.

Start-up errors (bad parameter, missing or corrupt model) are logged naming the parameter or file, and the process
exits with code 2. SIGINT and SIGTERM stop the worker, destroy the node and shut rclpy down (which removes the
process's Fast DDS shared-memory files).

Only rclpy API that Humble, Jazzy and Kilted share is used.
"""
from __future__ import annotations

import io
import signal
import statistics
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from seg_msgs.msg import SegmentArray
from seg_msgs.srv import SegmentPoints
from visualization_msgs.msg import MarkerArray

from seg_node.ros import convert as ros_convert
from seg_node.ros.allocator import keep_frame_buffers
from seg_node.ros.completion_service import create_completion_service
from seg_node.backends.base import BackendError
from seg_node.config import ConfigError, SegmenterConfig
from seg_node.processing.model_io import ColorMap
from seg_node.processing.geometry import shapes_2d
from seg_node.processing.geometry3d import DEPTH_NOT_PROVIDED, CameraIntrinsics, segments_3d
from seg_node.processing.image_codec import (
    CorruptCompressedImageError,
    ImageCodecError,
    MalformedImageError,
    UnsupportedEncodingError,
    decode_depth,
    decode_to_rgb8,
)
from seg_node.instances import InstanceLabels
from seg_node.models.checkpoints import CheckpointError
from seg_node.ros.params import NODE_NAME, NodeParams, ParameterHandler, TopicQoS
from seg_node.pipeline import Segmenter, SegmentationResult
from seg_node.ros.executor import NodeExecutor
from seg_node.ros.stages import TwoStagePipeline, Unavailable
from seg_node.processing.sync import Matched, TimeSynchronizer, stamp_to_ns

__all__ = ["SegmenterNode", "StartupError", "main"]

DEPTH, CAMERA_INFO = "depth", "camera_info"
# Exit code for a bad parameter, config or model (as segment_images).
EXIT_STARTUP = 2
# Seconds the worker may take to finish a model run at shutdown before the process leaves without it.
WORKER_JOIN_TIMEOUT = 1.2
_RELIABILITY = {
    "best_effort": ReliabilityPolicy.BEST_EFFORT,
    "reliable": ReliabilityPolicy.RELIABLE,
    "system_default": ReliabilityPolicy.SYSTEM_DEFAULT,
}
_CODEC_REASONS = (
    (UnsupportedEncodingError, "unsupported_encoding"),
    (CorruptCompressedImageError, "corrupt_compressed"),
    (MalformedImageError, "malformed_image"),
    (ImageCodecError, "bad_image"),
)
# Latency stages reported in /diagnostics, in order (the Segmenter's own stages come from its timings). "transport" and
# "end_to_end" compare the wall clock with the image stamp: meaningful when the camera stamps with this machine's clock.
_STAGES = ("transport", "wait", "decode", "preprocess", "network", "postprocess", "instances", "geometry", "tracking", "publish",
           "total", "end_to_end")


class StartupError(RuntimeError):
    """The node cannot start; the message names the parameter or file and the problem."""


class BadFrame(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def qos_profile(p: TopicQoS) -> QoSProfile:
    return QoSProfile(reliability=_RELIABILITY[p.reliability], history=HistoryPolicy.KEEP_LAST, depth=p.depth,
                      durability=DurabilityPolicy.VOLATILE)


@dataclass
class _Frame:
    image: Any
    stamp_ns: int
    received: float  # time.monotonic() of the image callback
    depth: Any = None
    camera_info: Any = None
    missing: tuple[str, ...] = ()


@dataclass
class _Latest:
    """The last segmented frame, for ~/segment_points."""

    frame: _Frame
    header: Any
    result: SegmentationResult
    depth: np.ndarray | None
    intrinsics: CameraIntrinsics | None


@dataclass
class _Prepared:
    """A frame through the first stage (decode, network): what the second stage needs to finish it."""

    frame: _Frame
    rgb: np.ndarray
    depth: np.ndarray | None
    intrinsics: CameraIntrinsics | None
    color_map: ColorMap
    found: InstanceLabels
    timings_ms: dict[str, float]
    started: float
    decoded: float


class SegmenterNode(Node):
    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        try:
            self._setup()
        except BaseException:
            self.close()
            self.destroy_node()
            raise

    # ------------------------------------------------------------------------------------------- set-up

    def _setup(self) -> None:
        log = self.get_logger()
        try:
            self._params = ParameterHandler(self, self._on_params_changed)
        except ConfigError as exc:
            files = _params_files(sys.argv)
            where = f" (params file{'s' if len(files) > 1 else ''}: {', '.join(files)}, or a -p override)" if files else ""
            raise StartupError(f"invalid parameter: {exc}{where}") from exc
        if self._params.ignored:
            log.warning(f"ignoring parameters this node does not have: {', '.join(self._params.ignored)}")
        p: NodeParams = self._params.node_params
        config: SegmenterConfig = self._params.config
        self.node_params = p
        if not config.model.path:
            raise StartupError("parameter model.path is empty: give a gen2seg checkpoint folder or an exported .onnx "
                               "file (e.g. --ros-args -p model.path:=/models/gen2seg-mae-h.onnx)")
        try:
            self.segmenter = Segmenter(config)
        except (CheckpointError, BackendError, ConfigError) as exc:  # MissingDependencyError is a BackendError
            raise StartupError(f"cannot load model.path {config.model.path!r}: {exc}") from exc
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot load model.path {config.model.path!r}: {type(exc).__name__}: {exc}") from exc
        self._pending_config: SegmenterConfig | None = None

        # State shared between the executor's callbacks, the worker and the parameter service.
        self._lock = threading.Lock()  # statistics, warnings, pending config
        self._last_failure = ""
        self._counts: Counter[str] = Counter()
        self._bad: Counter[str] = Counter()
        self._last_warn: dict[str, float] = {}
        self._warned_once: set[str] = set()
        self._latency = {s: deque(maxlen=p.diagnostics.window) for s in _STAGES}
        self._period_start = time.monotonic()
        self._period_counts: Counter[str] = Counter()

        self._input_group = MutuallyExclusiveCallbackGroup()
        # ~/segment_points runs off the spinning thread (see NodeExecutor): on demand, it waits for the worker.
        self.service_group = MutuallyExclusiveCallbackGroup()
        self._diag_group = MutuallyExclusiveCallbackGroup()

        partners = []
        if p.input.use_depth:
            partners.append(DEPTH)
            if p.input.use_camera_info:
                partners.append(CAMERA_INFO)
        self._sync = (TimeSynchronizer(partners, p.sync.mode, p.sync.slop, p.sync.queue_size, p.sync.timeout)
                      if partners else None)
        self._sync_lock = threading.Lock()

        # Inputs.
        if p.input.transport == "compressed":
            base = self.resolve_topic_name("image") if hasattr(self, "resolve_topic_name") else "image"
            image_topic, image_type = f"{base}/compressed", CompressedImage
        else:
            image_topic, image_type = "image", Image
        self._subs = [self.create_subscription(image_type, image_topic, self._on_image, qos_profile(p.qos.image),
                                               callback_group=self._input_group)]
        if DEPTH in partners:
            self._subs.append(self.create_subscription(
                Image, "depth", lambda m: self._on_partner(DEPTH, m), qos_profile(p.qos.depth_image),
                callback_group=self._input_group))
        if CAMERA_INFO in partners:
            self._subs.append(self.create_subscription(
                CameraInfo, "camera_info", lambda m: self._on_partner(CAMERA_INFO, m), qos_profile(p.qos.camera_info),
                callback_group=self._input_group))
        if self._sync is not None:
            # Sends out images whose partners did not come in time.
            self._sync_timer = self.create_timer(min(0.05, p.sync.timeout / 2), self._poll_sync,
                                                 callback_group=self._input_group)

        # Outputs.
        out = qos_profile(p.qos.outputs)
        self._pub_labels = self.create_publisher(Image, "~/labels", out)
        self._pub_segments = self.create_publisher(SegmentArray, "~/segments", out)
        self._pub_colors = self.create_publisher(Image, "~/colors", out)
        self._pub_overlay = self.create_publisher(Image, "~/overlay", out)
        self._pub_markers = self.create_publisher(MarkerArray, "~/markers", out)
        self._pub_latency = self.create_publisher(DiagnosticArray, "~/latency", out)
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._srv = self.create_service(SegmentPoints, "~/segment_points", self._on_segment_points,
                                        callback_group=self.service_group)
        self._complete_srv = create_completion_service(self, self._latest_for_request, lambda: self.segmenter.config,
                                                       self.service_group)
        self._diag_timer = self.create_timer(p.diagnostics.period, self._publish_diagnostics,
                                             callback_group=self._diag_group)

        # Two stages in streaming mode: while the finisher scales, tracks and measures the instances of frame N and
        # publishes them, the worker decodes frame N+1, runs the network and finds its instances (both release the
        # GIL in their heavy parts).
        self._stages: TwoStagePipeline[_Frame, _Prepared, _Latest] = TwoStagePipeline(
            self._prepare, self._finish, frame_of=lambda latest: latest.frame,
            on_demand=lambda: self.node_params.processing.on_demand,
            config_pending=lambda: self._pending_config is not None, apply_config=self._apply_pending_config,
            warn=self._warn, failure=lambda: self._last_failure)
        self._stages.start()
        sub = self._subs[0]
        topics = [f"{sub.topic_name} ({image_type.__name__}, {p.qos.image.reliability} depth {p.qos.image.depth})"]
        topics += [f"{s.topic_name}" for s in self._subs[1:]]
        sync = f", {p.sync.mode} sync slop {p.sync.slop} s" if self._sync is not None else ""
        log.info(f"segmenting {', '.join(topics)}{sync} with {self.segmenter.backend.describe()}"
                 f"{' (on demand)' if p.processing.on_demand else ''}; tracking "
                 f"{'on' if config.tracking.enabled else 'off'}; outputs on {self._pub_labels.topic_name} ...")

    # ---------------------------------------------------------------------------------------- callbacks

    def _on_image(self, msg: Any) -> None:
        now = time.monotonic()
        stamp = stamp_to_ns(msg.header.stamp)
        with self._lock:
            self._counts["received"] += 1
            self._period_counts["received"] += 1
        if self._sync is None:
            self._deliver(_Frame(msg, stamp, now))
            return
        with self._sync_lock:
            matched = self._sync.add("image", msg, stamp)
        self._deliver_matched(matched)

    def _on_partner(self, topic: str, msg: Any) -> None:
        with self._sync_lock:
            matched = self._sync.add(topic, msg, stamp_to_ns(msg.header.stamp))
        self._deliver_matched(matched)

    def _poll_sync(self) -> None:
        with self._sync_lock:
            matched = self._sync.poll() if self._sync.pending() else []
        self._deliver_matched(matched)

    def _deliver_matched(self, matched: list[Matched]) -> None:
        for m in matched:
            self._deliver(_Frame(m.image, m.stamp_ns, m.received, m.partners.get(DEPTH), m.partners.get(CAMERA_INFO),
                                 m.missing))

    def _deliver(self, frame: _Frame) -> None:
        if self._stages.offer(frame):
            with self._lock:
                self._counts["dropped"] += 1
                self._period_counts["dropped"] += 1

    def _on_params_changed(self, p: NodeParams, config: SegmenterConfig, names: list[str]) -> None:
        with self._lock:
            self.node_params = p
            if any(not n.startswith(("input.", "qos.", "sync.", "processing.", "diagnostics.")) for n in names):
                self._pending_config = config
        if self._sync is not None:
            with self._sync_lock:
                self._sync.set_tolerances(p.sync.slop, p.sync.timeout)
        self._stages.wake()
        self.get_logger().info(f"parameters changed: {', '.join(f'{n}={self._params.values[n]!r}' for n in names)}")

    # ------------------------------------------------------------------------------------------- worker

    def _apply_pending_config(self) -> None:
        with self._lock:
            config, self._pending_config = self._pending_config, None
        if config is None:
            return
        self.segmenter.update_config(config)

    def _prepare(self, frame: _Frame) -> _Prepared | None:
        """Decode a frame and run the network; None (warned, counted) when the frame or the model fails."""
        t0 = time.monotonic()
        p = self.node_params
        try:
            rgb = self._decode_image(frame.image, p.input.max_pixels)
            depth, intrinsics = self._decode_partners(frame, rgb.shape[:2], p)
        except BadFrame as exc:
            self._warn(exc.reason, str(exc))
            self._last_failure = str(exc)
            return None
        t1 = time.monotonic()
        timings: dict[str, float] = {}
        try:
            color_map = self.segmenter.color_maps([rgb], timings)[0]
            t2 = time.monotonic()
            # Finding instances is stateless and costs as much as the rest of the first stage: doing it here
            # evens out the two stages.
            found = self.segmenter.find_instances(color_map)
            timings["instances"] = (time.monotonic() - t2) * 1e3
        except (BackendError, ValueError, MemoryError) as exc:
            self._warn("inference_error", f"segmentation failed: {exc}")
            self._last_failure = f"segmentation failed: {exc}"
            return None
        return _Prepared(frame, rgb, depth, intrinsics, color_map, found, timings, t0, t1)

    def _finish(self, prepared: _Prepared) -> _Latest | None:
        """Instances, geometry and tracking of a prepared frame (the Segmenter's own steps), then its outputs."""
        frame, rgb, depth, intrinsics = prepared.frame, prepared.rgb, prepared.depth, prepared.intrinsics
        t0, t1 = prepared.started, prepared.decoded
        p = self.node_params
        msg = frame.image
        try:
            result = self.segmenter.segment_colors(prepared.color_map, depth, intrinsics, found=prepared.found)
        except (ValueError, MemoryError) as exc:
            self._warn("inference_error", f"segmentation failed: {exc}")
            self._last_failure = f"segmentation failed: {exc}"
            return None
        first = prepared.timings_ms
        result.timings_ms = {**first, **result.timings_ms,
                             "instances": first["instances"] + result.timings_ms["instances"]}
        if result.nonfinite_pixels:
            self._warn("nonfinite_model_output", f"the model output had {result.nonfinite_pixels} NaN/Inf pixels "
                                                 "(zeroed); the masks of this frame may be wrong")
        t2 = time.monotonic()
        header = msg.header
        # Segments first: a grasp planner acts on them, and a label image takes a few MB through DDS.
        self._publish(self._pub_segments, lambda: ros_convert.segment_array(result, header, DEPTH_NOT_PROVIDED))
        self._publish(self._pub_labels, lambda: ros_convert.label_image(result.labels, header))
        if self._pub_colors.get_subscription_count():
            self._publish(self._pub_colors, lambda: ros_convert.colors_image(result.colors, header))
        if self._pub_overlay.get_subscription_count():
            self._publish(self._pub_overlay, lambda: ros_convert.overlay_image(rgb, result.labels, header,
                                                                              p.processing.overlay_alpha))
        if self._pub_markers.get_subscription_count():
            self._publish(self._pub_markers, lambda: ros_convert.markers(result.segments, header))
        t3 = time.monotonic()
        now_wall = time.time()
        stages = {"transport": now_wall - (t3 - frame.received) - frame.stamp_ns * 1e-9,  # stamp → callback
                  "wait": t0 - frame.received, "decode": t1 - t0, "publish": t3 - t2, "total": t3 - frame.received,
                  "end_to_end": now_wall - frame.stamp_ns * 1e-9}
        stages = {k: v * 1e3 for k, v in stages.items()}
        stages.update(result.timings_ms)
        with self._lock:
            self._counts["processed"] += 1
            self._period_counts["processed"] += 1
            self._counts["segments"] = len(result.segments)
            for stage, ms in stages.items():
                if stage in self._latency:
                    self._latency[stage].append(ms)
        if p.diagnostics.publish_latency:
            self._publish(self._pub_latency, lambda: self._latency_msg(header, stages))
        latest = _Latest(frame, header, result, depth, intrinsics)
        return latest

    def _decode_image(self, msg: Any, max_pixels: int) -> np.ndarray:
        if isinstance(msg, CompressedImage):
            size = _compressed_size(msg)
            if size is not None and size[0] * size[1] > max_pixels:
                raise BadFrame("too_large", f"compressed image of {size[0]}x{size[1]} = {size[0] * size[1]} pixels "
                                            f"exceeds input.max_pixels {max_pixels}; frame skipped")
        elif int(msg.width) * int(msg.height) > max_pixels:
            raise BadFrame("too_large", f"image of {msg.width}x{msg.height} = {int(msg.width) * int(msg.height)} pixels "
                                        f"exceeds input.max_pixels {max_pixels}; frame skipped")
        try:
            return decode_to_rgb8(msg)
        except ImageCodecError as exc:
            raise BadFrame(_codec_reason(exc), f"image frame skipped: {exc}") from exc

    def _decode_partners(self, frame: _Frame, hw: tuple[int, int], p: NodeParams) -> tuple[np.ndarray | None, CameraIntrinsics | None]:
        """Depth (float metres) and intrinsics for the frame, or None with a warning saying why."""
        if self._sync is None:
            return None, None
        depth = intrinsics = None
        h, w = hw
        if DEPTH in frame.missing:
            self._warn("depth_missing", f"no depth image within {p.sync.slop} s of the image stamp "
                                        f"(waited {p.sync.timeout} s); segmented without 3D")
        elif frame.depth is not None:
            depth = self._decode_depth(frame.depth, frame.image, hw, p.input.max_pixels)
        if CAMERA_INFO in self._sync.partners:
            if CAMERA_INFO in frame.missing:
                self._warn("camera_info_missing", f"no camera_info within {p.sync.slop} s of the image stamp "
                                                  f"(waited {p.sync.timeout} s); segmented without 3D")
            elif frame.camera_info is not None:
                try:
                    intrinsics = CameraIntrinsics.from_camera_info(frame.camera_info)
                except ValueError as exc:
                    self._warn("camera_info_invalid", f"unusable camera_info ({exc}); segmented without 3D")
                if intrinsics is not None and (intrinsics.width, intrinsics.height) != (w, h):
                    self._warn_once("camera_info_size", f"camera_info is for {intrinsics.width}x{intrinsics.height} "
                                    f"but the colour image is {w}x{h}: the intrinsics are scaled to the image; "
                                    "check that depth and camera_info belong to the colour camera")
                    self._count("camera_info_size_mismatch")
        return depth, intrinsics

    def _decode_depth(self, msg: Any, image: Any, hw: tuple[int, int], max_pixels: int) -> np.ndarray | None:
        h, w = hw
        if int(msg.width) * int(msg.height) > max_pixels:
            self._warn("depth_too_large", f"depth image of {msg.width}x{msg.height} exceeds input.max_pixels "
                                          f"{max_pixels}; segmented without 3D")
            return None
        try:
            depth = decode_depth(msg)
        except ImageCodecError as exc:
            self._warn("depth_" + _codec_reason(exc), f"depth image unusable ({exc}); segmented without 3D")
            return None
        if depth.shape != (h, w):
            self._warn_once("depth_size", f"depth is {depth.shape[1]}x{depth.shape[0]} but the colour image is "
                                          f"{w}x{h}: depth is resampled (nearest) and segments are flagged "
                                          "DEPTH_RESOLUTION_MISMATCH; publish depth registered to the colour camera")
            self._count("depth_size_mismatch")
        if msg.header.frame_id != image.header.frame_id:
            self._warn_once("depth_frame", f"depth frame_id {msg.header.frame_id!r} differs from the image's "
                                           f"{image.header.frame_id!r}: depth must be registered (aligned) to the "
                                           "colour camera")
        with np.errstate(invalid="ignore"):
            valid = np.isfinite(depth) & (depth > 0)
            negative = int(np.count_nonzero(depth < 0))
        if negative:
            self._warn("depth_negative", f"depth has {negative} negative pixels (treated as invalid); "
                                         "is the encoding right?")
        if not valid.any():
            self._warn("depth_no_valid_pixels", "depth image has no valid pixel (all NaN, zero or negative); "
                                                "segments have no 3D")
        return depth

    def _publish(self, publisher: Any, build: Callable[[], Any]) -> None:
        try:
            publisher.publish(build())
        except Exception as exc:  # RCLError at high rate with RELIABLE (rmw_fastrtps#310), or shutting down
            if not self._stages.stopping:
                self._warn("publish_error", f"publishing on {publisher.topic_name} failed: {exc}")

    @staticmethod
    def _latency_msg(header: Any, stages: dict[str, float]) -> DiagnosticArray:
        status = DiagnosticStatus(level=DiagnosticStatus.OK, name=f"{NODE_NAME}: latency", message="ms per stage",
                                  values=[KeyValue(key=k, value=f"{v:.3f}") for k, v in stages.items()])
        return DiagnosticArray(header=header, status=[status])

    # ------------------------------------------------------------------------------------------ service

    def _on_segment_points(self, request: Any, response: Any) -> Any:
        try:
            latest = self._latest_for_request()
            self._answer_points(request, response, latest)
        except BadFrame as exc:
            response.success, response.message = False, str(exc)
        except ValueError as exc:
            response.success, response.message = False, f"bad request: {exc}"
        return response

    def _latest_for_request(self) -> _Latest:
        p = self.node_params
        if p.processing.on_demand:
            try:
                return self._stages.request(p.processing.service_timeout)
            except Unavailable as exc:
                raise BadFrame("", str(exc)) from exc
        latest = self._stages.latest
        if latest is None:
            raise BadFrame("", "no frame segmented yet (no image received, or every frame so far was bad)")
        return latest

    def _answer_points(self, request: Any, response: Any, latest: _Latest) -> None:
        n = len(request.points)
        labels = list(request.labels)
        ids = list(request.object_ids)
        if n == 0:
            raise ValueError("no points")
        if len(labels) != n:
            raise ValueError(f"{n} points need {n} labels, got {len(labels)}")
        if ids and len(ids) != n:
            raise ValueError(f"object_ids must be empty or one per point: {n} points, {len(ids)} object_ids")
        if not ids:
            ids = [0] * n
        colors = latest.result.colors
        depth_params = self.segmenter.config.depth
        response.header = latest.header
        for object_id in sorted(set(ids)):
            picked = [i for i in range(n) if ids[i] == object_id]
            points = [(request.points[i].x, request.points[i].y) for i in picked]
            try:
                mask = self.segmenter.prompt(colors, points, [labels[i] for i in picked])
            except ValueError as exc:
                raise ValueError(f"object {object_id}: {exc}") from exc
            mask_labels = mask.astype(np.uint16)
            area = int(np.count_nonzero(mask))
            if area:
                ys, xs = np.nonzero(mask)
                bbox = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))
            else:
                bbox = (0, 0, 0, 0)
            shape = shapes_2d(mask_labels, 1)[0]
            geometry = None
            if latest.depth is not None or latest.intrinsics is not None:
                geometry = segments_3d(mask_labels, 1, latest.depth, latest.intrinsics, depth_params)[0] if area else None
            response.object_ids.append(int(object_id))
            response.masks.append(ros_convert.mask_image(mask, latest.header))
            response.segments.append(ros_convert.segment_msg(object_id, area, bbox, 1.0, shape, 1, geometry))
        response.success = True
        response.message = (f"{len(response.object_ids)} mask(s) on the frame stamped "
                            f"{latest.header.stamp.sec}.{latest.header.stamp.nanosec:09d}")

    # -------------------------------------------------------------------------------------- diagnostics

    def _count(self, key: str) -> None:
        with self._lock:
            self._bad[key] += 1
            self._period_counts["bad:" + key] += 1

    def _warn(self, reason: str, message: str) -> None:
        """Count ``reason`` and log ``message``, at most once per diagnostics.warn_period per reason."""
        now = time.monotonic()
        with self._lock:
            self._bad[reason] += 1
            self._period_counts["bad:" + reason] += 1
            last = self._last_warn.get(reason)
            due = last is None or now - last >= self.node_params.diagnostics.warn_period
            if due:
                self._last_warn[reason] = now
            total = self._bad[reason]
        if due:
            self.get_logger().warning(f"[{reason}] {message} ({total} so far)")

    def _warn_once(self, key: str, message: str) -> None:
        with self._lock:
            if key in self._warned_once:
                return
            self._warned_once.add(key)
        self.get_logger().warning(message + " (warned once)")

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        with self._lock:
            dt = max(now - self._period_start, 1e-6)
            period, self._period_counts = self._period_counts, Counter()
            self._period_start = now
            counts, bad = Counter(self._counts), Counter(self._bad)
            latency = {s: list(v) for s, v in self._latency.items() if v}
        sync_drops: Counter[tuple[str, str]] = Counter()
        missing: Counter[str] = Counter()
        if self._sync is not None:
            with self._sync_lock:
                sync_drops, missing = Counter(self._sync.drops), Counter(self._sync.missing)
        values = [
            ("input_rate_hz", f"{period['received'] / dt:.2f}"),
            ("output_rate_hz", f"{period['processed'] / dt:.2f}"),
            ("frames_received", counts["received"]),
            ("frames_processed", counts["processed"]),
            ("frames_dropped", counts["dropped"]),
            ("frames_bad", sum(bad.values())),
            ("sync_dropped", sum(sync_drops.values())),
            ("segments_last_frame", counts["segments"]),
        ]
        values += [(f"sync_dropped.{topic}.{reason}", n) for (topic, reason), n in sorted(sync_drops.items())]
        values += [(f"sync_missing.{topic}", n) for topic, n in sorted(missing.items())]
        values += [(f"bad.{reason}", n) for reason, n in sorted(bad.items())]
        for stage in _STAGES:
            if stage in latency:
                v = latency[stage]
                values += [(f"latency_ms.{stage}.median", f"{statistics.median(v):.3f}"),
                           (f"latency_ms.{stage}.max", f"{max(v):.3f}")]
        bad_now = sorted(k[4:] for k in period if k.startswith("bad:"))
        level, message = DiagnosticStatus.OK, "ok"
        if bad_now:
            level, message = DiagnosticStatus.WARN, f"problems this period: {', '.join(bad_now)}"
        if "bad:inference_error" in period or "bad:internal_error" in period:
            level = DiagnosticStatus.ERROR
        if counts["received"] == 0:
            level, message = DiagnosticStatus.WARN, f"no image received yet on {self._subs[0].topic_name}"
        status = DiagnosticStatus(level=level, name=f"{self.get_name()}: segmentation", message=message,
                                  hardware_id=self.segmenter.backend.describe(),
                                  values=[KeyValue(key=k, value=str(v)) for k, v in values])
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._publish(self._pub_diag, lambda: msg)

    # ---------------------------------------------------------------------------------------- shutdown

    def close(self) -> None:
        """Stop the worker (waits up to WORKER_JOIN_TIMEOUT for a model run to end) and release the model."""
        stages = getattr(self, "_stages", None)
        if stages is not None and not stages.stop(WORKER_JOIN_TIMEOUT):
            return  # a model run outlived the wait: its thread still uses the model
        segmenter = getattr(self, "segmenter", None)
        if segmenter is not None:
            segmenter.close()


def _params_files(argv: list[str]) -> list[str]:
    """The --params-file arguments in a command line."""
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--params-file"]


def _codec_reason(exc: ImageCodecError) -> str:
    for kind, reason in _CODEC_REASONS:
        if isinstance(exc, kind):
            return reason
    return "bad_image"


def _compressed_size(msg: Any) -> tuple[int, int] | None:
    """(width, height) from a compressed frame's header without decoding it, or None if unknown."""
    try:
        from PIL import Image as PILImage

        with PILImage.open(io.BytesIO(bytes(msg.data))) as img:
            return int(img.width), int(img.height)
    except Exception:  # corrupt or unknown: the decoder says why
        return None


def _init_rclpy(args: list[str]) -> None:
    """rclpy.init without rclpy's own signal handlers (this module installs its own), where the rclpy has them."""
    try:
        from rclpy.signals import SignalHandlerOptions

        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except (ImportError, TypeError):
        rclpy.init(args=args)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv if argv is None else argv)
    # Before rclpy and DDS allocate their first frame buffers.
    allocator = keep_frame_buffers()
    try:
        _init_rclpy(args)
    except Exception as exc:  # rcl rejects malformed --ros-args (e.g. "-p name:=" without a value)
        print(f"[FATAL] [{NODE_NAME}]: cannot start: invalid ROS arguments: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    node: SegmenterNode | None = None
    executor: NodeExecutor | None = None
    try:
        try:
            node = SegmenterNode()
        except StartupError as exc:
            rclpy.logging.get_logger(NODE_NAME).fatal(f"cannot start: {exc}")
            return EXIT_STARTUP
        node.get_logger().info(allocator)
        executor = NodeExecutor(offload=[node.service_group])
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        if node is not None:
            node.close()
        if executor is not None:
            executor.shutdown(timeout_sec=0.5)
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
