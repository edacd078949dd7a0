"""Decoding of the node's input messages (colour, depth, camera_info) into arrays, free of rclpy.

A frame the node cannot use raises ``BadFrame`` with a reason (the /diagnostics counter) and a message naming the
problem; whatever a decoder raises (``cv2.error`` from a forged header included) becomes one. Unusable depth or
camera_info never drops the frame: it is segmented in 2D, with a warning saying why.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from seg_node.processing.geometry3d import CameraIntrinsics
from seg_node.processing.image_codec import (
    CorruptCompressedImageError,
    ImageCodecError,
    ImageTooLargeError,
    MalformedImageError,
    SizeLimits,
    UnsupportedEncodingError,
    decode_depth,
    decode_to_rgb8,
)
from seg_node.ros.diagnostics import NodeStats

__all__ = ["BadFrame", "CAMERA_INFO", "DEPTH", "FrameDecoder", "codec_reason"]

DEPTH, CAMERA_INFO = "depth", "camera_info"
_CODEC_REASONS = (
    (ImageTooLargeError, "too_large"),
    (UnsupportedEncodingError, "unsupported_encoding"),
    (CorruptCompressedImageError, "corrupt_compressed"),
    (MalformedImageError, "malformed_image"),
    (ImageCodecError, "bad_image"),
)


class BadFrame(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def codec_reason(exc: ImageCodecError) -> str:
    for kind, reason in _CODEC_REASONS:
        if isinstance(exc, kind):
            return reason
    return "bad_image"


class FrameDecoder:
    """Colour image → RGB8, depth → float metres, camera_info → intrinsics; problems counted in ``stats``."""

    def __init__(self, stats: NodeStats, partners: tuple[str, ...]) -> None:
        self._stats, self.partners = stats, partners

    def image(self, msg: Any, limits: SizeLimits) -> np.ndarray:
        """The frame as RGB8; the codec refuses sizes beyond ``limits`` (input.max_*) before any decoder runs,
        compressed frames by the size their header declares."""
        try:
            return decode_to_rgb8(msg, limits=limits)
        except ImageCodecError as exc:
            raise BadFrame(codec_reason(exc), f"image frame skipped: {exc}") from exc
        except Exception as exc:  # cv2.error, MemoryError, ...: a decoder must never take the node down
            raise BadFrame("decode_error", f"image frame skipped: the decoder failed: {type(exc).__name__}: "
                                           f"{str(exc).strip()[:200]}") from exc

    def partners_of(self, image: Any, depth_msg: Any, camera_info: Any, missing: tuple[str, ...],
                    hw: tuple[int, int], p: Any) -> tuple[np.ndarray | None, CameraIntrinsics | None]:
        """Depth (float metres) and intrinsics for the frame, or None with a warning saying why."""
        if not self.partners:
            return None, None
        depth = intrinsics = None
        h, w = hw
        warn = self._stats.warn
        if DEPTH in missing:
            warn("depth_missing", f"no depth image within {p.sync.slop} s of the image stamp "
                                  f"(waited {p.sync.timeout} s); segmented without 3D")
        elif depth_msg is not None:
            depth = self._depth(depth_msg, image, hw, p.input.size_limits)
        if CAMERA_INFO in self.partners:
            if CAMERA_INFO in missing:
                warn("camera_info_missing", f"no camera_info within {p.sync.slop} s of the image stamp "
                                            f"(waited {p.sync.timeout} s); segmented without 3D")
            elif camera_info is not None:
                try:
                    intrinsics = CameraIntrinsics.from_camera_info(camera_info)
                except ValueError as exc:
                    warn("camera_info_invalid", f"unusable camera_info ({exc}); segmented without 3D")
                if intrinsics is not None and (intrinsics.width, intrinsics.height) != (w, h):
                    self._stats.warn_once("camera_info_size", f"camera_info is for {intrinsics.width}x"
                                          f"{intrinsics.height} but the colour image is {w}x{h}: the intrinsics are "
                                          "scaled to the image; check that depth and camera_info belong to the "
                                          "colour camera")
                    self._stats.count("camera_info_size_mismatch")
        return depth, intrinsics

    def _depth(self, msg: Any, image: Any, hw: tuple[int, int], limits: SizeLimits) -> np.ndarray | None:
        h, w = hw
        warn = self._stats.warn
        try:
            depth = decode_depth(msg, limits=limits)
        except ImageCodecError as exc:
            warn("depth_" + codec_reason(exc), f"depth image unusable ({exc}); segmented without 3D")
            return None
        except Exception as exc:  # as for the colour image: never fatal
            warn("depth_decode_error", f"depth image unusable ({type(exc).__name__}: {exc}); segmented without 3D")
            return None
        if depth.shape != (h, w):
            self._stats.warn_once("depth_size", f"depth is {depth.shape[1]}x{depth.shape[0]} but the colour image "
                                  f"is {w}x{h}: depth is resampled (nearest) and segments are flagged "
                                  "DEPTH_RESOLUTION_MISMATCH; publish depth registered to the colour camera")
            self._stats.count("depth_size_mismatch")
        if msg.header.frame_id != image.header.frame_id:
            self._stats.warn_once("depth_frame", f"depth frame_id {msg.header.frame_id!r} differs from the image's "
                                  f"{image.header.frame_id!r}: depth must be registered (aligned) to the colour camera")
        with np.errstate(invalid="ignore"):
            valid = np.isfinite(depth) & (depth > 0)
            negative = int(np.count_nonzero(depth < 0))
        if negative:
            warn("depth_negative", f"depth has {negative} negative pixels (treated as invalid); is the encoding right?")
        if not valid.any():
            warn("depth_no_valid_pixels", "depth image has no valid pixel (all NaN, zero or negative); "
                                          "segments have no 3D")
        return depth
