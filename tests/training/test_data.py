"""training.data and training.hypersim_to_png on tiny fake datasets written in the published on-disk layouts."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
h5py = pytest.importorskip("h5py")

from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from training import hypersim_to_png  # noqa: E402
from training.data import (  # noqa: E402
    HypersimDataset, MixedBatchSampler, MixedDataset, SyntheticDataset, VKitti2Dataset, family_augment,
    instance_colors, labels_from_colors,
)
from training.augment import Augment  # noqa: E402
from training.synthetic import SceneGenerator  # noqa: E402


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def blocks(h: int, w: int, ids: list[int], background: int) -> np.ndarray:
    """Vertical stripes, one per id, on a ``background`` frame (top rows stay background)."""
    out = np.full((h, w), background, np.int64)
    for i, v in enumerate(ids):
        out[h // 4:, i * w // len(ids):(i + 1) * w // len(ids)] = v
    return out


def test_instance_colors() -> None:
    ids = np.arange(0, 5000).reshape(50, 100)
    colors = instance_colors(ids)
    assert colors.dtype == np.uint8 and colors.shape == (50, 100, 3)
    flat = colors.reshape(-1, 3)
    assert (flat[0] == 0).all() and flat[1:].any(1).all() and not (flat[1:] == 255).all(1).any()
    assert len(np.unique(flat, axis=0)) == 5000
    back = labels_from_colors(colors)
    assert back[0, 0] == 0 and len(np.unique(back)) == 5000
    # Same partition of the pixels.
    assert len(np.unique(back.astype(np.int64) * 10000 + ids)) == 5000


def test_family_augment_sizes() -> None:
    assert family_augment("hypersim", "sd") == Augment((480, 640))
    assert family_augment("vkitti", "sd") == Augment((368, 1024), "crop")
    assert family_augment("hypersim", "mae", (224, 224)) == Augment((224, 224))
    assert family_augment("vkitti", "mae", (224, 224)) == Augment((224, 224), "crop")
    with pytest.raises(ValueError):
        family_augment("coco", "sd")


def make_hypersim(root: Path) -> None:
    """Scene ai_001_001: 12 objects over two frames plus an unannotated frame; ai_001_002: only 3 objects."""
    rng = np.random.default_rng(1)
    frames = {("ai_001_001", 0): blocks(24, 32, list(range(0, 7)), -1),
              ("ai_001_001", 1): blocks(24, 32, list(range(5, 12)), -1),
              ("ai_001_001", 2): np.full((24, 32), -1),
              ("ai_001_002", 0): blocks(24, 32, [0, 1, 2], -1)}
    for (scene, frame), ids in frames.items():
        images = root / scene / "images"
        write_rgb(images / "scene_cam_00_final_preview" / f"frame.{frame:04d}.color.jpg",
                  rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
        hdf5 = images / "scene_cam_00_geometry_hdf5" / f"frame.{frame:04d}.semantic_instance.hdf5"
        hdf5.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(hdf5, "w") as f:
            f.create_dataset("dataset", data=ids.astype(np.int32))


def test_hypersim_conversion_and_dataset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "hypersim"
    make_hypersim(root)
    assert hypersim_to_png.main(["--hypersim", str(root)]) == 0
    out = root / "instance-rgb" / "ai_001_001" / "images" / "scene_cam_00_geometry_hdf5"
    assert sorted(p.name for p in out.iterdir()) == ["frame.0000.png", "frame.0001.png"]
    assert not (root / "instance-rgb" / "ai_001_002").exists()
    summary = json.loads((root / "instance-rgb" / "conversion.json").read_text())
    assert summary["written"] == 2 and summary["skipped"]["frames_without_instances"] == 1
    assert "ai_001_002" in summary["skipped"]["scenes"]
    assert "wrote 2 PNGs" in capsys.readouterr().out
    # Same id, same colour in every frame of the scene; unlabelled pixels black.
    png0 = cv2.cvtColor(cv2.imread(str(out / "frame.0000.png")), cv2.COLOR_BGR2RGB)
    png1 = cv2.cvtColor(cv2.imread(str(out / "frame.0001.png")), cv2.COLOR_BGR2RGB)
    assert (png0[0] == 0).all() and len(np.unique(png0.reshape(-1, 3), axis=0)) == 8
    assert tuple(png0[-1, 23]) == tuple(png1[-1, 0])  # id 5: the 6th stripe of frame 0, the 1st of frame 1
    # Re-running keeps what is there.
    assert hypersim_to_png.main(["--hypersim", str(root)]) == 0
    assert json.loads((root / "instance-rgb" / "conversion.json").read_text())["skipped"]["existing"] == 2

    ds = HypersimDataset(root, Augment((16, 20)))
    assert len(ds) == 2
    s = ds[(0, 123)]
    assert s["rgb"].shape == (3, 16, 20) and s["rgb"].dtype == torch.uint8
    assert s["target"].shape == (3, 16, 20) and s["no_bg"] is False and s["source"] == 0
    assert torch.equal(ds[(0, 123)]["rgb"], s["rgb"])  # the key's seed fixes the augmentation
    with pytest.raises(FileNotFoundError, match="hypersim_to_png"):
        HypersimDataset(tmp_path / "empty", Augment((16, 20)))


def test_hypersim_converter_without_input(tmp_path: Path) -> None:
    assert hypersim_to_png.main(["--hypersim", str(tmp_path)]) == 2


def make_vkitti(root: Path) -> None:
    rng = np.random.default_rng(2)
    for variation in ("morning", "fog", "clone"):
        for camera in ("Camera_0", "Camera_1"):
            for frame in range(2):
                write_rgb(root / "vkitti_2.0.3_rgb" / "Scene01" / variation / "frames" / "rgb" / camera /
                          f"rgb_{frame:05d}.jpg", rng.integers(0, 255, (30, 80, 3), dtype=np.uint8))
                ids = np.zeros((30, 80), np.uint8)
                ids[20:28, 10:20], ids[20:28, 50:70] = 1, 2
                inst = (root / "vkitti_2.0.3_instanceSegmentation" / "Scene01" / variation / "frames" /
                        "instanceSegmentation" / camera / f"instancegt_{frame:05d}.png")
                inst.parent.mkdir(parents=True, exist_ok=True)
                img = Image.fromarray(ids, mode="P")
                img.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10] + [0] * 759)
                img.save(inst)


def test_vkitti_dataset(tmp_path: Path) -> None:
    make_vkitti(tmp_path)
    ds = VKitti2Dataset(tmp_path, Augment((16, 24), "crop"))
    assert len(ds) == 8  # morning + fog, two cameras, two frames; "clone" is not a gen2seg variation
    s = ds[(3, 7)]
    assert s["rgb"].shape == (3, 16, 24) and s["no_bg"] is True and s["source"] == 1
    assert s["target"].any()  # the crop keeps a car in view
    colors = {tuple(c) for c in s["target"].permute(1, 2, 0).reshape(-1, 3).tolist()}
    assert colors <= {(0, 0, 0), *(tuple(c) for c in instance_colors(np.array([1, 2])).tolist())}
    assert len(VKitti2Dataset(tmp_path, Augment((16, 24), "crop"), variations=None)) == 12


def test_synthetic_dataset() -> None:
    ds = SyntheticDataset(SceneGenerator(height=48, width=64, seed=0), 10, Augment((32, 32)))
    s = ds[(4, 1)]
    assert s["rgb"].shape == (3, 32, 32) and s["target"].shape == (3, 32, 32) and s["source"] == 2
    assert torch.equal(s["target"], ds[(4, 1)]["target"])
    with pytest.raises(IndexError):
        ds[10]


def test_mixed_sampler_ratio_and_epochs() -> None:
    sampler = MixedBatchSampler([900, 400], [9, 1], batch_size=2, seed=3)
    batches = list(sampler)
    sources = [int(b[0][0] >= 900) for b in batches]
    assert len(batches) == len(sampler) == 450 + 50  # all of dataset 0, a ninth as many batches of dataset 1
    assert sum(sources) == 50 and all(all((k >= 900) == bool(s) for k, _ in b) for b, s in zip(batches, sources))
    assert sources != sorted(sources)  # interleaved
    sampler.set_epoch(1)
    again = list(sampler)
    assert again != batches
    sampler.set_epoch(1, skip_batches=100)
    assert list(sampler) == again[100:]
    # The scarcer dataset (relative to its weight) sets the epoch.
    assert len(MixedBatchSampler([900, 40], [9, 1], batch_size=2)) == 180 + 20


def test_disjoint_shards_across_two_ranks() -> None:
    sizes, weights = [60, 20], [3, 1]
    ranks = [MixedBatchSampler(sizes, weights, batch_size=3, num_replicas=2, rank=r, seed=11) for r in (0, 1)]
    for epoch in (0, 1):
        for s in ranks:
            s.set_epoch(epoch)
        b0, b1 = list(ranks[0]), list(ranks[1])
        assert len(b0) == len(b1) == len(ranks[0])
        k0 = {k for b in b0 for k, _ in b}
        k1 = {k for b in b1 for k, _ in b}
        assert not k0 & k1  # no sample on both ranks
        assert len(k0) == sum(len(b) for b in b0)  # no sample twice in an epoch
        # At every step both ranks draw from the same dataset.
        assert all((x[0][0] >= 60) == (y[0][0] >= 60) for x, y in zip(b0, b1))
    with pytest.raises(ValueError, match="fewer than"):
        MixedBatchSampler([5], [1], batch_size=3, num_replicas=2)


def test_dataloader_batches(tmp_path: Path) -> None:
    make_vkitti(tmp_path)
    synthetic = SyntheticDataset(SceneGenerator(height=40, width=60, seed=0), 16, Augment((16, 24)))
    vkitti = VKitti2Dataset(tmp_path, Augment((16, 24), "crop"))
    mixed = MixedDataset([synthetic, vkitti])
    assert len(mixed) == 24
    sampler = MixedBatchSampler([len(synthetic), len(vkitti)], [1, 1], batch_size=2, seed=0)
    loader = DataLoader(mixed, batch_sampler=sampler, num_workers=0)
    batches = list(loader)
    assert len(batches) == len(sampler)
    for batch in batches:
        assert batch["rgb"].shape == (2, 3, 16, 24) and batch["target"].dtype == torch.uint8
        assert batch["no_bg"].tolist() == [bool(batch["source"][0] == 1)] * 2
