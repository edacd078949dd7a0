"""Gen2SegMAE against transformers' ViTMAEForPreTraining and the official gen2seg MAE inference (docs/design.md, "Models and their output")."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from PIL import Image  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from seg_node.processing import model_io  # noqa: E402
from seg_node.models.checkpoints import CheckpointError  # noqa: E402
from seg_node.models.mae import Gen2SegMAE, load_mae  # noqa: E402

ViTMAEForPreTraining = transformers.ViTMAEForPreTraining
# transformers 5 without torchvision: the PIL processor, which is what 4.x's ViTImageProcessor was.
ViTImageProcessor = getattr(transformers, "ViTImageProcessorPil", transformers.ViTImageProcessor)


@pytest.fixture(scope="module")
def hf_model(tiny_mae_path: Path):
    return ViTMAEForPreTraining.from_pretrained(tiny_mae_path, local_files_only=True).eval()


@pytest.fixture
def mae_copy(tiny_mae_path: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_mae_path, tmp_path / "mae"))


def _images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _frames() -> list[np.ndarray]:
    """Camera-like uint8 frames of several sizes: smooth gradients, flat blocks, a little noise."""
    rng = np.random.default_rng(0)
    frames = []
    for h, w in ((48, 64), (20, 30), (32, 32)):
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], axis=-1)
        img[h // 4: h // 2, w // 3: 2 * w // 3] = rng.integers(0, 256, 3)
        img += rng.normal(0, 8, img.shape)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return frames


def _official_mae(folder: Path, rgbs: list[np.ndarray]) -> list[np.ndarray]:
    """inference_mae.py / gen2seg_mae_pipeline.py: PIL resize (bicubic default) → ViTImageProcessor →
    ViTMAEForPreTraining → unpatchify → per-sample (x + |min|) / (|max| + |min| + 1e-5) → ** 0.7 → ×255 → HWC."""
    processor = ViTImageProcessor.from_pretrained(folder)
    model = ViTMAEForPreTraining.from_pretrained(folder, local_files_only=True).eval()
    size = model.config.image_size
    pixel_values = processor(images=[Image.fromarray(rgb).resize((size, size)) for rgb in rgbs], return_tensors="pt").pixel_values
    with torch.no_grad():
        pred = model.unpatchify(model(pixel_values).logits)
    out = []
    for y in pred:
        lo, hi = y.min().abs(), y.max().abs()
        y = ((y + lo) / (hi + lo + 1e-5)) ** 0.7 * 255
        out.append(y.permute(1, 2, 0).numpy())
    return out


def test_matches_hf_at_mask_ratio_zero(tiny_mae_path: Path, hf_model) -> None:
    net = load_mae(tiny_mae_path)
    x = _images()
    with torch.no_grad():
        ours = net(x)
        theirs = hf_model.unpatchify(hf_model(x).logits)
    assert ours.dtype == torch.float32 and ours.shape == (3, 3, 32, 32)
    assert (ours - theirs).abs().max().item() <= 1e-4
    # Non-degenerate tiny weights: a spread of values, different per image.
    assert ours.std().item() > 0.05 and (ours[0] - ours[1]).abs().max().item() > 0.05


def test_unpatchify_matches_hf(tiny_mae_path: Path, hf_model) -> None:
    net = load_mae(tiny_mae_path)
    patches = torch.randn(2, 16, 8 * 8 * 3)
    assert torch.equal(net.unpatchify(patches), hf_model.unpatchify(patches))


def test_deterministic_while_hf_shuffles(tiny_mae_path: Path, hf_model) -> None:
    net = load_mae(tiny_mae_path)
    x = _images(2, seed=1)
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
        torch.manual_seed(1)
        first = hf_model(x).ids_restore
        torch.manual_seed(2)
        second = hf_model(x).ids_restore
    assert not torch.equal(first, second), "HF's forward no longer shuffles tokens at mask_ratio 0"


def test_wraps_in_memory_model(hf_model) -> None:
    net = Gen2SegMAE(hf_model)
    assert net.spec.family == "mae" and net.spec.input_hw == (32, 32) and net.spec.pad_multiple == 8
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\)"):
        net(torch.zeros(1, 3, 64, 64))


def test_spec_from_folder(mae_copy: Path) -> None:
    pre = json.loads((mae_copy / "preprocessor_config.json").read_text())
    pre["image_mean"], pre["image_std"] = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    (mae_copy / "preprocessor_config.json").write_text(json.dumps(pre))
    spec = load_mae(mae_copy).spec
    assert (spec.input_hw, spec.pad_multiple, spec.mean, spec.std) == ((32, 32), 8, (0.5,) * 3, (0.25,) * 3)
    (mae_copy / "preprocessor_config.json").unlink()
    assert load_mae(mae_copy).spec.mean == (0.485, 0.456, 0.406)


def test_parity_with_official_pipeline(tiny_mae_path: Path) -> None:
    frames = _frames()
    official = _official_mae(tiny_mae_path, frames)
    net = load_mae(tiny_mae_path)
    batch, geoms = model_io.preprocess(frames, net.spec, mode="reference")
    with torch.no_grad():
        raw = net(torch.from_numpy(batch)).numpy()
    ours = model_io.reference_processing_output(raw, geoms, net.spec)
    diffs = [float(np.abs(a - b).max()) for a, b in zip(ours, official)]
    print(f"MAE reference-mode parity, max abs diff on 0..255 per frame: {diffs}")
    assert all(a.shape == (32, 32, 3) for a in ours)
    assert max(diffs) <= 1e-2


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_reduced_precision_keeps_norms_fp32(tiny_mae_path: Path, dtype: str) -> None:
    ref = load_mae(tiny_mae_path)
    net = load_mae(tiny_mae_path, dtype=getattr(torch, dtype))
    assert net.dtype == getattr(torch, dtype)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(m.weight.dtype == torch.float32 for m in norms)
    x = _images()
    with torch.no_grad():
        out, expected = net(x), ref(x)
    assert out.dtype == torch.float32
    assert (out - expected).abs().max().item() < 0.02 * (expected.max() - expected.min()).item()


def _legacy_key(key: str) -> str:
    """transformers 5 parameter name → the 4.x name the published gen2seg checkpoint uses."""
    for new, old in ((r"^vit\.layers\.", "vit.encoder.layer."), (r"\.attention\.q_proj\.", ".attention.attention.query."),
                     (r"\.attention\.k_proj\.", ".attention.attention.key."), (r"\.attention\.v_proj\.", ".attention.attention.value."),
                     (r"\.attention\.o_proj\.", ".attention.output.dense."), (r"\.mlp\.fc1\.", ".intermediate.dense."),
                     (r"\.mlp\.fc2\.", ".output.dense.")):
        key = re.sub(new, old, key)
    return key


def test_loads_transformers4_checkpoint(tiny_mae_path: Path, mae_copy: Path) -> None:
    weights = mae_copy / "model.safetensors"
    tensors = load_file(weights)
    legacy = {_legacy_key(k): v for k, v in tensors.items()}
    assert "vit.encoder.layer.0.attention.attention.query.weight" in legacy
    save_file(legacy, weights, metadata={"format": "pt"})
    x = _images()
    with torch.no_grad():
        assert torch.equal(load_mae(mae_copy)(x), load_mae(tiny_mae_path)(x))


def _edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))


def test_config_without_patch_size(mae_copy: Path) -> None:
    _edit_config(mae_copy, patch_size=None)
    with pytest.raises(CheckpointError, match=r"config\.json.*patch_size"):
        load_mae(mae_copy)


def test_image_size_not_a_multiple_of_patch_size(mae_copy: Path) -> None:
    _edit_config(mae_copy, image_size=30)
    with pytest.raises(CheckpointError, match=r"config\.json.*multiples of pad_multiple 8"):
        load_mae(mae_copy)


def test_wrong_model_type(mae_copy: Path) -> None:
    _edit_config(mae_copy, model_type="vit")
    with pytest.raises(CheckpointError, match=r"config\.json.*vit_mae"):
        load_mae(mae_copy)


def test_missing_weights(mae_copy: Path) -> None:
    (mae_copy / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no weights file"):
        load_mae(mae_copy)


def test_corrupt_weights(mae_copy: Path) -> None:
    (mae_copy / "model.safetensors").write_bytes(b"\x00not a safetensors file" * 10)
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_mae(mae_copy)


def test_incomplete_weights(mae_copy: Path) -> None:
    tensors = load_file(mae_copy / "model.safetensors")
    del tensors["decoder.decoder_pred.weight"]
    save_file(tensors, mae_copy / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*decoder\.decoder_pred\.weight"):
        load_mae(mae_copy)


def test_malformed_preprocessor_config(mae_copy: Path) -> None:
    (mae_copy / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"preprocessor_config\.json"):
        load_mae(mae_copy)
    (mae_copy / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5, 0.5], "image_std": [1, 1, 1]}))
    with pytest.raises(CheckpointError, match=r"preprocessor_config\.json: 'image_mean' must be 3 numbers"):
        load_mae(mae_copy)
    (mae_copy / "preprocessor_config.json").write_text(json.dumps({"image_std": [0.2, 0, 0.2]}))
    with pytest.raises(CheckpointError, match=r"preprocessor_config\.json: 'image_std' must be positive"):
        load_mae(mae_copy)


def test_sd_folder_is_not_mae(tiny_sd_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"SD model, not an MAE folder"):
        load_mae(tiny_sd_path)
