"""Ground truth from a bag topic (label images) or a COCO file, as metrics frames."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from seg_node.evaluation import metrics as M
from seg_node.processing.image_codec import (
    MalformedImageError,
    UnsupportedEncodingError,
    compressed_to_numpy,
    image_to_numpy,
    to_rgb8,
)

GT_ID_ENCODINGS = ("mono8", "mono16", "16UC1", "32SC1")
GT_COLOR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8")


def _decode_32sc1(msg: Any) -> np.ndarray:
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0 or step < 4 * w:
        raise MalformedImageError(f"32SC1 image {w}x{h} with step {step} is malformed")
    buf = np.asarray(msg.data, dtype=np.uint8).reshape(-1)
    if buf.size != h * step:
        raise MalformedImageError(f"32SC1 image data is {buf.size} bytes, expected {h * step}")
    rows = np.ascontiguousarray(buf.reshape(h, step)[:, : 4 * w])
    return rows.view(">i4" if msg.is_bigendian else "<i4").astype(np.int32)


def gt_label_image(msg: Any) -> np.ndarray:
    """Instance ids (int64 H×W, 0 = background) from a ground-truth Image/CompressedImage: mono8/mono16/16UC1/32SC1
    values are ids (32SC1 values <= 0 are background); colour images give one instance per colour, black = background
    (the id packs the RGB colour, so the same colour is the same object in every frame)."""
    if hasattr(msg, "format"):
        pixels, encoding = compressed_to_numpy(msg)
    elif msg.encoding == "32SC1":
        pixels, encoding = _decode_32sc1(msg), "32SC1"
    else:
        pixels, encoding = image_to_numpy(msg), msg.encoding
    if encoding in GT_ID_ENCODINGS:
        labels = pixels.astype(np.int64)
        labels[labels < 0] = 0
        return labels
    if encoding in GT_COLOR_ENCODINGS:
        rgb = to_rgb8(pixels, encoding).astype(np.int64)
        return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    raise UnsupportedEncodingError(f"ground truth must hold instance ids ({', '.join(GT_ID_ENCODINGS)}) or instance "
                                   f"colours ({', '.join(GT_COLOR_ENCODINGS)}), got {encoding!r}")


class CocoGroundTruth:
    """COCO instance annotations keyed by the frame's header stamp: each ``images`` entry has ``stamp_ns`` (int) or
    ``stamp: {sec, nanosec}``. An annotation's ``track_id`` (or ``instance_id``) identifies the object across frames
    for the temporal metric; without one, ids are per annotation and that metric has no pairs."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            data = json.loads(self.path.read_text())
        except OSError as exc:
            raise OSError(f"{self.path}: cannot read ({exc.strerror})") from exc
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self.path}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
            raise ValueError(f"{self.path}: not a COCO instances file (needs 'images' and 'annotations' lists)")
        self.images: dict[int, dict] = {}
        by_id: dict[Any, int] = {}
        for img in data["images"]:
            try:
                stamp = int(img["stamp_ns"]) if "stamp_ns" in img else int(img["stamp"]["sec"]) * 10**9 + int(img["stamp"]["nanosec"])
                height, width = int(img["height"]), int(img["width"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{self.path}: image {img.get('id')!r} needs height, width and stamp_ns (or stamp "
                                 "{sec, nanosec}) to be matched to a frame") from None
            if stamp in self.images:
                raise ValueError(f"{self.path}: images {self.images[stamp]['id']!r} and {img.get('id')!r} have the same stamp {stamp}")
            self.images[stamp] = {"id": img.get("id"), "height": height, "width": width, "annotations": []}
            by_id[img.get("id")] = stamp
        for ann in data["annotations"]:
            stamp = by_id.get(ann.get("image_id"))
            if stamp is None:
                raise ValueError(f"{self.path}: annotation {ann.get('id')!r} refers to unknown image {ann.get('image_id')!r}")
            if "segmentation" not in ann:
                raise ValueError(f"{self.path}: annotation {ann.get('id')!r} has no segmentation")
            self.images[stamp]["annotations"].append(ann)
        self.unused = set(self.images)

    def take(self, stamp: int) -> M.GtFrame | None:
        img = self.images.get(stamp)
        if img is None:
            return None
        self.unused.discard(stamp)
        return M.GtFrame.from_coco(img["annotations"], img["height"], img["width"])
