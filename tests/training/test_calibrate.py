"""calibrate_instances: grid search of post-processing thresholds on scenes of the training shapes."""
from __future__ import annotations

from pathlib import Path

import pytest

from seg_node.config import ModelConfig, SegmenterConfig, load_config
from seg_node.pipeline import Segmenter
from training import calibrate
from training.evaluate import evaluate_scenes, evaluation_scenes


def test_picks_the_best_grid_point_and_writes_a_loadable_config(tiny_mae_path: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    grid = {"merge_distance": (15.0, 60.0), "min_area": (30, 400)}
    monkeypatch.setattr(calibrate, "GRID", grid)
    monkeypatch.setattr(calibrate, "REFINE_RADII", (0, 3))
    out = tmp_path / "segmenter.yaml"
    assert calibrate.main(["--model", str(tiny_mae_path), "--shapes", "box", "flat", "--scenes", "3",
                           "--size", "96x128", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "8 grid points" in printed and f"wrote {out}" in printed
    config = load_config(out)
    assert config.model.path == ""  # given with --model beside the file
    assert config.model.refine_radius in (0, 3)
    assert config.instances.merge_distance in grid["merge_distance"] and config.instances.min_area in grid["min_area"]

    # The written point is the best of the scores calibrate() reports for the same scenes.
    scenes = evaluation_scenes(["box", "flat"], 3, (96, 128), 2_000_003)
    with Segmenter(SegmenterConfig(model=ModelConfig(path=str(tiny_mae_path)))) as seg:
        best, rows = calibrate.calibrate(seg, scenes, grid, (0, 3), log=lambda line: None)
    assert len(rows) == 8
    # The score is the mean of the clicks' mIoU (as evaluate_scenes measures it, per radius) and AP50.
    for radius in (0, 3):
        config = SegmenterConfig(model=ModelConfig(path=str(tiny_mae_path), refine_radius=radius))
        with Segmenter(config) as seg:
            miou = evaluate_scenes(seg, scenes)["miou_1"]
        for r in (r for r in rows if r["refine_radius"] == radius):
            assert r["miou_1"] == pytest.approx(miou, abs=1e-6)
            assert r["score"] == pytest.approx((miou + (r["AP50"] or 0.0)) / 2, abs=1e-6)
    top = max(rows, key=lambda r: (r["score"], r["AP"] or 0.0))
    assert (best.model.refine_radius, best.instances.merge_distance, best.instances.min_area) == \
        (top["refine_radius"], top["merge_distance"], top["min_area"])
    assert (config.model.refine_radius, config.instances.merge_distance, config.instances.min_area) == \
        (top["refine_radius"], top["merge_distance"], top["min_area"])


def test_bad_model_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert calibrate.main(["--model", str(tmp_path / "missing"), "--shapes", "box", "--output",
                           str(tmp_path / "x.yaml")]) == 2
    assert "missing" in capsys.readouterr().err
