"""Area shrinking into normalised planes (seg_node.processing.resample), against OpenCV's INTER_AREA and numpy as oracles."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from seg_node.processing import model_io
from seg_node.models.spec import IMAGENET_MEAN, IMAGENET_STD, SD_MEAN, SD_STD, ModelSpec
from seg_node.processing.resample import area_chw, area_weights, normalise_chw


def _frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(("src", "dst"), [((720, 1280), (432, 768)), ((71, 100), (23, 37)), ((200, 300), (64, 64)),
                                          ((48, 64), (48, 40))])
def test_area_chw_averages_the_same_areas_as_opencv(src, dst):
    rgb = _frame(*src)
    scale = np.array([0.5, 2.0, -1.0], np.float32)
    bias = np.array([0.0, -3.0, 7.0], np.float32)
    out = area_chw(rgb, np.empty((3, *dst), np.float32), scale, bias)
    # OpenCV on float input gives the exact area means (on uint8 it rounds them).
    ref = cv2.resize(rgb.astype(np.float32), dst[::-1], interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(out, ref.transpose(2, 0, 1) * scale[:, None, None] + bias[:, None, None],
                               rtol=1e-5, atol=2e-3)


def test_area_chw_writes_only_the_asked_corner():
    out = np.full((3, 50, 60), -9.0, np.float32)
    area_chw(_frame(90, 100), out, np.ones(3, np.float32), np.zeros(3, np.float32), hw=(40, 45))
    assert (out[:, :40, :45] >= 0).all() and (out[:, :40, :45] <= 255).all()
    assert (out[:, 40:, :] == -9.0).all() and (out[:, :, 45:] == -9.0).all()


def test_area_weights_cover_each_input_once():
    first, weights = area_weights(1280, 768)
    assert np.allclose(weights.sum(axis=1), 1.0, atol=1e-6)
    coverage = np.zeros(1280 + weights.shape[1])
    for j in range(768):
        coverage[first[j]: first[j] + weights.shape[1]] += weights[j]
    # Every input pixel contributes its whole area once, spread over the outputs it overlaps (768/1280 each).
    np.testing.assert_allclose(coverage[:1280], 768 / 1280, atol=1e-5)


def test_area_chw_rejects_what_it_cannot_do():
    out = np.empty((3, 8, 8), np.float32)
    with pytest.raises(ValueError, match="shrinks: 4 pixels to 8"):
        area_chw(_frame(4, 4), out, np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match="uint8 H×W×3"):
        area_chw(_frame(16, 16).astype(np.float32), out, np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match="float32 3×H×W"):
        area_chw(_frame(16, 16), np.empty((8, 8, 3), np.float32), np.ones(3), np.zeros(3))


SD = ModelSpec("sd", pad_multiple=64, mean=SD_MEAN, std=SD_STD)


@pytest.mark.parametrize(("hw", "spec", "resolution"), [
    ((720, 1280), SD, 768),  # → 432×768, rows padded to 448
    ((1280, 720), SD, 768),  # → 768×432, columns padded to 448
    ((720, 1280), ModelSpec("mae", input_hw=(224, 224), pad_multiple=16, mean=IMAGENET_MEAN, std=IMAGENET_STD), 0),
])
def test_robot_preprocess_at_fractional_ratios_matches_opencv_area(hw, spec, resolution):
    rgb = _frame(*hw, seed=3)
    batch, geos = model_io.preprocess([rgb], spec, "robot", processing_resolution=resolution)
    ch, cw = geos[0].content_hw
    mean, std = np.asarray(spec.mean), np.asarray(spec.std)
    ref = cv2.resize(rgb.astype(np.float32), (cw, ch), interpolation=cv2.INTER_AREA)
    expected = ((ref / 255.0 - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(batch[0, :, :ch, :cw], expected, atol=1e-4)
    # The padding replicates the last content row and column, as for every other ratio.
    np.testing.assert_array_equal(batch[0, :, ch:, :cw], np.repeat(batch[0, :, ch - 1:ch, :cw], batch.shape[2] - ch, 1))
    np.testing.assert_array_equal(batch[0, :, :, cw:], np.repeat(batch[0, :, :, cw - 1:cw], batch.shape[3] - cw, 2))


def test_normalise_chw_writes_the_affine_planes_into_the_corner():
    rgb = _frame(37, 53, seed=5)
    scale = np.array([1 / (255 * 0.229), 1 / (255 * 0.224), 2 / 255], np.float32)
    bias = np.array([-0.485 / 0.229, -0.456 / 0.224, -1.0], np.float32)
    out = np.full((3, 40, 64), -9.0, np.float32)
    normalise_chw(rgb, out, scale, bias)
    expected = rgb.astype(np.float64).transpose(2, 0, 1) * scale[:, None, None] + bias[:, None, None]
    np.testing.assert_allclose(out[:, :37, :53], expected, rtol=1e-6, atol=1e-6)
    assert (out[:, 37:, :] == -9.0).all() and (out[:, :, 53:] == -9.0).all()
    # A view with strides (a crop) reads the right pixels.
    np.testing.assert_allclose(normalise_chw(rgb[5:20, 10:30], np.empty((3, 15, 20), np.float32), scale, bias),
                               expected[:, 5:20, 10:30], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="uint8 H×W×3"):
        normalise_chw(rgb[..., :2], out, scale, bias)
    with pytest.raises(ValueError, match="writes 37×53 into a float32 3×H×W"):
        normalise_chw(rgb, np.empty((3, 30, 64), np.float32), scale, bias)


@pytest.mark.parametrize(("hw", "resolution"), [((720, 1280), 640), ((480, 640), 0), ((100, 150), 0)])
def test_robot_preprocess_at_whole_ratios_normalises_opencvs_area_shrink(hw, resolution):
    rgb = _frame(*hw, seed=4)
    batch, geos = model_io.preprocess([rgb], SD, "robot", processing_resolution=resolution)
    ch, cw = geos[0].content_hw
    small = cv2.resize(rgb, (cw, ch), interpolation=cv2.INTER_AREA)
    expected = ((small / 255.0 - np.asarray(SD.mean)) / np.asarray(SD.std)).transpose(2, 0, 1)
    np.testing.assert_allclose(batch[0, :, :ch, :cw], expected, atol=1e-5)
    np.testing.assert_array_equal(batch[0, :, ch:, :cw], np.repeat(batch[0, :, ch - 1:ch, :cw], batch.shape[2] - ch, 1))
    np.testing.assert_array_equal(batch[0, :, :, cw:], np.repeat(batch[0, :, :, cw - 1:cw], batch.shape[3] - cw, 2))
