"""The segmenter on any camera: remap its inputs, pick a params file (a config/ profile or your own).

    ros2 launch seg_node segmenter.launch.py \
        params_file:=$(ros2 pkg prefix seg_node)/share/seg_node/config/cuda_torch.yaml model_path:=/models/gen2seg-sd \
        image:=/camera/color/image_raw depth:=/camera/aligned_depth_to_color/image_raw camera_info:=/camera/color/camera_info

With ``input.transport: compressed`` in the params file the node subscribes to ``<image>/compressed``.
The Fast DDS profile for large images is set for everything this launch starts (and should be set for the camera
driver too, in its own environment, for the shared-memory transport to carry full frames).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def _share(*parts):
    return os.path.join(get_package_share_directory("seg_node"), *parts)


ARGUMENTS = (
    ("params_file", _share("config", "cpu_onnx.yaml"), "parameters YAML: a config/ profile or your own"),
    ("model_path", "", "when not empty, overrides model.path from the params file"),
    ("namespace", "", "namespace of the node (outputs are ~/labels, ~/segments, ...)"),
    ("image", "image", "colour image topic (sensor_msgs/Image; <image>/compressed with input.transport compressed)"),
    ("depth", "depth", "depth topic registered to the colour camera (32FC1 m or 16UC1 mm); used with input.use_depth"),
    ("camera_info", "camera_info", "camera_info of the colour camera; used with input.use_depth"),
    ("use_sim_time", "false", "use /clock (bag replay)"),
    ("fastdds_profile", _share("config", "fastdds_large_images.xml"),
     "Fast DDS XML profile for large images; empty keeps the environment's"),
    ("log_level", "info", "debug, info, warn, error or fatal"),
)


def _setup(context, *args, **kwargs):
    def get(name):
        return LaunchConfiguration(name).perform(context)

    overrides = {"use_sim_time": get("use_sim_time").strip().lower() in ("true", "1", "yes")}
    if get("model_path"):
        overrides["model.path"] = get("model_path")
    actions = []
    if get("fastdds_profile"):
        actions.append(SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", get("fastdds_profile")))
    actions.append(Node(
        package="seg_node",
        executable="segmenter",
        name="segmenter",  # the params files' section name
        namespace=get("namespace"),
        parameters=[get("params_file"), overrides],
        remappings=[("image", get("image")), ("depth", get("depth")), ("camera_info", get("camera_info"))],
        arguments=["--ros-args", "--log-level", get("log_level")],
        output="screen",
        emulate_tty=True,
    ))
    return actions


def generate_launch_description():
    declared = [DeclareLaunchArgument(name, default_value=default, description=text)
                for name, default, text in ARGUMENTS]
    return LaunchDescription(declared + [OpaqueFunction(function=_setup)])
