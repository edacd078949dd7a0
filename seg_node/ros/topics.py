"""The segmenter's topics (names and types: ``seg_node.ros.node``), one wiring's worth.

``FrameInputs`` subscribes to the colour image (raw, or ``<image>/compressed``) and, with depth, to the depth image
and camera_info, joins them by header stamp (``seg_node.processing.sync``) and hands each frame on; a timer sends
out images whose partners did not come in time. ``Outputs`` holds the publishers and publishes a frame's results
(the optional images and markers only while someone subscribes), its latency and the node's /diagnostics.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from seg_msgs.msg import SegmentArray
from visualization_msgs.msg import MarkerArray

from seg_node.pipeline import SegmentationResult
from seg_node.processing.geometry3d import DEPTH_NOT_PROVIDED
from seg_node.processing.sync import Matched, TimeSynchronizer, stamp_to_ns
from seg_node.ros import convert as ros_convert
from seg_node.ros.diagnostics import ERROR, OK, WARN, InputLossMonitor, NodeStats
from seg_node.ros.frames import CAMERA_INFO, DEPTH
from seg_node.ros.params import NODE_NAME, NodeParams, TopicQoS

__all__ = ["FrameInputs", "InputFrame", "Outputs", "qos_profile"]

_RELIABILITY = {
    "best_effort": ReliabilityPolicy.BEST_EFFORT,
    "reliable": ReliabilityPolicy.RELIABLE,
    "system_default": ReliabilityPolicy.SYSTEM_DEFAULT,
}
_LEVELS = {OK: DiagnosticStatus.OK, WARN: DiagnosticStatus.WARN, ERROR: DiagnosticStatus.ERROR}


def qos_profile(p: TopicQoS) -> QoSProfile:
    return QoSProfile(reliability=_RELIABILITY[p.reliability], history=HistoryPolicy.KEEP_LAST, depth=p.depth,
                      durability=DurabilityPolicy.VOLATILE)


@dataclass
class InputFrame:
    """An image as received, with the partners joined to it (None where missing or not subscribed)."""

    image: Any
    stamp_ns: int
    received: float  # time.monotonic() of the image callback
    depth: Any = None
    camera_info: Any = None
    missing: tuple[str, ...] = ()


class FrameInputs:
    """The input subscriptions on ``node``: every image counts as received in ``stats`` and its stamp goes to
    ``loss``; each frame goes to ``deliver``."""

    def __init__(self, node: Node, p: NodeParams, stats: NodeStats, loss: InputLossMonitor,
                 deliver: Callable[[InputFrame], None], callback_group: Any) -> None:
        self._node, self._stats, self._loss, self._deliver = node, stats, loss, deliver
        partners: list[str] = []
        if p.input.use_depth:
            partners.append(DEPTH)
            if p.input.use_camera_info:
                partners.append(CAMERA_INFO)
        self.partners = tuple(partners)
        self._sync = (TimeSynchronizer(partners, p.sync.mode, p.sync.slop, p.sync.queue_size, p.sync.timeout)
                      if partners else None)
        self._sync_lock = threading.Lock()
        if p.input.transport == "compressed":
            # Node.resolve_topic_name is newer than Humble.
            base = node.resolve_topic_name("image") if hasattr(node, "resolve_topic_name") else "image"
            image_topic, self._image_type = f"{base}/compressed", CompressedImage
        else:
            image_topic, self._image_type = "image", Image
        self._subs = [node.create_subscription(self._image_type, image_topic, self._on_image, qos_profile(p.qos.image),
                                               callback_group=callback_group)]
        if DEPTH in partners:
            self._subs.append(node.create_subscription(
                Image, "depth", lambda m: self._on_partner(DEPTH, m), qos_profile(p.qos.depth_image),
                callback_group=callback_group))
        if CAMERA_INFO in partners:
            self._subs.append(node.create_subscription(
                CameraInfo, "camera_info", lambda m: self._on_partner(CAMERA_INFO, m), qos_profile(p.qos.camera_info),
                callback_group=callback_group))
        self._timers: list[Any] = []
        if self._sync is not None:
            # Sends out images whose partners did not come in time.
            self._timers.append(node.create_timer(min(0.05, p.sync.timeout / 2), self._poll_sync,
                                                  callback_group=callback_group))

    @property
    def image_topic(self) -> str:
        return self._subs[0].topic_name if self._subs else "image"

    def describe(self, p: NodeParams) -> str:
        """The topics and the sync mode, for the start-up log."""
        topics = [f"{self.image_topic} ({self._image_type.__name__}, {p.qos.image.reliability} depth {p.qos.image.depth})"]
        topics += [f"{s.topic_name}" for s in self._subs[1:]]
        sync = f", {p.sync.mode} sync slop {p.sync.slop} s" if self._sync is not None else ""
        return ", ".join(topics) + sync

    def set_tolerances(self, slop: float, timeout: float) -> None:
        if self._sync is not None:
            with self._sync_lock:
                self._sync.set_tolerances(slop, timeout)

    def sync_values(self) -> list[tuple[str, object]]:
        """The synchroniser's drops and misses, for /diagnostics."""
        drops: dict[tuple[str, str], int] = {}
        missing: dict[str, int] = {}
        if self._sync is not None:
            with self._sync_lock:
                drops, missing = dict(self._sync.drops), dict(self._sync.missing)
        values: list[tuple[str, object]] = [("sync_dropped", sum(drops.values()))]
        values += [(f"sync_dropped.{topic}.{reason}", n) for (topic, reason), n in sorted(drops.items())]
        values += [(f"sync_missing.{topic}", n) for topic, n in sorted(missing.items())]
        return values

    def destroy(self) -> None:
        for timer in self._timers:
            self._node.destroy_timer(timer)
        for sub in self._subs:
            self._node.destroy_subscription(sub)
        self._timers, self._subs = [], []

    def _on_image(self, msg: Any) -> None:
        now = time.monotonic()
        stamp = stamp_to_ns(msg.header.stamp)
        self._stats.add("received")
        self._loss.add(stamp)
        if self._sync is None:
            self._deliver(InputFrame(msg, stamp, now))
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
            self._deliver(InputFrame(m.image, m.stamp_ns, m.received, m.partners.get(DEPTH),
                                     m.partners.get(CAMERA_INFO), m.missing))


class Outputs:
    """The publishers on ``node``. A failed publish is warned about in ``stats`` unless ``quiet()`` (shutting down)."""

    def __init__(self, node: Node, p: NodeParams, stats: NodeStats, quiet: Callable[[], bool]) -> None:
        self._node, self._stats, self._quiet = node, stats, quiet
        out = qos_profile(p.qos.outputs)
        self._labels = node.create_publisher(Image, "~/labels", out)
        self._segments = node.create_publisher(SegmentArray, "~/segments", out)
        self._colors = node.create_publisher(Image, "~/colors", out)
        self._overlay = node.create_publisher(Image, "~/overlay", out)
        self._markers = node.create_publisher(MarkerArray, "~/markers", out)
        self._latency = node.create_publisher(DiagnosticArray, "~/latency", out)
        self._diag = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._pubs = [self._labels, self._segments, self._colors, self._overlay, self._markers, self._latency,
                      self._diag]

    @property
    def labels_topic(self) -> str:
        return self._labels.topic_name

    def publish_frame(self, result: SegmentationResult, rgb: np.ndarray, header: Any, overlay_alpha: float) -> None:
        # Segments first: a grasp planner acts on them, and a label image takes a few MB through DDS.
        self._publish(self._segments, lambda: ros_convert.segment_array(result, header, DEPTH_NOT_PROVIDED))
        self._publish(self._labels, lambda: ros_convert.label_image(result.labels, header))
        if self._colors.get_subscription_count():
            self._publish(self._colors, lambda: ros_convert.colors_image(result.colors, header))
        if self._overlay.get_subscription_count():
            self._publish(self._overlay, lambda: ros_convert.overlay_image(rgb, result.labels, header, overlay_alpha))
        if self._markers.get_subscription_count():
            self._publish(self._markers, lambda: ros_convert.markers(result.segments, header))

    def publish_latency(self, header: Any, stages: dict[str, float]) -> None:
        def build() -> DiagnosticArray:
            status = DiagnosticStatus(level=DiagnosticStatus.OK, name=f"{NODE_NAME}: latency", message="ms per stage",
                                      values=[KeyValue(key=k, value=f"{v:.3f}") for k, v in stages.items()])
            return DiagnosticArray(header=header, status=[status])

        self._publish(self._latency, build)

    def publish_diagnostics(self, level: str, message: str, values: list[tuple[str, str]], hardware_id: str) -> None:
        status = DiagnosticStatus(level=_LEVELS[level], name=f"{self._node.get_name()}: segmentation", message=message,
                                  hardware_id=hardware_id, values=[KeyValue(key=k, value=v) for k, v in values])
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self._node.get_clock().now().to_msg()
        self._publish(self._diag, lambda: msg)

    def destroy(self) -> None:
        for pub in self._pubs:
            self._node.destroy_publisher(pub)
        self._pubs = []

    def _publish(self, publisher: Any, build: Callable[[], Any]) -> None:
        try:
            publisher.publish(build())
        except Exception as exc:  # RCLError at high rate with RELIABLE (rmw_fastrtps#310), or shutting down
            if not self._quiet():
                self._stats.warn("publish_error", f"publishing on {publisher.topic_name} failed: {exc}")
