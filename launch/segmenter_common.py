"""What the launch files share: the segmenter's launch arguments and the include of segmenter.launch.py.

Installed beside them (share/seg_node/launch); each launch file puts its own folder on sys.path to import it.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration


def share(*parts):
    return os.path.join(get_package_share_directory("seg_node"), *parts)


# (name, default, description) of segmenter.launch.py's arguments.
ARGUMENTS = (
    ("params_file", share("config", "cpu_onnx.yaml"), "parameters YAML: a config/ profile or your own"),
    ("model_path", "", "when not empty, overrides model.path from the params file"),
    ("namespace", "", "namespace of the node (outputs are ~/labels, ~/segments, ...)"),
    ("image", "image", "colour image topic (sensor_msgs/Image; <image>/compressed with input.transport compressed)"),
    ("depth", "depth", "depth topic registered to the colour camera (32FC1 m or 16UC1 mm); used with input.use_depth"),
    ("camera_info", "camera_info", "camera_info of the colour camera; used with input.use_depth"),
    ("use_sim_time", "false", "use /clock (bag replay)"),
    ("fastdds_profile", share("config", "fastdds_large_images.xml"),
     "Fast DDS XML profile for large images; empty keeps the environment's"),
    ("log_level", "info", "debug, info, warn, error or fatal"),
    ("respawn", "true", "start the node again when it exits (a hung or repeatedly dying worker exits with code 3)"),
)


def declare(names, **defaults):
    """DeclareLaunchArgument for each of ``names`` (segmenter.launch.py's), with ``defaults`` as name=(default, text)."""
    known = {name: (default, text) for name, default, text in ARGUMENTS}
    return [DeclareLaunchArgument(name, default_value=defaults.get(name, known[name])[0],
                                  description=defaults.get(name, known[name])[1]) for name in names]


def include_segmenter(forwarded, **fixed):
    """segmenter.launch.py with the launch arguments ``forwarded`` passed on and ``fixed`` values set."""
    arguments = {name: LaunchConfiguration(name) for name in forwarded}
    arguments.update(fixed)
    return IncludeLaunchDescription(PythonLaunchDescriptionSource(share("launch", "segmenter.launch.py")),
                                    launch_arguments=arguments.items())


def profile_launch(profile, what):
    """The arguments and include of a launch file that runs segmenter.launch.py with the config/ profile ``profile``."""
    forwarded = ("params_file", "model_path", "namespace", "image", "depth", "camera_info", "use_sim_time", "log_level",
                 "respawn")
    declared = declare(forwarded, params_file=(share("config", profile), f"parameters YAML (default: {what})"))
    return declared + [include_segmenter(forwarded)]
