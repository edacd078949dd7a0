"""mask_from_points on synthetic gen2seg colour maps with known instance maps (tests/helpers/synthetic_colors.py)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from seg_node.processing.prompting import PromptParams, mask_from_points
from tests.helpers.synthetic_colors import SceneSpec, make_scene


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def click(mask: np.ndarray) -> tuple[int, int]:
    """The pixel deepest inside ``mask``, where a user clicks, as (x, y)."""
    depth = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    y, x = np.unravel_index(depth.argmax(), depth.shape)
    return int(x), int(y)


@pytest.fixture(scope="module")
def scenes():
    return [make_scene(SceneSpec(seed=seed, n_instances=50, thin_fraction=0.1, similar_pairs=5)) for seed in range(3)]


def test_one_click_selects_the_instance(scenes):
    # Objects, not the 1..3 px cables: a cable's colour varies along it with its blend into what it crosses, and a
    # colour-distance prompt selects only the stretch around the click (measured mean IoU about 0.5 for cables).
    ious = []
    for scene in scenes:
        for k in range(scene.n_thin + 1, int(scene.gt.max()) + 1):
            gt = scene.gt == k
            ious.append(iou(mask_from_points(scene.colors, [click(gt)], [1]), gt))
    ious = np.array(ious)
    report = f"mean IoU {ious.mean():.4f} over {len(ious)} instances, min {ious.min():.3f}, {(ious < 0.9).sum()} < 0.9"
    assert ious.mean() >= 0.95, report
    assert np.median(ious) >= 0.97, report


def test_mask_is_boolean_and_float_points_are_rounded(scenes):
    scene = scenes[0]
    x, y = click(scene.gt == scene.n_thin + 1)
    mask = mask_from_points(scene.colors, np.array([[x + 0.4, y - 0.4]]), np.array([1]))
    assert mask.dtype == bool and mask.shape == scene.gt.shape
    np.testing.assert_array_equal(mask, mask_from_points(scene.colors, [(x, y)], [1]))


def test_two_positive_points_give_the_union(scenes):
    scene = scenes[1]
    a, b = scene.gt == scene.n_thin + 1, scene.gt == scene.n_thin + 2
    mask = mask_from_points(scene.colors, [click(a), click(b)], [1, 1])
    assert iou(mask, a | b) >= 0.95
    assert (mask & a).sum() >= 0.9 * a.sum() and (mask & b).sum() >= 0.9 * b.sum()


def _similar_neighbours() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two touching squares 30 apart in colour (a hard but separable pair for a trained model), soft borders, noise."""
    img = np.zeros((120, 200, 3), np.float32)
    left, right = np.zeros((120, 200), bool), np.zeros((120, 200), bool)
    left[30:90, 30:100] = True
    right[30:90, 100:170] = True
    img[left], img[right] = (120, 160, 80), (120, 160, 110)
    img = 0.4 * img + 0.6 * cv2.GaussianBlur(img, (0, 0), 1.2)
    img += np.random.default_rng(0).normal(0, 3, img.shape).astype(np.float32)
    return np.clip(img, 0, 255), left, right


def test_negative_point_on_a_similar_neighbour_removes_it():
    img, left, right = _similar_neighbours()
    loose = PromptParams(tau=30.0)  # loose enough that one click takes in the neighbour
    assert iou(mask_from_points(img, [(50, 60)], [1], loose), left | right) >= 0.95
    mask = mask_from_points(img, [(50, 60), (150, 60)], [1, 0], loose)
    assert iou(mask, left) >= 0.95 and (mask & right).sum() <= 0.02 * right.sum()


def test_default_distance_already_splits_similar_neighbours():
    img, left, right = _similar_neighbours()
    assert iou(mask_from_points(img, [(50, 60)], [1]), left) >= 0.95


def test_a_pixel_equal_to_the_query_does_not_collapse_the_mask():
    # The official min-max normalisation makes the cut-off scale with the best match's distance; the clamp does not.
    img, left, _ = _similar_neighbours()
    before = mask_from_points(img, [(50, 60)], [1])
    exact = img.copy()
    exact[40, 40] = img[55:66, 45:56].reshape(-1, 3).mean(0)
    np.testing.assert_array_equal(mask_from_points(exact, [(50, 60)], [1]), before)
    assert iou(before, left) >= 0.95


def test_keep_connected_keeps_only_the_clicked_region():
    img = np.zeros((100, 200, 3), np.float32)
    img[20:80, 20:80] = img[20:80, 120:180] = (200, 100, 50)  # same colour, apart
    clicked = mask_from_points(img, [(50, 50)], [1])
    assert clicked[20:80, 20:80].all() and not clicked[:, 100:].any()
    both = mask_from_points(img, [(50, 50)], [1], PromptParams(keep_connected=False))
    assert both[20:80, 20:80].all() and both[20:80, 120:180].all()


def test_click_on_a_cable_stays_on_the_cable():
    img = np.zeros((80, 120, 3), np.float32)
    img[40, 10:110] = (200, 120, 40)  # 1 px line; the query must not average in the black around it
    mask = mask_from_points(img, [(60, 40)], [1])
    assert mask[40, 10:110].all() and mask.sum() == 100


@pytest.mark.parametrize("points, labels, message", [
    ([(200, 10)], [1], "outside the 120×100 image"),
    ([(-1, 10)], [1], "outside"),
    ([(10, 10), (20, 20)], [0, 0], "at least one positive point"),
    ([(10, 10), (20, 20)], [1], "one entry per point"),
    ([(10, 10)], [2], "1 \\(positive\\) or 0 \\(negative\\)"),
    ([(10, 10)], [0.5], "1 \\(positive\\) or 0 \\(negative\\)"),
    ([(np.nan, 10)], [1], "NaN or Inf"),
    ([10, 10], [1], "shape \\(N, 2\\)"),
    (np.zeros((0, 2)), [], "shape \\(N, 2\\)"),
])
def test_bad_prompts_are_rejected(points, labels, message):
    img = np.zeros((100, 120, 3), np.float32)
    with pytest.raises(ValueError, match=message):
        mask_from_points(img, points, labels)


def test_bad_color_maps_are_rejected():
    img = np.zeros((10, 10, 3), np.float32)
    img[3, 3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        mask_from_points(img, [(1, 1)], [1])
    with pytest.raises(ValueError, match="H×W×3"):
        mask_from_points(np.zeros((10, 10), np.float32), [(1, 1)], [1])


@pytest.mark.parametrize("field, value, message", [
    ("sigma", 0.0, r"sigma must be in \(0, 0.5\], got 0.0"),
    ("tau", -3.0, r"tau must be in \(0, 441.7\], got -3.0"),
    ("min_similarity", 1.5, r"min_similarity must be in \(0, 1\], got 1.5"),
    ("keep_connected", "yes", "keep_connected must be bool, got 'yes'"),
    ("tau", float("inf"), "tau must be float, got inf"),
])
def test_invalid_params_name_the_field_range_and_value(field, value, message):
    with pytest.raises(ValueError, match=message):
        PromptParams(**{field: value})
