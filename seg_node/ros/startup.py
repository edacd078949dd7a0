"""What the segmenter settles before it loads a model: which model (the shipped default when ``model.path`` is
empty), which Fast DDS profile, and the start-up error that names the parameter or file. Free of rclpy.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from seg_node.config import SegmenterConfig

__all__ = ["DEFAULT_MODEL", "EXIT_STARTUP", "EXIT_WORKER", "StartupError", "apply_fastdds_profile",
           "default_model_path", "params_files", "resolve_model_path", "share_file"]

PACKAGE = "seg_node"
# The shipped default model, relative to the package's share folder (setup.py data_files) or the source checkout.
DEFAULT_MODEL = Path("engines", "default", "model.onnx")
FASTDDS_PROFILE = Path("config", "fastdds_large_images.xml")
# Exit codes: a bad parameter, config or model (as segment_images); a worker that failed beyond recovery (a launch
# file's respawn=True starts the node again).
EXIT_STARTUP = 2
EXIT_WORKER = 3
# Backends that take the shipped ONNX model; the others need the user's weights in their own format.
_DEFAULT_MODEL_BACKENDS = ("auto", "onnxruntime")
WEIGHTS_SECTION = "README, 'Using the published checkpoints'"


class StartupError(RuntimeError):
    """The node cannot start; the message names the parameter or file and the problem."""


def share_file(relative: Path) -> list[Path]:
    """Where an installed data file of the package may lie, most specific first: the ament index (a ROS
    workspace or apt install), the interpreter prefix's share/ (pip install), the source checkout (editable)."""
    places = []
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

        try:
            places.append(Path(get_package_share_directory(PACKAGE)) / relative)
        except (PackageNotFoundError, OSError):  # not in the index, or no AMENT_PREFIX_PATH (a pip install)
            pass
    except ImportError:  # not a ROS install: the other places
        pass
    places.append(Path(sys.prefix) / "share" / PACKAGE / relative)
    places.append(Path(__file__).resolve().parents[2] / relative)
    return places


def default_model_path() -> Path:
    places = share_file(DEFAULT_MODEL)
    for place in places:
        if place.is_file():
            return place
    raise StartupError(f"model.path is empty and the shipped default model is not installed (looked in "
                       f"{', '.join(str(p) for p in places)}): reinstall seg_node, or set model.path")


def resolve_model_path(config: SegmenterConfig) -> tuple[str, bool]:
    """(model path to load, whether it is the shipped default). An empty ``model.path`` means the default model,
    for the backends that run it; the others fail naming the parameter and where the README says what to give."""
    path = config.model.path
    if path:
        if not Path(path).exists():
            raise StartupError(f"model.path {path!r} does not exist: give a gen2seg checkpoint folder or an exported "
                               f".onnx file ({WEIGHTS_SECTION}), or leave it empty for the shipped default model "
                               f"with backend.name auto or onnxruntime")
        return path, False
    if config.backend.name not in _DEFAULT_MODEL_BACKENDS:
        raise StartupError(f"model.path is empty, but backend.name {config.backend.name} needs your own weights "
                           f"(the shipped default model runs on onnxruntime only): set model.path to a checkpoint "
                           f"folder or an exported .onnx file, e.g. -p model.path:=/models/gen2seg-mae-h "
                           f"({WEIGHTS_SECTION})")
    return str(default_model_path()), True


def apply_fastdds_profile() -> str | None:
    """Point Fast DDS at the package's large-frame profile unless the environment names one already; call before
    rclpy.init. Both names: Fast DDS 2.x (Humble, Jazzy) reads only FASTRTPS_DEFAULT_PROFILES_FILE, 3.x (Kilted)
    both. Returns the profile applied, or None when the environment's is kept or none is installed."""
    names = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")
    if any(os.environ.get(n) for n in names):
        return None
    for place in share_file(FASTDDS_PROFILE):
        if place.is_file():
            for name in names:
                os.environ[name] = str(place)
            return str(place)
    return None


def params_files(argv: list[str]) -> list[str]:
    """The --params-file arguments in a command line."""
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--params-file"]
