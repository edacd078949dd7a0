"""seg_node.messages: the one Segment / SegmentArray field mapping, checked without ROS through a stand-in type lookup."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from seg_node.messages import missing_depth_flags, segment, segment_array
from seg_node.processing.geometry import Shape2D
from seg_node.processing.geometry3d import DEPTH_NO_CAMERA_INFO, DEPTH_NOT_PROVIDED, Geometry3D


def types(name: str):
    return lambda **fields: SimpleNamespace(type=name, **fields)


SHAPE = Shape2D(centroid_x=4.0, centroid_y=5.0, orientation=0.25, major_length=6.0, minor_length=2.0)


def _geometry(valid: bool) -> Geometry3D:
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) if valid else np.eye(3)
    v = np.array([0.1, 0.2, 0.9]) if valid else np.zeros(3)
    return Geometry3D(num_points=40, flags=0 if valid else 4, valid=valid, centroid=v, box_center=v, box_rotation=rot,
                      extents=v, normal=v, grasp_position=v, grasp_rotation=rot, grasp_width=0.05 if valid else 0.0)


def test_segment_without_geometry_says_why_and_fills_every_field() -> None:
    flags = missing_depth_flags(depth_given=False, camera_info_given=False)
    assert flags == DEPTH_NOT_PROVIDED | DEPTH_NO_CAMERA_INFO
    msg = segment(types, 3, 120, (1, 2, 10, 12), 0.8, SHAPE, age=4, missing_flags=flags)
    assert msg.type == "seg_msgs/msg/Segment" and (msg.id, msg.area, msg.age, msg.score) == (3, 120, 4, 0.8)
    assert (msg.bbox.x_offset, msg.bbox.y_offset, msg.bbox.width, msg.bbox.height) == (1, 2, 10, 12)
    assert msg.centroid_x == 4.0 and msg.major_length == 6.0
    assert not msg.has_3d and msg.depth_flags == flags and msg.num_depth_points == 0
    assert (msg.centroid_3d.x, msg.grasp_width) == (0.0, 0.0)
    assert msg.box_pose.orientation.w == 1.0 and msg.grasp_pose.orientation.w == 1.0


def test_segment_fills_3d_fields_only_for_valid_geometry() -> None:
    msg = segment(types, 1, 50, (0, 0, 5, 5), 0.5, SHAPE, geometry=_geometry(True))
    assert msg.has_3d and msg.num_depth_points == 40 and msg.grasp_width == 0.05
    assert (msg.centroid_3d.x, msg.centroid_3d.z) == (0.1, 0.9)
    q = msg.box_pose.orientation
    assert np.isclose(q.z, np.sqrt(0.5)) and np.isclose(q.w, np.sqrt(0.5))  # 90° about z
    invalid = segment(types, 1, 50, (0, 0, 5, 5), 0.5, SHAPE, geometry=_geometry(False))
    assert not invalid.has_3d and invalid.depth_flags == 4 and invalid.num_depth_points == 40
    assert invalid.centroid_3d.z == 0.0 and invalid.box_pose.orientation.w == 1.0


def test_segment_array_copies_the_header_and_the_label_size() -> None:
    instance = SimpleNamespace(id=7, area=9, bbox=(0, 0, 3, 3), score=0.9)
    result = SimpleNamespace(labels=np.zeros((4, 6), np.uint16),
                             segments=[SimpleNamespace(instance=instance, shape=SHAPE, age=2, geometry=None)])
    header = object()
    msg = segment_array(types, header, result, DEPTH_NOT_PROVIDED)
    assert msg.header is header and (msg.height, msg.width) == (4, 6)
    assert [s.id for s in msg.segments] == [7] and msg.segments[0].depth_flags == DEPTH_NOT_PROVIDED
