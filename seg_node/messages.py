"""The one mapping from segmentation results to seg_msgs/Segment and SegmentArray fields, free of ROS.

The node publishes rclpy messages and bag_eval writes rosbags messages; both construct them by keyword from the
same fields, so each passes a ``types`` lookup (message type name such as ``"seg_msgs/msg/Segment"`` → class) and
gets the same message. Every field is given, as rosbags' message classes require: a segment without valid 3D
geometry has zero vectors and identity poses, ``has_3d`` false and its ``depth_flags`` saying why.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from seg_node.processing.geometry import Shape2D
from seg_node.processing.geometry3d import DEPTH_NO_CAMERA_INFO, DEPTH_NOT_PROVIDED, Geometry3D, rotation_to_quaternion

if TYPE_CHECKING:
    from seg_node.pipeline import SegmentationResult

TypeLookup = Callable[[str], Any]

SEGMENT = "seg_msgs/msg/Segment"
SEGMENT_ARRAY = "seg_msgs/msg/SegmentArray"
_ZERO, _EYE = np.zeros(3), np.eye(3)


def missing_depth_flags(depth_given: bool, camera_info_given: bool) -> int:
    """``depth_flags`` of a segment without geometry: which of the frame's depth inputs were absent."""
    return (0 if depth_given else DEPTH_NOT_PROVIDED) | (0 if camera_info_given else DEPTH_NO_CAMERA_INFO)


def point(types: TypeLookup, v: Sequence[float]) -> Any:
    return types("geometry_msgs/msg/Point")(x=float(v[0]), y=float(v[1]), z=float(v[2]))


def vector(types: TypeLookup, v: Sequence[float]) -> Any:
    return types("geometry_msgs/msg/Vector3")(x=float(v[0]), y=float(v[1]), z=float(v[2]))


def pose(types: TypeLookup, position: Sequence[float], rotation: np.ndarray) -> Any:
    x, y, z, w = (float(q) for q in rotation_to_quaternion(np.asarray(rotation)))
    return types("geometry_msgs/msg/Pose")(position=point(types, position),
                                           orientation=types("geometry_msgs/msg/Quaternion")(x=x, y=y, z=z, w=w))


def segment(types: TypeLookup, seg_id: int, area: int, bbox: Sequence[int], score: float, shape: Shape2D,
            age: int = 1, geometry: Geometry3D | None = None, missing_flags: int = DEPTH_NOT_PROVIDED) -> Any:
    """One seg_msgs/Segment. The 3D fields are filled when ``geometry`` is valid; without ``geometry``,
    ``depth_flags`` = ``missing_flags``."""
    x, y, w, h = (int(v) for v in bbox)
    valid = geometry is not None and bool(geometry.valid)
    g = geometry
    return types(SEGMENT)(
        id=int(seg_id), score=float(score), area=int(area), age=int(age),
        bbox=types("sensor_msgs/msg/RegionOfInterest")(x_offset=x, y_offset=y, height=h, width=w, do_rectify=False),
        centroid_x=float(shape.centroid_x), centroid_y=float(shape.centroid_y), orientation=float(shape.orientation),
        major_length=float(shape.major_length), minor_length=float(shape.minor_length),
        has_3d=valid, depth_flags=int(g.flags) if g is not None else int(missing_flags),
        num_depth_points=int(g.num_points) if g is not None else 0,
        centroid_3d=point(types, g.centroid if valid else _ZERO),
        box_pose=pose(types, g.box_center, g.box_rotation) if valid else pose(types, _ZERO, _EYE),
        extents=vector(types, g.extents if valid else _ZERO), normal=vector(types, g.normal if valid else _ZERO),
        grasp_pose=pose(types, g.grasp_position, g.grasp_rotation) if valid else pose(types, _ZERO, _EYE),
        grasp_width=float(g.grasp_width) if valid else 0.0)


def segment_array(types: TypeLookup, header: Any, result: SegmentationResult,
                  missing_flags: int = DEPTH_NOT_PROVIDED) -> Any:
    """seg_msgs/SegmentArray of one frame's result, header copied as given."""
    height, width = result.labels.shape
    segments = [segment(types, s.instance.id, s.instance.area, s.instance.bbox, s.instance.score, s.shape,
                        getattr(s, "age", 1), getattr(s, "geometry", None), missing_flags) for s in result.segments]
    return types(SEGMENT_ARRAY)(header=header, height=int(height), width=int(width), segments=segments)
