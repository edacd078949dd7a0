"""export_onnx → OnnxBackend against the torch networks on the same weights (tiny SD and MAE checkpoints)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from seg_node.backends.base import BackendError, MissingDependencyError  # noqa: E402
from seg_node.backends.onnx_backend import OnnxBackend  # noqa: E402
from seg_node.models.checkpoints import CheckpointError  # noqa: E402
from seg_node.models.mae import load_mae  # noqa: E402
from seg_node.models.sd import load_sd  # noqa: E402
from seg_node.models.onnx_format import SPEC_KEY  # noqa: E402
from seg_node.models.spec import ModelSpec  # noqa: E402
from training import export_onnx as export_module  # noqa: E402
from training.export_onnx import export_onnx, main  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
# HF's random_masking exports as these even at mask_ratio 0 (docs/design.md, "Export: ONNX and TensorRT").
RANDOM_OPS = {"RandomUniformLike", "RandomUniform", "RandomNormal", "RandomNormalLike", "TopK", "GatherElements"}


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def sd_net(tiny_sd_path: Path):
    return load_sd(tiny_sd_path)


@pytest.fixture(scope="module")
def mae_net(tiny_mae_path: Path):
    return load_mae(tiny_mae_path)


@pytest.fixture(scope="module")
def sd_dynamic(tiny_sd_path: Path, out_dir: Path) -> Path:
    return export_onnx(tiny_sd_path, out_dir / "sd_dynamic.onnx")


@pytest.fixture(scope="module")
def sd_static(tiny_sd_path: Path, out_dir: Path) -> Path:
    return export_onnx(tiny_sd_path, out_dir / "sd_64.onnx", height=64, width=64)


@pytest.fixture(scope="module")
def mae_onnx(tiny_mae_path: Path, out_dir: Path) -> Path:
    return export_onnx(tiny_mae_path, out_dir / "mae.onnx")


def _batch(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    # Normalised camera images stay within a few units of zero.
    return np.random.default_rng(seed).uniform(-2, 2, (n, 3, h, w)).astype(np.float32)


def _torch_run(net, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def _assert_close(ours: np.ndarray, ref: np.ndarray, label: str) -> None:
    diff = float(np.abs(ours - ref).max())
    print(f"{label}: ORT vs torch max abs diff {diff:.3g} (max |torch| {np.abs(ref).max():.3g})")
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    # fp32 kernels differ in summation order; the random tiny SD VAE amplifies that with outputs up to ~5.
    assert diff <= 1e-4 * max(1.0, float(np.abs(ref).max()))


def test_sd_dynamic_matches_torch(sd_dynamic: Path, sd_net) -> None:
    backend = OnnxBackend(sd_dynamic)
    assert backend.name == "onnxruntime" and backend.spec == sd_net.spec and backend.spec.input_hw is None
    for n, h, w in ((1, 64, 64), (2, 64, 96), (1, 96, 32)):
        x = _batch(n, h, w)
        _assert_close(backend.run(x), _torch_run(sd_net, x), f"SD dynamic {n}×{h}×{w}")


def test_sd_static_matches_torch(sd_static: Path, sd_net) -> None:
    backend = OnnxBackend(sd_static)
    assert backend.spec.input_hw == (64, 64) and backend.spec.pad_multiple == sd_net.spec.pad_multiple
    x = _batch(2, 64, 64, seed=1)
    _assert_close(backend.run(x), _torch_run(sd_net, x), "SD static 64×64")
    with pytest.raises(BackendError, match=r"1×3×64×96 does not fit the graph's input \?×3×64×64"):
        backend.run(_batch(1, 64, 96))


def test_mae_matches_torch_without_random_ops(mae_onnx: Path, mae_net) -> None:
    backend = OnnxBackend(mae_onnx, threads=1)
    assert backend.spec == mae_net.spec
    x = _batch(3, 32, 32)
    ours = backend.run(x)
    _assert_close(ours, _torch_run(mae_net, x), "MAE")
    assert np.array_equal(ours, backend.run(x))
    ops = {node.op_type for node in onnx.load(str(mae_onnx)).graph.node}
    assert not ops & RANDOM_OPS, f"random/shuffle ops in the MAE graph: {ops & RANDOM_OPS}"


def test_graph_io_and_metadata_round_trip(sd_dynamic: Path, sd_static: Path, mae_onnx: Path, sd_net, mae_net) -> None:
    def io(model: onnx.ModelProto) -> list[list[int | str]]:
        return [[d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
                for v in (*model.graph.input, *model.graph.output)]

    expected = {
        sd_dynamic: (sd_net.spec, ["batch", 3, "height", "width"]),
        sd_static: (ModelSpec("sd", (64, 64), sd_net.spec.pad_multiple, sd_net.spec.mean, sd_net.spec.std), ["batch", 3, 64, 64]),
        mae_onnx: (mae_net.spec, ["batch", 3, 32, 32]),
    }
    for path, (spec, dims) in expected.items():
        model = onnx.load(str(path))
        meta = {p.key: p.value for p in model.metadata_props}
        assert ModelSpec.from_json(meta[SPEC_KEY]) == spec
        assert [i.name for i in model.graph.input] == ["images"] and [o.name for o in model.graph.output] == ["colors"]
        assert io(model) == [dims, dims]
        assert all(t.data_type == onnx.TensorProto.FLOAT for t in model.graph.initializer if t.dims)


def test_external_data(tiny_mae_path: Path, tmp_path: Path, mae_net, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export_module, "EXTERNAL_DATA_THRESHOLD", 0)
    path = export_onnx(tiny_mae_path, tmp_path / "mae_ext.onnx")
    assert (tmp_path / "mae_ext.onnx.data").stat().st_size > path.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mae_ext.onnx", "mae_ext.onnx.data"]
    x = _batch(1, 32, 32)
    _assert_close(OnnxBackend(path).run(x), _torch_run(mae_net, x), "MAE external data")


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"this is not a protobuf" * 7)
    with pytest.raises(BackendError, match=r"broken\.onnx: onnxruntime cannot load"):
        OnnxBackend(path)
    with pytest.raises(BackendError, match=r"missing\.onnx: ONNX model file does not exist"):
        OnnxBackend(tmp_path / "missing.onnx")


def _unrelated_model(path: Path, metadata: str | None = None) -> Path:
    h = onnx.helper
    x = h.make_tensor_value_info("images", onnx.TensorProto.FLOAT, ["n", 3, 8, 8])
    y = h.make_tensor_value_info("colors", onnx.TensorProto.FLOAT, ["n", 3, 8, 8])
    model = h.make_model(h.make_graph([h.make_node("Relu", ["images"], ["colors"])], "unrelated", [x], [y]),
                         opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata is not None:
        model.metadata_props.add(key=SPEC_KEY, value=metadata)
    onnx.save_model(model, str(path))
    return path


def test_unrelated_onnx(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match=r"plain\.onnx: no 'seg_node\.spec' entry .*not exported by export_onnx"):
        OnnxBackend(_unrelated_model(tmp_path / "plain.onnx"))
    with pytest.raises(BackendError, match=r"bad\.onnx: malformed 'seg_node\.spec' metadata"):
        OnnxBackend(_unrelated_model(tmp_path / "bad.onnx", metadata='{"family": "unet"}'))


def test_wrong_batch_shape(mae_onnx: Path, sd_dynamic: Path) -> None:
    mae = OnnxBackend(mae_onnx)
    with pytest.raises(BackendError, match=r"1×3×32×31 does not fit the graph's input \?×3×32×32"):
        mae.run(_batch(1, 32, 31))
    with pytest.raises(BackendError, match=r"N×3×H×W"):
        mae.run(np.zeros((3, 32, 32), np.float32))
    with pytest.raises(BackendError, match=r"must be multiples of 32"):
        OnnxBackend(sd_dynamic).run(_batch(1, 64, 80))
    mae.close()
    with pytest.raises(BackendError, match="closed"):
        mae.run(_batch(1, 32, 32))


def test_device_and_threads(mae_onnx: Path) -> None:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(BackendError, match=r"no CUDAExecutionProvider \(available: .*CPUExecutionProvider"):
            OnnxBackend(mae_onnx, device="cuda")
    with pytest.raises(BackendError, match="invalid device"):
        OnnxBackend(mae_onnx, device="tpu")
    with pytest.raises(BackendError, match="threads"):
        OnnxBackend(mae_onnx, threads=-1)
    assert "2 threads" in OnnxBackend(mae_onnx, threads=2).describe()


def test_missing_onnxruntime(mae_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependencyError, match=r"onnxruntime backend needs .*'onnxruntime'.*seg_node\[onnx\]"):
        OnnxBackend(mae_onnx)


def test_runs_without_importing_torch(mae_onnx: Path) -> None:
    code = ("import sys, numpy as np\n"
            "from seg_node.backends.onnx_backend import OnnxBackend\n"
            "assert 'torch' not in sys.modules, 'import pulled in torch'\n"
            f"out = OnnxBackend({str(mae_onnx)!r}).run(np.zeros((1, 3, 32, 32), np.float32))\n"
            "assert out.shape == (1, 3, 32, 32)\n"
            "assert 'torch' not in sys.modules, 'running pulled in torch'\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_export_rejects_bad_sizes(tiny_sd_path: Path, tiny_mae_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both --height and --width"):
        export_onnx(tiny_sd_path, tmp_path / "x.onnx", height=64)
    with pytest.raises(ValueError, match="multiples of 32"):
        export_onnx(tiny_sd_path, tmp_path / "x.onnx", height=64, width=80)
    with pytest.raises(ValueError, match="fixed input of 32×32"):
        export_onnx(tiny_mae_path, tmp_path / "x.onnx", height=64, width=64)
    with pytest.raises(CheckpointError, match="does not exist"):
        export_onnx(tmp_path / "nowhere", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_cli(tiny_mae_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "cli" / "mae.onnx"
    assert main(["--model", str(tiny_mae_path), "--output", str(target)]) == 0
    assert f"wrote {target}" in capsys.readouterr().out
    assert OnnxBackend(target).spec.family == "mae"
    assert main(["--model", str(tiny_mae_path), "--output", str(target), "--height", "64", "--width", "64"]) == 1
    assert "fixed input of 32×32" in capsys.readouterr().err
