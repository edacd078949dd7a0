"""A model's recommended post-processing travels inside it, and every tool that loads the model uses it.

Thresholds that suit one model (where its background colour sits, how far apart its instances are, whether its
borders need the guided refinement, the processing resolution it was trained for) are wrong for another. So a
model carries them:

* a checkpoint folder: ``segmenter.yaml`` in the folder (the sections of a Segmenter config file);
* an exported ``.onnx`` file: the ``seg_node.recommended`` metadata entry (JSON, dotted names;
  ``seg_node.models.onnx_format``), which ``export_onnx`` copies from the folder's ``segmenter.yaml``.

Only post-processing travels (``CARRIED``): never the backend, the device or anything about the robot. The
configuration a tool runs with is the defaults, then the model's recommendation, then whatever the user set
(a config file's keys, command-line options, ROS parameters): the user always wins.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from seg_node.config import (ConfigError, SegmenterConfig, config_from_dict, flatten, flatten_mapping, load_config,
                             read_yaml_mapping, unflatten)
from seg_node.models.onnx_format import OnnxFormatError, read_onnx_metadata, recommended_from_metadata

__all__ = ["CARRIED", "RECOMMENDED_FILE", "config_for_model", "file_values", "is_carried", "recommended_settings",
           "resolve_config"]

RECOMMENDED_FILE = "segmenter.yaml"
CARRIED = ("model.processing_resolution", "model.label_resolution", "model.refine_radius", "model.refine_eps",
           "model.refine_subsample", "model.prompt_refine_radius", "model.prompt_upsample_radius",
           "instances.", "prompting.")


def is_carried(name: str) -> bool:
    """Whether a dotted parameter is post-processing that a model may recommend."""
    return any(name == c or (c.endswith(".") and name.startswith(c)) for c in CARRIED)


def file_values(path: str | Path) -> dict[str, Any]:
    """The dotted values a Segmenter config file sets (only those: what it leaves out stays open)."""
    return flatten_mapping(read_yaml_mapping(Path(path), "config", "sections"))


def _validated(values: dict[str, Any], where: str) -> dict[str, Any]:
    try:
        config_from_dict(unflatten({**flatten(SegmenterConfig()), **values}))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    return values


def recommended_settings(model_path: str | Path) -> dict[str, Any]:
    """The post-processing a model recommends, as dotted names ({} when it carries none).

    ConfigError names the file when the recommendation is unreadable or has a bad value."""
    path = Path(model_path).expanduser()
    if path.is_dir():
        source = path / RECOMMENDED_FILE
        if not source.is_file():
            return {}
        values = file_values(source)
    elif path.suffix == ".onnx" and path.is_file():
        source = path
        try:
            values = recommended_from_metadata(read_onnx_metadata(path), path)
        except OnnxFormatError as exc:  # names the file
            raise ConfigError(str(exc)) from exc
    else:
        return {}
    return _validated({k: v for k, v in values.items() if is_carried(k)}, str(source))


def config_for_model(model_path: str | Path, user: Mapping[str, Any] | None = None) -> SegmenterConfig:
    """The configuration to run ``model_path`` with: defaults, then the model's recommendation, then ``user``
    (dotted names the user set explicitly; they always win). ``model.path`` is set to ``model_path``."""
    values = {**flatten(SegmenterConfig()), **recommended_settings(model_path), **(user or {}),
              "model.path": str(model_path)}
    return config_from_dict(unflatten(values))


def resolve_config(model_path: str | Path, config_file: str | Path | None = None,
                   user: Mapping[str, Any] | None = None) -> SegmenterConfig:
    """``config_for_model`` with a user's config file: its keys, then ``user`` on top. Errors name the file."""
    values = dict(user or {})
    if config_file is not None:
        load_config(config_file, {k: v for k, v in values.items() if k != "model.path"})  # validates, naming the file
        values = {**file_values(config_file), **values}
    return config_for_model(model_path, values)
