"""training.augment: flips, resizes and crops of frames and their instance colours."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from training.augment import Augment, shrink_instances

pytest.importorskip("torch")  # training.data, for its instance colours

from training.data import instance_colors  # noqa: E402


def test_augment_resize_flip_and_nearest() -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    ids = np.zeros((30, 40), np.int64)
    for i in range(3):  # three vertical stripes under a band of background
        ids[7:, i * 40 // 3:(i + 1) * 40 // 3] = i + 1
    target = instance_colors(ids)
    aug = Augment((16, 16), flip=1.0)
    out_rgb, out_t = aug(rgb, target, np.random.default_rng(0))
    assert out_rgb.shape == (16, 16, 3) and out_t.shape == (16, 16, 3)
    # Nearest neighbour: only colours of the input; flipped: the first stripe (id 1) ends up on the right.
    assert {tuple(c) for c in out_t.reshape(-1, 3)} <= {tuple(c) for c in target.reshape(-1, 3)}
    assert tuple(out_t[-1, -1]) == tuple(instance_colors(np.array([1]))[0])
    unflipped = Augment((16, 16), flip=0.0)(rgb, target, np.random.default_rng(0))[1]
    assert tuple(unflipped[-1, 0]) == tuple(instance_colors(np.array([1]))[0])


def test_shrinking_keeps_a_thin_object_whole() -> None:
    ids = np.zeros((64, 64), np.int32)
    cv2.line(ids, (2, 5), (61, 40), 1, 1)  # a cable 1 px wide, at a slant
    ids[30:60, 4:20] = 2  # a box
    ids[40:44, 17:24] = 3  # something small on the box's right edge
    target = instance_colors(ids)
    cable, box, small = (tuple(instance_colors(np.array([k]))[0]) for k in (1, 2, 3))

    def pieces(t: np.ndarray, color: tuple) -> int:
        return cv2.connectedComponents((t == color).all(-1).astype(np.uint8), connectivity=8)[0] - 1

    nearest = Augment((32, 32), flip=0.0)(target, target, np.random.default_rng(0))[1]
    assert pieces(nearest, cable) > 1  # what nearest neighbour does to it
    shrunk = shrink_instances(target, (32, 32), 0.25)
    assert pieces(shrunk, cable) == 1
    # Every output pixel takes an input colour; each instance covering a whole 2×2 block keeps it.
    assert {tuple(c) for c in shrunk.reshape(-1, 3)} <= {tuple(c) for c in target.reshape(-1, 3)}
    assert (shrunk[15:30, 2:8] == box).all(-1).all() and (shrunk[20:22, 9:12] == small).all(-1).all()
    # A pixel a quarter covered is background unless the share asked for allows a quarter.
    assert pieces(shrink_instances(target, (32, 32), 0.5), cable) > 1
    assert (shrink_instances(target, (32, 32), 1.0) == cable).all(-1).sum() == 0
    via_augment = Augment((32, 32), flip=0.0, min_share=0.25)(target, target, np.random.default_rng(0))[1]
    assert (via_augment == shrunk).all()
    with pytest.raises(ValueError, match="min_share"):
        Augment((32, 32), min_share=0.0)


def test_augment_crop_keeps_an_instance_and_scales_up_small_frames() -> None:
    target = np.zeros((100, 300, 3), np.uint8)
    target[90:95, 290:295] = 200  # one small car in a corner
    rgb = np.zeros_like(target)
    for seed in range(5):
        _, crop = Augment((20, 30), "crop")(rgb, target, np.random.default_rng(seed))
        assert crop.shape == (20, 30, 3) and crop.any()
    small_rgb, small_t = Augment((64, 64), "crop")(rgb[:40, :40], np.full((40, 40, 3), 7, np.uint8), np.random.default_rng(0))
    assert small_rgb.shape == (64, 64, 3) and (small_t == 7).all()
