"""calibrate_instances: grid search of post-processing thresholds on scenes of the training shapes."""
from __future__ import annotations

from dataclasses import replace
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
    monkeypatch.setattr(calibrate, "PROMPT_TAUS", (12.0, 40.0))
    monkeypatch.setattr(calibrate, "MIN_SCORES", (0.3, 0.95))
    monkeypatch.setattr(calibrate, "BORDER_CONTRASTS", (50.0, 150.0))
    monkeypatch.setattr(calibrate, "UPSAMPLE_RADII", ())
    out = tmp_path / "segmenter.yaml"
    assert calibrate.main(["--model", str(tiny_mae_path), "--shapes", "box", "flat", "--scenes", "3",
                           "--size", "96x128", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "8 grid points, 4 click settings" in printed and f"wrote {out}" in printed
    config = load_config(out)
    assert config.model.path == ""  # given with --model beside the file
    assert config.model.refine_radius in (0, 3)
    assert config.instances.merge_distance in grid["merge_distance"] and config.instances.min_area in grid["min_area"]

    # The written point is the best of what calibrate() reports for the same scenes: refinement and thresholds by
    # AP50 (then AP), the clicks' refinement and colour distance by their mIoU (as evaluate_scenes measures it).
    scenes = evaluation_scenes(["box", "flat"], 3, (96, 128), 2_000_003)
    with Segmenter(SegmenterConfig(model=ModelConfig(path=str(tiny_mae_path)))) as seg:
        best, rows, clicks = calibrate.calibrate(seg, scenes, grid, (0, 3), (12.0, 40.0), (0.3, 0.95), (),
                                                 log=lambda line: None, border_contrasts=(50.0, 150.0))
    grid_rows = [r for r in rows if "min_score" not in r and "border_contrast" not in r]
    assert len(grid_rows) == 8 and len(clicks) == 4
    miou = {}
    for radius in (0, 3):
        for tau in (12.0, 40.0):
            config_rt = SegmenterConfig(model=ModelConfig(path=str(tiny_mae_path), refine_radius=radius))
            with Segmenter(replace(config_rt, prompting=replace(config_rt.prompting, tau=tau))) as seg:
                miou[radius, tau] = evaluate_scenes(seg, scenes)["miou_1"]
    assert {(r["refine_radius"], r["tau"]): r["miou_1"] for r in clicks} == pytest.approx(miou, abs=1e-6)
    assert len(set(miou.values())) > 1  # the grid's points differ, so the choice below means something
    key = lambda r: (r["AP50"] or 0.0, r["AP"] or 0.0)  # noqa: E731
    top = max(grid_rows, key=key)
    # At that point, the border contrast that ranks best, if one beats none; then the largest min_score tried that
    # costs at most MIN_SCORE_COST of AP50.
    contrasts = [r for r in rows if "border_contrast" in r]
    assert [r["border_contrast"] for r in contrasts] == [50.0, 150.0]
    at = max([top] + contrasts, key=key)
    border_contrast = at.get("border_contrast", 0.0)
    tried = [r for r in rows if "min_score" in r]
    assert tried and all(r["refine_radius"] == top["refine_radius"] and r["min_area"] == top["min_area"]
                         for r in tried + contrasts)
    floor = at["AP50"] - calibrate.MIN_SCORE_COST
    assert tried[-1]["min_score"] == 0.95 or tried[-1]["AP50"] < floor
    min_score = max([0.0] + [r["min_score"] for r in tried if r["AP50"] >= floor])
    # One-standard-error rule: the smallest tau within one standard error of the best click mIoU.
    best_click = max(clicks, key=lambda r: r["miou_1"])
    assert 0 < best_click["se"] < 0.5
    near = [k for k in miou if miou[k] >= best_click["miou_1"] - best_click["se"] - 1e-9]
    click = min(near, key=lambda k: (k[1], k[0] != top["refine_radius"], -miou[k]))
    chosen = (top["refine_radius"], -1 if click[0] == top["refine_radius"] else click[0], click[1],
              top["merge_distance"], top["min_area"], border_contrast, min_score)
    for c in (best, config):
        assert (c.model.refine_radius, c.model.prompt_refine_radius, c.prompting.tau, c.instances.merge_distance,
                c.instances.min_area, c.instances.border_contrast, c.instances.min_score) == chosen

    # Through the Segmenter, the written config gives each user API its best: clicks the best radius's mIoU,
    # segment-everything the best point's AP50.
    with Segmenter(replace(config, model=replace(config.model, path=str(tiny_mae_path)))) as seg:
        result = evaluate_scenes(seg, scenes)
    assert result["miou_1"] == pytest.approx(miou[click], abs=1e-6)
    if min_score == 0.0:
        assert result["AP50"] == pytest.approx(at["AP50"], abs=1e-6)
    else:
        assert result["AP50"] == pytest.approx(max(r["AP50"] for r in tried if r["min_score"] == min_score), abs=1e-6)


def test_bad_model_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert calibrate.main(["--model", str(tmp_path / "missing"), "--shapes", "box", "--output",
                           str(tmp_path / "x.yaml")]) == 2
    assert "missing" in capsys.readouterr().err


def test_calibrating_the_default_model_drops_near_zero_segments_and_upsamples_clicks() -> None:
    """On the shipped model, whose shadows come out as near-zero-scoring segments, calibration keeps a min_score
    above 0: AP50 within MIN_SCORE_COST of it without, fewer segments a robot would take for objects. Its clicks,
    on frames twice the network's output, gain from the joint upsampling, which calibration keeps."""
    scenes = evaluation_scenes(["box", "flat"], 4, (240, 320), 2_000_003)
    model = Path(__file__).resolve().parents[2] / "engines" / "default" / "model.onnx"
    with Segmenter(SegmenterConfig(model=ModelConfig(path=str(model), processing_resolution=160))) as seg:
        best, rows, clicks = calibrate.calibrate(seg, scenes, {"min_area": (200,)}, (12,), (12.0,),
                                                 (0.05, 0.1, 0.2, 0.3), (1,), log=lambda line: None,
                                                 border_contrasts=())
    plain = next(r for r in rows if "min_score" not in r)
    tried = {r["min_score"]: r["AP50"] for r in rows if "min_score" in r}
    assert plain["AP50"] > 0.2
    floor = plain["AP50"] - calibrate.MIN_SCORE_COST
    assert best.instances.min_score > 0 and tried[best.instances.min_score] >= floor
    assert all(ap50 < floor for score, ap50 in tried.items() if score > best.instances.min_score)

    def scores(min_score: float) -> dict:
        config = replace(best, model=replace(best.model, path=str(model)),
                         instances=replace(best.instances, min_score=min_score))
        with Segmenter(config) as seg:
            return evaluate_scenes(seg, scenes)

    kept, every = scores(best.instances.min_score), scores(0.0)
    # Fewer segments, a larger share of them objects, the same objects found.
    assert kept["segments_per_scene"] < every["segments_per_scene"]
    assert kept["precision_50"] > every["precision_50"] and kept["recall_50"] == every["recall_50"] > 0.3

    plain_click, upsampled_click = sorted(clicks, key=lambda r: r["upsample_radius"])
    assert upsampled_click["miou_1"] > plain_click["miou_1"] and best.model.prompt_upsample_radius == 1
    # ONNX Runtime's threaded reductions can flip a border pixel between sessions: agreement to 1e-3, not 1e-6.
    assert kept["miou_1"] == pytest.approx(upsampled_click["miou_1"], abs=1e-3)


def test_calibrating_the_default_model_weighs_soft_borders_and_ranks_held_out_segments_better() -> None:
    """The shipped model draws shadows and lit-up table patches with soft borders. Calibration on scenes of its
    training shapes keeps a border contrast, and on scenes of shapes it never saw that ranks objects above those
    segments: AP50 rises, while the segments themselves (and so the share that are objects) stay as they were."""
    model = Path(__file__).resolve().parents[2] / "engines" / "default" / "model.onnx"
    config = SegmenterConfig(model=ModelConfig(path=str(model), processing_resolution=160))
    with Segmenter(config) as seg:
        best, rows, _ = calibrate.calibrate(seg, evaluation_scenes(["box", "tool", "cable", "flat"], 12, (240, 320),
                                                                   2_000_003),
                                            {"background_threshold": (90.0,), "min_area": (200,)}, (12,), (20.0,),
                                            (), (), log=lambda line: None, border_contrasts=(100.0,))
    plain, weighed = rows
    assert weighed["border_contrast"] == best.instances.border_contrast == 100.0
    assert weighed["AP50"] > plain["AP50"]

    held_out = evaluation_scenes(["blob", "cylinder"], 12, (240, 320))

    def scores(border_contrast: float) -> dict:
        with Segmenter(replace(best, instances=replace(best.instances, border_contrast=border_contrast))) as seg:
            return evaluate_scenes(seg, held_out)

    with_it, without = scores(100.0), scores(0.0)
    assert with_it["AP50"] > without["AP50"] + 0.01
    assert (with_it["segments_per_scene"], with_it["precision_50"]) == (without["segments_per_scene"],
                                                                        without["precision_50"])
