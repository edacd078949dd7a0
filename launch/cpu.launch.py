"""The segmenter on CPU with ONNX Runtime (config/cpu_onnx.yaml); same arguments as segmenter.launch.py.

    ros2 launch seg_node cpu.launch.py model_path:=/models/gen2seg-mae-h.onnx image:=/camera/color/image_raw
"""
import os
import sys

from launch import LaunchDescription

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # segmenter_common.py lies beside this file
from segmenter_common import profile_launch  # noqa: E402


def generate_launch_description():
    return LaunchDescription(profile_launch("cpu_onnx.yaml", "the CPU / ONNX Runtime profile"))
