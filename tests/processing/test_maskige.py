"""Maskige (GSS masks-as-images): label maps survive encode → decode exactly, and a VAE-like corruption within reach."""
from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from seg_node.processing.maskige import MaskigeCodec, decode_maskige, encode_maskige, fit_color_transform
from training.synthetic import SceneGenerator


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """The two label maps split the image into the same segments (ids may differ), with the same background."""
    if not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def connected_pieces(labels: np.ndarray) -> np.ndarray:
    """Each instance split into its 8-connected pieces (an occluder can cut an instance in two)."""
    out, count = np.zeros(labels.shape, np.int32), 0
    for k in np.unique(labels[labels > 0]):
        n, comp = cv2.connectedComponents((labels == k).astype(np.uint8), connectivity=8)
        out[comp > 0] = comp[comp > 0] + count
        count += n - 1
    return out


@pytest.mark.parametrize("index", range(4))
def test_synthetic_scenes_round_trip_exactly(index: int) -> None:
    labels = SceneGenerator(120, 160, seed=3).scene(index).labels
    maskige = encode_maskige(labels)
    assert maskige.dtype == np.uint8 and maskige.shape == (120, 160, 3)
    assert not maskige[labels == 0].any() and maskige[labels > 0].any(1).all()
    assert same_partition(MaskigeCodec(min_area=1).decode(maskige), connected_pieces(labels))


def test_specks_join_their_neighbour() -> None:
    labels = np.zeros((30, 30), np.int32)
    labels[5:25, 5:25] = 1
    labels[10:12, 10] = 2  # a 2-pixel speck inside instance 1
    decoded = decode_maskige(encode_maskige(labels))
    assert same_partition(decoded, np.where(labels > 0, 1, 0))


def test_touching_instances_get_different_colors_and_distant_ones_may_share() -> None:
    labels = np.zeros((40, 200), np.int32)
    for k in range(10):  # a row of 10 touching strips, then a separate block
        labels[5:35, 10 + 15 * k:25 + 15 * k] = k + 1
    maskige = encode_maskige(labels)
    colors = [tuple(maskige[20, 17 + 15 * k]) for k in range(10)]
    assert all(a != b for a, b in zip(colors, colors[1:]))
    assert len(set(colors)) < 10  # only 7 codes: non-touching strips reuse them, connectivity splits them again
    assert same_partition(decode_maskige(maskige), labels)


def test_decoding_survives_noise_blur_and_a_color_cast() -> None:
    labels = SceneGenerator(120, 160, seed=5).scene(1).labels
    maskige = encode_maskige(labels).astype(np.float32)
    rng = np.random.default_rng(0)
    received = cv2.GaussianBlur(maskige, (5, 5), 1.0) * 0.8 + 20 + rng.normal(0, 12, maskige.shape)
    decoded = decode_maskige(received)
    inner = interior(labels)  # away from borders, where the blur mixes codes
    for k in np.unique(labels[inner]):
        values = decoded[(labels == k) & inner]
        assert np.mean(values == np.bincount(values).argmax()) > 0.95
        assert (values > 0).all() == (k > 0)
    # A colour cast too strong for the fixed code is undone by the fitted transform.
    cast = maskige[..., ::-1] * 0.3 + 140  # channels swapped, squeezed into the bright half
    exact = MaskigeCodec(min_area=1)
    assert not same_partition(exact.decode(cast), connected_pieces(labels))
    assert same_partition(exact.fitted(maskige, cast).decode(cast), connected_pieces(labels))


def interior(labels: np.ndarray) -> np.ndarray:
    edge = cv2.morphologyEx(labels.astype(np.float32), cv2.MORPH_GRADIENT, np.ones((5, 5), np.uint8)) > 0
    return ~edge


def test_more_levels_give_more_codes_and_bad_input_is_refused() -> None:
    assert len(MaskigeCodec().codes) == 8 and len(MaskigeCodec(levels=3).codes) == 27
    assert not MaskigeCodec(levels=3).codes[0].any()
    with pytest.raises(ValueError, match="levels"):
        MaskigeCodec(levels=1)
    with pytest.raises(ValueError, match="H×W integer"):
        encode_maskige(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match=">= 0"):
        encode_maskige(-np.ones((4, 4), np.int32))
    with pytest.raises(ValueError, match="H×W×3"):
        decode_maskige(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="N >= 4"):
        fit_color_transform(np.zeros((2, 3)), np.zeros((2, 3)))


def test_runtime_module_imports_without_torch() -> None:
    code = ("import sys; import seg_node.processing.maskige\n"
            "print(','.join(m for m in ('torch', 'diffusers', 'training') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""
