"""Robot- and reference-mode pre/post-processing around the network, independent of any model."""
from __future__ import annotations

import numpy as np
import pytest

from seg_node.processing import model_io
from seg_node.models.spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, SpecError

SD = ModelSpec("sd", pad_multiple=64)
MAE = ModelSpec("mae", input_hw=(32, 32), pad_multiple=8, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def _frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_sd_robot_pads_to_multiple_of_64_and_returns_input_resolution():
    rgb = _frame(480, 640)
    batch, geos = model_io.preprocess([rgb], SD, "robot", processing_resolution=768)
    assert batch.shape == (1, 3, 576, 768) and batch.dtype == np.float32
    assert geos[0].content_hw == (576, 768)
    assert -1.0 <= batch.min() and batch.max() <= 1.0
    batch, geos = model_io.preprocess([_frame(300, 500)], SD, "robot", processing_resolution=0)
    assert batch.shape == (1, 3, 320, 512) and geos[0].content_hw == (300, 500)
    # Replicate padding: the padded rows repeat the last content row.
    np.testing.assert_array_equal(batch[0, :, 300:, :500], np.repeat(batch[0, :, 299:300, :500], 20, axis=1))
    maps = model_io.postprocess(np.random.default_rng(1).normal(size=batch.shape).astype(np.float32), geos, SD, "robot")
    assert maps[0].colors.shape == (300, 500, 3) and maps[0].colors.dtype == np.float32


def test_sd_static_graph_fits_frame_inside_fixed_input():
    spec = ModelSpec("sd", input_hw=(256, 256), pad_multiple=64)
    batch, geos = model_io.preprocess([_frame(100, 200)], spec, "robot", processing_resolution=768)
    assert batch.shape == (1, 3, 256, 256) and geos[0].content_hw == (128, 256)


def test_robot_normalises_each_frame_alone_and_zeroes_nonfinite():
    rng = np.random.default_rng(2)
    raw = rng.normal(size=(2, 3, 64, 64)).astype(np.float32)
    raw[1] *= 50.0
    geos = [model_io.FrameGeometry((64, 64), (64, 64))] * 2
    together = model_io.postprocess(raw, geos, SD, "robot")
    alone = model_io.postprocess(raw[:1], geos[:1], SD, "robot")
    np.testing.assert_allclose(together[0].colors, alone[0].colors, atol=1e-4)
    assert together[0].colors.min() == pytest.approx(0.0, abs=1e-3) and together[0].colors.max() == pytest.approx(255.0, abs=0.01)
    # The reference pipeline normalises over the batch: the first frame's colours depend on the second.
    ref_together = model_io.reference_processing_output(raw, geos, SD)
    ref_alone = model_io.reference_processing_output(raw[:1], geos[:1], SD)
    assert np.abs(ref_together[0] - ref_alone[0]).max() > 10.0

    raw[0, 1, 5, 7] = np.nan
    raw[0, 0, 9, 9] = np.inf
    guarded = model_io.postprocess(raw[:1], geos[:1], SD, "robot")[0]
    assert guarded.nonfinite == 2 and np.isfinite(guarded.colors).all()


def test_mae_robot_squashes_to_vit_size_without_gamma():
    rgb = np.empty((48, 80, 3), np.uint8)
    rgb[:] = (200, 100, 50)
    batch, geos = model_io.preprocess([rgb], MAE, "robot")
    assert batch.shape == (1, 3, 32, 32)
    expected = (np.array([200, 100, 50]) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(batch[0], np.broadcast_to(expected[:, None, None], (3, 32, 32)), atol=1e-5)
    raw = np.linspace(-1, 1, 3 * 32 * 32, dtype=np.float32).reshape(1, 3, 32, 32)
    robot = model_io.postprocess(raw, geos, MAE, "robot")[0].colors
    assert robot.shape == (48, 80, 3)
    # Linear raw ramp → linear colours in robot mode; reference mode bends it with gamma 0.7.
    ref = model_io.reference_processing_output(raw, geos, MAE)[0]
    mid = raw[0, 1, 16, 16]
    assert ref[16, 16, 1] == pytest.approx(255.0 * ((mid + 1.0) / (2.0 + 1e-5)) ** 0.7, abs=1e-3)


def test_reference_sd_resize_matches_torch_antialiased_bilinear():
    """The official pipeline resizes with torch's antialiased bilinear; ours uses PIL and must agree."""
    torch = pytest.importorskip("torch")  # the rest of this module runs without torch (the runtime's Python 3.10 leg)
    F = torch.nn.functional
    for h, w, res in ((120, 200, 64), (40, 56, 96)):
        rgb = _frame(h, w, seed=h)
        batch, geos = model_io.preprocess([rgb], SD, "reference", processing_resolution=res)
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0 * 2.0 - 1.0
        ch, cw = geos[0].content_hw
        assert (ch, cw) == (h * res // max(h, w), w * res // max(h, w))
        want = F.interpolate(x, (ch, cw), mode="bilinear", antialias=True, align_corners=False)[0].numpy()
        np.testing.assert_allclose(batch[0, :, :ch, :cw], want, atol=2e-3)
        assert batch.shape[2] % 8 == 0 and batch.shape[3] % 8 == 0


def test_reference_sd_scale_is_the_official_two_step_formula():
    """decode_prediction shifts by |min| and then divides by |max| + |min| of the *shifted* output: for an output
    that does not span zero, [0.2, 0.8] maps to [0.4, 1.0] / 1.4 · 255, not to [0, 255]."""
    raw = np.linspace(0.2, 0.8, 3 * 8 * 8, dtype=np.float32).reshape(1, 3, 8, 8)
    out = model_io.reference_processing_output(raw, [model_io.FrameGeometry((8, 8), (8, 8))], SD)[0]
    assert out.min() == pytest.approx(0.4 / 1.4 * 255, abs=1e-3) and out.max() == pytest.approx(255 / 1.4, abs=1e-3)


def test_reference_output_is_uint8_valued_at_input_size():
    rgb = _frame(50, 70)
    batch, geos = model_io.preprocess([rgb], SD, "reference", processing_resolution=64)
    out = model_io.postprocess(np.random.default_rng(0).normal(size=batch.shape).astype(np.float32), geos, SD, "reference")[0]
    assert out.colors.shape == (50, 70, 3)
    np.testing.assert_array_equal(out.colors, np.round(out.colors))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="uint8 H×W×3"):
        model_io.preprocess([np.zeros((10, 10), np.uint8)], SD)
    with pytest.raises(ValueError, match="mode must be one of"):
        model_io.preprocess([_frame(8, 8)], SD, "fast")
    with pytest.raises(ValueError, match="different network input sizes"):
        model_io.preprocess([_frame(64, 64), _frame(64, 200)], SD, "robot", processing_resolution=0)
    with pytest.raises(ValueError, match="fixed input"):
        model_io.preprocess([_frame(8, 8)], ModelSpec("sd", input_hw=(64, 64), pad_multiple=64), "reference")
    with pytest.raises(SpecError, match="input_hw"):
        ModelSpec("mae")


def test_spec_json_round_trip():
    assert ModelSpec.from_json(MAE.to_json()) == MAE
    with pytest.raises(SpecError, match="malformed"):
        ModelSpec.from_json('{"family": "sd"}')
