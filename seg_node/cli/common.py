"""What every command-line tool of the package shares: argument types, the one spelling of a size (HxW), the model
and backend options with the configuration they build, and the output-folder check."""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from seg_node.backends.base import BACKEND_NAMES, PRECISIONS
from seg_node.config import ConfigError, SegmenterConfig
from seg_node.model_settings import resolve_config
from seg_node.processing.image_codec import DEFAULT_LIMITS, SizeLimits, decode_image_bytes


def positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def hw_parser(minimum: int = 1) -> Callable[[str], tuple[int, int]]:
    """An argparse type for a size written HxW (height first, as every array shape here is), each side >= minimum."""

    def hw(text: str) -> tuple[int, int]:
        try:
            h, w = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected HxW (height x width), e.g. 240x320, got {text!r}") from None
        if h < minimum or w < minimum:
            raise argparse.ArgumentTypeError(f"size must be at least {minimum}x{minimum} (HxW), got {text}")
        return h, w

    return hw


hw_size = hw_parser()


def add_model_arguments(parser: Any, *, backends: Sequence[str] = BACKEND_NAMES, precisions: Sequence[str] = PRECISIONS,
                        threads_help: str = "backend threads (0 = the backend's default)") -> None:
    """--config, --reference-mode and the backend options, read back by ``config_from_arguments``."""
    parser.add_argument("--config", type=Path,
                        help="YAML config (sections model, backend, instances, prompting, depth, tracking)")
    parser.add_argument("--reference-mode", action="store_true",
                        help="reproduce the official gen2seg pipeline numerically (parity checks), instead of robot mode")
    parser.add_argument("--backend", choices=backends)
    parser.add_argument("--device", help="cpu, cuda or cuda:N")
    parser.add_argument("--precision", choices=precisions)
    parser.add_argument("--threads", type=non_negative, help=threads_help)
    parser.add_argument("--processing-resolution", type=non_negative,
                        help="SD: long edge fed to the network (0 = input size)")


def config_from_arguments(args: argparse.Namespace, overrides: dict[str, Any] | None = None,
                          settings: Sequence[str] = ()) -> SegmenterConfig:
    """The configuration of ``--model`` and ``add_model_arguments``' options: the defaults, the model's recommended
    post-processing, then what the user set: ``--config``'s keys, ``overrides``, the options given, and ``settings``
    (NAME=VALUE, the value read as YAML) on top."""
    values: dict[str, Any] = {"model.path": str(args.model), **(overrides or {})}
    if args.reference_mode:
        values["model.mode"] = "reference"
    for name, value in (("backend.name", args.backend), ("backend.device", args.device), ("backend.precision", args.precision),
                        ("backend.threads", args.threads), ("model.processing_resolution", args.processing_resolution)):
        if value is not None:
            values[name] = value
    for item in settings:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--set {item!r}: expected NAME=VALUE, e.g. tracking.enabled=false")
        try:
            values[name.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({exc})") from exc
    # The model's recommended post-processing (seg_node.model_settings) applies unless the file or an option sets it.
    return resolve_config(args.model, args.config, values)


def output_folder_problem(out: Path) -> str | None:
    """Creates ``out`` if missing; what is wrong with it as an output folder, or None."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create output folder {out}: {exc.strerror}"
    if not os.access(out, os.W_OK | os.X_OK):
        return f"output folder {out} is not writable"
    return None


def read_image_rgb(path: Path, limits: SizeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """An image file as uint8 RGB. The codec checks the size its header declares before decoding (``limits``) and
    says why a file cannot be read (OSError or ImageCodecError, naming the file)."""
    if not path.is_file():
        raise OSError(f"{path}: no such file")
    bgr = decode_image_bytes(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_COLOR, limits, str(path))
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
