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
    from tests.helpers.tiny_sd import make_tiny_sd

    return make_tiny_sd(tmp_path_factory.mktemp("tiny_sd") / "gen2seg-sd-tiny")


@pytest.fixture(scope="session")
def tiny_mae_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.helpers.tiny_mae import make_tiny_mae

    return make_tiny_mae(tmp_path_factory.mktemp("tiny_mae") / "gen2seg-mae-tiny")
