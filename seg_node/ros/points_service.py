"""``~/segment_points`` (seg_msgs/SegmentPoints): point prompts on the latest segmented frame → one mask per object.

The request's points (x, y in pixels of the frame), their labels (1 positive, 0 negative) and optional object ids
(points with the same id prompt one object; none means one object) go through ``Segmenter.prompt`` on the frame's
colour map. The answer holds, per object id in ascending order, a mono8 mask and a Segment (2D shape; on a frame
with depth, its 3D geometry), all with the frame's header. A bad request, or no frame to answer on, is answered
with ``success: false`` and a message saying why.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from rclpy.node import Node
from seg_msgs.srv import SegmentPoints

from seg_node.pipeline import Segmenter
from seg_node.processing.geometry import shapes_2d
from seg_node.processing.geometry3d import segments_3d
from seg_node.ros import convert as ros_convert
from seg_node.ros.frames import BadFrame


def create_points_service(node: Node, latest: Callable[[], Any], segmenter: Callable[[], Segmenter],
                          callback_group: Any) -> Any:
    """Create ``~/segment_points`` on ``node``. ``latest()`` returns the last segmented frame (``.header``,
    ``.result.color_map``, ``.depth``, ``.intrinsics``) or raises BadFrame with the reason there is none;
    ``segmenter()`` the node's Segmenter."""
    def on_request(request: Any, response: Any) -> Any:
        try:
            frame = latest()
            answer(request, response, frame, segmenter())
        except BadFrame as exc:
            response.success, response.message = False, str(exc)
        except ValueError as exc:
            response.success, response.message = False, f"bad request: {exc}"
        return response

    return node.create_service(SegmentPoints, "~/segment_points", on_request, callback_group=callback_group)


def answer(request: Any, response: Any, frame: Any, segmenter: Segmenter) -> None:
    """Fill ``response`` with the masks and segments the prompts of ``request`` give on ``frame``."""
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
    colors = frame.result.color_map  # the map refined for clicks, when the model has one
    depth_params = segmenter.config.depth
    response.header = frame.header
    for object_id in sorted(set(ids)):
        picked = [i for i in range(n) if ids[i] == object_id]
        points = [(request.points[i].x, request.points[i].y) for i in picked]
        try:
            mask = segmenter.prompt(colors, points, [labels[i] for i in picked])
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
        if frame.depth is not None or frame.intrinsics is not None:
            geometry = segments_3d(mask_labels, 1, frame.depth, frame.intrinsics, depth_params)[0] if area else None
        response.object_ids.append(int(object_id))
        response.masks.append(ros_convert.mask_image(mask, frame.header))
        response.segments.append(ros_convert.segment_msg(object_id, area, bbox, 1.0, shape, 1, geometry))
    response.success = True
    response.message = (f"{len(response.object_ids)} mask(s) on the frame stamped "
                        f"{frame.header.stamp.sec}.{frame.header.stamp.nanosec:09d}")
