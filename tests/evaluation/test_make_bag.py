"""make_bag: synthetic and folder bags, read back with rosbags in both storage formats."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from seg_node.evaluation.bag_io import make_typestore
from seg_node.evaluation.ground_truth import gt_label_image
from seg_node.processing.sync import stamp_to_ns
from seg_node.processing.image_codec import decode_depth, decode_to_rgb8
from seg_node.evaluation.make_bag import PALETTE, BagFrame, main, synthetic_frames, write_bag


def read_bag(path: Path) -> dict[str, list[tuple[int, object]]]:
    store = make_typestore()
    out: dict[str, list[tuple[int, object]]] = {}
    with Reader(path) as reader:
        for conn, t, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t, store.deserialize_cdr(raw, conn.msgtype)))
    return out


def test_synthetic_frames_are_seeded_and_exact():
    a = list(synthetic_frames(5, (96, 128), 4, seed=3, depth=True))
    b = list(synthetic_frames(5, (96, 128), 4, seed=3, depth=True))
    assert all((x.rgb == y.rgb).all() and (x.gt == y.gt).all() for x, y in zip(a, b))
    for f in a:
        assert sorted(np.unique(f.gt)) == [0, 1, 2, 3, 4]  # every object in every frame, ids stable
        assert ((f.gt == 0) == (f.rgb.sum(axis=2) == 0)).all()  # black background, nothing else black
        for i in range(1, 5):  # one flat colour per object
            assert len(np.unique(f.rgb[f.gt == i], axis=0)) == 1
        assert f.depth.dtype == np.float32 and (f.depth[f.gt == 0] == 2.0).all()
    assert not (a[0].gt == a[-1].gt).all()  # they move
    with pytest.raises(ValueError, match="do not fit"):
        synthetic_frames(1, (20, 20), 4)
    with pytest.raises(ValueError, match="objects"):
        synthetic_frames(1, (240, 320), len(PALETTE) + 1)


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_synthetic_bag_round_trip(tmp_path, storage, capsys):
    bag = tmp_path / "bag"
    assert main(["--output", str(bag), "--synthetic", "6", "--size", "96x128", "--objects", "3", "--storage", storage,
                 "--depth", "--rate", "20"]) == 0
    assert "6 on /camera/image_raw" in capsys.readouterr().out
    msgs = read_bag(bag)
    assert set(msgs) == {"/camera/image_raw", "/camera/gt_labels", "/camera/depth/image_raw", "/camera/camera_info"}
    frames = list(synthetic_frames(6, (96, 128), 3, depth=True))
    for i, ((t, img), (_, gt), (_, depth), (_, info)) in enumerate(zip(*(msgs[k] for k in (
            "/camera/image_raw", "/camera/gt_labels", "/camera/depth/image_raw", "/camera/camera_info")))):
        assert t == stamp_to_ns(img.header.stamp) == stamp_to_ns(gt.header.stamp) == 1_700_000_000 * 10**9 + i * 50_000_000
        assert img.encoding == "rgb8" and gt.encoding == "mono16" and depth.encoding == "32FC1"
        assert (decode_to_rgb8(img) == frames[i].rgb).all()
        assert (gt_label_image(gt) == frames[i].gt).all()
        assert (decode_depth(depth) == frames[i].depth).all()
        assert info.width == 128 and info.k[0] > 0


def test_gt_encodings_and_compressed_images(tmp_path):
    f = next(iter(synthetic_frames(1, (96, 128), 3)))
    colors = np.zeros((*f.gt.shape, 3), np.uint8)
    colors[f.gt > 0] = PALETTE[f.gt[f.gt > 0] % len(PALETTE)]
    frames = [BagFrame(f.rgb, f.gt.astype(np.int32)), BagFrame(f.rgb, colors), BagFrame(f.rgb, f.gt.astype(np.uint8))]
    write_bag(tmp_path / "b", frames, "mcap", compress="png")
    msgs = read_bag(tmp_path / "b")
    imgs, gts = msgs["/camera/image_raw/compressed"], msgs["/camera/gt_labels"]
    assert [g.encoding for _, g in gts] == ["32SC1", "rgb8", "mono16"]
    assert all((decode_to_rgb8(m) == f.rgb).all() for _, m in imgs)
    assert (gt_label_image(gts[0][1]) == f.gt).all() and (gt_label_image(gts[2][1]) == f.gt).all()
    packed = gt_label_image(gts[1][1])  # one id per colour, the same partition as the ids
    assert len(np.unique(packed)) == len(np.unique(f.gt)) and ((packed == 0) == (f.gt == 0)).all()


def test_folder_with_ground_truth(tmp_path, capsys):
    images, gt = tmp_path / "images", tmp_path / "gt"
    images.mkdir()
    gt.mkdir()
    frames = list(synthetic_frames(3, (96, 128), 3, seed=1))
    for i, f in enumerate(frames):
        cv2.imwrite(str(images / f"frame_{i:03d}.png"), cv2.cvtColor(f.rgb, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(gt / "frame_000.png"), frames[0].gt)  # uint16 ids
    color = cv2.cvtColor(frames[1].rgb, cv2.COLOR_RGB2BGR)  # instance colours
    cv2.imwrite(str(gt / "frame_001.png"), color)
    cv2.imwrite(str(gt / "orphan.png"), frames[0].gt)
    (images / "broken.png").write_bytes(b"not a png")
    code = main(["--output", str(tmp_path / "bag"), "--images", str(images), "--gt", str(gt), "--storage", "mcap"])
    err = capsys.readouterr().err
    assert code == 1  # something was left out, and said so
    assert "broken.png" in err and "orphan.png" in err and "frame_002" in err
    msgs = read_bag(tmp_path / "bag")
    assert len(msgs["/camera/image_raw"]) == 3 and len(msgs["/camera/gt_labels"]) == 2
    assert (gt_label_image(msgs["/camera/gt_labels"][0][1]) == frames[0].gt).all()
    assert msgs["/camera/gt_labels"][1][1].encoding == "rgb8"


def test_usage_errors(tmp_path, capsys):
    (tmp_path / "exists").mkdir()
    assert main(["--output", str(tmp_path / "exists"), "--synthetic", "2"]) == 2
    assert main(["--output", str(tmp_path / "x"), "--images", str(tmp_path / "nope")]) == 2
    assert main(["--output", str(tmp_path / "y"), "--synthetic", "2", "--size", "40x40", "--objects", "9"]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "not a folder" in err and "do not fit" in err
    assert not (tmp_path / "y").exists()
