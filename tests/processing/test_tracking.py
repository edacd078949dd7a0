"""Segment tracking on synthetic sequences whose per-frame labels are reshuffled every frame, as label_instances
renumbers segments by area."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pytest

from seg_node.processing import tracking
from seg_node.processing.tracking import Tracker, TrackerParams

H, W = 480, 640


@dataclass
class Obj:
    x: float
    y: float
    vx: float
    vy: float
    size: tuple[int, int]  # half-width, half-height
    ellipse: bool = False
    absent: range = range(0)  # frames in which it is not visible

    def at(self, frame: int) -> tuple[float, float]:
        """Constant velocity, reflected at the image borders."""
        def bounce(p: float, v: float, lo: float, hi: float) -> float:
            span = hi - lo
            q = (p - lo + v * frame) % (2 * span)
            return lo + (q if q <= span else 2 * span - q)

        sx, sy = self.size
        return bounce(self.x, self.vx, sx, W - 1 - sx), bounce(self.y, self.vy, sy, H - 1 - sy)


def draw(objects: list[Obj], frame: int, rng: np.random.Generator) -> tuple[np.ndarray, int, dict[int, int]]:
    """Label map of the visible objects (later objects drawn over earlier ones), labels in random order.
    Returns the map, the number of labels, and object index → label."""
    visible = [i for i, o in enumerate(objects) if frame not in o.absent]
    perm = rng.permutation(len(visible)) + 1
    labels = np.zeros((H, W), np.uint16)
    for i, label in zip(visible, perm):
        o = objects[i]
        x, y = (int(round(v)) for v in o.at(frame))
        if o.ellipse:
            cv2.ellipse(labels, (x, y), o.size, 0, 0, 360, int(label), -1)
        else:
            cv2.rectangle(labels, (x - o.size[0], y - o.size[1]), (x + o.size[0], y + o.size[1]), int(label), -1)
    return labels, len(visible), {i: int(label) for i, label in zip(visible, perm)}


def run(objects: list[Obj], frames: int, params: TrackerParams = TrackerParams(), seed: int = 0):
    """Per frame: object index → (track id, age), after checking the output label map."""
    rng = np.random.default_rng(seed)
    tracker = Tracker(params)
    history = []
    for f in range(frames):
        labels, count, label_of = draw(objects, f, rng)
        up = tracker.update(labels, count)
        assert up.labels.dtype == np.uint16 and up.labels.shape == labels.shape
        assert len(up.ids) == len(up.ages) == count and len(set(up.ids)) == count
        lut = np.array([0] + up.ids, np.uint16)
        np.testing.assert_array_equal(up.labels, lut[labels])
        history.append({i: (up.ids[k - 1], up.ages[k - 1]) for i, k in label_of.items()})
    return history


def ids_of(history, i: int) -> list[int]:
    return [h[i][0] for h in history if i in h]


def moving_objects(rng: np.random.Generator, n: int) -> list[Obj]:
    objs = []
    for j in range(n):
        speed, angle = rng.uniform(3, 10), rng.uniform(0, 2 * np.pi)
        objs.append(Obj(rng.uniform(60, W - 60), rng.uniform(60, H - 60), speed * np.cos(angle), speed * np.sin(angle),
                        (int(rng.integers(12, 30)), int(rng.integers(12, 30))), ellipse=bool(j % 2)))
    return objs


def test_moving_objects_keep_their_ids_through_relabelling():
    objects = moving_objects(np.random.default_rng(3), 8)
    history = run(objects, 30)
    first = [ids_of(history, i)[0] for i in range(len(objects))]
    assert len(set(first)) == len(objects)
    for i in range(len(objects)):
        assert set(ids_of(history, i)) == {first[i]}, i
        assert [h[i][1] for h in history] == list(range(1, 31))


def test_occluded_object_keeps_its_id_and_restarts_its_age():
    objects = moving_objects(np.random.default_rng(4), 5)
    objects[2].absent = range(10, 13)  # 3 frames, max_missed = 5
    history = run(objects, 30)
    assert len(set(ids_of(history, 2))) == 1
    assert [h[2][1] for h in history[13:16]] == [1, 2, 3]  # consecutive frames: a new run after the gap
    for i in (0, 1, 3, 4):
        assert len(set(ids_of(history, i))) == 1


def test_fast_object_reappearing_nearby_is_matched_by_distance():
    # 10 px/frame for 4 frames: 40 px from where it was last seen, no mask overlap left.
    objects = [Obj(200, 240, 10, 0, (15, 15), absent=range(8, 11)), Obj(500, 100, -3, 4, (20, 20))]
    history = run(objects, 20)
    assert len(set(ids_of(history, 0))) == 1


def test_object_missing_longer_than_max_missed_gets_a_new_id():
    objects = moving_objects(np.random.default_rng(5), 4)
    objects[1].absent = range(8, 15)  # 7 frames > max_missed = 5
    history = run(objects, 25)
    before, after = ids_of(history, 1)[:8], ids_of(history, 1)[8:]
    assert len(set(before)) == 1 and len(set(after)) == 1
    assert after[0] > max(i for h in history[:15] for i, _ in h.values())  # never used before


def test_new_object_gets_an_id_never_used_before():
    objects = moving_objects(np.random.default_rng(6), 5)
    objects[4].absent = range(0, 15)
    history = run(objects, 25)
    used_before = {i for h in history[:15] for i, _ in h.values()}
    new = ids_of(history, 4)
    assert len(set(new)) == 1 and new[0] not in used_before and new[0] > max(used_before)
    assert history[15][4][1] == 1


def test_crossing_objects_do_not_swap_ids():
    # Two equal discs on nearly the same row pass through each other (the second drawn in front), twice over:
    # their areas, hence label_instances' order, swap back and forth while they overlap.
    objects = [Obj(150, 240, 8, 0, (25, 25), ellipse=True), Obj(490, 250, -8, 0, (25, 25), ellipse=True)]
    history = run(objects, 30, seed=7)
    a, b = ids_of(history, 0), ids_of(history, 1)
    assert set(a) == {a[0]} and set(b) == {b[0]} and a[0] != b[0]


def test_disabled_tracker_passes_labels_through():
    labels, count, _ = draw(moving_objects(np.random.default_rng(8), 3), 0, np.random.default_rng(0))
    tracker = Tracker(TrackerParams(enabled=False))
    for _ in range(2):
        up = tracker.update(labels, count)
        assert up.labels is labels and up.ids == [1, 2, 3] and up.ages == [1, 1, 1]


def test_empty_frames_and_image_size_change():
    tracker = Tracker()
    labels = np.zeros((H, W), np.uint16)
    labels[10:50, 10:50] = 1
    assert tracker.update(labels, 1).ids == [1]
    empty = tracker.update(np.zeros((H, W), np.uint16), 0)
    assert empty.ids == [] and not empty.labels.any()
    assert tracker.update(labels, 1).ids == [1]  # missed one frame: same id
    small = np.zeros((H // 2, W // 2), np.uint16)
    small[5:25, 5:25] = 1
    assert tracker.update(small, 1).ids == [2]  # new size: tracks forgotten, ids keep counting
    tracker.reset()
    assert tracker.update(small, 1).ids == [3]
    with pytest.raises(TypeError, match="uint16"):
        tracker.update(small.astype(np.int32), 1)


def test_ids_wrap_below_the_limit_and_skip_live_ones(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(tracking, "MAX_TRACK_ID", 6)
    tracker = Tracker(TrackerParams(max_missed=0))
    steady = np.zeros((H, W), np.uint16)
    steady[10:60, 10:60] = 1
    steady[100:150, 100:150] = 2
    issued = []
    for f in range(12):
        labels = steady.copy()
        x = 200 + 120 * (f % 3)  # a blinking third object, far from where it was last seen: a new id every frame
        labels[300:340, x : x + 40] = 3
        up = tracker.update(labels, 3)
        assert up.ids[:2] == [1, 2]
        issued.append(up.ids[2])
    assert issued == [3, 4, 5, 6, 3, 4, 5, 6, 3, 4, 5, 6]


def test_hundreds_of_segments():
    # 300 segments: the overlap codes no longer fit uint16 and the relabelling table no longer fits cv2.LUT.
    rng = np.random.default_rng(10)
    cells = [(r, c) for r in range(15) for c in range(20)]
    tracker, first = Tracker(), None
    for f in range(3):
        perm = rng.permutation(len(cells)) + 1
        labels = np.zeros((H, W), np.uint16)
        for (r, c), label in zip(cells, perm):
            labels[r * 32 + f : r * 32 + f + 20, c * 32 : c * 32 + 20] = label
        up = tracker.update(labels, len(cells))
        by_cell = [up.ids[label - 1] for label in perm]
        np.testing.assert_array_equal(up.labels, np.array([0] + up.ids, np.uint16)[labels])
        first = first or by_cell
        assert by_cell == first


def test_params_validation():
    with pytest.raises(ValueError, match=r"min_iou must be in \[1e-06, 1.0\], got 0.0"):
        TrackerParams(min_iou=0.0)
    with pytest.raises(ValueError, match="max_missed must be int"):
        TrackerParams(max_missed=2.5)
    with pytest.raises(ValueError, match="max_centroid_distance"):
        TrackerParams(max_centroid_distance=-0.1)
    with pytest.raises(ValueError, match="enabled must be a bool"):
        TrackerParams(enabled="yes")
