"""export_onnx --int8 (training.onnx_int8): a conv-family graph quantised with ONNX Runtime's static QDQ quantiser,
run by the ONNX backend and the Segmenter, refused where it does not apply."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from seg_node.backends import create_backend  # noqa: E402
from seg_node.config import ModelConfig, SegmenterConfig  # noqa: E402
from seg_node.models.conv import Gen2SegConv, default_config  # noqa: E402
from seg_node.models.onnx_format import ExportRecord, read_onnx_metadata  # noqa: E402
from seg_node.pipeline import Segmenter  # noqa: E402
from training import export_onnx as export_cli  # noqa: E402
from training.export_onnx import export_onnx  # noqa: E402
from tests.helpers.frames import camera_like_frame  # noqa: E402


@pytest.fixture(scope="module")
def conv_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("int8") / "conv"
    Gen2SegConv(default_config([8, 16, 16], 4)).eval().save_pretrained(folder)
    (folder / "segmenter.yaml").write_text("model:\n  processing_resolution: 64\n")
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("calibration")
    for i in range(6):
        cv2.imwrite(str(folder / f"frame_{i}.png"), camera_like_frame(96, 128, i))
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def exports(conv_folder: Path, images: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("exports")
    return (export_onnx(conv_folder, out / "fp32.onnx"),
            export_onnx(conv_folder, out / "int8.onnx", int8=True, int8_calibration=images))


def test_int8_export_is_a_qdq_graph_that_says_so(exports: tuple[Path, Path]) -> None:
    fp32, int8 = exports
    model = onnx.load(str(int8))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert len(int8_weights) == sum(n.op_type == "Conv" for n in onnx.load(str(fp32)).graph.node)
    meta = read_onnx_metadata(int8)
    assert ExportRecord.from_metadata(meta).precision == "int8"
    # The carried post-processing and spec are the fp32 file's.
    assert {k: v for k, v in meta.items() if k != "seg_node.export"} == \
        {k: v for k, v in read_onnx_metadata(fp32).items() if k != "seg_node.export"}
    # Graph IO stays float32, with dynamic H and W.
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.type.tensor_type.elem_type == out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim][2:] == ["height", "width"]


def test_int8_runs_in_the_segmenter_close_to_fp32(exports: tuple[Path, Path]) -> None:
    fp32, int8 = exports
    backend = create_backend(int8, threads=1)
    assert "int8" in backend.describe()
    backend.close()
    frame = camera_like_frame(120, 160, 99)  # not a calibration frame; a size the graph was not calibrated at
    maps = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        with Segmenter(SegmenterConfig(model=ModelConfig(path=str(path), processing_resolution=64))) as seg:
            maps[name] = seg.color_maps([frame])[0].colors
            assert len(seg.segment(frame).segments) >= 0
    a, b = maps["fp32"], maps["int8"]
    assert a.shape == b.shape == (120, 160, 3)
    # Quantisation noise, not a different picture: within a few colour units, strongly correlated.
    assert float(np.abs(a - b).mean()) < 0.1 * float(a.std())
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99


def test_synthetic_calibration_by_default_through_the_cli(conv_folder: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    out = tmp_path / "int8.onnx"
    assert export_cli.main(["--model", str(conv_folder), "--output", str(out), "--int8", "--int8-frames", "3",
                            "--int8-shapes", "box", "cable"]) == 0
    assert f"wrote {out.resolve()}" in capsys.readouterr().out
    # At the network size of a 480×640 frame under the model's processing resolution (64).
    assert "activation ranges from 3 frames" in caplog.text and "at 48×64" in caplog.text
    assert ExportRecord.from_metadata(read_onnx_metadata(out)).precision == "int8"


def test_int8_is_refused_where_it_does_not_apply(conv_folder: Path, tiny_mae_path: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="conv-family models only.*MAE"):
        export_onnx(tiny_mae_path, tmp_path / "mae.onnx", int8=True)
    with pytest.raises(ValueError, match="--int8 and --fp16 exclude each other"):
        export_onnx(conv_folder, tmp_path / "both.onnx", int8=True, fp16=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_cli.main(["--model", str(conv_folder), "--output", str(tmp_path / "x.onnx"), "--int8",
                            "--int8-calibration", str(empty)]) == 1
    assert f"{empty}: no calibration images" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
