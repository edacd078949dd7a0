"""The output bag: what the node would have published for each frame, logged at its input frame's log time."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from seg_node.evaluation.bag_io import IMAGE, open_writer
from seg_node.evaluation.workers import Frame
from seg_node.messages import SEGMENT_ARRAY, missing_depth_flags, segment_array
from seg_node.pipeline import SegmentationResult
from seg_node.processing.image_codec import numpy_to_image
from seg_node.processing.visualize import overlay


class OutputBag:
    def __init__(self, path: Path, storage: str, store: Any, namespace: str, colors: bool, overlays: bool) -> None:
        self.path, self.storage, self.store = path, storage, store
        self.writer = open_writer(path, storage)
        ns = namespace.rstrip("/")
        self.topics = {"labels": (f"{ns}/labels", IMAGE), "segments": (f"{ns}/segments", SEGMENT_ARRAY)}
        if colors:
            self.topics["colors"] = (f"{ns}/colors", IMAGE)
        if overlays:
            self.topics["overlay"] = (f"{ns}/overlay", IMAGE)
        self.conns = {k: self.writer.add_connection(topic, msgtype, typestore=store) for k, (topic, msgtype) in self.topics.items()}
        self.count = 0

    def write(self, frame: Frame, result: SegmentationResult) -> None:
        image_t = self.store.types[IMAGE]
        missing = missing_depth_flags(frame.depth is not None, frame.camera_info is not None)
        msgs = {"labels": numpy_to_image(result.labels, "mono16", header=frame.header, msg_type=image_t),
                "segments": segment_array(self.store.types.__getitem__, frame.header, result, missing)}
        if "colors" in self.conns:
            rgb = np.clip(result.colors + 0.5, 0, 255).astype(np.uint8)
            msgs["colors"] = numpy_to_image(rgb, "rgb8", header=frame.header, msg_type=image_t)
        if "overlay" in self.conns:
            msgs["overlay"] = numpy_to_image(overlay(frame.rgb, result.labels), "rgb8", header=frame.header, msg_type=image_t)
        for key, msg in msgs.items():
            self.writer.write(self.conns[key], frame.log_time, self.store.serialize_cdr(msg, self.topics[key][1]))
        self.count += 1

    def close(self) -> None:
        self.writer.close()
