"""launch/*.launch.py without launch or launch_ros (neither is on PyPI; docs/design.md, "ROS 2 without ROS tooling").

Stand-in modules record what each launch file asks for; a small evaluator resolves launch arguments, OpaqueFunctions
and includes the way `ros2 launch` does. Then: the executable is the package's `segmenter` console script (installed
to lib/seg_node, where launch_ros looks), every params file exists and its parameters parse into the node's typed
config, remaps and overrides reach the node, and the Fast DDS profile exists.
"""
from __future__ import annotations

import configparser
import importlib.util
import re
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from seg_node.ros.params import load_params_file

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
LAUNCH_FILES = sorted(p.name for p in LAUNCH.glob("*.launch.py"))


# ------------------------------------------------------------------------------------------------ stand-ins


class Context:
    def __init__(self, configs: dict[str, str]) -> None:
        self.launch_configurations = dict(configs)


class LaunchConfiguration:
    def __init__(self, name: str, default: Any = None) -> None:
        self.name, self.default = name, default

    def perform(self, context: Context) -> str:
        if self.name in context.launch_configurations:
            return context.launch_configurations[self.name]
        if self.default is not None:
            return resolve(self.default, context)
        raise KeyError(f"launch configuration {self.name!r} is not set (undeclared argument?)")


class Recorded:
    """Any launch action: keeps its positional and keyword arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs


class DeclareLaunchArgument(Recorded):
    @property
    def name(self) -> str:
        return self.args[0]


class LaunchDescription:
    def __init__(self, entities: Any = None) -> None:
        self.entities = list(entities or [])


class OpaqueFunction(Recorded):
    pass


class IncludeLaunchDescription(Recorded):
    pass


class PythonLaunchDescriptionSource(Recorded):
    pass


class SetEnvironmentVariable(Recorded):
    pass


class ExecuteProcess(Recorded):
    pass


class Node(Recorded):
    pass


def get_package_share_directory(package: str) -> str:
    if package != "seg_node":
        raise LookupError(f"package {package!r} not found")
    return str(REPO)  # the install layout (share/seg_node/{config,launch}) mirrors the repository


def resolve(value: Any, context: Context) -> Any:
    if isinstance(value, LaunchConfiguration):
        return value.perform(context)
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, LaunchConfiguration)) for v in value):
        return "".join(resolve(v, context) for v in value)
    return value


def stand_in_modules() -> dict[str, types.ModuleType]:
    def module(name: str, **attrs: Any) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        return m

    return {
        "launch": module("launch", LaunchDescription=LaunchDescription),
        "launch.actions": module("launch.actions", DeclareLaunchArgument=DeclareLaunchArgument,
                                 OpaqueFunction=OpaqueFunction, IncludeLaunchDescription=IncludeLaunchDescription,
                                 SetEnvironmentVariable=SetEnvironmentVariable, ExecuteProcess=ExecuteProcess),
        "launch.substitutions": module("launch.substitutions", LaunchConfiguration=LaunchConfiguration),
        "launch.launch_description_sources": module("launch.launch_description_sources",
                                                    PythonLaunchDescriptionSource=PythonLaunchDescriptionSource),
        "launch_ros": module("launch_ros"),
        "launch_ros.actions": module("launch_ros.actions", Node=Node),
        "ament_index_python": module("ament_index_python"),
        "ament_index_python.packages": module("ament_index_python.packages",
                                              get_package_share_directory=get_package_share_directory),
    }


@pytest.fixture(autouse=True)
def stand_ins(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, mod in stand_in_modules().items():
        monkeypatch.setitem(sys.modules, name, mod)


def load(path: Path) -> LaunchDescription:
    spec = importlib.util.spec_from_file_location(f"launch_file_{path.stem.replace('.', '_')}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.generate_launch_description()


class Result:
    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.processes: list[ExecuteProcess] = []
        self.env: dict[str, str] = {}
        self.arguments: dict[str, list[DeclareLaunchArgument]] = {}


def evaluate(path: Path, args: dict[str, str], result: Result | None = None) -> Result:
    """What `ros2 launch <path> k:=v ...` would start (nodes with resolved kwargs, processes, environment)."""
    result = result or Result()
    ld = load(path)
    context = Context({})
    result.arguments[path.name] = []

    def run(entities: list[Any]) -> None:
        for e in entities:
            if isinstance(e, DeclareLaunchArgument):
                result.arguments[path.name].append(e)
                if e.name in args:
                    context.launch_configurations[e.name] = args[e.name]
                elif "default_value" in e.kwargs:
                    context.launch_configurations[e.name] = resolve(e.kwargs["default_value"], context)
                else:
                    raise ValueError(f"{path.name}: required argument {e.name!r} not given")
            elif isinstance(e, OpaqueFunction):
                run(list(e.kwargs["function"](context) or []))
            elif isinstance(e, IncludeLaunchDescription):
                source = e.args[0]
                included = Path(resolve(source.args[0], context))
                given = {k: resolve(v, context) for k, v in (e.kwargs.get("launch_arguments") or [])}
                evaluate(included, given, result)
            elif isinstance(e, SetEnvironmentVariable):
                result.env[resolve(e.args[0], context)] = resolve(e.args[1], context)
            elif isinstance(e, Node):
                result.nodes.append(e)
            elif isinstance(e, ExecuteProcess):
                result.processes.append(e)
            else:
                raise TypeError(f"{path.name}: unexpected launch entity {type(e).__name__}")

    run(ld.entities)
    return result


# ---------------------------------------------------------------------------------------------------- tests

REQUIRED = {"bag_replay.launch.py": {"bag": "/data/run_01"}}
PROFILES = {"segmenter.launch.py": "cpu_onnx.yaml", "cpu.launch.py": "cpu_onnx.yaml",
            "jetson.launch.py": "jetson_tensorrt.yaml", "bag_replay.launch.py": "cpu_onnx.yaml"}


def test_the_expected_launch_files_exist() -> None:
    assert set(PROFILES) <= set(LAUNCH_FILES), LAUNCH_FILES


def test_segmenter_executable_is_installed_where_launch_ros_looks() -> None:
    setup_py = (REPO / "setup.py").read_text()
    assert re.search(r"['\"]segmenter\s*=\s*seg_node\.ros\.node:main['\"]", setup_py), \
        "setup.py must register the console script: 'segmenter = seg_node.ros.node:main'"
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    # colcon installs console scripts to lib/<package>/, where launch_ros' Node(package=, executable=) finds them.
    assert cfg["install"]["install_scripts"] == "$base/lib/seg_node"
    assert "launch/*.launch.py" in setup_py and "config/*.yaml" in setup_py and "config/*.xml" in setup_py
    from seg_node.ros import node

    assert callable(node.main)


@pytest.mark.parametrize("name", LAUNCH_FILES)
def test_launch_file_starts_the_segmenter_with_a_valid_profile(name: str, tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"")  # only the path matters here; the profiles are validated, not run
    result = evaluate(LAUNCH / name, {**REQUIRED.get(name, {}), "model_path": str(model)})
    assert len(result.nodes) == 1, result.nodes
    node = result.nodes[0].kwargs
    assert (node["package"], node["executable"], node["name"]) == ("seg_node", "segmenter", "segmenter")
    params_file, overrides = node["parameters"]
    assert Path(params_file).name == PROFILES[name] and Path(params_file).is_file()
    assert overrides["model.path"] == str(model)
    node_params, config = load_params_file(params_file, overrides=overrides)
    assert config.model.path == str(model)
    # Every argument says what it is for.
    for file, declared in result.arguments.items():
        assert all(d.kwargs.get("description") for d in declared), file
    # A worker beyond recovery exits with code 3: the launch starts the node again.
    assert node["respawn"] is True and node["respawn_delay"] > 0
    # The Fast DDS profile for large images is set for what the launch starts, under the names of Fast DDS 2.x
    # (Humble, Jazzy: only FASTRTPS_*) and 3.x, and it is valid XML.
    assert result.env["FASTRTPS_DEFAULT_PROFILES_FILE"] == result.env["FASTDDS_DEFAULT_PROFILES_FILE"]
    profile = Path(result.env["FASTDDS_DEFAULT_PROFILES_FILE"])
    assert profile.is_file() and profile.name == "fastdds_large_images.xml"
    root = ET.parse(profile).getroot()
    ns = {"d": "http://www.eprosima.com"}
    assert root.find(".//d:transport_descriptor/d:segment_size", ns).text == "33554432"
    assert root.find(".//d:interfaceWhiteList/d:address", ns).text == "127.0.0.1"


def test_remaps_namespace_and_defaults() -> None:
    result = evaluate(LAUNCH / "segmenter.launch.py", {
        "image": "/camera/color/image_raw", "depth": "/camera/aligned_depth_to_color/image_raw",
        "camera_info": "/camera/color/camera_info", "namespace": "robot1", "log_level": "debug"})
    node = result.nodes[0].kwargs
    assert dict(node["remappings"]) == {"image": "/camera/color/image_raw",
                                        "depth": "/camera/aligned_depth_to_color/image_raw",
                                        "camera_info": "/camera/color/camera_info"}
    assert node["namespace"] == "robot1" and node["arguments"] == ["--ros-args", "--log-level", "debug"]
    # Without model_path the params file's model.path stands (no empty override).
    assert node["parameters"][1] == {"use_sim_time": False}


def test_cpu_and_jetson_profiles() -> None:
    cpu = evaluate(LAUNCH / "cpu.launch.py", {"image": "/cam/image"}).nodes[0].kwargs
    jetson = evaluate(LAUNCH / "jetson.launch.py", {"image": "/cam/image"}).nodes[0].kwargs
    assert dict(cpu["remappings"])["image"] == dict(jetson["remappings"])["image"] == "/cam/image"
    _, cpu_cfg = load_params_file(cpu["parameters"][0])
    jetson_params, jetson_cfg = load_params_file(jetson["parameters"][0])
    assert (cpu_cfg.backend.name, cpu_cfg.backend.device) == ("onnxruntime", "cpu")
    # The Jetson runs prebuilt engines from the cache and refuses a surprise build at start-up.
    assert (jetson_cfg.backend.name, jetson_cfg.backend.device, jetson_cfg.backend.precision) == ("tensorrt", "cuda", "fp16")
    assert jetson_cfg.backend.engine_on_missing == "fail"
    assert jetson_params.input.use_depth


def test_bag_replay_plays_the_bag_on_its_clock() -> None:
    result = evaluate(LAUNCH / "bag_replay.launch.py", {"bag": "/data/run_01", "rate": "0.5", "loop": "true",
                                                        "image": "/camera/color/image_raw"})
    (proc,) = result.processes
    cmd = proc.kwargs["cmd"]
    assert cmd[:5] == ["ros2", "bag", "play", "/data/run_01", "--clock"]
    assert cmd[cmd.index("--rate") + 1] == "0.5" and "--loop" in cmd
    node = result.nodes[0].kwargs
    assert node["parameters"][1]["use_sim_time"] is True
    assert dict(node["remappings"])["image"] == "/camera/color/image_raw"
    with pytest.raises(ValueError, match="bag"):
        evaluate(LAUNCH / "bag_replay.launch.py", {})
