"""Instances found at the network's resolution (``model.label_resolution``) against the colour map scaled up first."""
from __future__ import annotations

from dataclasses import astuple, replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from tests.helpers.oracle_model import make_oracle_onnx
from tests.helpers.ros_helpers import moving_sequence, paint, rectangles_scene
from seg_node.config import SegmenterConfig
from seg_node.processing.geometry import shapes_2d
from seg_node.pipeline import Segmenter


def _segmenter(model: Path, label_resolution: str, processing_resolution: int, tracking: bool = True) -> Segmenter:
    config = SegmenterConfig()
    config = replace(config, model=replace(config.model, path=str(model), label_resolution=label_resolution,
                                           processing_resolution=processing_resolution),
                     tracking=replace(config.tracking, enabled=tracking))
    return Segmenter(config)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_oracle_onnx(tmp_path_factory.mktemp("oracle") / "oracle.onnx")


@pytest.mark.parametrize("label_resolution, tracking", [("network", True), ("input", True), ("network", False)])
def test_labels_at_frame_size_match_objects_and_records(oracle: Path, label_resolution: str, tracking: bool) -> None:
    gt = rectangles_scene(480, 640, [(61, 50, 203, 151), (360, 83, 150, 119), (121, 300, 97, 121), (421, 301, 160, 99)])
    with _segmenter(oracle, label_resolution, 320, tracking) as seg:  # the network sees 320×240
        result = seg.segment(paint(gt))
    assert result.labels.shape == (480, 640) and result.colors.shape == (480, 640, 3)
    assert result.color_map.native.shape == (240, 320, 3)
    assert len(result.segments) == 4
    boxes = ndimage.find_objects(result.labels)
    for s in result.segments:
        mask = result.labels == s.instance.id
        best = max(np.logical_and(mask, gt == k).sum() / np.logical_or(mask, gt == k).sum() for k in range(1, 5))
        assert best > 0.97  # within a pixel of each border at the network's half resolution
        # Records count frame pixels, whichever resolution the instances were found at.
        assert s.instance.area == int(mask.sum())
        b = boxes[s.instance.id - 1]
        assert s.instance.bbox == (b[1].start, b[0].start, b[1].stop - b[1].start, b[0].stop - b[0].start)
        ys, xs = np.nonzero(mask)
        assert s.shape.centroid_x == pytest.approx(xs.mean() + 0.5, abs=1e-6)
    # Shapes are measured at the network's resolution when the frame is a whole multiple of it: the same as on the
    # frame-sized label image.
    on_labels = shapes_2d(result.labels, len(result.segments), [s.instance.bbox for s in result.segments],
                          [s.id for s in result.segments])
    for s, want in zip(result.segments, on_labels):
        assert astuple(s.shape) == pytest.approx(astuple(want), rel=1e-9, abs=1e-9)


def test_min_area_counts_frame_pixels(oracle: Path) -> None:
    # A 40-pixel object (in the frame) against min_area 30 and 60: kept, then dropped, at either resolution.
    gt = rectangles_scene(480, 640, [(100, 100, 200, 150), (400, 300, 8, 5)])
    for label_resolution in ("network", "input"):
        for min_area, expected in ((30, 2), (60, 1)):
            seg = _segmenter(oracle, label_resolution, 320)
            seg.update_config(replace(seg.config, instances=replace(seg.config.instances, min_area=min_area)))
            assert len(seg.segment(paint(gt)).segments) == expected, (label_resolution, min_area)


def test_track_ids_are_stable_when_labelled_small(oracle: Path) -> None:
    with _segmenter(oracle, "network", 320) as seg:
        ids = []
        for gt in moving_sequence(8):
            result = seg.segment(paint(gt))
            # Each ground-truth object keeps the id found in the first frame.
            ids.append({k: int(np.bincount(result.labels[gt == k]).argmax()) for k in range(1, int(gt.max()) + 1)})
    assert all(frame == ids[0] for frame in ids) and 0 not in ids[0].values()


def test_bad_label_resolution_is_named() -> None:
    with pytest.raises(ValueError, match="label_resolution must be one of network, input"):
        replace(SegmenterConfig().model, label_resolution="half")


@pytest.mark.parametrize("label_resolution", ["network", "input"])
def test_instances_found_ahead_finish_as_in_one_call(oracle: Path, label_resolution: str) -> None:
    # The node finds instances on its first-stage thread and finishes them on its second: same result as segment().
    frames = [paint(gt) for gt in moving_sequence(3)]
    with _segmenter(oracle, label_resolution, 320) as whole, _segmenter(oracle, label_resolution, 320) as split:
        for rgb in frames:
            expected = whole.segment(rgb)
            cm = split.color_maps([rgb])[0]
            found = split.find_instances(cm)
            assert found.labels.shape == ((240, 320) if label_resolution == "network" else (480, 640))
            result = split.segment_colors(cm, found=found)
            np.testing.assert_array_equal(result.labels, expected.labels)
            assert [s.to_dict() for s in result.segments] == [s.to_dict() for s in expected.segments]


def test_segments_measured_by_track_id_when_ids_differ_from_frame_labels(oracle: Path) -> None:
    # Frame labels number segments by area: the big object shrinks below the other, so its frame label changes
    # while its track id stays. Every record must still describe the pixels its id marks in the label image.
    first = rectangles_scene(480, 640, [(60, 50, 200, 150), (360, 80, 150, 120)])
    second = rectangles_scene(480, 640, [(60, 50, 120, 100), (360, 80, 150, 120)])
    with _segmenter(oracle, "network", 320) as seg:
        ids_first = {k: int(np.bincount(seg.segment(paint(first)).labels[first == k]).argmax()) for k in (1, 2)}
        result = seg.segment(paint(second))
    ids = {k: int(np.bincount(result.labels[second == k]).argmax()) for k in (1, 2)}
    assert ids == ids_first and ids[1] < ids[2]
    assert [s.id for s in result.segments] == [ids[2], ids[1]]  # largest first
    for s in result.segments:
        mask = result.labels == s.id
        ys, xs = np.nonzero(mask)
        assert s.instance.area == mask.sum()
        assert s.instance.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        assert (s.shape.centroid_x, s.shape.centroid_y) == pytest.approx((xs.mean() + 0.5, ys.mean() + 0.5), abs=1e-6)


@pytest.mark.parametrize("as_type", [str, Path])
def test_segmenter_from_a_model_path(oracle: Path, as_type: type) -> None:
    """The contract: ``Segmenter("path/to/model")`` as well as ``Segmenter(config)``; both segment alike."""
    rgb = paint(rectangles_scene())
    with Segmenter(as_type(oracle)) as seg:
        assert seg.config.model.path == str(oracle) and seg.config.backend.name == "auto"
        by_path = seg.segment(rgb)
    with Segmenter(SegmenterConfig(model=replace(SegmenterConfig().model, path=str(oracle)))) as seg:
        by_config = seg.segment(rgb)
    assert len(by_path.segments) == len(by_config.segments) > 0
    np.testing.assert_array_equal(by_path.labels, by_config.labels)
