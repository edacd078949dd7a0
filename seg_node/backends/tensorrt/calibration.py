"""int8 calibration: the images, their batches through the runtime's own pre-processing, and the cache file that
lets a rebuild skip calibrating again."""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from seg_node.backends.base import BackendError
from seg_node.backends.tensorrt.plan import EnginePlan
from seg_node.models.spec import ModelSpec

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def calibration_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise BackendError(f"{folder}: calibration folder does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise BackendError(f"{folder}: no calibration images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def calibration_batches(files: Sequence[Path], spec: ModelSpec, shape: Sequence[int]) -> Iterator[np.ndarray]:
    """Normalised float32 batches of ``shape`` (N×3×H×W) from image files, through the runtime's own numpy
    pre-processing (robot mode), so int8 ranges are calibrated on exactly what the engine will see. A last partial
    batch is filled up by repeating its frames."""
    import dataclasses

    import cv2

    from seg_node.processing.model_io import preprocess

    n, _, h, w = shape
    fixed = spec if spec.input_hw == (h, w) else dataclasses.replace(spec, input_hw=(h, w))
    frames: list[np.ndarray] = []
    for f in files:
        bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if bgr is None:
            log.warning("calibration: cannot read %s, skipped", f)
            continue
        x, _ = preprocess([cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)], fixed, "robot", max(h, w))
        frames.append(x[0])
        if len(frames) == n:
            yield np.stack(frames)
            frames = []
    if frames:
        while len(frames) < n:
            frames.append(frames[len(frames) % max(1, len(frames))])
        yield np.stack(frames)


def calibration_cache(folder: Path, plan: EnginePlan) -> Path:
    """The calibration cache of ``plan``'s engine: one per ONNX stem and calibration image set."""
    return folder / f"{plan.stem}.{plan.key.calibration[:12]}.calib"
