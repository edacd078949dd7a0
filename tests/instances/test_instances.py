"""label_instances on synthetic gen2seg colour maps with known instance maps (tests/helpers/synthetic_colors.py)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from seg_node.instances import InstanceParams, label_counts, label_instances
from tests.helpers.synthetic_colors import SceneSpec, make_scene

SEEDS = (0, 1, 2)
# Default noise sigma 3, blur sigma 1.2 (border_halo 0.6); thin structures are 1..3 px polylines.
SCENARIOS = {
    "one": dict(n_instances=1, thin_fraction=0.0),
    "ten": dict(n_instances=10, thin_fraction=0.1, similar_pairs=2),
    "fifty": dict(n_instances=50, thin_fraction=0.1, similar_pairs=5),
    "two_hundred": dict(n_instances=200, thin_fraction=0.05, similar_pairs=20),
    "thin": dict(n_instances=40, thin_fraction=0.3),
    "similar_touching": dict(n_instances=60, thin_fraction=0.0, similar_pairs=25),
    "strong_noise": dict(n_instances=50, thin_fraction=0.1, similar_pairs=5, noise_sigma=8.0),
    "wide_blur": dict(n_instances=50, thin_fraction=0.1, similar_pairs=5, blur_sigma=1.5),
}


def match(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, float]:
    """Per ground-truth instance IoU after Hungarian matching on IoU (0 unless matched at IoU > 0.5), and the
    fraction of the image covered by predicted instances that match none."""
    k, m = int(gt.max()), int(pred.max())
    joint = np.bincount(gt.astype(np.int64).ravel() * (m + 1) + pred.ravel(), minlength=(k + 1) * (m + 1))
    joint = joint.reshape(k + 1, m + 1)
    inter = joint[1:, 1:].astype(float)
    iou = inter / (joint[1:].sum(1)[:, None] + joint[:, 1:].sum(0)[None, :] - inter)
    rows, cols = linear_sum_assignment(-iou)
    good = iou[rows, cols] > 0.5
    per_gt = np.zeros(k)
    per_gt[rows[good]] = iou[rows[good], cols[good]]
    unmatched = np.ones(m, bool)
    unmatched[cols[good]] = False
    return per_gt, joint[:, 1:].sum(0)[unmatched].sum() / gt.size


@pytest.mark.parametrize("name", SCENARIOS)
def test_quality_on_synthetic_scenes(name):
    ious, thin_ious, spurious = [], [], []
    for seed in SEEDS:
        scene = make_scene(SceneSpec(seed=seed, **SCENARIOS[name]))
        per_gt, extra = match(scene.gt, label_instances(scene.colors).labels)
        ious.append(per_gt)
        thin_ious.append(per_gt[: scene.n_thin])
        spurious.append(extra)
    ious, thin_ious = np.concatenate(ious), np.concatenate(thin_ious)
    report = (f"{name}: mean IoU {ious.mean():.4f} over {len(ious)} instances ({(ious == 0).sum()} unmatched), "
              f"thin structures {thin_ious.mean() if len(thin_ious) else float('nan'):.4f} over {len(thin_ious)}, "
              f"spurious {max(spurious):.2%} of the image at most")
    assert ious.mean() >= 0.95, report
    assert max(spurious) <= 0.02, report
    if name == "thin":  # cables are the weakest class; guard them on their own too
        assert thin_ious.mean() >= 0.8, report


def test_color_drift_across_objects_is_not_split():
    """A trained model's colour wanders across a large object: its flat regions' means end up far apart, but the
    colour runs on where they meet. The continuity merge keeps such objects whole (spurious area at most 5 %)."""
    scenes = [make_scene(SceneSpec(seed=seed, n_instances=30, size=(240, 320), similar_pairs=3, drift_sigma=1.0))
              for seed in range(8)]

    def quality(params):
        found = [match(s.gt, label_instances(s.colors, params).labels) for s in scenes]
        return np.concatenate([f[0] for f in found]).mean(), max(f[1] for f in found)

    (iou, spurious), (iou_off, spurious_off) = quality(InstanceParams()), quality(InstanceParams(continuity_distance=0))
    report = f"mIoU {iou:.3f}, spurious {spurious:.2%} at most (without the continuity merge {iou_off:.3f}, {spurious_off:.2%})"
    assert iou >= 0.85 and spurious <= 0.05, report
    assert spurious_off > 2 * spurious, report  # the merge is what keeps them whole


def test_thin_structure_pass_is_what_finds_cables():
    scene = make_scene(SceneSpec(seed=0, **SCENARIOS["thin"]))
    with_pass = match(scene.gt, label_instances(scene.colors).labels)[0]
    without = match(scene.gt, label_instances(scene.colors, InstanceParams(thin_structures=False)).labels)[0]
    n = scene.n_thin
    assert with_pass[:n].mean() > without[:n].mean() + 0.3, (with_pass[:n].mean(), without[:n].mean())
    assert without[n:].mean() >= 0.95  # blobs do not need it


def test_full_resolution_grid_gives_the_same_quality():
    scene = make_scene(SceneSpec(seed=3, **SCENARIOS["fifty"]))
    assert match(scene.gt, label_instances(scene.colors, InstanceParams(downsample=1)).labels)[0].mean() >= 0.95


@pytest.fixture(scope="module")
def scene50():
    return make_scene(SceneSpec(seed=7, **SCENARIOS["fifty"]))


def test_label_map_and_records_agree(scene50):
    out = label_instances(scene50.colors)
    labels = out.labels
    assert labels.dtype == np.uint16 and labels.shape == scene50.gt.shape
    k = len(out.instances)
    assert k > 0
    assert set(np.unique(labels).tolist()) - {0} == set(range(1, k + 1))
    assert [inst.id for inst in out.instances] == list(range(1, k + 1))
    areas = [inst.area for inst in out.instances]
    assert areas == sorted(areas, reverse=True)  # numbered by area, largest first
    counts = np.bincount(labels.ravel(), minlength=k + 1)
    for inst in out.instances:
        ys, xs = np.nonzero(labels == inst.id)
        assert inst.area == counts[inst.id]
        assert inst.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        assert 0.0 <= inst.score <= 1.0
        assert all(isinstance(v, int) for v in (inst.id, inst.area, *inst.bbox))
        assert len(inst.mean_color) == 3 and all(isinstance(v, float) for v in inst.mean_color)


def test_mean_color_is_the_instance_color(scene50):
    out = label_instances(scene50.colors)
    for inst in out.instances[:20]:
        gt_id = np.bincount(scene50.gt[out.labels == inst.id]).argmax()
        assert np.linalg.norm(np.array(inst.mean_color) - scene50.palette[gt_id]) < 12


def test_deterministic(scene50):
    a, b = label_instances(scene50.colors), label_instances(scene50.colors.copy())
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.instances == b.instances


def test_uint8_and_float64_inputs_match_float32(scene50):
    rounded = np.round(scene50.colors)
    ref = label_instances(rounded.astype(np.float32))
    for variant in (rounded.astype(np.uint8), rounded.astype(np.float64), np.asfortranarray(rounded)):
        np.testing.assert_array_equal(label_instances(variant).labels, ref.labels)


def test_min_area_drops_small_instances_only(scene50):
    out = label_instances(scene50.colors, InstanceParams(min_area=2000))
    assert out.instances and min(inst.area for inst in out.instances) >= 2000
    assert np.bincount(out.labels.ravel())[1:].min() >= 2000
    gt_area = np.bincount(scene50.gt.ravel())[1:]
    per_gt = match(scene50.gt, out.labels)[0]
    assert (per_gt[gt_area < 1500] == 0).all() and (per_gt[gt_area > 2500] > 0.9).all()


def test_score_is_lower_next_to_a_similar_color():
    rng = np.random.default_rng(0)
    img = np.zeros((120, 200, 3), np.float32)
    img[20:80, 10:60] = (200, 60, 60)  # alone
    img[20:80, 90:140] = (100, 150, 100)  # touches a colour 30 away
    img[20:80, 140:190] = (100, 150, 130)
    img += rng.normal(0, 3, img.shape).astype(np.float32)
    out = label_instances(np.clip(img, 0, 255))
    assert len(out.instances) == 3
    by_x = sorted(out.instances, key=lambda inst: inst.bbox[0])
    assert by_x[0].score > 0.9
    assert by_x[0].score > by_x[1].score + 0.05 and by_x[0].score > by_x[2].score + 0.05


def test_score_is_lower_just_above_the_background_threshold():
    """A region whose colour only just clears background_threshold (a shadow or lit-up table patch) ranks below an
    equally uniform bright one: the margin over the threshold scales the score."""
    rng = np.random.default_rng(0)
    img = np.zeros((120, 200, 3), np.float32)
    img[20:80, 10:60] = (200, 60, 60)
    img[20:80, 110:160] = (28, 28, 28)  # |mean| 48.5: margin (48.5 - 30) / 30 over the default threshold
    img += rng.normal(0, 3, img.shape).astype(np.float32)
    out = label_instances(np.clip(img, 0, 255))
    bright, dim = sorted(out.instances, key=lambda inst: inst.bbox[0])
    margin = (np.linalg.norm(dim.mean_color) - 30.0) / 30.0
    assert 0.4 < margin < 0.9  # the dim block is where the margin counts
    assert bright.score > 0.9 and 0.9 * margin < dim.score <= margin, (bright.score, dim.score, margin)


def test_a_shadow_beside_an_object_scores_low():
    """A model draws an object's shadow or glow as the object's colour dimmed towards black: that region is an echo
    of its neighbour and ranks below everything else, while a region of the same brightness in its own colour, also
    touching an object, keeps a high score (as do the objects)."""
    rng = np.random.default_rng(0)
    img = np.zeros((120, 240, 3), np.float32)
    img[20:80, 10:60] = (200, 120, 220)
    img[20:80, 60:100] = (100, 60, 110)  # the first object's colour at half brightness: its shadow
    img[20:80, 130:180] = (60, 210, 200)
    img[20:80, 180:220] = (110, 60, 60)  # as bright as the shadow, another hue: an object
    img += rng.normal(0, 3, img.shape).astype(np.float32)
    out = label_instances(np.clip(img, 0, 255))
    assert len(out.instances) == 4
    obj, shadow, obj2, dim_obj = (inst.score for inst in sorted(out.instances, key=lambda inst: inst.bbox[0]))
    assert shadow < 0.2, shadow
    assert min(obj, obj2, dim_obj) > 0.8, (obj, obj2, dim_obj)

    # min_score drops it to background and keeps the rest as they were.
    kept = label_instances(np.clip(img, 0, 255), InstanceParams(min_score=0.2))
    assert sorted(i.score for i in kept.instances) == pytest.approx(sorted((obj, obj2, dim_obj)))
    assert not kept.labels[20:80, 62:98].any() and kept.labels[20:80, 12:58].all()
    assert (kept.labels > 0).sum() == (out.labels > 0).sum() - max(i.area for i in out.instances if i.score == shadow)


def _mean_border_step(labels: np.ndarray, colors: np.ndarray, label: int) -> float:
    """Mean colour distance across the 4-neighbour pixel pairs on ``label``'s border (numpy, for comparison)."""
    steps = []
    for a, b, ca, cb in ((labels[:, :-1], labels[:, 1:], colors[:, :-1], colors[:, 1:]),
                         (labels[:-1], labels[1:], colors[:-1], colors[1:])):
        border = (a != b) & ((a == label) | (b == label))
        steps.append(np.linalg.norm(ca[border] - cb[border], axis=1))
    return float(np.concatenate(steps).mean())


def test_a_soft_bordered_region_scores_lower_with_border_contrast():
    """Two equally uniform, equally bright regions, one ending in a step of colour, the other fading to black over
    eight pixels (how a model draws a shadow or a lit-up patch of table): with border_contrast the faded one's score
    is scaled by its mean border step over the contrast, the sharp one's is unchanged, and it ranks below."""
    rng = np.random.default_rng(0)
    img = np.zeros((120, 240, 3), np.float32)
    img[30:90, 20:80] = (200, 60, 60)
    y, x = np.mgrid[0:60, 0:60]
    fade = np.minimum(1.0, (np.minimum.reduce([y, x, 59 - y, 59 - x]) + 1) / 8.0)  # 1/8 at its edge, 1 inside
    img[30:90, 140:200] = fade[..., None] * np.array((60, 200, 60), np.float32)
    img = np.clip(img + rng.normal(0, 2, img.shape).astype(np.float32), 0, 255)
    plain = sorted(label_instances(img).instances, key=lambda inst: inst.bbox[0])
    out = label_instances(img, InstanceParams(border_contrast=100.0))
    sharp, soft = sorted(out.instances, key=lambda inst: inst.bbox[0])
    assert [i.area for i in plain] == [sharp.area, soft.area]
    assert plain[0].score > 0.9 and plain[1].score > 0.9  # without it, the two rank alike
    step = _mean_border_step(out.labels, img, soft.id)
    assert step < 50 and _mean_border_step(out.labels, img, sharp.id) > 100
    assert sharp.score == pytest.approx(plain[0].score)
    assert soft.score == pytest.approx(plain[1].score * step / 100.0, rel=1e-6)
    assert soft.score < 0.5 < sharp.score


def test_black_image_has_no_instances():
    noisy_black = np.clip(np.random.default_rng(1).normal(0, 3, (96, 128, 3)), 0, 255).astype(np.float32)
    for img in (np.zeros((96, 128, 3), np.float32), noisy_black):
        out = label_instances(img)
        assert out.instances == [] and not out.labels.any()


@pytest.mark.parametrize("shape", [(1, 1), (7, 9), (96, 128), (97, 131)])
def test_constant_color_is_one_instance(shape):
    img = np.full(shape + (3,), (90.0, 140.0, 200.0), np.float32)
    out = label_instances(img, InstanceParams(min_area=1))
    assert len(out.instances) == 1
    inst = out.instances[0]
    assert inst.area == shape[0] * shape[1] and inst.bbox == (0, 0, shape[1], shape[0])
    assert (out.labels == 1).all()
    np.testing.assert_allclose(inst.mean_color, (90, 140, 200), atol=1e-3)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((10, 10), np.float32), "H×W×3"),
    (np.zeros((10, 10, 4), np.float32), "H×W×3"),
    (np.zeros((0, 10, 3), np.float32), "H×W×3"),
    (np.zeros((10, 10, 3), np.int32), "dtype int32"),
    ([[[0.0, 0.0, 0.0]]], "numpy array"),
    (np.full((10, 10, 3), np.nan, np.float32), "NaN or Inf"),
])
def test_invalid_color_maps_are_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        label_instances(bad)


def test_a_single_infinite_pixel_is_rejected():
    img = np.zeros((32, 32, 3), np.float32)
    img[5, 7, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        label_instances(img)


@pytest.mark.parametrize("field, value, message", [
    ("min_area", 0, "min_area must be >= 1, got 0"),
    ("min_area", 2.5, "min_area must be int, got 2.5"),
    ("downsample", 0, r"downsample must be in \[1, 8\], got 0"),
    ("edge_threshold", -1.0, "edge_threshold must be in"),
    ("merge_distance", float("nan"), "merge_distance must be float, got nan"),
    ("background_threshold", 500.0, "background_threshold must be in"),
    ("residual_distance", "20", "residual_distance must be float"),
    ("thin_structures", 1, "thin_structures must be bool, got 1"),
    ("min_score", 1.5, r"min_score must be in \[0.0, 1.0\], got 1.5"),
    ("border_contrast", -5.0, r"border_contrast must be in \[0.0, 441.7\], got -5.0"),
    ("min_seed_area", True, "min_seed_area must be int, got True"),
])
def test_invalid_params_name_the_field_range_and_value(field, value, message):
    with pytest.raises(ValueError, match=message):
        InstanceParams(**{field: value})


@pytest.mark.parametrize("src, dst", [((30, 40), (90, 120)), ((37, 23), (100, 61)), ((16, 16), (240, 320)), ((5, 7), (5, 20))])
def test_upscaled_instances_count_areas_and_boxes_in_target_pixels(src, dst):
    from scipy import ndimage

    from seg_node.instances import Instance, InstanceLabels, upscale_instances

    rng = np.random.default_rng(sum(src) + sum(dst))
    small = rng.integers(0, 6, src).astype(np.uint16)
    small[small == 3] = 0  # a label missing in between
    ids = [k for k in range(1, 6) if (small == k).any()]
    small = np.searchsorted([0, *ids], small).astype(np.uint16)  # relabel 1..n
    boxes = ndimage.find_objects(small)
    found = InstanceLabels(small, [Instance(k, int((small == k).sum()), (b[1].start, b[0].start, b[1].stop - b[1].start,
                                                                         b[0].stop - b[0].start), 0.5, (0.0, 0.0, 0.0))
                                   for k, b in enumerate(boxes, 1)])
    big, instances = upscale_instances(found, dst)
    assert big.shape == dst and big.dtype == np.uint16
    for inst, box in zip(instances, ndimage.find_objects(big)):
        assert inst.area == int((big == inst.id).sum())
        assert inst.bbox == (box[1].start, box[0].start, box[1].stop - box[1].start, box[0].stop - box[0].start)
    with pytest.raises(ValueError, match="scales up only"):
        upscale_instances(InstanceLabels(big, instances), src)


def test_label_counts_equal_bincount():
    labels = np.random.default_rng(0).integers(0, 300, (97, 131)).astype(np.uint16)
    labels[:3] = 299
    counts = label_counts(labels, 300)
    assert counts.dtype == np.int64
    np.testing.assert_array_equal(counts, np.bincount(labels.ravel(), minlength=300))
    # Values missing from the map count zero, up to n.
    np.testing.assert_array_equal(label_counts(np.zeros((4, 4), np.uint16), 3), [16, 0, 0])
