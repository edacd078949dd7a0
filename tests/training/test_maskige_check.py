"""maskige_check: masks through an SD model's VAE, scored by size and resolution; files written, bad input named."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from seg_node.processing.maskige import MaskigeCodec  # noqa: E402
from training.maskige_check import check, main, score_pieces  # noqa: E402
from training.sd_scratch import create_sd_checkpoint  # noqa: E402
from training.synthetic import SceneGenerator  # noqa: E402

TINY = {
    "vae": {"down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
            "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4, "latent_channels": 4,
            "mid_block_add_attention": False},
    "unet": {"in_channels": 4, "out_channels": 4, "down_block_types": ["DownBlock2D"] * 2,
             "up_block_types": ["UpBlock2D"] * 2, "block_out_channels": [16, 32], "layers_per_block": 1,
             "norm_num_groups": 8, "mid_block_type": "UNetMidBlock2D", "cross_attention_dim": 16},
}


class IdentityVAE:
    """A stand-in VAE whose round trip returns its input: what survives is only what resizing keeps."""

    config = SimpleNamespace(block_out_channels=[1])

    def encode(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: x))

    def decode(self, z: torch.Tensor, return_dict: bool = False) -> tuple[torch.Tensor]:
        return (z,)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_sd_checkpoint(TINY, tmp_path_factory.mktemp("sd") / "sd", seed=1)


def test_identity_round_trip_scores_one_and_downsampling_costs_thin_objects() -> None:
    scenes = [SceneGenerator(96, 128, seed=2).scene(i).labels for i in range(3)]
    labels = scenes[0]
    records = score_pieces(labels, MaskigeCodec().decode(MaskigeCodec().encode(labels)), MaskigeCodec().min_area)
    assert records and all(r["iou"] == 1.0 and r["boundary_f"] == 1.0 for r in records)
    results, examples = check(IdentityVAE(), scenes, [32, 128], {"fixed": MaskigeCodec()})
    full, low = results["fixed"]["128"], results["fixed"]["32"]
    assert full["all"]["iou"] == 1.0 and full["all"]["boundary_f"] == 1.0
    assert low["all"]["iou"] < full["all"]["iou"]
    assert [e["resolution"] for e in examples] == [32, 128] and examples[0]["decoded"].shape == (96, 128)


def test_merged_segments_score_below_one() -> None:
    labels = np.zeros((40, 40), np.int32)
    labels[5:35, 5:20], labels[5:35, 20:35] = 1, 2
    records = score_pieces(labels, (labels > 0).astype(np.uint16))
    assert len(records) == 2 and all(0.4 < r["iou"] < 0.6 for r in records)


def test_cli_writes_reports_for_a_tiny_sd(tiny_sd: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report"
    assert main(["--model", str(tiny_sd), "--resolutions", "32", "64", "--scenes", "2", "--size", "48x64",
                 "--shapes", "box,flat", "--fit", "--output", str(out)]) == 0
    report = json.loads((out / "maskige_check.json").read_text())
    assert set(report["results"]) == {"fixed", "fitted"} and report["resolutions"] == [32, 64]
    assert report["shapes"] == ["box", "flat"]
    for per_res in report["results"].values():
        for summary in per_res.values():
            assert summary["all"]["count"] > 0 and 0.0 <= summary["all"]["iou"] <= 1.0
    assert report["recommended_resolution"] in (32, 64)
    assert np.asarray(report["fitted_transform"]).shape == (4, 3)
    md = (out / "maskige_check.md").read_text()
    assert "| 64 |" in md and "maskige_check.png" in md
    for name in ("maskige_check.png", "maskige_roundtrip.png"):
        assert cv2.imread(str(out / name)) is not None
    printed = capsys.readouterr().out
    assert str(out / "maskige_check.json") in printed and "64 px: IoU" in printed


def test_bad_model_is_named(tmp_path: Path, tiny_mae_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--model", str(tmp_path / "nowhere"), "--output", str(tmp_path / "o")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["--model", str(tiny_mae_path), "--output", str(tmp_path / "o")]) == 2
    assert "needs an SD model" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
