"""seg_node.evaluation.metrics against pycocotools and against brute-force references on random masks."""
from __future__ import annotations

import contextlib
import io

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy import ndimage

from seg_node.evaluation import metrics as M


def _blob(rng: np.random.Generator, shape: tuple[int, int], min_r: int = 3, max_r: int = 30) -> np.ndarray:
    h, w = shape
    mask = np.zeros(shape, np.uint8)
    cv2.ellipse(mask, (int(rng.integers(0, w)), int(rng.integers(0, h))),
                (int(rng.integers(min_r, max_r)), int(rng.integers(min_r, max_r))), float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return mask.astype(bool)


def _random_scene(rng: np.random.Generator, shape=(120, 160), n=6) -> np.ndarray:
    labels = np.zeros(shape, np.uint16)
    for i in range(1, n + 1):
        labels[_blob(rng, shape, 2, 45)] = i
    return labels


def test_size_buckets_follow_coco():
    assert M.size_bucket(32**2 - 1) == "small" and M.size_bucket(32**2) == "medium"
    assert M.size_bucket(96**2 - 1) == "medium" and M.size_bucket(96**2) == "large"


@pytest.mark.parametrize("seed", range(5))
def test_mask_iou_and_iou_matrix_match_pycocotools(seed):
    rng = np.random.default_rng(seed)
    gt = M.GtFrame.from_label_image(_random_scene(rng))
    preds = [_blob(rng, (120, 160), 2, 45) for _ in range(5)]
    rles = [M.encode_mask(p) for p in preds]
    iou = M.iou_matrix(gt, rles)
    assert iou.shape == (len(gt), len(preds))
    for g in range(len(gt)):
        for d, p in enumerate(preds):
            ref = mask_utils.iou([rles[d]], [gt.rles[g]], [0])[0][0]
            assert iou[g, d] == pytest.approx(ref, abs=1e-12)
            assert M.mask_iou(p, gt.mask(g)) == pytest.approx(ref, abs=1e-12)


def _cocoeval_reference(images, gts, dts) -> np.ndarray:
    """The standard pycocotools path: loadRes() of a results list, COCOeval.summarize()."""
    gt = COCO()
    gt.dataset = {"images": images, "annotations": gts, "categories": [{"id": 1, "name": "object"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes([{"image_id": d["image_id"], "category_id": 1, "segmentation": d["segmentation"], "score": d["score"]}
                         for d in dts])
        ev = COCOeval(gt, dt, iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


@pytest.mark.parametrize("seed", range(3))
def test_coco_evaluator_equals_cocoeval_summarize(seed):
    rng = np.random.default_rng(seed)
    ev = M.CocoEvaluator()
    for image_id in range(6):
        labels = _random_scene(rng, (160, 200), 8)
        gt = M.GtFrame.from_label_image(labels)
        dts, scores = [], []
        for i in range(len(gt)):  # perturbed copies of most objects, plus false positives, random scores
            if rng.random() < 0.8:
                m = ndimage.shift(gt.mask(i).astype(np.uint8), rng.integers(-4, 5, 2), order=0).astype(bool)
                dts.append(M.encode_mask(m))
                scores.append(float(rng.random()))
        for _ in range(3):
            dts.append(M.encode_mask(_blob(rng, (160, 200))))
            scores.append(float(rng.random()))
        ev.add(image_id, gt, dts, scores)
    ours = ev.evaluate()
    ref = _cocoeval_reference(ev.images, ev.gt, ev.dt)
    names = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large"]
    for name, value in zip(names, ref):
        assert (ours[name] if ours[name] is not None else -1.0) == pytest.approx(value, abs=1e-6), name


def test_coco_evaluator_perfect_and_custom_max_dets():
    rng = np.random.default_rng(7)
    ev = M.CocoEvaluator(max_dets=(1, 10, 300))
    for image_id in range(3):
        gt = M.GtFrame.from_label_image(_random_scene(rng))
        ev.add(image_id, gt, gt.rles, [1.0] * len(gt))
    out = ev.evaluate()
    assert out["AP"] == pytest.approx(1.0) and out["AP50"] == 1.0 and out["AR300"] == pytest.approx(1.0)
    assert "AR100" not in out


def _brute_dt(mask: np.ndarray) -> np.ndarray:
    # Euclidean distance to the nearest pixel outside the mask, with the image edge counting as outside.
    return ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]


@pytest.mark.parametrize("seed", range(8))
def test_centre_point_is_the_distance_transform_maximum(seed):
    rng = np.random.default_rng(seed)
    mask = _blob(rng, (90, 110), 2, 40)
    mask[:, :3] |= rng.random() < 0.5  # sometimes touching the image edge
    x, y = M.centre_point(mask)
    ref = _brute_dt(mask)
    assert mask[y, x]
    assert ref[y, x] == pytest.approx(ref.max(), abs=1e-3)


def test_centre_point_of_a_rectangle_and_an_empty_mask():
    mask = np.zeros((50, 60), bool)
    mask[10:31, 20:41] = True  # 21×21: a unique centre
    assert M.centre_point(mask) == (30, 20)
    assert M.centre_point(np.zeros((5, 5), bool)) is None


def test_next_click_goes_to_the_deeper_error():
    gt = np.zeros((60, 60), bool)
    gt[10:50, 10:50] = True
    pred = np.zeros_like(gt)
    pred[10:50, 10:30] = True  # misses the right half: a positive click there
    x, y, label = M.next_click(gt, pred)
    assert label == 1 and 30 <= x < 50 and 10 <= y < 50
    pred = gt.copy()
    pred[0:8, 0:60] = True  # only a false-positive band: a negative click in it
    x, y, label = M.next_click(gt, pred)
    assert label == 0 and y < 8
    assert M.next_click(gt, gt) is None


def test_simulate_clicks_sam_protocol():
    gt = np.zeros((64, 64), bool)
    gt[8:40, 8:40] = True
    calls = []

    def predict(points, labels):
        calls.append((list(points), list(labels)))
        if len(points) == 1:  # first answer leaks into the background
            out = gt.copy()
            out[40:60, 8:40] = True
            return out
        return gt.copy()

    ious, clicks, first = M.simulate_clicks(gt, predict, 4)
    assert clicks[0] == (23, 23, 1)  # the centre of the 32×32 square: first of its 4 maxima in raster order
    assert clicks[1][2] == 0 and 40 <= clicks[1][1] < 60  # a negative click in the leak
    assert ious[0] == pytest.approx(32 * 32 / (32 * 32 + 20 * 32)) and ious[1:] == [1.0, 1.0, 1.0]
    assert len(calls) == 2  # no clicks once the mask is perfect
    assert calls[1] == ([(23, 23), clicks[1][:2]], [1, 0])
    assert first.sum() == 32 * 32 + 20 * 32


def _brute_boundary_f(pred, gt, tol):
    def boundary(m):
        padded = np.pad(m, 1, constant_values=True)
        inner = ndimage.binary_erosion(padded, structure=ndimage.generate_binary_structure(2, 1))[1:-1, 1:-1]
        return m & ~inner
    bp, bg = boundary(pred), boundary(gt)
    if not bp.any() and not bg.any():
        return 1.0
    if not bp.any() or not bg.any():
        return 0.0
    p = (ndimage.distance_transform_edt(~bg)[bp] <= tol).mean()
    r = (ndimage.distance_transform_edt(~bp)[bg] <= tol).mean()
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


@pytest.mark.parametrize("seed", range(6))
def test_boundary_f_matches_a_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    gt = _blob(rng, (100, 130), 4, 40)
    pred = ndimage.shift(gt.astype(np.uint8), rng.integers(-6, 7, 2), order=0).astype(bool) | _blob(rng, (100, 130), 2, 8)
    tol = M.boundary_tolerance(100, 130)
    assert tol == 2  # ceil(0.008 × 164)
    assert M.boundary_f(pred, gt)[0] == pytest.approx(_brute_boundary_f(pred, gt, tol), abs=1e-9)


def test_boundary_f_edge_cases():
    gt = np.zeros((40, 40), bool)
    gt[10:30, 10:30] = True
    assert M.boundary_f(gt, gt) == (1.0, 1.0, 1.0)
    assert M.boundary_f(np.roll(gt, 1, axis=1), gt, tolerance=1)[0] == 1.0
    assert M.boundary_f(np.roll(gt, 5, axis=1), gt, tolerance=1)[0] < 0.6
    assert M.boundary_f(np.zeros_like(gt), gt)[0] == 0.0
    empty = np.zeros_like(gt)
    assert M.boundary_f(empty, empty)[0] == 1.0
    full = np.ones_like(gt)  # the image edge is not a boundary: a full-frame mask has none
    assert M.boundary_f(full, full)[0] == 1.0


def test_match_instances_is_one_to_one_above_threshold():
    iou = np.array([[0.9, 0.6, 0.0], [0.55, 0.7, 0.0], [0.1, 0.2, 0.3]])
    matches = M.match_instances(iou)
    assert sorted(matches) == [(0, 0, 0.9), (1, 1, 0.7)]
    assert M.match_instances(iou, valid_rows=np.array([False, True, True])) == [(1, 1, 0.7)]
    assert M.match_instances(np.zeros((2, 0))) == []


def test_id_consistency_counts_switches_between_consecutive_frames():
    c = M.IdConsistency()
    assert c.update([(1, 10, 0.9), (2, 20, 0.8)], n_gt=2, n_pred=2) == 0
    assert c.update([(1, 10, 0.9), (2, 21, 0.8)], n_gt=2, n_pred=3) == 1  # object 2 changed id; 1 false positive
    assert c.update([(1, 10, 0.9)], n_gt=2, n_pred=1) == 0  # object 2 missed
    assert c.update([(1, 10, 0.9), (2, 22, 0.8)], n_gt=2, n_pred=2) == 0  # not consecutive: a CLEAR-MOT switch only
    r = c.result()
    assert (r["matched_pairs"], r["id_switches"], r["mot_id_switches"]) == (4, 1, 2)
    assert r["id_switch_rate"] == 0.25
    assert (r["misses"], r["false_positives"], r["gt_instances"]) == (1, 1, 8)
    assert r["mota"] == pytest.approx(1 - (1 + 1 + 2) / 8)
    assert "consecutive" in r["definition"]


def test_gt_frame_from_label_image_and_coco_agree():
    rng = np.random.default_rng(3)
    labels = _random_scene(rng)
    a = M.GtFrame.from_label_image(labels)
    anns = [{"id": k, "track_id": i, "segmentation": {"size": r["size"], "counts": r["counts"].decode()}, "iscrowd": 0}
            for k, (i, r) in enumerate(zip(a.ids, a.rles))]
    polygon = {"id": 99, "segmentation": [[5, 5, 25, 5, 25, 20, 5, 20]], "iscrowd": 1}
    b = M.GtFrame.from_coco(anns + [polygon], *labels.shape)
    assert b.ids[:-1] == a.ids and b.areas[:-1] == a.areas and b.crowd == [False] * len(a) + [True]
    assert all((b.mask(i) == a.mask(i)).all() for i in range(len(a)))
    assert b.areas[-1] == mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(polygon["segmentation"], *labels.shape)))
    with pytest.raises(ValueError, match="differs"):
        M.GtFrame.from_coco(anns[:1], 10, 10)


def test_prompt_summary_by_size():
    rs = [M.PromptResult(1, 100, [0.5, 0.9], 0.4, []), M.PromptResult(2, 5000, [1.0, 1.0], 1.0, []),
          M.PromptResult(3, 20000, [0.0, 0.5], 0.0, [])]
    s = M.prompt_summary(rs, 2)
    assert s["instances"] == 3 and s["miou"] == {"1": 0.5, "2": pytest.approx(0.8)}
    assert s["by_size"]["small"]["miou"] == {"1": 0.5, "2": 0.9} and s["by_size"]["large"]["instances"] == 1
    assert M.summarise([])["mean"] is None and M.summarise([1, 2, 3])["p50"] == 2
