"""seg_node.cli.common: the argument types, the HxW size and the configuration every tool builds the same way."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from seg_node.cli.common import (add_model_arguments, config_from_arguments, hw_parser, hw_size, non_negative,
                                 output_folder_problem, positive)
from seg_node.config import ConfigError


def test_sizes_are_height_first() -> None:
    assert hw_size("240x320") == (240, 320)
    assert hw_parser(16)("16X20") == (16, 20)
    for bad in ("320", "axb", "0x5", "2x3x4"):
        with pytest.raises(argparse.ArgumentTypeError, match="HxW"):
            hw_size(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="at least 16x16"):
        hw_parser(16)("8x40")


def test_counts() -> None:
    assert positive("3") == 3 and non_negative("0") == 0
    with pytest.raises(argparse.ArgumentTypeError):
        positive("0")
    with pytest.raises(argparse.ArgumentTypeError):
        non_negative("-1")


def test_config_from_arguments(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path)
    add_model_arguments(parser, backends=["auto", "torch"])
    args = parser.parse_args(["--model", "m.onnx", "--reference-mode", "--threads", "2"])
    config = config_from_arguments(args, {"tracking.enabled": False}, settings=["instances.min_area=7"])
    assert config.model.path == "m.onnx" and config.model.mode == "reference" and config.backend.threads == 2
    assert not config.tracking.enabled and config.instances.min_area == 7
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        config_from_arguments(args, settings=["novalue"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--backend", "tensorrt"])


def test_output_folder_problem(tmp_path: Path) -> None:
    assert output_folder_problem(tmp_path / "new" / "dir") is None and (tmp_path / "new" / "dir").is_dir()
    (tmp_path / "file").write_text("")
    assert "cannot create output folder" in output_folder_problem(tmp_path / "file" / "x")
