"""The segmenter on any camera: remap its inputs, pick a params file (a config/ profile or your own).

    ros2 launch seg_node segmenter.launch.py \
        params_file:=$(ros2 pkg prefix seg_node)/share/seg_node/config/cuda_torch.yaml model_path:=/models/gen2seg-sd \
        image:=/camera/color/image_raw depth:=/camera/aligned_depth_to_color/image_raw camera_info:=/camera/color/camera_info

With ``input.transport: compressed`` in the params file the node subscribes to ``<image>/compressed``.
The Fast DDS profile for large images is set for everything this launch starts, under both names: Fast DDS 2.x
(Humble, Jazzy) reads only FASTRTPS_DEFAULT_PROFILES_FILE, 3.x (Kilted) also FASTDDS_DEFAULT_PROFILES_FILE. Set it for
the camera driver too, in its own environment, for the shared-memory transport to carry full frames.
With ``respawn`` (default true) a node that exits with code 3 (a hung or repeatedly dying worker) is started again.
"""
import os
import sys

from launch import LaunchDescription
from launch.actions import OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # segmenter_common.py lies beside this file
from segmenter_common import ARGUMENTS, declare  # noqa: E402


def _setup(context, *args, **kwargs):
    def get(name):
        return LaunchConfiguration(name).perform(context)

    overrides = {"use_sim_time": get("use_sim_time").strip().lower() in ("true", "1", "yes")}
    if get("model_path"):
        overrides["model.path"] = get("model_path")
    actions = []
    if get("fastdds_profile"):
        for name in ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE"):
            actions.append(SetEnvironmentVariable(name, get("fastdds_profile")))
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
        respawn=get("respawn").strip().lower() in ("true", "1", "yes"),
        respawn_delay=2.0,
    ))
    return actions


def generate_launch_description():
    return LaunchDescription(declare([name for name, _, _ in ARGUMENTS]) + [OpaqueFunction(function=_setup)])
