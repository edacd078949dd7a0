"""``~/complete_masks`` (seg_msgs/CompleteMasks): mask completion on the colour map of the latest segmented frame.

The request's partial label image (mono16 or mono8, the frame's size) and optional known mask (mono8) go through
``seg_node.processing.completion.complete_labels`` with the Segmenter's thresholds; the answer is a mono16 label
image with the request's header, the new ids, and the header of the frame whose colour map was used. A bad request
is answered with ``success: false`` and a message naming the field and the problem.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from rclpy.node import Node
from seg_msgs.srv import CompleteMasks

from seg_node.config import SegmenterConfig
from seg_node.processing.completion import complete_labels
from seg_node.processing.image_codec import ImageCodecError, image_to_numpy
from seg_node.ros import convert as ros_convert

_LABEL_ENCODINGS = ("mono16", "16UC1", "mono8", "8UC1")


def create_completion_service(node: Node, latest: Callable[[], Any], config: Callable[[], SegmenterConfig],
                              callback_group: Any) -> Any:
    """Create ``~/complete_masks`` on ``node``. ``latest()`` returns the last segmented frame (``.header``,
    ``.result.colors``) or raises with the reason there is none; ``config()`` the Segmenter's current config."""
    def on_request(request: Any, response: Any) -> Any:
        try:
            frame = latest()
        except Exception as exc:  # the node's reason for having no frame (none yet, on-demand timeout)
            response.success, response.message = False, str(exc)
            return response
        try:
            answer(request, response, frame, config())
        except (ImageCodecError, ValueError) as exc:
            response.success, response.message = False, f"bad request: {exc}"
        return response

    return node.create_service(CompleteMasks, "~/complete_masks", on_request, callback_group=callback_group)


def answer(request: Any, response: Any, frame: Any, config: SegmenterConfig) -> None:
    """Fill ``response`` with the completion of ``request`` on ``frame``'s colour map."""
    partial = _label_field(request.labels, "labels", _LABEL_ENCODINGS).astype(np.uint16)
    known = None
    if len(request.known.data):
        known = _label_field(request.known, "known", ("mono8", "8UC1")) > 0
        if known.shape != partial.shape:
            raise ValueError(f"known is {known.shape[1]}×{known.shape[0]}, labels {partial.shape[1]}×{partial.shape[0]}")
    colors = frame.result.colors
    if partial.shape != colors.shape[:2]:
        h, w = colors.shape[:2]
        raise ValueError(f"labels is {partial.shape[1]}×{partial.shape[0]}, the latest frame is {w}×{h}")
    done = complete_labels(colors, partial, known, config.instances, config.prompting)
    known_ids = np.unique(partial[partial > 0] if known is None else partial[known])
    new_ids = np.setdiff1d(np.unique(done), np.append(known_ids, 0))
    response.labels = ros_convert.label_image(done, request.labels.header)
    response.new_ids = [int(i) for i in new_ids]
    response.frame_header = frame.header
    response.success = True
    stamp = frame.header.stamp
    response.message = (f"{int(np.count_nonzero(done != partial))} pixels relabelled, {len(new_ids)} new segment(s), "
                        f"on the frame stamped {stamp.sec}.{stamp.nanosec:09d}")


def _label_field(msg: Any, name: str, encodings: tuple[str, ...]) -> np.ndarray:
    if msg.encoding not in encodings:
        raise ValueError(f"{name} must be {' or '.join(encodings)}, got encoding {msg.encoding!r}")
    try:
        return image_to_numpy(msg)
    except ImageCodecError as exc:
        raise ValueError(f"{name}: {exc}") from exc
