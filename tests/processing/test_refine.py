"""Guided refinement of blocky colour maps (seg_node.processing.refine) and its place in the Segmenter's config."""
from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from seg_node.config import ModelConfig, SegmenterConfig
from seg_node.instances import label_instances
from seg_node.model_settings import resolve_config
from seg_node.pipeline import Segmenter
from seg_node.processing.refine import guided_filter
from training.evaluate import evaluate_scenes, evaluation_scenes


def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A frame with two discs on a textured table, and a patch-blocky colour map of them (10-px patches, each
    coloured by the object covering most of it), as an under-trained ViT draws it."""
    rng = np.random.default_rng(0)
    frame = (90 + 25 * rng.random((160, 160, 3))).astype(np.uint8)
    gt = np.zeros((160, 160), np.uint8)
    cv2.circle(gt, (52, 60), 27, 1, -1)
    cv2.circle(gt, (112, 104), 21, 2, -1)
    frame[gt == 1] = (200, 40, 40)
    frame[gt == 2] = (40, 170, 60)
    colors = np.array([[0, 0, 0], [250, 120, 20], [30, 90, 240]], np.float32)
    votes = np.stack([cv2.resize((gt == k).astype(np.float32), (16, 16), interpolation=cv2.INTER_AREA) for k in range(3)])
    blocky = cv2.resize(colors[votes.argmax(0)], (160, 160), interpolation=cv2.INTER_NEAREST)
    return frame, gt, blocky


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / np.logical_or(a, b).sum())


@pytest.mark.parametrize("subsample", [1, 2])
def test_borders_move_to_the_frames_edges(subsample: int) -> None:
    frame, gt, blocky = _scene()
    refined = guided_filter(frame, blocky, 8, 1e-4, subsample)
    for k in (1, 2):
        before = _iou(label_instances(blocky).labels == k, gt == k)
        after = max(_iou(label_instances(refined).labels == j, gt == k) for j in (1, 2))
        assert after > before + 0.15 and after > 0.95, (k, before, after)


def _textbook_guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s colour guided filter, Algorithm 1, in float64 with one 3×3 solve per pixel."""
    def mean(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, -1, (2 * radius + 1, 2 * radius + 1), borderType=cv2.BORDER_REFLECT)

    img = guide.astype(np.float64) / 255
    mean_i = np.stack([mean(img[..., i]) for i in range(3)], -1)
    sigma = np.stack([np.stack([mean(img[..., i] * img[..., j]) - mean_i[..., i] * mean_i[..., j]
                                for j in range(3)], -1) for i in range(3)], -2) + eps * np.eye(3)
    out = np.empty(src.shape)
    for c in range(src.shape[2]):
        p = src[..., c].astype(np.float64)
        cov = np.stack([mean(img[..., i] * p) - mean_i[..., i] * mean(p) for i in range(3)], -1)
        a = np.linalg.solve(sigma, cov[..., None])[..., 0]
        b = mean(p) - (a * mean_i).sum(-1)
        out[..., c] = (np.stack([mean(a[..., i]) for i in range(3)], -1) * img).sum(-1) + mean(b)
    return out


@pytest.mark.parametrize(("hw", "channels", "radius"), [((23, 31), 3, 4), ((40, 17), 1, 12), ((64, 64), 2, 1)])
def test_matches_the_textbook_filter(hw: tuple[int, int], channels: int, radius: int) -> None:
    rng = np.random.default_rng(channels)
    frame, _, _ = _scene()
    guide = np.ascontiguousarray(frame[:hw[0], :hw[1]])
    src = (rng.random((*hw, channels)) * 255).astype(np.float32)
    expected = _textbook_guided_filter(guide, src, radius, 1e-3)
    got = guided_filter(guide, src, radius, 1e-3)
    assert got.shape == src.shape and got.dtype == np.float32
    assert np.abs(got - expected).max() < 0.05  # colour units of 0..255, float32 against float64
    assert np.abs(got - src).mean() > 1.0  # it filtered


def test_flat_maps_stay_flat_and_bad_arguments_are_named() -> None:
    frame, _, _ = _scene()
    flat = np.full((160, 160, 3), 77.0, np.float32)
    assert np.allclose(guided_filter(frame, flat, 5, 1e-3), 77.0, atol=1e-2)
    assert np.allclose(guided_filter(frame, flat, 5, 1e-3, subsample=3), 77.0, atol=1e-2)
    with pytest.raises(ValueError, match="same H×W"):
        guided_filter(frame[:80], flat, 5, 1e-3)
    with pytest.raises(ValueError, match="radius and subsample must be >= 1"):
        guided_filter(frame, flat, 0, 1e-3)
    with pytest.raises(ValueError, match="radius and subsample must be >= 1"):
        guided_filter(frame, flat, 5, 1e-3, subsample=0)


def test_subsampled_fit_stays_near_the_full_filter() -> None:
    """The fast guided filter: local models fitted at half size, applied to the full-size frame. Its segments fit
    the objects as the full filter's do, and its colours stay nearer the full filter's than a map filtered at half
    size and scaled back up."""
    frame, gt, blocky = _scene()
    full, fast = guided_filter(frame, blocky, 8, 1e-4), guided_filter(frame, blocky, 8, 1e-4, subsample=2)
    for k in (1, 2):  # the object each filter's segment-everything finds at the disc
        found = [max(_iou(label_instances(m).labels == j, gt == k) for j in (1, 2)) for m in (full, fast)]
        assert found[1] > found[0] - 0.01, (k, found)
    small = cv2.resize(guided_filter(cv2.resize(frame, (80, 80), interpolation=cv2.INTER_AREA),
                                     cv2.resize(blocky, (80, 80), interpolation=cv2.INTER_AREA), 4, 1e-4), (160, 160))
    assert np.abs(fast - full).mean() < 0.8 * np.abs(small - full).mean()


def test_config_checks() -> None:
    model = SegmenterConfig().model
    assert model.refine_radius == 0  # off unless a model's config asks for it
    assert model.prompt_refine_radius == -1  # clicks read the same map unless a model's config says otherwise
    for bad in (dict(refine_radius=4), dict(prompt_refine_radius=4)):
        with pytest.raises(ValueError, match="need mode robot"):
            replace(model, mode="reference", **bad)
    with pytest.raises(ValueError, match="refine_radius must be in"):
        replace(model, refine_radius=-1)
    with pytest.raises(ValueError, match="refine_subsample must be in"):
        replace(model, refine_subsample=0)
    with pytest.raises(ValueError, match="prompt_refine_radius must be in"):
        replace(model, prompt_refine_radius=-2)


def test_clicks_read_their_own_refinement(tiny_mae_path: Path) -> None:
    """model.prompt_refine_radius: the published map and the instances keep refine_radius, point prompts read the
    map refined with the other radius (here none), made on the first click."""
    frame = _scene()[0]
    maps = {}
    for radius, prompt_radius in ((3, -1), (0, -1), (3, 0)):
        config = SegmenterConfig(model=ModelConfig(path=str(tiny_mae_path), refine_radius=radius,
                                                   prompt_refine_radius=prompt_radius))
        with Segmenter(config) as seg:
            maps[radius, prompt_radius] = seg.segment(frame).color_map
            point = [(60.0, 50.0)]
            mask = seg.prompt(maps[radius, prompt_radius], point, [1])
            assert np.array_equal(mask, seg.prompt(maps[radius, prompt_radius].prompt_colors, point, [1]))
    refined, plain, split = maps[3, -1], maps[0, -1], maps[3, 0]
    assert refined.prompt_colors is refined.colors and plain.prompt_colors is plain.colors
    assert np.abs(refined.colors - plain.colors).max() > 1.0  # the filter does change this map
    assert np.array_equal(split.colors, refined.colors)
    assert np.array_equal(split.prompt_colors, plain.colors)


def test_clicks_on_large_frames_read_a_map_upsampled_with_the_frame() -> None:
    """model.prompt_upsample_radius: on frames larger than the network's output, clicks read the map guided-filtered
    at the frame's resolution with the frame, made on the first click; the published map and the instances stay as
    they were, and the shipped model's clicks on 480×640 scenes fit the objects better."""
    model = Path(__file__).resolve().parents[2] / "engines" / "default" / "model.onnx"
    scenes = evaluation_scenes(["blob", "cylinder"], 8, (480, 640))
    results = {}
    for radius in (0, 1):
        config = resolve_config(model, None, {"tracking.enabled": False, "model.prompt_upsample_radius": radius})
        with Segmenter(config) as seg:
            color_map = seg.color_maps([scenes[0].rgb])[0]
            results[radius] = color_map, evaluate_scenes(seg, scenes)
    (plain, plain_scores), (upsampled, scores) = results[0], results[1]
    assert upsampled.native.shape[0] < 480 and upsampled.prompt_colors.shape == (480, 640, 3)
    assert np.array_equal(upsampled.colors, plain.colors)
    # The model's click map (prompt_refine_radius) scaled up, and the same map upsampled with the frame.
    assert plain.prompt_colors.shape == upsampled.prompt_colors.shape
    assert np.abs(upsampled.prompt_colors - plain.prompt_colors).max() > 10.0
    assert 0.0 <= upsampled.prompt_colors.min() and upsampled.prompt_colors.max() <= 255.0

    # bag_eval's workers send colour maps across processes before any click: the click map's recipe travels too,
    # whether it starts from a map of its own (above) or from the published one (prompt_refine_radius -1).
    for prompt_radius in (4, -1):
        config = resolve_config(model, None, {"model.prompt_upsample_radius": 1,
                                              "model.prompt_refine_radius": prompt_radius})
        with Segmenter(config) as seg:
            color_map = seg.color_maps([scenes[0].rgb])[0]
            sent = pickle.loads(pickle.dumps(color_map))
            assert np.array_equal(sent.prompt_colors, color_map.prompt_colors)
    assert scores["AP50"] == plain_scores["AP50"]
    assert scores["miou_1"] > plain_scores["miou_1"] + 0.01, (scores["miou_1"], plain_scores["miou_1"])
    with pytest.raises(ValueError, match="prompt_upsample_radius must be in"):
        ModelConfig(prompt_upsample_radius=17)
    with pytest.raises(ValueError, match="need mode robot"):
        ModelConfig(mode="reference", prompt_upsample_radius=1)
