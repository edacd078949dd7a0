"""Configuration: YAML and dotted names map onto one validated object; bad values name themselves."""
from __future__ import annotations

from pathlib import Path

import pytest

from seg_node.config import (ConfigError, SegmenterConfig, config_from_dict, config_to_dict, flatten, load_config,
                             unflatten)


def test_defaults_round_trip_through_dict_and_flat_names():
    cfg = SegmenterConfig()
    assert config_from_dict(config_to_dict(cfg)) == cfg
    flat = flatten(cfg)
    assert flat["model.mode"] == "robot" and flat["backend.name"] == "auto"
    assert config_from_dict(unflatten(flat)) == cfg


def test_yaml_file_with_overrides(tmp_path: Path):
    f = tmp_path / "cfg.yaml"
    f.write_text("model:\n  path: /models/sd\n  processing_resolution: 640\nbackend:\n  threads: 2\n")
    cfg = load_config(f, {"model.mode": "reference"})
    assert (cfg.model.path, cfg.model.processing_resolution, cfg.model.mode, cfg.backend.threads) == ("/models/sd", 640, "reference", 2)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"model": {"mode": "fast"}}, "model.mode must be one of robot, reference, got 'fast'"),
        ({"model": {"processing_resolution": -1}}, "model.processing_resolution must be in [0, 8192]"),
        ({"model": {"processing_resolution": "768"}}, "model.processing_resolution: expected int, got '768'"),
        ({"backend": {"device": "gpu"}}, "backend.device must be 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
        ({"backend": {"precision": "int4"}}, "backend.precision must be one of fp32, fp16, bf16"),
        ({"backend": {"colour": 1}}, "backend.colour: unknown parameter"),
        ({"instances": {"no_such_knob": 1}}, "instances.no_such_knob: unknown parameter"),
        ({"modle": {}}, "modle: unknown parameter"),
        ({"model": 3}, "model: expected a mapping"),
    ],
)
def test_bad_values_fail_with_their_name(data, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    assert message in str(err.value)


def test_bad_files_name_the_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=f"{broken}: not valid YAML"):
        load_config(broken)
    noise = tmp_path / "noise.yaml"
    noise.write_bytes(bytes(range(256)) * 4)  # random bytes: 0x80 is the first that is not UTF-8
    with pytest.raises(ConfigError, match=f"{noise}: not a text file, so not YAML config \\(byte 128 is not UTF-8\\)"):
        load_config(noise)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("backend:\n  name: tensorflow\n")
    with pytest.raises(ConfigError, match=f"{wrong}: backend.name must be one of"):
        load_config(wrong)
