"""The segmenter on an NVIDIA Jetson (config/jetson_tensorrt.yaml); same arguments as segmenter.launch.py.

The profile runs the static-shape ONNX export on the TensorRT backend from the engine cache. Prebuild the engine once
with `build_engine --onnx <model.onnx> --precision fp16 --build-only` (docs/jetson.md).

    ros2 launch seg_node jetson.launch.py model_path:=/models/gen2seg-mae-h.onnx \
        image:=/camera/color/image_raw depth:=/camera/aligned_depth_to_color/image_raw camera_info:=/camera/color/camera_info
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

PROFILE = "jetson_tensorrt.yaml"
FORWARDED = ("model_path", "namespace", "image", "depth", "camera_info", "use_sim_time", "log_level")
DEFAULTS = {"model_path": "", "namespace": "", "image": "image", "depth": "depth", "camera_info": "camera_info",
            "use_sim_time": "false", "log_level": "info"}


def generate_launch_description():
    share = get_package_share_directory("seg_node")
    declared = [DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", PROFILE),
                                      description="parameters YAML (default: the Jetson profile)")]
    declared += [DeclareLaunchArgument(name, default_value=DEFAULTS[name], description="see segmenter.launch.py")
                 for name in FORWARDED]
    forwarded = {name: LaunchConfiguration(name) for name in ("params_file",) + FORWARDED}
    include = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(share, "launch", "segmenter.launch.py")),
        launch_arguments=forwarded.items())
    return LaunchDescription(declared + [include])
