"""Domain-randomised synthetic scenes (training.randomize through SceneGenerator(randomize=True))."""
from __future__ import annotations

import numpy as np

from training.randomize import CLUTTER_MAX_PX, camera_crop, clutter
from training.synthetic import SceneGenerator


def test_scenes_are_reproducible_exactly_labelled_and_varied() -> None:
    gen = SceneGenerator(96, 128, exclude=("blob", "cylinder"), seed=11, randomize=True)
    areas, counts = [], []
    for i in range(24):
        scene = gen.scene(i)
        again = gen.scene(i)
        assert np.array_equal(scene.rgb, again.rgb) and np.array_equal(scene.labels, again.labels)
        assert scene.rgb.dtype == np.uint8 and scene.rgb.shape == (96, 128, 3)
        ids = np.unique(scene.labels)
        ids = ids[ids > 0]
        # Ids are compact 1..n in drawing order, one shape per visible instance, none held out.
        assert list(ids) == list(range(1, len(ids) + 1)) and len(scene.shapes) == len(ids)
        assert not {"blob", "cylinder"} & set(scene.shapes)
        counts.append(len(ids))
        areas += list(np.bincount(scene.labels.ravel())[1:] / scene.labels.size)
    # Scale from a few pixels to a large part of the frame, and crowded as well as sparse scenes.
    assert min(areas) < 0.001 and max(areas) > 0.1, (min(areas), max(areas))
    assert min(counts) <= 4 and max(counts) >= 15, counts


def test_plain_scenes_are_unchanged_by_the_option() -> None:
    plain = SceneGenerator(64, 80, seed=3).scene(5)
    randomized = SceneGenerator(64, 80, seed=3, randomize=True).scene(5)
    assert not np.array_equal(plain.rgb, randomized.rgb)
    # The option draws from the rng only when on: the default scenes (and every number measured on them) stay.
    assert np.array_equal(SceneGenerator(64, 80, seed=3, randomize=False).scene(5).rgb, plain.rgb)


def test_clutter_is_small_and_crop_keeps_labels_exact() -> None:
    rng = np.random.default_rng(0)
    rgb = np.zeros((64, 64, 3), np.float32)
    clutter(rng, rgb, lambda r: np.ones(3, np.float32), density=3.0)
    import cv2

    n, _, stats, _ = cv2.connectedComponentsWithStats((rgb[..., 0] > 0.5).astype(np.uint8))
    assert n > 1 and stats[1:, cv2.CC_STAT_WIDTH].max() <= CLUTTER_MAX_PX + 2
    labels = np.zeros((64, 64), np.uint16)
    labels[10:30, 10:30], labels[40:60, 35:60] = 1, 2
    image = np.repeat(labels[..., None].astype(np.float32), 3, axis=2)
    out_rgb, out_labels = camera_crop(np.random.default_rng(4), image, labels)
    assert out_labels.shape == labels.shape and set(np.unique(out_labels)) <= {0, 1, 2}
