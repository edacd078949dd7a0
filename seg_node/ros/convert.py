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

from seg_node.processing.geometry import Shape2D
from seg_node.processing.geometry3d import DEPTH_NO_CAMERA_INFO, DEPTH_NOT_PROVIDED, Geometry3D, rotation_to_quaternion
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


def _point(v: Sequence[float]) -> Point:
    return Point(x=float(v[0]), y=float(v[1]), z=float(v[2]))


def _vector(v: Sequence[float]) -> Vector3:
    return Vector3(x=float(v[0]), y=float(v[1]), z=float(v[2]))


def _pose(position: Sequence[float], rotation: np.ndarray) -> Pose:
    x, y, z, w = rotation_to_quaternion(rotation)
    return Pose(position=_point(position), orientation=Quaternion(x=x, y=y, z=z, w=w))


def segment_msg(seg_id: int, area: int, bbox: Sequence[int], score: float, shape: Shape2D, age: int = 1,
                geometry: Geometry3D | None = None, missing_flags: int = DEPTH_NOT_PROVIDED) -> SegmentMsg:
    """One seg_msgs/Segment. Without ``geometry``, ``has_3d`` is false and ``depth_flags`` = ``missing_flags``."""
    x, y, w, h = (int(v) for v in bbox)
    msg = SegmentMsg(
        id=int(seg_id), score=float(score), area=int(area), age=int(age),
        bbox=RegionOfInterest(x_offset=x, y_offset=y, width=w, height=h, do_rectify=False),
        centroid_x=float(shape.centroid_x), centroid_y=float(shape.centroid_y), orientation=float(shape.orientation),
        major_length=float(shape.major_length), minor_length=float(shape.minor_length),
    )
    if geometry is None:
        msg.has_3d = False
        msg.depth_flags = int(missing_flags)
        return msg
    msg.has_3d = bool(geometry.valid)
    msg.depth_flags = int(geometry.flags)
    msg.num_depth_points = int(geometry.num_points)
    if geometry.valid:
        msg.centroid_3d = _point(geometry.centroid)
        msg.box_pose = _pose(geometry.box_center, geometry.box_rotation)
        msg.extents = _vector(geometry.extents)
        msg.normal = _vector(geometry.normal)
        msg.grasp_pose = _pose(geometry.grasp_position, geometry.grasp_rotation)
        msg.grasp_width = float(geometry.grasp_width)
    return msg


def missing_depth_flags(depth_given: bool, camera_info_given: bool) -> int:
    return (0 if depth_given else DEPTH_NOT_PROVIDED) | (0 if camera_info_given else DEPTH_NO_CAMERA_INFO)


def _from_segment(seg: Segment, missing_flags: int) -> SegmentMsg:
    inst = seg.instance
    return segment_msg(inst.id, inst.area, inst.bbox, inst.score, seg.shape, getattr(seg, "age", 1),
                       getattr(seg, "geometry", None), missing_flags)


def segment_array(result: SegmentationResult, header: Any, missing_flags: int = DEPTH_NOT_PROVIDED) -> SegmentArray:
    """seg_msgs/SegmentArray of a result; ``missing_flags`` for segments without geometry (no depth / camera_info)."""
    h, w = result.labels.shape
    return SegmentArray(header=header, height=int(h), width=int(w),
                        segments=[_from_segment(s, missing_flags) for s in result.segments])


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


def _colour(seg_id: int, colours: np.ndarray, alpha: float) -> ColorRGBA:
    r, g, b = colours[seg_id] / 255.0
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
    colours = palette(max(s.id for s in segments))  # the same colour per id as in ~/overlay
    for seg in segments:
        g = seg.geometry
        colour = _colour(seg.id, colours, 0.5)
        box = Marker(header=header, ns="boxes", id=int(seg.id), type=Marker.CUBE, action=Marker.ADD,
                     pose=_pose(g.box_center, g.box_rotation), color=colour)
        box.scale = _vector(np.maximum(g.extents, _MIN_SCALE))
        approach = np.asarray(g.grasp_rotation)[:, 2]
        closing = np.asarray(g.grasp_rotation)[:, 1]
        tip = np.asarray(g.grasp_position)
        arrow = Marker(header=header, ns="grasps", id=int(seg.id), type=Marker.ARROW, action=Marker.ADD,
                       points=[_point(tip - _ARROW_LENGTH * approach), _point(tip)], color=_colour(seg.id, colours, 1.0))
        arrow.pose.orientation.w = 1.0
        arrow.scale = Vector3(x=0.005, y=0.01, z=0.015)
        half = 0.5 * max(float(g.grasp_width), _MIN_SCALE) * closing
        jaw = Marker(header=header, ns="grasp_width", id=int(seg.id), type=Marker.LINE_LIST, action=Marker.ADD,
                     points=[_point(tip - half), _point(tip + half)], color=_colour(seg.id, colours, 1.0))
        jaw.pose.orientation.w = 1.0
        jaw.scale = Vector3(x=0.003, y=0.0, z=0.0)
        out.markers.extend((box, arrow, jaw))
    return out
