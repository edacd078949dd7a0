"""Static int8 quantisation of a conv-family graph for ONNX Runtime on the CPU (``export_onnx --int8``).

ONNX Runtime's own quantiser (``onnxruntime.quantization.quantize_static``) writes the graph in QDQ form: int8
weights (one scale per tensor) and uint8 activations whose ranges are measured on calibration frames fed through
the runtime's pre-processing (``seg_node.backends.tensorrt.calibration``, shared with TensorRT's int8 calibration),
so they are the ranges the deployed graph will see. ONNX Runtime then runs the convolutions as integer kernels
(VNNI/AVX2 on x86, dot-product instructions on ARM); GroupNorm, the coordinate channels and the graph's IO stay
float32. Calibration frames are a folder of images of the robot's scenes, or synthetic tabletop scenes.

Only the conv family: its graph is convolutions and element-wise operations, which quantise with measured little
loss (docs/default_model.md, "int8"). SD's attention and MAE's transformer are not calibrated here.
"""
from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx

from seg_node.backends.tensorrt.calibration import calibration_batches, calibration_files
from seg_node.config import ModelConfig
from seg_node.models.spec import ModelSpec
from seg_node.processing.model_io import robot_network_size

log = logging.getLogger(__name__)

# Frames whose activation ranges set the scales; past a few dozen the min/max ranges stop moving.
DEFAULT_FRAMES = 32
# Synthetic calibration scenes, apart from the seeds of training (0...), evaluation (1000003) and calibrate_instances
# (2000003).
SYNTHETIC_SEED = 5_000_003


def synthetic_calibration_folder(folder: Path, count: int, shapes: Sequence[str] | None) -> Path:
    """``count`` synthetic 480×640 tabletop scenes of ``shapes`` (None: every shape) written to ``folder`` as PNGs."""
    from training.synthetic import SceneGenerator

    generator = SceneGenerator(height=480, width=640, shapes=shapes, seed=SYNTHETIC_SEED)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        cv2.imwrite(str(folder / f"scene_{i:04d}.png"), cv2.cvtColor(generator.scene(i).rgb, cv2.COLOR_RGB2BGR))
    return folder


def quantize_int8(model: onnx.ModelProto, spec: ModelSpec, network_hw: tuple[int, int], images: Path,
                  frames: int = DEFAULT_FRAMES) -> onnx.ModelProto:
    """``model`` (a float32 conv-family graph) quantised to int8 QDQ, activation ranges from up to ``frames``
    images of the folder ``images`` pre-processed to ``network_hw``. BackendError (naming the folder) when it holds
    no readable image."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    files = calibration_files(images)[:frames]
    batches = list(calibration_batches(files, spec, (1, 3, *network_hw)))
    log.info("int8: activation ranges from %d frames of %s at %d×%d", len(batches), images, *network_hw)
    input_name = model.graph.input[0].name

    class _Frames(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    root = logging.getLogger()
    level = root.level
    # ONNX Runtime's quantiser reports each of its steps and tensors on the root logger at INFO.
    root.setLevel(max(level, logging.WARNING))
    try:
        with tempfile.TemporaryDirectory(prefix="onnx_int8-") as tmp:
            fp32, prepared, quantized = (Path(tmp) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
            onnx.save_model(model, str(fp32))
            # Shape inference and graph clean-up first, as ONNX Runtime's quantisation guide asks.
            quant_pre_process(str(fp32), str(prepared))
            quantize_static(str(prepared), str(quantized), _Frames(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=False)
            out = onnx.load(str(quantized))
    finally:
        root.setLevel(level)
    # The pre-processing stamps its own metadata entries; the exporter writes the file's.
    del out.metadata_props[:]
    return out


def quantize_for_export(model: onnx.ModelProto, spec: ModelSpec, settings: Mapping[str, Any], images: Path | None,
                        shapes: Sequence[str] | None, frames: int = DEFAULT_FRAMES) -> onnx.ModelProto:
    """``quantize_int8`` at the graph's static size or, when dynamic, at the network size of a 480×640 frame under
    the recommended ``processing_resolution`` (``settings``, dotted names); on ``images``, else on synthetic scenes
    of ``shapes``."""
    if spec.input_hw is not None:
        network_hw = spec.input_hw
    else:
        resolution = settings.get("model.processing_resolution", ModelConfig().processing_resolution)
        network_hw = robot_network_size((480, 640), spec, resolution)[1]
    if images is not None:
        return quantize_int8(model, spec, network_hw, images, frames)
    with tempfile.TemporaryDirectory(prefix="export_onnx-int8-") as tmp:
        log.info("int8: drawing %d synthetic calibration scenes", frames)
        return quantize_int8(model, spec, network_hw, synthetic_calibration_folder(Path(tmp), frames, shapes), frames)
