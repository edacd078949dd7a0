"""ImgSyn's diffusion path: a ControlNet on the layout's maskige plus a local SD checkpoint, both tiny random-weight
models in their published layouts (save_pretrained), loaded with nothing downloaded."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from tests.training.test_maskige_check import TINY  # noqa: E402
from training.imgsyn import ControlNetRenderer, main, write_shard  # noqa: E402
from training.masksyn import Cutout, LayoutParams, MaskBank, compose_layout  # noqa: E402
from training.sd_scratch import create_sd_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("imgsyn")
    sd = create_sd_checkpoint(TINY, root / "sd", seed=3)
    unet = diffusers.UNet2DConditionModel.from_pretrained(str(sd), subfolder="unet", local_files_only=True)
    # The tiny VAE downsamples by 2, so the condition embedding does too (one stride-2 stage).
    controlnet = diffusers.ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16))
    controlnet.save_pretrained(root / "controlnet", safe_serialization=True)
    return root / "controlnet", sd


def bank() -> MaskBank:
    return MaskBank([Cutout(np.ones((8, 8), bool), np.full((8, 8, 3), 90, np.uint8), "test:0#1")])


def test_controlnet_renders_an_image_per_layout_reproducibly(weights: tuple[Path, Path]) -> None:
    renderer = ControlNetRenderer(*weights, steps=2, device="cpu")
    layout = compose_layout(bank(), LayoutParams(size=(32, 40), objects=(2, 3)), np.random.default_rng(0))
    a, b, c = renderer(layout, 1), renderer(layout, 1), renderer(layout, 2)
    assert a.shape == (32, 40, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)  # seeded per sample


def test_controlnet_shard_records_the_weights(weights: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "shard"
    assert main(["--output", str(out), "--count", "2", "--bank-frames", "2", "--size", "32x40", "--renderer",
                 "controlnet", "--controlnet", str(weights[0]), "--sd", str(weights[1]), "--steps", "1"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["weights"] == {"controlnet": str(weights[0]), "sd": str(weights[1])}
    assert [s["renderer"] for s in manifest["samples"]] == ["controlnet"] * 2
    assert cv2.imread(str(out / manifest["samples"][0]["image"])).shape == (32, 40, 3)


def test_missing_weights_are_named(weights: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--output", str(tmp_path / "o"), "--renderer", "controlnet", "--controlnet", str(tmp_path),
                 "--sd", str(weights[1])]) == 2
    assert str(tmp_path / "config.json") in capsys.readouterr().err
    with pytest.raises(ValueError, match="needs --controlnet"):
        write_shard(tmp_path / "o", bank(), LayoutParams(size=(32, 40)), 1, "controlnet")
