"""SegmentationResult → ROS messages (seg_msgs/SegmentArray, label / colour / overlay images, MarkerArray).

Every message gets the input image's header, copied as is (stamp and frame_id): consumers join masks with depth
and TF by it. Message building lives here so the node only decides what to publish when.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
from sensor_msgs.msg import Image, RegionOfInterest
from seg_msgs.msg import Segment as SegmentMsg
from seg_msgs.msg import SegmentArray
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from seg_node import messages
from seg_node.processing.geometry import Shape2D
from seg_node.processing.geometry3d import DEPTH_NOT_PROVIDED, Geometry3D
from seg_node.processing.image_codec import numpy_to_image
from seg_node.pipeline import Segment, SegmentationResult
from seg_node.processing.visualize import overlay, palette

__all__ = [
    "colors_image",
    "label_image",
    "markers",
    "mask_image",
    "overlay_image",
    "segment_array",
    "segment_msg",
]

# Markers: approach arrow length and a floor for box sizes RViz would not draw.
_ARROW_LENGTH = 0.08
_MIN_SCALE = 1e-3


# The message classes the shared field mapping (seg_node.messages) builds, by type name.
_TYPES = {
    "seg_msgs/msg/Segment": SegmentMsg, "seg_msgs/msg/SegmentArray": SegmentArray,
    "sensor_msgs/msg/RegionOfInterest": RegionOfInterest, "geometry_msgs/msg/Point": Point,
    "geometry_msgs/msg/Pose": Pose, "geometry_msgs/msg/Quaternion": Quaternion, "geometry_msgs/msg/Vector3": Vector3,
}
ros_types = _TYPES.__getitem__


def segment_msg(seg_id: int, area: int, bbox: Sequence[int], score: float, shape: Shape2D, age: int = 1,
                geometry: Geometry3D | None = None, missing_flags: int = DEPTH_NOT_PROVIDED) -> SegmentMsg:
    """One seg_msgs/Segment (``seg_node.messages.segment``)."""
    return messages.segment(ros_types, seg_id, area, bbox, score, shape, age, geometry, missing_flags)


def segment_array(result: SegmentationResult, header: Any, missing_flags: int = DEPTH_NOT_PROVIDED) -> SegmentArray:
    """seg_msgs/SegmentArray of a result (``seg_node.messages.segment_array``)."""
    return messages.segment_array(ros_types, header, result, missing_flags)


def label_image(labels: np.ndarray, header: Any) -> Image:
    """mono16 label image: 0 = background, k = segment id k."""
    return numpy_to_image(np.asarray(labels, dtype=np.uint16), "mono16", header=header)


def colors_image(colors: np.ndarray, header: Any) -> Image:
    """The model's colour map (float 0..255) as rgb8 (rounded)."""
    return numpy_to_image(np.clip(colors + 0.5, 0.0, 255.0).astype(np.uint8), "rgb8", header=header)


def overlay_image(rgb: np.ndarray, labels: np.ndarray, header: Any, alpha: float = 0.5) -> Image:
    return numpy_to_image(overlay(rgb, labels, alpha), "rgb8", header=header)


def mask_image(mask: np.ndarray, header: Any) -> Image:
    """mono8 mask, 255 inside."""
    return numpy_to_image(np.where(mask, np.uint8(255), np.uint8(0)), "mono8", header=header)


def _color(seg_id: int, colors: np.ndarray, alpha: float) -> ColorRGBA:
    r, g, b = colors[seg_id] / 255.0
    return ColorRGBA(r=float(r), g=float(g), b=float(b), a=float(alpha))


def markers(segments: Iterable[Segment], header: Any) -> MarkerArray:
    """RViz markers of the 3D segments: a DELETEALL first (segments come and go), then per segment with 3D its
    oriented box (ns "boxes"), its grasp approach as an arrow ending at the grasp point (ns "grasps") and the
    closing direction as a line as wide as the grasp (ns "grasp_width"); marker ids are segment ids."""
    out = MarkerArray()
    out.markers.append(Marker(header=header, action=Marker.DELETEALL))
    segments = [s for s in segments if getattr(s, "geometry", None) is not None and s.geometry.valid]
    if not segments:
        return out
    colors = palette(max(s.id for s in segments))  # the same colour per id as in ~/overlay
    for seg in segments:
        g = seg.geometry
        color = _color(seg.id, colors, 0.5)
        box = Marker(header=header, ns="boxes", id=int(seg.id), type=Marker.CUBE, action=Marker.ADD,
                     pose=messages.pose(ros_types, g.box_center, g.box_rotation), color=color)
        box.scale = messages.vector(ros_types, np.maximum(g.extents, _MIN_SCALE))
        approach = np.asarray(g.grasp_rotation)[:, 2]
        closing = np.asarray(g.grasp_rotation)[:, 1]
        tip = np.asarray(g.grasp_position)
        arrow = Marker(header=header, ns="grasps", id=int(seg.id), type=Marker.ARROW, action=Marker.ADD,
                       points=[messages.point(ros_types, tip - _ARROW_LENGTH * approach), messages.point(ros_types, tip)], color=_color(seg.id, colors, 1.0))
        arrow.pose.orientation.w = 1.0
        arrow.scale = Vector3(x=0.005, y=0.01, z=0.015)
        half = 0.5 * max(float(g.grasp_width), _MIN_SCALE) * closing
        jaw = Marker(header=header, ns="grasp_width", id=int(seg.id), type=Marker.LINE_LIST, action=Marker.ADD,
                     points=[messages.point(ros_types, tip - half), messages.point(ros_types, tip + half)], color=_color(seg.id, colors, 1.0))
        jaw.pose.orientation.w = 1.0
        jaw.scale = Vector3(x=0.003, y=0.0, z=0.0)
        out.markers.extend((box, arrow, jaw))
    return out
