"""Mask completion on synthetic colour maps: hidden parts rejoin their segment, unseen objects get new ids."""
from __future__ import annotations

import numpy as np
import pytest

from seg_node.processing.completion import complete_labels, nearest_label_fill
from tests.helpers.synthetic_colors import SceneSpec, make_scene, render_colors


def _flat_scene() -> tuple[np.ndarray, np.ndarray]:
    """Three touching rectangles on black (ids 1..3) and a separate square (id 4), as a noisy soft colour map."""
    gt = np.zeros((120, 160), np.uint16)
    gt[10:60, 10:70] = 1
    gt[10:60, 70:130] = 2
    gt[60:110, 10:90] = 3
    gt[75:105, 115:145] = 4
    palette = np.array([[0, 0, 0], [200, 60, 60], [60, 200, 60], [60, 60, 200], [200, 200, 60]], np.float32)
    return gt, render_colors(gt, palette, 3.0, 1.2, 0.6, np.random.default_rng(0))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_hidden_parts_rejoin_their_segment_and_known_pixels_keep_their_ids() -> None:
    gt, colors = _flat_scene()
    hidden = np.zeros(gt.shape, bool)
    hidden[30:90, 40:100] = True  # across the borders of 1, 2 and 3
    partial = np.where(hidden, 0, gt).astype(np.uint16)
    partial[~hidden & (gt == 2)] = 7  # ids need not be 1..K
    done = complete_labels(colors, partial, ~hidden)
    assert done.dtype == np.uint16
    assert np.array_equal(done[~hidden], partial[~hidden])
    expect = np.where(gt == 2, 7, gt)
    assert (done[hidden] == expect[hidden]).mean() > 0.97
    base = nearest_label_fill(partial, ~hidden)
    assert (done[hidden] == expect[hidden]).mean() > (base[hidden] == expect[hidden]).mean() + 0.05


def test_an_unseen_object_gets_a_new_id_above_the_known_ones() -> None:
    gt, colors = _flat_scene()
    partial = np.where(gt == 4, 0, gt).astype(np.uint16)
    partial[gt == 3] = 9
    done = complete_labels(colors, partial)  # known = the non-zero labels: the background is unknown too
    assert np.array_equal(done[partial > 0], partial[partial > 0])
    new = set(np.unique(done[gt == 4]).tolist())
    assert len(new) == 1 and new.pop() == 10
    assert _iou(done == 10, gt == 4) > 0.9
    assert (done[gt == 0] == 0).mean() > 0.98  # unknown background stays background


def test_a_touching_neighbour_of_another_color_is_not_swallowed() -> None:
    gt, colors = _flat_scene()
    partial = np.where(gt == 1, 1, 0).astype(np.uint16)  # only object 1 known; 2 and 3 touch it
    done = complete_labels(colors, partial, gt == 1)
    assert (done[gt == 2] == 1).mean() < 0.02 and (done[gt == 3] == 1).mean() < 0.02
    new2, new3 = done[35, 100], done[85, 50]
    assert new2 > 1 and new3 > 1 and new2 != new3  # one new segment each
    assert _iou(done == new2, gt == 2) > 0.9 and _iou(done == new3, gt == 3) > 0.9


@pytest.mark.parametrize("fraction", [0.3, 0.9])
def test_beats_nearest_label_fill_on_band_hidden_scenes(fraction: float) -> None:
    scene = make_scene(SceneSpec(n_instances=12, size=(160, 200), thin_fraction=0.0, seed=3))
    gt, rng = scene.gt, np.random.default_rng(1)
    hidden = np.zeros(gt.shape, bool)
    for k in range(1, int(gt.max()) + 1):
        ys, xs = np.nonzero(gt == k)
        proj = xs * np.cos(k) + ys * np.sin(k)
        lo = np.quantile(proj, rng.uniform(0, 1 - fraction))
        band = (proj >= lo) & (proj < lo + fraction * (proj.max() - proj.min()))
        hidden[ys[band], xs[band]] = True
    partial = np.where(hidden, 0, gt).astype(np.uint16)
    done, base = complete_labels(scene.colors, partial, ~hidden), nearest_label_fill(partial, ~hidden)
    ious = [_iou(done == k, gt == k) for k in range(1, int(gt.max()) + 1)]
    base_ious = [_iou(base == k, gt == k) for k in range(1, int(gt.max()) + 1)]
    assert np.mean(ious) > 0.9
    assert np.mean(ious) > np.mean(base_ious) + 0.05


def test_everything_known_is_returned_unchanged() -> None:
    gt, colors = _flat_scene()
    done = complete_labels(colors, gt, np.ones(gt.shape, bool))
    assert np.array_equal(done, gt) and done is not gt


@pytest.mark.parametrize("change, message", [
    (lambda c, p, k: (c, p.astype(np.int32), k), "partial_labels must be uint16"),
    (lambda c, p, k: (c, p[:, :-1], k[:, :-1]), "the frame is 120×160"),
    (lambda c, p, k: (c, p, k[:-1]), "known_mask has shape"),
    (lambda c, p, k: (c, p, k.astype(np.uint8)), "known_mask must be a bool"),
    (lambda c, p, k: (c, p, np.zeros_like(k)), "no pixel as known"),
    (lambda c, p, k: (c, p.tolist(), k), "partial_labels must be a numpy array"),
    (lambda c, p, k: (np.where(k[..., None], c, np.nan), p, k), "NaN"),
])
def test_bad_input_names_the_problem(change, message: str) -> None:
    gt, colors = _flat_scene()
    args = change(colors, gt.copy(), gt > 0)
    with pytest.raises(ValueError, match=message):
        complete_labels(*args)


def test_new_ids_that_overflow_uint16_are_refused() -> None:
    gt, colors = _flat_scene()
    partial = np.where(gt == 1, 65535, 0).astype(np.uint16)
    with pytest.raises(ValueError, match="do not fit uint16"):
        complete_labels(colors, partial)
