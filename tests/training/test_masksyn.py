"""MaskSyn layouts from a bank of object masks, ImgSyn images for them, shards that train reads and mixes in."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training.augment import Augment  # noqa: E402
from training.data import ShardDataset, SyntheticDataset, labels_from_colors  # noqa: E402
from training.imgsyn import main, render_procedural, write_shard  # noqa: E402
from training.masksyn import Cutout, LayoutParams, MaskBank, compose_layout  # noqa: E402
from training.synthetic import SceneGenerator  # noqa: E402
from training.train import parse_data_spec  # noqa: E402


def square_bank() -> MaskBank:
    mask = np.ones((10, 10), bool)
    return MaskBank([Cutout(mask, np.full((10, 10, 3), 200, np.uint8), "test:0#1")])


def test_bank_cuts_every_instance_of_a_dataset_with_its_pixels() -> None:
    dataset = SyntheticDataset(SceneGenerator(96, 128, seed=1), 3, Augment((96, 128), flip=0.0))
    bank = MaskBank.from_dataset(dataset, 3, "synthetic", min_area=20)
    item = dataset[(0, 0)]
    labels = labels_from_colors(item["target"].numpy().transpose(1, 2, 0))
    first = [c for c in bank.cutouts if c.source.startswith("synthetic:0#")]
    assert len(first) == sum(int((labels == k).sum()) >= 20 for k in range(1, labels.max() + 1))
    cut = first[0]
    k = int(cut.source.split("#")[1])
    ys, xs = np.nonzero(labels == k)
    rgb = item["rgb"].numpy().transpose(1, 2, 0)
    assert cut.mask.shape == (np.ptp(ys) + 1, np.ptp(xs) + 1)
    assert np.array_equal(cut.rgb[cut.mask], rgb[labels == k])


def test_layouts_label_exactly_the_visible_pixels_in_occlusion_order() -> None:
    bank = square_bank()
    params = LayoutParams(size=(60, 80), objects=(6, 6), scale=(2.0, 2.0), rotation=0.0, flip=0.0, min_visible=1)
    layout = compose_layout(bank, params, np.random.default_rng(3))
    ids = np.unique(layout.labels[layout.labels > 0])
    assert list(ids) == list(range(1, len(layout.objects) + 1))
    # Each later (nearer) square is whole where it lies in the frame: nothing drawn earlier covers it.
    for k, obj in enumerate(layout.objects, start=1):
        cy, cx = obj["centre"]
        box = np.zeros(params.size, bool)
        box[max(0, cy - 10):cy + 10, max(0, cx - 10):cx + 10] = True
        assert ((layout.labels == k) <= box).all()
        assert obj["visible_px"] == int((layout.labels == k).sum()) and obj["source"] == "test:0#1"
        if k == len(layout.objects):
            assert (layout.labels[box] == k).all()
    assert (layout.rgb[layout.labels > 0] == 200).all() and not layout.rgb[layout.labels == 0].any()


def test_density_scale_and_rotation_change_the_layouts() -> None:
    bank = square_bank()
    def stats(**kw: object) -> tuple[float, float]:
        params = LayoutParams(size=(64, 64), flip=0.0, **kw)  # type: ignore[arg-type]
        layouts = [compose_layout(bank, params, np.random.default_rng(i)) for i in range(20)]
        return np.mean([len(x.objects) for x in layouts]), np.mean([(x.labels > 0).mean() for x in layouts])
    few, many = stats(objects=(1, 2)), stats(objects=(10, 12))
    assert many[0] > few[0] and many[1] > few[1]
    small, large = stats(objects=(3, 3), scale=(0.5, 0.5)), stats(objects=(3, 3), scale=(2.0, 2.0))
    assert large[1] > 2 * small[1]
    turned = compose_layout(bank, LayoutParams(size=(64, 64), objects=(1, 1), scale=(3.0, 3.0), rotation=45.0,
                                               flip=0.0, min_visible=1), np.random.default_rng(5))
    angle = turned.objects[0]["angle"]
    ys, xs = np.nonzero(turned.labels)
    assert abs(angle) > 5 and len(ys) > 0 and (np.ptp(ys) > 30 or np.ptp(xs) > 30)  # a rotated 30 px square is wider


def test_procedural_images_follow_the_layout() -> None:
    bank = square_bank()
    params = LayoutParams(size=(60, 80), objects=(3, 3), scale=(2.0, 2.0))
    layout = compose_layout(bank, params, np.random.default_rng(1))
    rgb = render_procedural(layout, np.random.default_rng(1))
    assert rgb.shape == (60, 80, 3) and rgb.dtype == np.uint8 and rgb.std() > 1


def test_shards_carry_provenance_and_train_mixes_them(tmp_path: Path) -> None:
    bank = MaskBank.from_dataset(SyntheticDataset(SceneGenerator(64, 80, seed=2), 4, Augment((64, 80), flip=0.0)),
                                 4, "synthetic", min_area=16)
    params = LayoutParams(size=(64, 80), objects=(3, 6))
    manifest = json.loads(write_shard(tmp_path / "s1", bank, params, 3, "copy_paste", seed=1).read_text())
    write_shard(tmp_path / "s2", bank, params, 2, "procedural", seed=2)
    assert len(manifest["samples"]) == 3 and manifest["renderer"] == "copy_paste"
    sample = manifest["samples"][0]
    labels = cv2.imread(str(tmp_path / "s1" / sample["labels"]), cv2.IMREAD_UNCHANGED)
    assert labels.dtype == np.uint16 and labels.max() == len(sample["objects"])
    assert all(o["source"].startswith("synthetic:") and o["visible_px"] > 0 for o in sample["objects"])
    data = ShardDataset(tmp_path, Augment((32, 40), flip=0.0))  # a folder of shards
    assert len(data) == 5
    item = data[(0, 0)]
    assert item["rgb"].shape == (3, 32, 40) and not item["no_bg"]
    assert parse_data_spec(f"shards:{tmp_path}@0.5").weight == 0.5
    with pytest.raises(FileNotFoundError, match="no MaskSyn shard"):
        ShardDataset(tmp_path / "s1" / "nothing", Augment((32, 40)))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match="bad/manifest.json"):
        ShardDataset(tmp_path / "bad", Augment((32, 40)))


def test_cli_writes_a_shard_and_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "shard"
    assert main(["--output", str(out), "--count", "2", "--bank-frames", "3", "--size", "48x64"]) == 0
    assert str(out) in capsys.readouterr().out
    assert len(json.loads((out / "manifest.json").read_text())["samples"]) == 2
    assert main(["--output", str(out), "--source", "hypersim:" + str(tmp_path / "none"), "--count", "1"]) == 2
    assert str(tmp_path / "none") in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--output", str(out), "--renderer", "controlnet"])  # no weights given
