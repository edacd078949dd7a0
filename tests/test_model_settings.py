"""A model carries its recommended post-processing (seg_node.model_settings): folder segmenter.yaml, ONNX metadata."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from seg_node.config import ConfigError
from seg_node.model_settings import RECOMMENDED_FILE, recommended_settings, resolve_config
from seg_node.pipeline import Segmenter

RECOMMENDED = {"model": {"refine_radius": 3, "processing_resolution": 320},
               "instances": {"min_area": 7, "background_threshold": 55.0},
               "backend": {"threads": 1}}  # not post-processing: a model never sets it


@pytest.fixture()
def model(tmp_path: Path, tiny_mae_path: Path) -> Path:
    folder = Path(shutil.copytree(tiny_mae_path, tmp_path / "model"))
    (folder / RECOMMENDED_FILE).write_text(yaml.safe_dump(RECOMMENDED))
    return folder


def test_every_entry_point_uses_the_models_settings_unless_the_user_sets_them(model: Path, tmp_path: Path) -> None:
    assert recommended_settings(model) == {"model.refine_radius": 3, "model.processing_resolution": 320,
                                           "instances.min_area": 7, "instances.background_threshold": 55.0}
    for config in (Segmenter(model).config, Segmenter.from_model(model).config, resolve_config(model)):
        assert (config.model.refine_radius, config.instances.min_area, config.backend.threads) == (3, 7, 0)
    assert Segmenter.from_model(model, refine_radius=0).config.model.refine_radius == 0
    user = tmp_path / "user.yaml"
    user.write_text("instances:\n  min_area: 50\n")  # what the file leaves out stays the model's
    config = resolve_config(model, user)
    assert (config.instances.min_area, config.instances.background_threshold, config.model.refine_radius) == (50, 55.0, 3)
    # Without a recommendation: the defaults.
    (model / RECOMMENDED_FILE).unlink()
    assert recommended_settings(model) == {} and Segmenter(model).config.model.refine_radius == 0


def test_a_bad_recommendation_names_the_file(model: Path) -> None:
    (model / RECOMMENDED_FILE).write_text("instances:\n  min_area: -3\n")
    with pytest.raises(ConfigError, match=r"segmenter\.yaml.*min_area"):
        Segmenter(model)
    (model / RECOMMENDED_FILE).write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match=r"segmenter\.yaml"):
        recommended_settings(model)


def test_a_bad_onnx_recommendation_names_the_file(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from tests.helpers.oracle_model import make_oracle_onnx

    path = make_oracle_onnx(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    entry = model.metadata_props.add(key="seg_node.recommended")
    for value, message in (("{not json", "malformed 'seg_node.recommended'"), ("[1]", "must be a JSON object"),
                           ('{"instances.min_area": -3}', "min_area")):
        entry.value = value
        onnx.save(model, str(path))
        with pytest.raises(ConfigError, match=rf"m\.onnx.*{message}"):
            recommended_settings(path)
    path.write_bytes(b"\x08\x07garbage" * 100)
    with pytest.raises(ConfigError, match=r"m\.onnx: not an ONNX model file"):
        Segmenter(path)


def test_export_carries_the_settings_into_the_onnx_file(model: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from training.export_onnx import export_onnx

    onnx = export_onnx(model, tmp_path / "m.onnx")
    assert recommended_settings(onnx) == recommended_settings(model)
    seg = Segmenter(onnx)
    assert (seg.config.model.refine_radius, seg.config.instances.min_area) == (3, 7)
    other = tmp_path / "other.yaml"
    other.write_text("model:\n  refine_radius: 5\n")
    assert recommended_settings(export_onnx(model, tmp_path / "o.onnx", recommended=other)) == {"model.refine_radius": 5}
    # Refined colour maps stay in the documented 0..255 (the guided filter overshoots at strong edges).
    frame = np.zeros((64, 64, 3), np.uint8)
    frame[:, 32:] = 255
    colors = seg.segment(frame).colors
    assert colors.min() >= 0.0 and colors.max() <= 255.0
