"""The segmenter on an NVIDIA Jetson (config/jetson_tensorrt.yaml); same arguments as segmenter.launch.py.

The profile runs the static-shape ONNX export on the TensorRT backend from the engine cache. Prebuild the engine once
with `build_engine --onnx <model.onnx> --precision fp16 --build-only` (docs/jetson.md).

    ros2 launch seg_node jetson.launch.py model_path:=/models/gen2seg-mae-h.onnx \
        image:=/camera/color/image_raw depth:=/camera/aligned_depth_to_color/image_raw camera_info:=/camera/color/camera_info
"""
import os
import sys

from launch import LaunchDescription

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # segmenter_common.py lies beside this file
from segmenter_common import profile_launch  # noqa: E402


def generate_launch_description():
    return LaunchDescription(profile_launch("jetson_tensorrt.yaml", "the Jetson profile"))
