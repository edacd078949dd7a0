"""bag_eval --completion on real bags: part of every ground-truth instance hidden, completed on the frame's colour map,
scored against a nearest-label fill. The oracle model's colour map is the frame itself (flat colours on black), so the
colours say exactly where each hidden part belongs and completion must do at least as well as the fill."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from seg_node.evaluation.bag_eval import main
from seg_node.evaluation.completion_scoring import Protocol, score_frame
from seg_node.evaluation.make_bag import BagFrame, synthetic_frames, write_bag
from seg_node.evaluation.metrics import GtFrame
from seg_node.instances import InstanceParams
from seg_node.processing.prompting import PromptParams
from tests.helpers.oracle_model import make_oracle_onnx

SIZE = (64, 96)
ROWS = [f"{pattern} {p}%" for p in (30, 60, 90) for pattern in ("blobs", "band")]


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_oracle_onnx(tmp_path_factory.mktemp("oracle") / "oracle.onnx")


def run(capsys, bag: Path, model: Path, out: Path, *extra: object) -> tuple[int, str, str, dict]:
    code = main([str(a) for a in (bag, "--model", model, "--output", out, "--processing-resolution", 0, "--no-bag",
                                  "--clicks", 0, *extra)])
    stdout, err = capsys.readouterr()
    metrics_file = out / "metrics.json"
    return code, stdout, err, json.loads(metrics_file.read_text()) if metrics_file.exists() else {}


def test_completion_is_scored_per_hidden_share_and_beats_the_nearest_label_fill(tmp_path, oracle, capsys):
    frames = list(synthetic_frames(4, SIZE, 3, seed=3))
    speck = BagFrame(np.zeros((*SIZE, 3), np.uint8), np.zeros(SIZE, np.uint16))  # ground truth of one 5x5 object
    speck.rgb[10:15, 10:15] = (200, 40, 40)
    speck.gt[10:15, 10:15] = 1
    write_bag(tmp_path / "bag", [*frames, speck], "mcap")
    code, stdout, err, m = run(capsys, tmp_path / "bag", oracle, tmp_path / "out", "--completion", "90,30,60")
    assert code == 0, err
    c = m["completion"]
    assert c["percents"] == [30, 60, 90] and c["patterns"] == ["blobs", "band"] and list(c["results"]) == ROWS
    # Every frame with ground truth is scored or counted; a frame without an object of 30 px does not make the run
    # incomplete (as frames without ground truth do not).
    assert c["frames_scored"] == 4 and c["not_scored"] == {"no_instance_of_min_area": 1}
    assert c["frames_scored"] + sum(c["not_scored"].values()) == m["frames"]["evaluated"] == 5 and m["complete"]
    for name, row in c["results"].items():
        assert row["frames"] == 4 and row["instances"] == 12, name
        assert row["completion_iou"] >= max(0.99, row["baseline_iou"])
        assert row["completion_hidden_correct"] >= row["baseline_hidden_correct"]
    assert c["results"]["band 90%"]["completion_iou"] > c["results"]["band 90%"]["baseline_iou"] + 0.2
    assert "completion band 90%: IoU" in stdout and f"wrote {tmp_path / 'out' / 'completion.png'}" in stdout
    records = [json.loads(line) for line in (tmp_path / "out" / "frames.jsonl").read_text().splitlines()]
    assert [sorted(r.get("completion_iou", {})) for r in records] == [sorted(ROWS)] * 4 + [[]]
    # One figure, of the first scored frame at the hardest setting: image | known part | completed | ground truth.
    assert c["figure"] == "completion.png" and c["figure_frame"] == 0
    figure = cv2.imread(str(tmp_path / "out" / "completion.png"))
    assert figure is not None and figure.shape[1] > 3.5 * figure.shape[0]
    report = (tmp_path / "out" / "report.html").read_text()
    assert "Mask completion" in report and "src='completion.png'" in report
    assert "1 frame(s) with ground truth not scored: no_instance_of_min_area" in report

    # The hidden pixels depend on the frame, the share and the pattern only: not on the other shares asked for, nor on
    # how many workers run.
    code, _, err, m2 = run(capsys, tmp_path / "bag", oracle, tmp_path / "out2", "--completion", "60",
                           "--completion-pattern", "band", "--workers", 2, "--chunk-size", 2)
    assert code == 0, err
    assert list(m2["completion"]["results"]) == ["band 60%"]
    assert m2["completion"]["results"]["band 60%"] == c["results"]["band 60%"]


@pytest.mark.parametrize("flag, value", [("--completion", "0"), ("--completion", "30,100"), ("--completion", "30,30"),
                                         ("--completion", "30,half"), ("--completion", ""),
                                         ("--completion-pattern", "discs")])
def test_bad_completion_values_are_refused(tmp_path, oracle, capsys, flag, value):
    write_bag(tmp_path / "bag", synthetic_frames(1, SIZE, 2), "mcap")
    with pytest.raises(SystemExit) as exit_info:
        run(capsys, tmp_path / "bag", oracle, tmp_path / "out", flag, value)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"argument {flag}" in err
    assert ("expected distinct whole percentages in 1..99" in err) if flag == "--completion" else "invalid choice" in err
    assert not (tmp_path / "out").exists()


def test_coco_crowd_regions_stay_known_and_unscored():
    from pycocotools import mask as mask_utils

    rgb = np.zeros((*SIZE, 3), np.uint8)
    rgb[10:30, 10:30], rgb[10:30, 50:70] = (200, 40, 40), (40, 200, 40)
    annotations = []
    for i, (x, crowd) in enumerate(((10, 0), (50, 1)), 1):
        mask = np.zeros(SIZE, np.uint8)
        mask[10:30, x:x + 20] = 1
        rle = mask_utils.encode(np.asfortranarray(mask))
        annotations.append({"id": i, "iscrowd": crowd, "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    result = score_frame(rgb.astype(np.float32), GtFrame.from_coco(annotations, *SIZE), 0, Protocol((60,), ("band",)),
                         InstanceParams(), PromptParams())
    scores = result.scores["band 60%"]
    hidden, _ = result.example
    assert scores.ious == [1.0] and scores.hidden == hidden.sum() == hidden[10:30, 10:30].sum() > 0
