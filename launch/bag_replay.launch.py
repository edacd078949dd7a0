"""Replay a recorded bag through the segmenter (on the bag's clock).

    ros2 launch seg_node bag_replay.launch.py bag:=/data/run_01 model_path:=/models/gen2seg-mae-h.onnx \
        image:=/camera/color/image_raw depth:=/camera/aligned_depth_to_color/image_raw camera_info:=/camera/color/camera_info

Runs ``ros2 bag play <bag> --clock`` and the segmenter with use_sim_time, so its outputs carry the recorded
stamps (headers are copied from the recorded images anyway) and /diagnostics follows the bag's clock. Record the
outputs alongside with ``ros2 bag record /segmenter/labels /segmenter/segments``; for offline metrics without ROS,
use bag_eval.
"""
import os
import sys

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # segmenter_common.py lies beside this file
from segmenter_common import declare, include_segmenter  # noqa: E402

FORWARDED = ("params_file", "model_path", "namespace", "image", "depth", "camera_info", "log_level", "respawn")


def _play(context, *args, **kwargs):
    def get(name):
        return LaunchConfiguration(name).perform(context)

    cmd = ["ros2", "bag", "play", get("bag"), "--clock", "--rate", get("rate")]
    if get("loop").strip().lower() in ("true", "1", "yes"):
        cmd.append("--loop")
    if get("start_offset") not in ("", "0", "0.0"):
        cmd += ["--start-offset", get("start_offset")]
    return [ExecuteProcess(cmd=cmd, output="screen")]


def generate_launch_description():
    declared = [
        DeclareLaunchArgument("bag", description="bag folder (or .mcap / .db3 file) to play"),
        DeclareLaunchArgument("rate", default_value="1.0", description="playback rate"),
        DeclareLaunchArgument("loop", default_value="false", description="play the bag in a loop"),
        DeclareLaunchArgument("start_offset", default_value="0.0", description="seconds into the bag to start"),
    ] + declare(FORWARDED, image=("image", "recorded colour image topic"), depth=("depth", "recorded depth topic"),
                camera_info=("camera_info", "recorded camera_info topic"))
    segmenter = include_segmenter(FORWARDED, use_sim_time="true")
    return LaunchDescription(declared + [segmenter, OpaqueFunction(function=_play)])
