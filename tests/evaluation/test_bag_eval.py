"""bag_eval end to end: bags written with rosbags (sqlite3 and MCAP), a real model through the real loaders (the tiny
MAE checkpoint, and an "oracle" ONNX graph that returns the frame as its colour map, so flat-coloured objects on black
are segmented perfectly and every metric has a known value), damaged bags, and --workers 2 against --workers 1."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from tests.helpers.oracle_model import make_oracle_onnx
from seg_node.evaluation.bag_eval import main
from seg_node.evaluation.bag_io import make_header, make_typestore, open_writer
from seg_node.processing.image_codec import image_to_numpy, numpy_to_image
from seg_node.evaluation.make_bag import BagFrame, synthetic_frames, write_bag

GT = "/camera/gt_labels"
SIZE = (96, 128)  # H, W


@pytest.fixture(scope="session")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_oracle_onnx(tmp_path_factory.mktemp("oracle") / "oracle.onnx")


def run(capsys, *args: object) -> tuple[int, str, str, dict]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    output = Path(str(args[args.index("--output") + 1]))
    metrics_file = output / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    return code, out, err, metrics


def oracle_args(bag: Path, model: Path, out: Path, *extra: object) -> list[object]:
    return [bag, "--model", model, "--output", out, "--processing-resolution", 0, *extra]


def read_bag(path: Path) -> list[tuple[str, int, bytes]]:
    with Reader(path) as reader:
        return [(c.topic, t, bytes(raw)) for c, t, raw in reader.messages()]


def without_timings(out: Path) -> tuple[dict, list[dict], list[tuple[str, int, bytes]]]:
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("latency_ms", "latency_ms_evaluation_only", "throughput"):
        metrics.pop(key)
    metrics["model"].pop("backend")
    metrics["output_bag"].pop("path")
    frames = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    for f in frames:
        f.pop("timings_ms")
    return metrics, frames, read_bag(out / "bag")


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_oracle_scores_perfectly_and_writes_the_node_topics(tmp_path, oracle, capsys, storage):
    bag = tmp_path / "in"
    write_bag(bag, synthetic_frames(8, SIZE, 4, seed=2, depth=True), storage)
    out = tmp_path / "out"
    code, stdout, err, m = run(capsys, *oracle_args(bag, oracle, out, "--gt-topic", GT, "--depth-topic", "/camera/depth/image_raw",
                                                    "--camera-info-topic", "/camera/camera_info", "--clicks", 3, "--overlay"))
    assert code == 0, err
    assert m["frames"]["processed"] == m["frames"]["evaluated"] == 8 and m["frames"]["skipped_total"] == 0
    assert m["bag"]["topics"]["image"] == "/camera/image_raw"  # found on its own
    se, pp, tm = m["segment_everything"], m["point_prompt"], m["temporal"]
    assert se["AP"] == pytest.approx(1.0) and se["AP50"] == 1.0 and se["AR100"] == pytest.approx(1.0)
    assert se["mean_best_iou"] == 1.0 and se["boundary_f"] == 1.0
    assert pp["instances"] == 32 and pp["miou"] == {"1": 1.0, "2": 1.0, "3": 1.0} and pp["boundary_f"] == 1.0
    assert tm["id_switch_rate"] == 0.0 and tm["matched_pairs"] == 28 and tm["mota"] == 1.0
    assert set(m["latency_ms"]) >= {"preprocess", "network", "postprocess", "instances", "geometry", "tracking", "total"}
    assert "mIoU@1 1.000" in stdout and f"wrote {out / 'metrics.json'}" in stdout and "frames/s" in err
    # The output bag: same storage, the node's topics, stamped like the input frames.
    assert any(p.suffix == (".db3" if storage == "sqlite3" else ".mcap") for p in (out / "bag").iterdir())
    store = make_typestore()
    inputs = {t: raw for topic, t, raw in read_bag(bag) if topic == "/camera/image_raw"}
    got: dict[str, list] = {}
    for topic, t, raw in read_bag(out / "bag"):
        got.setdefault(topic, []).append((t, raw))
    assert set(got) == {"/segmenter/labels", "/segmenter/segments", "/segmenter/overlay"}
    frames = list(synthetic_frames(8, SIZE, 4, seed=2))
    for i, ((t, raw_labels), (t2, raw_segments)) in enumerate(zip(got["/segmenter/labels"], got["/segmenter/segments"])):
        source = store.deserialize_cdr(inputs[t], "sensor_msgs/msg/Image")
        labels_msg = store.deserialize_cdr(raw_labels, "sensor_msgs/msg/Image")
        segments = store.deserialize_cdr(raw_segments, "seg_msgs/msg/SegmentArray")
        assert t2 == t and labels_msg.header == source.header == segments.header
        assert labels_msg.encoding == "mono16" and (segments.height, segments.width) == SIZE
        labels = image_to_numpy(labels_msg)
        assert sorted(s.id for s in segments.segments) == sorted(int(v) for v in np.unique(labels) if v)
        for s in segments.segments:  # each segment is exactly one ground-truth object, with 3D from depth
            gt_ids = np.unique(frames[i].gt[labels == s.id])
            assert len(gt_ids) == 1 and s.area == (frames[i].gt == gt_ids[0]).sum()
            assert s.has_3d and abs(s.centroid_3d.z - (1.0 + 0.15 * (gt_ids[0] - 1))) < 0.01
            assert s.age == i + 1  # tracked from the first frame
    report = (out / "report.html").read_text()
    assert "<svg" in report and "mIoU vs clicks" in report and "thumbnails/best_01" in report
    assert len(list((out / "thumbnails").glob("*.png"))) == 8


def test_wrong_ground_truth_lowers_the_scores(tmp_path, oracle, capsys):
    frames = list(synthetic_frames(4, SIZE, 4, seed=5))
    for f in frames:  # every object's ground truth shifted by 6 px, and objects 1 and 2 merged into one
        f.gt = np.roll(f.gt, 6, axis=1)
        f.gt[f.gt == 2] = 1
    write_bag(tmp_path / "in", frames, "mcap")
    code, _, err, m = run(capsys, *oracle_args(tmp_path / "in", oracle, tmp_path / "out", "--gt-topic", GT, "--clicks", 2))
    assert code == 0, err
    assert m["segment_everything"]["AP"] < 0.5 and m["segment_everything"]["boundary_f"] < 0.9
    assert m["point_prompt"]["miou"]["1"] < 0.8 and m["point_prompt"]["instances"] == 12


def test_coco_ground_truth_color_ground_truth_and_compressed_frames(tmp_path, oracle, capsys):
    frames = list(synthetic_frames(5, SIZE, 3, seed=7))
    colors = [f.rgb.copy() for f in frames]  # ground truth as instance colours (the frame itself here)
    write_bag(tmp_path / "in", [BagFrame(f.rgb, c) for f, c in zip(frames, colors)], "sqlite3", compress="png")
    code, _, err, m = run(capsys, *oracle_args(tmp_path / "in", oracle, tmp_path / "o1", "--gt-topic", GT, "--clicks", 1))
    assert code == 0, err
    assert m["bag"]["topics"]["image"] == "/camera/image_raw/compressed"
    assert m["segment_everything"]["AP"] == pytest.approx(1.0) and m["temporal"]["id_switch_rate"] == 0.0

    from pycocotools import mask as mask_utils
    stamps = [1_700_000_000 * 10**9 + i * 100_000_000 for i in range(5)]  # make_bag's default start and 10 Hz
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    for i, (f, stamp) in enumerate(zip(frames, stamps)):
        coco["images"].append({"id": i, "height": SIZE[0], "width": SIZE[1], "stamp_ns": stamp})
        for k in range(1, 4):
            rle = mask_utils.encode(np.asfortranarray((f.gt == k).astype(np.uint8)))
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i, "category_id": 1, "iscrowd": 0,
                                        "track_id": k, "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    coco["images"].append({"id": 99, "height": SIZE[0], "width": SIZE[1], "stamp": {"sec": 5, "nanosec": 0}})  # no such frame
    (tmp_path / "gt.json").write_text(json.dumps(coco))
    code, _, err, m = run(capsys, *oracle_args(tmp_path / "in", oracle, tmp_path / "o2", "--gt-coco", tmp_path / "gt.json", "--clicks", 1))
    assert code == 1, err
    assert "1 ground-truth frame(s) match no image frame" in err
    assert m["ground_truth"]["without_frame"] == 1 and m["ground_truth"]["without_frame_stamps"] == [5 * 10**9]
    assert m["frames"]["evaluated"] == 5 and m["segment_everything"]["AP"] == pytest.approx(1.0)
    assert m["temporal"]["matched_pairs"] == 12 and m["temporal"]["id_switches"] == 0


def _gappy_frames(n: int) -> list[BagFrame]:
    """Objects that vanish for a frame now and then: per-frame labels reshuffle, so ids come from tracking."""
    frames = list(synthetic_frames(n, SIZE, 4, seed=11))
    for i, f in enumerate(frames):
        gone = 1 + i % 4 if i % 3 == 2 else None
        if gone:
            f.rgb[f.gt == gone] = 0
            f.gt[f.gt == gone] = 0
    return frames


def test_workers_2_equals_workers_1(tmp_path, oracle, tiny_mae_path, capsys):
    write_bag(tmp_path / "gappy", _gappy_frames(10), "mcap")
    for workers in (1, 2):
        code, _, err, m = run(capsys, *oracle_args(tmp_path / "gappy", oracle, tmp_path / f"o{workers}", "--gt-topic", GT,
                                                   "--workers", workers, "--chunk-size", 2, "--clicks", 2))
        assert code == 0, err
    a, b = without_timings(tmp_path / "o1"), without_timings(tmp_path / "o2")
    assert a == b
    assert a[0]["temporal"]["id_switches"] == 0 and a[0]["temporal"]["mot_id_switches"] == 0  # ids survive the gaps

    # The tiny MAE checkpoint through the torch loader in spawned workers, on noisy frames.
    write_bag(tmp_path / "noisy", synthetic_frames(9, SIZE, 4, seed=3, noise=12.0), "sqlite3")
    for workers in (1, 2):
        code, _, err, m = run(capsys, tmp_path / "noisy", "--model", tiny_mae_path, "--output", tmp_path / f"mae{workers}",
                              "--gt-topic", GT, "--workers", workers, "--chunk-size", 4, "--clicks", 2)
        assert code == 0, err
        assert m["throughput"]["workers"] == workers
    assert without_timings(tmp_path / "mae1") == without_timings(tmp_path / "mae2")


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_truncated_bag_is_read_up_to_the_damage(tmp_path, oracle, capsys, storage):
    bag = tmp_path / "in"
    # 40 frames: 2.5 MB, so that MCAP's 1 MiB chunks leave a whole one before the cut.
    write_bag(bag, synthetic_frames(40, SIZE, 3, seed=1), storage)
    (data,) = [p for p in bag.iterdir() if p.suffix in (".db3", ".mcap")]
    os.truncate(data, data.stat().st_size * 6 // 10)
    code, _, err, m = run(capsys, *oracle_args(bag, oracle, tmp_path / "out", "--gt-topic", GT, "--clicks", 1))
    assert code == 1 and "damaged" in err
    b, f = m["bag"], m["frames"]
    assert b["recovered"] and b["open_error"] and b["read_error"] and b["image_messages_expected"] == 40
    assert 10 <= b["image_messages_read"] < 40 and f["processed"] == b["image_messages_read"]
    assert f["skipped"] == {"unreadable_bag_tail": 40 - b["image_messages_read"]}
    # What was read is intact: the oracle is still perfect on it (a frame whose ground truth was lost is not scored).
    assert f["evaluated"] >= f["processed"] - 1 and m["segment_everything"]["AP"] == pytest.approx(1.0)
    assert "damaged" in (tmp_path / "out" / "report.html").read_text()


def test_bad_bags_give_clear_errors_or_counted_skips(tmp_path, oracle, capsys):
    frames = list(synthetic_frames(6, SIZE, 3, seed=4))
    small = next(iter(synthetic_frames(1, (64, 96), 2, seed=4)))
    mixed = [frames[0], frames[1], BagFrame(small.rgb, small.gt), frames[3], BagFrame(frames[4].rgb, frames[4].gt[::2, ::2].copy()),
             BagFrame(None, frames[5].gt)]  # other resolution; ground truth of the wrong size; ground truth, no frame
    write_bag(tmp_path / "mixed", mixed, "sqlite3")
    code, _, err, m = run(capsys, *oracle_args(tmp_path / "mixed", oracle, tmp_path / "o1", "--gt-topic", GT, "--clicks", 1))
    assert code == 1
    assert m["frames"]["skipped"] == {"resolution_mismatch": 1} and m["frames"]["processed"] == 4
    assert m["ground_truth"]["rejected"] == {"size_mismatch": 1} and m["ground_truth"]["without_frame"] == 1
    assert m["frames"]["evaluated"] == 3 and m["segment_everything"]["AP"] == pytest.approx(1.0)
    assert "resolution_mismatch" in err
    assert "96x64, the first frame was 128x96" in json.dumps(m["frames"]["examples"])
    code, _, _, m = run(capsys, *oracle_args(tmp_path / "mixed", oracle, tmp_path / "o2", "--gt-topic", GT, "--clicks", 0,
                                             "--allow-mixed-resolution"))
    assert m["frames"]["processed"] == 5 and m["point_prompt"] is None

    # A corrupt frame, and a topic of a type no typestore knows (it is ignored unless asked for).
    store = make_typestore()
    custom = get_typestore(Stores.ROS2_KILTED)
    custom.register(get_types_from_msg("int32 x", "my_msgs/msg/Foo"))
    writer = open_writer(tmp_path / "odd", "mcap")
    image_t = store.types["sensor_msgs/msg/Image"]
    cam = writer.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=store)
    foo = writer.add_connection("/foo", "my_msgs/msg/Foo", typestore=custom)
    for i, f in enumerate(frames[:3]):
        t = 10**9 * (i + 1)
        msg = numpy_to_image(f.rgb, "rgb8", header=make_header(store, t, "camera"), msg_type=image_t)
        if i == 1:
            msg.step = 5  # header and payload disagree
        writer.write(cam, t, store.serialize_cdr(msg, "sensor_msgs/msg/Image"))
        writer.write(foo, t, custom.serialize_cdr(custom.types["my_msgs/msg/Foo"](x=i), "my_msgs/msg/Foo"))
    writer.close()
    code, _, err, m = run(capsys, *oracle_args(tmp_path / "odd", oracle, tmp_path / "o3", "--clicks", 0))
    assert code == 1 and m["frames"]["skipped"] == {"decode_error": 1} and m["frames"]["processed"] == 2
    assert m["ground_truth"] is None and m["segment_everything"] is None
    code, _, err, _ = run(capsys, *oracle_args(tmp_path / "odd", oracle, tmp_path / "o4", "--image-topic", "/foo"))
    assert code == 2 and "my_msgs/msg/Foo" in err and "sensor_msgs/msg/Image" in err

    # Fatal: a missing topic (the message lists what there is), a path that is no bag, an unreadable model.
    code, _, err, _ = run(capsys, *oracle_args(tmp_path / "mixed", oracle, tmp_path / "o5", "--gt-topic", "/nope"))
    assert code == 2 and "--gt-topic /nope: no such topic" in err and "/camera/gt_labels (sensor_msgs/msg/Image" in err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.mcap").write_bytes(b"garbage")
    code, _, err, _ = run(capsys, *oracle_args(tmp_path / "junk", oracle, tmp_path / "o6"))
    assert code == 2 and "cannot read this bag" in err
    code, _, err, _ = run(capsys, *oracle_args(tmp_path / "mixed", tmp_path / "none.onnx", tmp_path / "o7"))
    assert code == 2 and "none.onnx" in err
    # Two image topics and no --image-topic: ambiguous, said so.
    write_bag(tmp_path / "two", [BagFrame(frames[0].rgb, None, frames[0].rgb[..., 0].astype(np.float32))], "mcap",
              depth_topic="/camera/other_image")
    code, _, err, _ = run(capsys, *oracle_args(tmp_path / "two", oracle, tmp_path / "o8"))
    assert code == 2 and "--image-topic" in err and "/camera/other_image" in err


def test_rerun_needs_overwrite(tmp_path, oracle, capsys):
    write_bag(tmp_path / "in", synthetic_frames(2, SIZE, 2), "mcap")
    args = oracle_args(tmp_path / "in", oracle, tmp_path / "out", "--clicks", 0)
    assert run(capsys, *args)[0] == 0
    code, _, err, _ = run(capsys, *args)
    assert code == 2 and "--overwrite" in err
    assert run(capsys, *args, "--overwrite", "--storage", "sqlite3")[0] == 0
    assert any(p.suffix == ".db3" for p in (tmp_path / "out" / "bag").iterdir())
