"""training.synthetic: seeded procedural tabletop scenes with exact instance maps."""
from __future__ import annotations


import cv2
import numpy as np
import pytest

from training.synthetic import SHAPES, SceneGenerator, select_shapes


def test_scene_arrays_and_labels() -> None:
    gen = SceneGenerator(height=120, width=160, seed=4, min_objects=4, max_objects=8)
    for i in range(6):
        s = gen.scene(i)
        assert s.rgb.shape == (120, 160, 3) and s.rgb.dtype == np.uint8
        assert s.labels.shape == (120, 160) and s.labels.dtype == np.uint16
        assert s.depth is None
        # Ids are the visible instances 1..K in drawing order, one shape each; the background is there too.
        ids = np.unique(s.labels)
        assert ids[0] == 0 and ids.tolist() == list(range(len(s.shapes) + 1))
        assert 1 <= len(s.shapes) <= 8 and set(s.shapes) <= set(SHAPES)
        # Objects are textured and shaded: an instance is not one flat colour.
        assert s.rgb.reshape(-1, 3).std(0).min() > 5


def test_seeded_and_indexable() -> None:
    a, b = SceneGenerator(seed=1, height=64, width=80), SceneGenerator(seed=1, height=64, width=80)
    assert np.array_equal(a.scene(7).rgb, b.scene(7).rgb) and np.array_equal(a.scene(7).labels, b.scene(7).labels)
    assert not np.array_equal(a.scene(7).rgb, a.scene(8).rgb)
    assert not np.array_equal(a.scene(7).rgb, SceneGenerator(seed=2, height=64, width=80).scene(7).rgb)
    first = next(iter(a))
    assert np.array_equal(first.rgb, a.scene(0).rgb)


def test_shape_selection() -> None:
    assert select_shapes() == SHAPES
    assert select_shapes(exclude=("cable", "blob")) == ("box", "cylinder", "tool", "flat")
    held_out = SceneGenerator(height=96, width=128, shapes=("cable", "blob"), seed=0)
    seen = {s for i in range(8) for s in held_out.scene(i).shapes}
    assert seen == {"cable", "blob"}
    train = SceneGenerator(height=96, width=128, exclude=("cable", "blob"), seed=0)
    assert not {s for i in range(8) for s in train.scene(i).shapes} & {"cable", "blob"}
    with pytest.raises(ValueError, match="unknown shapes"):
        select_shapes(("box", "sphere"))
    with pytest.raises(ValueError, match="no shape left"):
        select_shapes(("box",), exclude=("box",))


def test_thin_structures_are_thin() -> None:
    gen = SceneGenerator(height=240, width=320, shapes=("cable",), seed=3)
    s = gen.scene(0)
    for k in range(1, len(s.shapes) + 1):
        mask = (s.labels == k).astype(np.uint8)
        area = int(mask.sum())
        # Mostly thin: eroding by a 7×7 square leaves little of a cable (its plug may survive).
        assert area > 0 and int(np.count_nonzero(cv2.erode(mask, np.ones((7, 7), np.uint8)))) < 0.25 * area


def test_depth_is_nearer_on_objects() -> None:
    gen = SceneGenerator(height=120, width=160, depth=True, seed=5, shapes=("box", "cylinder"))
    s = gen.scene(2)
    assert s.depth is not None and s.depth.dtype == np.float32 and np.isfinite(s.depth).all()
    assert 0.3 < float(s.depth.min()) and float(s.depth.max()) < 1.5
    table = s.depth[s.labels == 0]
    assert table.size and float(s.depth[s.labels > 0].mean()) < float(table.mean())
    # Same scene with and without depth: depth does not change the image.
    assert np.array_equal(s.rgb, SceneGenerator(height=120, width=160, seed=5, shapes=("box", "cylinder")).scene(2).rgb)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="min_objects"):
        SceneGenerator(min_objects=5, max_objects=2)
    with pytest.raises(ValueError, match="16×16"):
        SceneGenerator(height=8)
    with pytest.raises(ValueError, match="index"):
        SceneGenerator().scene(-1)


def test_scene_size_argument() -> None:
    import argparse

    from training.synthetic import scene_size

    assert scene_size("240x320") == (240, 320) and scene_size("48X64") == (48, 64)
    for bad, message in (("240", "expected HxW"), ("ax3", "expected HxW"), ("8x320", "at least 16x16")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            scene_size(bad)
