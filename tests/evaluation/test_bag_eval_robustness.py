"""bag_eval on bad data: damaged bags, lying metadata, corrupt-looking and very large ground truth, and bags from make_bag
found without topic flags. Whatever it cannot use it counts, and metrics.json says "complete": false with reasons."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from seg_node.evaluation.bag_eval import main
from seg_node.evaluation.make_bag import BagFrame, synthetic_frames, write_bag
from seg_node.evaluation.mcap_crc import count_chunk_crcs
from tests.helpers.oracle_model import make_oracle_onnx

SIZE = (64, 96)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_oracle_onnx(tmp_path_factory.mktemp("oracle") / "oracle.onnx")


def run(capsys, bag: Path, model: Path, out: Path, *extra: object) -> tuple[int, str, dict]:
    code = main([str(a) for a in (bag, "--model", model, "--output", out, "--processing-resolution", 0, "--no-bag",
                                  "--clicks", 1, *extra)])
    err = capsys.readouterr().err
    metrics_file = out / "metrics.json"
    return code, err, json.loads(metrics_file.read_text()) if metrics_file.exists() else {}


def scores(m: dict) -> tuple:
    return m["frames"]["evaluated"], m["ground_truth"]["instances"], m["point_prompt"]["miou"], m["segment_everything"]["AP"]


def test_make_bag_topics_are_found_without_flags(tmp_path, oracle, capsys):
    write_bag(tmp_path / "bag", synthetic_frames(4, SIZE, 3, seed=1, depth=True), "sqlite3")
    code, err, m = run(capsys, tmp_path / "bag", oracle, tmp_path / "out")
    assert code == 0 and m["complete"] is True and m["incomplete_reasons"] == []
    assert m["bag"]["topics"] == {"image": "/camera/image_raw", "gt": "/camera/gt_labels",
                                  "depth": "/camera/depth/image_raw", "info": "/camera/camera_info"}
    assert m["frames"]["evaluated"] == 4 and m["point_prompt"]["miou"]["1"] == 1.0
    assert "topics in" in err and "/camera/gt_labels (sensor_msgs/msg/Image, 4 messages)" in err
    assert "by make_bag's default names" in err


def test_a_bag_without_ground_truth_says_why(tmp_path, oracle, capsys):
    frames = [BagFrame(f.rgb) for f in synthetic_frames(2, SIZE, 3, seed=1)]
    write_bag(tmp_path / "bag", frames, "sqlite3")
    code, err, m = run(capsys, tmp_path / "bag", oracle, tmp_path / "out")
    assert code == 0 and m["ground_truth"] is None
    assert "the bag has no /camera/gt_labels topic" in m["no_ground_truth"] and m["no_ground_truth"] in err


def test_more_than_255_ground_truth_instances_are_scored(tmp_path, oracle, capsys):
    rng = np.random.default_rng(0)
    gt, rgb = np.zeros((96, 128), np.uint16), np.zeros((96, 128, 3), np.uint8)
    for k, (y, x) in enumerate(((y, x) for y in range(0, 96, 6) for x in range(0, 128, 6)), 1):  # 16 x 22 = 352
        gt[y:y + 5, x:x + 5] = k
        rgb[y:y + 5, x:x + 5] = rng.integers(60, 256, 3)
    write_bag(tmp_path / "bag", [BagFrame(rgb, gt)], "mcap")
    code, err, m = run(capsys, tmp_path / "bag", oracle, tmp_path / "out")
    assert code == 0, err
    assert m["ground_truth"]["instances"] == 352 and m["point_prompt"]["instances"] == 352


def test_a_burst_of_tiny_ground_truth_instances_is_rejected_as_corrupt(tmp_path, oracle, capsys):
    frames = list(synthetic_frames(3, SIZE, 3, seed=1))
    specks = frames[1].gt.copy()
    specks[0, 0:40:2] = np.arange(100, 120)  # 20 one-pixel "instances", as damaged label payloads give
    frames[1] = BagFrame(frames[1].rgb, specks)
    write_bag(tmp_path / "bag", frames, "sqlite3")
    code, err, m = run(capsys, tmp_path / "bag", oracle, tmp_path / "out")
    assert code == 1 and m["complete"] is False
    assert m["ground_truth"]["rejected"] == {"looks_corrupt": 1} and m["frames"]["evaluated"] == 2
    assert "1 ground-truth frame(s) rejected: looks_corrupt" in m["incomplete_reasons"]
    assert "20 ground-truth instances of at most 4 px" in json.dumps(m["frames"]["examples"])
    code, _, m = run(capsys, tmp_path / "bag", oracle, tmp_path / "out2", "--gt-max-tiny-instances", -1)
    assert code == 0 and m["frames"]["evaluated"] == 3


def test_metadata_counts_that_disagree_with_the_bag_make_it_incomplete(tmp_path, oracle, capsys):
    write_bag(tmp_path / "bag", synthetic_frames(3, SIZE, 3, seed=1), "sqlite3")
    meta = tmp_path / "bag" / "metadata.yaml"
    meta.write_text(re.sub(r"message_count: (\d+)", lambda g: f"message_count: {int(g[1]) * 100}", meta.read_text()))
    code, err, m = run(capsys, tmp_path / "bag", oracle, tmp_path / "out")
    assert code == 1 and m["complete"] is False
    assert "/camera/image_raw: the bag's metadata lists 300 messages, 3 were read" in m["incomplete_reasons"]
    assert "300 messages, 3 were read" in err


def test_make_bag_writes_mcap_chunk_crcs(tmp_path, oracle, capsys):
    write_bag(tmp_path / "bag", synthetic_frames(3, SIZE, 3, seed=1), "mcap")
    chunks, with_crc = count_chunk_crcs(next((tmp_path / "bag").glob("*.mcap")))
    assert chunks >= 1 and with_crc == chunks
    code, _, m = run(capsys, tmp_path / "bag", oracle, tmp_path / "out")
    assert code == 0 and m["bag"]["checksums"] == f"all {chunks} MCAP chunks carry a CRC, checked as they are read"


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_random_damage_never_changes_a_number_silently(tmp_path, oracle, capsys, storage):
    bag = tmp_path / "bag"
    write_bag(bag, synthetic_frames(6, SIZE, 3, seed=1), storage)
    _, _, clean = run(capsys, bag, oracle, tmp_path / "clean")
    data_file = next(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))
    original = data_file.read_bytes()
    rng = np.random.default_rng(7)
    outcomes = []
    for trial in range(4):
        damaged = bytearray(original)
        at = int(rng.integers(len(damaged) // 10, len(damaged) - 200))
        damaged[at:at + 200] = rng.integers(0, 256, 200, dtype=np.uint8).tobytes()
        data_file.write_bytes(bytes(damaged))
        code, err, m = run(capsys, bag, oracle, tmp_path / f"out{trial}")
        assert "Traceback" not in err
        outcomes.append(code)
        if code == 2:  # nothing usable: a clear error and no metrics
            assert "bag_eval: error:" in err and not m
        elif m["complete"]:
            assert code == 0 and scores(m) == scores(clean), f"damage at byte {at} changed the metrics silently"
        else:
            assert code == 1 and m["incomplete_reasons"]
    if storage == "mcap":  # chunk CRCs catch what lands in message data
        assert 0 not in outcomes
