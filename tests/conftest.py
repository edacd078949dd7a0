"""Shared fixtures. Tiny gen2seg checkpoints are built once per session in the published on-disk layouts, so every
test loads them through the real loaders."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing may reach a model hub, and no ROS process may discover beyond loopback.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_sd_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")  # built with torch; without it (the Python 3.10 runtime leg) its tests skip
    from tests.helpers.tiny_sd import make_tiny_sd

    return make_tiny_sd(tmp_path_factory.mktemp("tiny_sd") / "gen2seg-sd-tiny")


@pytest.fixture(scope="session")
def tiny_mae_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")  # built with torch; without it (the Python 3.10 runtime leg) its tests skip
    from tests.helpers.tiny_mae import make_tiny_mae

    return make_tiny_mae(tmp_path_factory.mktemp("tiny_mae") / "gen2seg-mae-tiny")


# The ROS tests, run on every ROS distribution CI covers (`pytest -m ros`, the Jazzy leg of .ci/run): modules
# marked `pytestmark = pytest.mark.ros`, everything under tests/ros/ (node, params, services, lifecycle, ...), and
# these, which exercise ROS messages or bags without a running node.
ROS_TEST_FILES = {"test_image_codec.py", "test_bag_eval.py", "test_make_bag.py", "test_launch_files.py", "test_messages.py"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        name = item.path.name
        if item.path.parent.name == "ros" or name in ROS_TEST_FILES:
            item.add_marker(pytest.mark.ros)
