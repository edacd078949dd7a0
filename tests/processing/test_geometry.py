"""2D segment shape from the label map."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from seg_node.processing.geometry import shapes_2d, upscale_shapes
from seg_node.instances import resize_labels


def test_rotated_ellipses_give_centroid_orientation_and_extents():
    labels = np.zeros((240, 320), np.uint16)
    cases = {1: ((80, 60), (50, 12), 30.0), 2: ((220, 150), (40, 20), -60.0), 3: ((160, 200), (30, 8), 90.0)}
    for k, (centre, axes, angle) in cases.items():
        mask = np.zeros_like(labels, dtype=np.uint8)
        cv2.ellipse(mask, centre, axes, angle, 0, 360, 1, -1)
        labels[mask > 0] = k
    shapes = shapes_2d(labels, 3)
    for k, (centre, axes, angle) in cases.items():
        s = shapes[k - 1]
        # Pixel-corner coordinates: pixel (c, r) covers [c, c+1) × [r, r+1).
        assert s.centroid_x == pytest.approx(centre[0] + 0.5, abs=0.2)
        assert s.centroid_y == pytest.approx(centre[1] + 0.5, abs=0.2)
        expected = np.deg2rad(angle)
        diff = (s.orientation - expected + np.pi / 2) % np.pi - np.pi / 2
        assert abs(diff) < np.deg2rad(2.0)
        assert s.major_length == pytest.approx(2 * axes[0] + 1, abs=2.0)
        assert s.minor_length == pytest.approx(2 * axes[1] + 1, abs=2.0)
        assert -np.pi / 2 < s.orientation <= np.pi / 2


def test_missing_label_and_empty_map():
    labels = np.zeros((10, 10), np.uint16)
    labels[2:4, 2:8] = 2
    shapes = shapes_2d(labels, 2)
    assert shapes[0].major_length == 0.0 and shapes[1].major_length == 6.0 and shapes[1].minor_length == 2.0
    assert shapes_2d(np.zeros((5, 5), np.uint16), 0) == []


def test_given_boxes_give_the_same_shapes_as_found_ones():
    rng = np.random.default_rng(3)
    labels = np.zeros((120, 160), np.uint16)
    for k in range(1, 6):
        x, y = rng.integers(0, 120), rng.integers(0, 80)
        cv2.ellipse(labels, (int(x), int(y)), (int(rng.integers(3, 30)), int(rng.integers(3, 20))),
                    float(rng.uniform(0, 180)), 0, 360, k, -1)
    boxes = []
    for k in range(1, 6):
        ys, xs = np.nonzero(labels == k)
        boxes.append((int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1) if len(xs) else (0, 0, 0, 0))
    assert shapes_2d(labels, 5, boxes) == shapes_2d(labels, 5)
    with pytest.raises(ValueError, match="5 labels need 5 boxes"):
        shapes_2d(labels, 5, boxes[:4])


def test_label_values_measure_those_labels():
    labels = np.zeros((60, 80), np.uint16)
    labels[5:20, 10:40] = 7  # e.g. track ids
    labels[30:55, 50:70] = 3
    boxes = [(10, 5, 30, 15), (50, 30, 20, 25)]
    shapes = shapes_2d(labels, 2, boxes, values=[7, 3])
    assert [(s.centroid_x, s.centroid_y) for s in shapes] == [(25.0, 12.5), (60.0, 42.5)]
    with pytest.raises(ValueError, match="2 labels need 2 label values, got 1"):
        shapes_2d(labels, 2, boxes, values=[7])
    with pytest.raises(ValueError, match="label values need their boxes"):
        shapes_2d(labels, 2, values=[7, 3])


@pytest.mark.parametrize("factor", [1, 2, 3])
def test_upscaled_shapes_equal_the_shapes_measured_on_the_scaled_map(factor):
    rng = np.random.default_rng(factor)
    labels = np.zeros((90, 120), np.uint16)
    for k in range(1, 8):
        centre = (int(rng.integers(10, 110)), int(rng.integers(10, 80)))
        axes = (int(rng.integers(1, 25)), int(rng.integers(1, 15)))
        cv2.ellipse(labels, centre, axes, float(rng.uniform(0, 180)), 0, 360, k, -1)
    labels[3:9, 100:118] = 8  # axis-aligned: orientation 0
    labels[70:71, 5:6] = 9  # one pixel
    small = shapes_2d(labels, 10)  # label 10 is absent
    scaled = resize_labels(labels, (90 * factor, 120 * factor))
    measured = shapes_2d(scaled, 10)
    for got, want in zip(upscale_shapes(small, factor), measured):
        assert got.orientation == pytest.approx(want.orientation, abs=1e-9)
        for name in ("centroid_x", "centroid_y", "major_length", "minor_length"):
            assert getattr(got, name) == pytest.approx(getattr(want, name), rel=1e-9, abs=1e-9), name
    assert measured[9].major_length == 0.0
    with pytest.raises(ValueError, match="whole factor >= 1, got 0"):
        upscale_shapes(small, 0)
