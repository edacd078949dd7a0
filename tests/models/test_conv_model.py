"""The conv family (seg_node.models.conv) on tiny seeded UNets: its checkpoint folder, loader errors, the network's
contract, the ONNX export and the Segmenter running that export."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from safetensors.torch import load_file, save_file  # noqa: E402

from seg_node.backends import create_backend  # noqa: E402
from seg_node.backends.torch_backend import TorchBackend  # noqa: E402
from seg_node.model_settings import resolve_config  # noqa: E402
from seg_node.models.checkpoints import CheckpointError, inspect_checkpoint  # noqa: E402
from seg_node.models.conv import Gen2SegConv, default_config, load_conv  # noqa: E402
from seg_node.models.spec import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from seg_node.pipeline import Segmenter  # noqa: E402
from training.export_onnx import export_onnx  # noqa: E402
from tests.helpers.frames import camera_like_frame  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
# Three levels, so pad_multiple = 2^(3 − 1) = 4; ImageNet normalisation, so a spec that took SD's default
# mean/std instead of the config's would show.
WIDTHS, GROUPS, PAD = [4, 8, 8], 2, 4


def _config(widths: list[int] = WIDTHS, groups: int = GROUPS) -> dict:
    return {**default_config(widths, groups), "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD)}


def _network(seed: int = 0, widths: list[int] = WIDTHS, groups: int = GROUPS) -> Gen2SegConv:
    torch.manual_seed(seed)
    return Gen2SegConv(_config(widths, groups)).eval()


def _batch(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).uniform(-2, 2, (n, 3, h, w)).astype(np.float32))


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Gen2SegConv, Path]:
    folder = tmp_path_factory.mktemp("conv") / "conv"
    network = _network()
    network.save_pretrained(folder)
    return network, folder


@pytest.fixture
def conv_copy(saved: tuple[Gen2SegConv, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved[1], tmp_path / "conv"))


@pytest.fixture(scope="module")
def exported(saved: tuple[Gen2SegConv, Path]) -> Path:
    return export_onnx(saved[1], saved[1].parent / "conv.onnx")


# ------------------------------------------------------------------------------------------------ checkpoint folder


def test_the_recipe_config_is_the_default_model() -> None:
    # training/configs/conv_default.json (the default recipe's stage 1) is default_config(): 4 levels, 0.52 M parameters.
    config = json.loads((REPO / "training" / "configs" / "conv_default.json").read_text())
    assert config == default_config()
    network = Gen2SegConv(config)
    assert network.spec.pad_multiple == 8 and network.spec.mean == (0.5, 0.5, 0.5)
    assert round(sum(p.numel() for p in network.parameters()) / 1e6, 2) == 0.52


@pytest.mark.parametrize(("widths", "groups"), [([4, 8], 4), ([4, 8, 8], 2)])
def test_save_inspect_load_round_trip(tmp_path: Path, widths: list[int], groups: int) -> None:
    network = _network(1, widths, groups)
    network.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "gen2seg_conv"
    info = inspect_checkpoint(tmp_path / "m")
    assert info.kind == "conv" and info.path == tmp_path / "m"
    loaded = load_conv(tmp_path / "m")
    assert not loaded.training  # eval mode, as the runtime and the export expect
    x = _batch(2, 8, 12)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), network(x), rtol=0, atol=0)
    spec = loaded.spec
    assert spec.family == "conv" and spec.input_hw is None and spec.pad_multiple == 2 ** (len(widths) - 1)
    assert spec.mean == pytest.approx(IMAGENET_MEAN) and spec.std == pytest.approx(IMAGENET_STD)


def test_missing_weights_name_the_file(conv_copy: Path) -> None:
    (conv_copy / "model.safetensors").unlink()
    for call in (inspect_checkpoint, load_conv):
        with pytest.raises(CheckpointError, match=r"model\.safetensors: missing"):
            call(conv_copy)


@pytest.mark.parametrize(("change", "key"), [
    ({"widths": [4]}, "widths"),  # one level: no UNet
    ({"widths": [4, 0, 8]}, "widths"),
    ({"norm_groups": 3}, "norm_groups"),  # 3 divides none of 4, 8
    ({"image_mean": None}, "image_mean"),
    ({"image_std": [0.5, 0.5]}, "image_std"),
    ({"unshuffle": 0}, "unshuffle"),
    ({"unshuffle": 2.0}, "unshuffle"),
])
def test_bad_config_names_config_json(conv_copy: Path, change: dict, key: str) -> None:
    config = {**_config(), **change}
    config = {k: v for k, v in config.items() if v is not None}
    (conv_copy / "config.json").write_text(json.dumps(config))
    assert inspect_checkpoint(conv_copy).kind == "conv"  # the layout is complete; its contents are not
    with pytest.raises(CheckpointError, match=rf"config\.json: '{key}' must be"):
        load_conv(conv_copy)


@pytest.mark.parametrize("widths", [[4, 8, 16], [4, 8]])
def test_weights_of_another_config_name_the_weights(conv_copy: Path, widths: list[int]) -> None:
    # Same depth, other widths (mis-shaped tensors); one level fewer (tensors missing and left over).
    (conv_copy / "config.json").write_text(json.dumps(_config(widths, 4)))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: \d+ tensors missing, unexpected or mis-shaped"):
        load_conv(conv_copy)


def test_unreadable_weights_name_the_weights(conv_copy: Path) -> None:
    weights = conv_copy / "model.safetensors"
    data = weights.read_bytes()
    for broken in (data[: len(data) // 2], b"not a safetensors file at all"):
        weights.write_bytes(broken)
        with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot be read as safetensors"):
            load_conv(conv_copy)


def test_weights_not_loaded_from_the_folder_would_show(conv_copy: Path) -> None:
    """load_conv takes the folder's weights, not a fresh initialisation: perturbed weights change the output."""
    weights = load_file(conv_copy / "model.safetensors")
    weights["out.bias"] = weights["out.bias"] + 1.0
    save_file(weights, str(conv_copy / "model.safetensors"))
    x = _batch(1, 8, 8)
    with torch.no_grad():
        original = _network()(x)
        torch.testing.assert_close(load_conv(conv_copy)(x), original + 1.0, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------- the network


def test_coordinates_make_the_output_depend_on_position() -> None:
    network = _network()
    flat = torch.zeros(1, 3, 96, 96)  # a constant (mid-grey) image
    # The convolutions' zero padding alone varies the output near the borders; far inside, a shift by pad_multiple
    # leaves a translation-equivariant network's output unchanged, so only the coordinates can vary it there.
    with torch.no_grad():
        y = network(flat)
        inner_shift = (y[..., 40:56, 40:56] - y[..., 40:56, 44:60]).abs().max().item()
        network.inc[0].weight[:, 3:].zero_()  # the coordinate channels' input weights
        y_blind = network(flat)
        blind_shift = (y_blind[..., 40:56, 40:56] - y_blind[..., 40:56, 44:60]).abs().max().item()
    assert y.std().item() > 1e-3 and inner_shift > 1e-3
    assert blind_shift < 1e-5  # the comparison above measures the coordinates, not the borders


@pytest.mark.parametrize("hw", [(8, 12), (20, 16)])
def test_any_multiple_of_pad_runs_at_its_size_in_float32(saved: tuple[Gen2SegConv, Path], hw: tuple[int, int]) -> None:
    network, folder = saved
    x = _batch(2, *hw)
    with torch.no_grad():
        y = network(x)
        # bfloat16 weights: the output is still float32 (GroupNorm in float32), close to the fp32 network's.
        y16 = load_conv(folder, dtype=torch.bfloat16)(x)
    assert y.shape == (2, 3, *hw) and y.dtype == torch.float32 and torch.isfinite(y).all()
    assert (y[0] - y[1]).abs().mean().item() > 1e-3  # the output depends on the input
    assert y16.dtype == torch.float32 and y16.shape == y.shape
    assert (y16 - y).abs().max().item() <= 0.1 * y.abs().max().item()


def test_unshuffle_sees_detail_a_downscale_loses() -> None:
    torch.manual_seed(0)
    network = Gen2SegConv({**_config(), "unshuffle": 2}).eval()
    assert network.spec.pad_multiple == 2 * PAD  # the UNet runs at half the input's size
    x = _batch(1, 16, 24)
    # The same 2×2 block means, the pixels inside each block reordered: an area downscale cannot tell them apart.
    swapped = x.clone()
    swapped[..., 0::2, :], swapped[..., 1::2, :] = x[..., 1::2, :], x[..., 0::2, :]
    torch.testing.assert_close(torch.nn.functional.avg_pool2d(x, 2), torch.nn.functional.avg_pool2d(swapped, 2))
    with torch.no_grad():
        y, y_swapped = network(x), network(swapped)
    assert y.shape == (1, 3, 16, 24)  # colours at the input's own size
    assert (y - y_swapped).abs().mean().item() > 1e-3


def test_unshuffled_network_exports_and_runs_in_the_segmenter(tmp_path: Path) -> None:
    torch.manual_seed(1)
    network = Gen2SegConv({**_config(), "unshuffle": 2}).eval()
    network.save_pretrained(tmp_path / "conv")
    backend = create_backend(export_onnx(tmp_path / "conv", tmp_path / "conv.onnx"), "onnxruntime")
    assert backend.spec.pad_multiple == 2 * PAD
    for hw in ((8, 16), (24, 16)):
        x = _batch(1, *hw, seed=hw[0])
        with torch.no_grad():
            expected = network(x).numpy()
        got = backend.run(x.numpy())
        assert got.shape == (1, 3, *hw) and np.abs(got - expected).max() <= 1e-4 * max(1.0, float(np.abs(expected).max()))
    backend.close()
    with Segmenter(resolve_config(tmp_path / "conv.onnx", None, {"tracking.enabled": False})) as segmenter:
        result = segmenter.segment(camera_like_frame(240, 320))
        assert result.labels.shape == (240, 320) and 0 <= result.colors.min() and result.colors.max() <= 255


# ---------------------------------------------------------------------------------------------------------- export


def test_dynamic_onnx_matches_torch_at_two_sizes(saved: tuple[Gen2SegConv, Path], exported: Path) -> None:
    network, _ = saved
    backend = create_backend(exported, "onnxruntime")
    spec = backend.spec
    assert spec.family == "conv" and spec.input_hw is None and spec.pad_multiple == PAD
    assert spec.mean == pytest.approx(IMAGENET_MEAN) and spec.std == pytest.approx(IMAGENET_STD)
    for n, hw in ((2, (8, 12)), (1, (24, 16))):  # neither is the trace size (2·pad square)
        x = _batch(n, *hw, seed=n)
        with torch.no_grad():
            expected = network(x).numpy()
        got = backend.run(x.numpy())
        assert got.shape == expected.shape == (n, 3, *hw) and got.dtype == np.float32
        assert np.abs(got - expected).max() <= 1e-4 * max(1.0, float(np.abs(expected).max()))


def test_export_options_for_conv(saved: tuple[Gen2SegConv, Path], tmp_path: Path) -> None:
    folder = saved[1]
    with pytest.raises(ValueError, match="SD models only"):
        export_onnx(folder, tmp_path / "split.onnx", split=True)
    with pytest.raises(ValueError, match=f"multiples of {PAD}"):
        export_onnx(folder, tmp_path / "odd.onnx", height=10, width=12)
    assert not list(tmp_path.iterdir())  # a refused export writes nothing
    static = create_backend(export_onnx(folder, tmp_path / "static.onnx", height=8, width=12), "onnxruntime")
    assert static.spec.family == "conv" and static.spec.input_hw == (8, 12)
    assert static.run(_batch(1, 8, 12).numpy()).shape == (1, 3, 8, 12)


# -------------------------------------------------------------------------------------------------------- runtime


def test_segmenter_runs_the_export_at_two_frame_sizes(exported: Path) -> None:
    config = resolve_config(exported, None, {"tracking.enabled": False})
    with Segmenter(config) as segmenter:
        assert segmenter.spec.family == "conv"
        for hw in ((240, 320), (480, 640)):
            result = segmenter.segment(camera_like_frame(*hw))
            colors = result.colors
            assert result.labels.shape == hw and colors.shape == (*hw, 3)
            assert np.isfinite(colors).all() and colors.min() >= 0 and colors.max() <= 255
            assert colors.std() > 1.0  # the frame's content reaches the colours
            assert result.nonfinite_pixels == 0


def test_reference_mode_is_refused_for_conv(exported: Path) -> None:
    # There is no official conv pipeline for reference mode to reproduce.
    config = resolve_config(exported, None, {"tracking.enabled": False, "model.mode": "reference"})
    with pytest.raises(ValueError, match="conv"):
        with Segmenter(config) as segmenter:
            segmenter.segment(camera_like_frame(240, 320))


def test_auto_backend_of_a_conv_folder_is_torch(saved: tuple[Gen2SegConv, Path]) -> None:
    network, folder = saved
    x = _batch(1, 8, 8)
    with create_backend(folder, "auto") as backend:
        assert isinstance(backend, TorchBackend) and backend.spec.family == "conv"
        with torch.no_grad():
            np.testing.assert_array_equal(backend.run(x.numpy()), network(x).numpy())
