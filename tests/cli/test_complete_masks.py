"""Segmenter.complete and the complete_masks console script, on the oracle model (the frame is its colour map)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from seg_node.config import SegmenterConfig, config_from_dict
from seg_node.pipeline import Segmenter
from tests.helpers.oracle_model import make_oracle_onnx
from tests.helpers.ros_helpers import paint, rectangles_scene

SCRIPT = str(Path(sys.executable).with_name("complete_masks"))
BOXES = [(20, 20, 100, 80), (120, 30, 90, 70), (40, 140, 120, 70), (200, 150, 80, 60)]  # 1 and 2 touch


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_oracle_onnx(tmp_path_factory.mktemp("oracle") / "oracle.onnx")


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray, dict[str, Path]]:
    """Truth, the partial map (object 1 two-thirds hidden, object 4 unlabelled) and their files."""
    truth = rectangles_scene(240, 320, BOXES)
    partial = truth.copy()
    partial[(truth == 1) & (np.arange(320)[None, :] > 50)] = 0
    partial[truth == 4] = 0
    folder = tmp_path_factory.mktemp("inputs")
    files = {"image": folder / "scene.png", "partial": folder / "partial.png", "gt": folder / "gt.png",
             "known": folder / "known.png"}
    cv2.imwrite(str(files["image"]), cv2.cvtColor(paint(truth), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(files["partial"]), partial)
    cv2.imwrite(str(files["gt"]), truth)
    cv2.imwrite(str(files["known"]), ((partial > 0) | (truth == 4)).astype(np.uint8) * 255)
    return truth, partial, files


def _config(model: Path) -> SegmenterConfig:
    return config_from_dict({"model": {"path": str(model), "processing_resolution": 0}, "tracking": {"enabled": False}})


def test_segmenter_complete_runs_the_model_then_completes(oracle, scene) -> None:
    truth, partial, _ = scene
    with Segmenter(_config(oracle)) as seg:
        done = seg.complete(paint(truth), partial)
        assert np.array_equal(done == 1, truth == 1)
        assert np.array_equal(done == 4, truth == 4)  # the new id: the largest known one (3) + 1
        with pytest.raises(ValueError, match="frame is 240×320"):
            seg.complete(paint(truth), partial[:-1])
        with pytest.raises(ValueError, match="frame must be a uint8"):
            seg.complete(paint(truth).astype(np.float32), partial)


def _run(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_cli_writes_the_completed_map_overlay_and_figure(oracle, scene, tmp_path) -> None:
    truth, partial, f = scene
    out = tmp_path / "out"
    r = _run(f["image"], "--partial", f["partial"], "--ground-truth", f["gt"], "--model", oracle, "--output", out,
             "--processing-resolution", 0)
    assert r.returncode == 0, r.stderr
    done = cv2.imread(str(out / "scene_completed.png"), cv2.IMREAD_UNCHANGED)
    assert done.dtype == np.uint16 and np.array_equal(done == 1, truth == 1) and np.array_equal(done == 4, truth == 4)
    figure = cv2.imread(str(out / "scene_completion.png"))
    assert figure.shape[1] > 3 * figure.shape[0]  # three panels side by side
    assert cv2.imread(str(out / "scene_completed_overlay.png")).shape[:2] == truth.shape
    assert "1 new (4)" in r.stdout and "mean IoU of the ground truth's ids 1.000" in r.stdout
    assert str(out / "scene_completed.png") in r.stdout

    # A known mask makes object 4's pixels known background.
    r = _run(f["image"], "--partial", f["partial"], "--known", f["known"], "--model", oracle, "--output", out,
             "--processing-resolution", 0)
    assert r.returncode == 0, r.stderr
    assert np.all(cv2.imread(str(out / "scene_completed.png"), cv2.IMREAD_UNCHANGED)[truth == 4] == 0)


def test_cli_bad_input_exits_2_naming_the_file(oracle, scene, tmp_path) -> None:
    _, partial, f = scene
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), partial[:100])
    empty = tmp_path / "empty.png"
    cv2.imwrite(str(empty), np.zeros_like(partial))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    for partial_file, message in ((small, "is 320×100, the image is 320×240"), (empty, "no pixel is known"),
                                  (text, "not a readable image"), (tmp_path / "missing.png", "no such file")):
        r = _run(f["image"], "--partial", partial_file, "--model", oracle, "--output", tmp_path / "out")
        assert r.returncode == 2 and str(partial_file) in r.stderr and message in r.stderr, r.stderr
