"""export_onnx beyond the single fp32 graph: the SD split into a three-graph chain, fp16, deployment profiles,
dynamic shapes, external data per stage, and the runtime's chain loading (tiny SD and MAE checkpoints).

Parity: ONNX Runtime against the torch networks on the same weights, fp32 within 1e-4 (relative to the output's
magnitude, as tests/backends/test_onnx_backend.py); fp16 within the tolerances below, with the reasons next to them.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from seg_node.backends import create_backend  # noqa: E402
from seg_node.backends.base import BackendError  # noqa: E402
from seg_node.backends.onnx_backend import OnnxBackend  # noqa: E402
from seg_node.models.onnx_format import (  # noqa: E402
    CHAIN_KEY,
    EXPORT_KEY,
    SPEC_KEY,
    ChainManifest,
    OnnxFormatError,
    read_onnx_metadata,
)
from seg_node.processing.model_io import FrameGeometry, postprocess  # noqa: E402
from seg_node.models.mae import load_mae  # noqa: E402
from seg_node.models.sd import load_sd  # noqa: E402
from seg_node.models.spec import ModelSpec  # noqa: E402
from training import export_onnx as export_module  # noqa: E402
from training.export_onnx import PROFILES, _export_plan, export_onnx, main, parse_profile  # noqa: E402
from training.onnx_fp16 import convert_to_fp16  # noqa: E402

STAGES = ["vae_encoder", "unet", "vae_decoder"]
# fp16 tolerances, as max |ORT fp16 − torch fp32| / max(1, max |torch|). Weights and the activations between
# float16 nodes are rounded to float16 (11-bit mantissa, ~5e-4 relative); the random tiny SD VAE/UNet amplifies
# that through ~60 conv/norm layers (measured ≈1e-2), the 3-block ViT-MAE much less (measured ≈5e-4).
FP16_TOL = {"sd": 3e-2, "mae": 3e-3}


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def sd_net(tiny_sd_path: Path):
    return load_sd(tiny_sd_path)


@pytest.fixture(scope="module")
def mae_net(tiny_mae_path: Path):
    return load_mae(tiny_mae_path)


@pytest.fixture(scope="module")
def sd_split(tiny_sd_path: Path, out_dir: Path) -> Path:
    return export_onnx(tiny_sd_path, out_dir / "sd.onnx", split=True)


@pytest.fixture(scope="module")
def sd_single(tiny_sd_path: Path, out_dir: Path) -> Path:
    return export_onnx(tiny_sd_path, out_dir / "single.onnx")


@pytest.fixture(scope="module")
def sd_fp16(tiny_sd_path: Path, out_dir: Path) -> Path:
    return export_onnx(tiny_sd_path, out_dir / "sd16.onnx", fp16=True, profile="64x96")


@pytest.fixture(scope="module")
def mae_fp16(tiny_mae_path: Path, out_dir: Path) -> Path:
    return export_onnx(tiny_mae_path, out_dir / "mae16.onnx", fp16=True)


def _batch(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-2, 2, (n, 3, h, w)).astype(np.float32)


def _torch_run(net, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def _rel_diff(ours: np.ndarray, ref: np.ndarray) -> float:
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    return float(np.abs(ours - ref).max()) / max(1.0, float(np.abs(ref).max()))


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


# ------------------------------------------------------------------------------------------------ split


def test_split_writes_three_chained_graphs(sd_split: Path, out_dir: Path) -> None:
    assert sd_split == out_dir / "sd.vae_encoder.onnx"
    assert not (out_dir / "sd.onnx").exists()
    models = {s: onnx.load(str(out_dir / f"sd.{s}.onnx")) for s in STAGES}
    io = {s: ([i.name for i in m.graph.input], [o.name for o in m.graph.output]) for s, m in models.items()}
    assert io == {"vae_encoder": (["images"], ["latents"]), "unet": (["latents"], ["noise_pred"]),
                  "vae_decoder": (["latents", "noise_pred"], ["colors"])}
    manifests = set()
    for stage, model in models.items():
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta == read_onnx_metadata(out_dir / f"sd.{stage}.onnx")
        assert ModelSpec.from_json(meta[SPEC_KEY]).family == "sd"
        record = json.loads(meta[EXPORT_KEY])
        assert record["stage"] == stage and record["precision"] == "fp32" and record["dynamic"]
        manifests.add(meta[CHAIN_KEY])
    (text,) = manifests  # every stage carries the same manifest
    manifest = ChainManifest.from_json(text, sd_split)
    assert [(s.name, s.file) for s in manifest.stages] == [(s, f"sd.{s}.onnx") for s in STAGES]
    dims = [[d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in models["unet"].graph.input]
    assert dims == [["batch", 4, "latent_height", "latent_width"]]
    # The UNet graph carries t = 999 and the text context as constants: no time or text inputs, no text encoder.
    assert not any("text" in t.name for t in models["unet"].graph.initializer)


def test_split_matches_torch_and_single_graph(sd_split: Path, sd_single: Path, sd_net) -> None:
    chain, single = OnnxBackend(sd_split), OnnxBackend(sd_single)
    assert chain.stage_names == STAGES and chain.spec == sd_net.spec
    assert "3 stages: vae_encoder, unet, vae_decoder" in chain.describe()
    for n, h, w in ((1, 64, 64), (2, 64, 96)):
        x = _batch(n, h, w, seed=h + w)
        ref = _torch_run(sd_net, x)
        ours = chain.run(x)
        diff = _rel_diff(ours, ref)
        print(f"SD split {n}×{h}×{w}: ORT chain vs torch max rel diff {diff:.3g}")
        assert diff <= 1e-4
        assert float(np.abs(ours - single.run(x)).max()) <= 1e-5 * max(1.0, float(np.abs(ref).max()))
    # The decoder stage's output is raw: normalisation is the shared numpy post-processing.
    assert float(ours.min()) < 0.0


def test_any_stage_is_a_model_path(sd_split: Path, out_dir: Path) -> None:
    x = _batch(1, 64, 64)
    expected = OnnxBackend(sd_split).run(x)
    backend = create_backend(out_dir / "sd.unet.onnx", "auto")
    assert backend.name == "onnxruntime" and backend.stage_names == STAGES
    np.testing.assert_array_equal(backend.run(x), expected)


def test_chain_integrity_errors(sd_split: Path, out_dir: Path, tmp_path: Path) -> None:
    for stage in STAGES[:2]:
        shutil.copy(out_dir / f"sd.{stage}.onnx", tmp_path)
    with pytest.raises(BackendError, match=r"sd\.vae_decoder\.onnx: missing; sd\.vae_encoder\.onnx is one stage"):
        OnnxBackend(tmp_path / "sd.vae_encoder.onnx")
    # A decoder from another export run (another chain id): refused, because the stages may not fit together.
    decoder = onnx.load(str(out_dir / "sd.vae_decoder.onnx"))
    for prop in decoder.metadata_props:
        if prop.key == CHAIN_KEY:
            prop.value = prop.value.replace(json.loads(prop.value)["id"], "f" * 32)
    onnx.save(decoder, str(tmp_path / "sd.vae_decoder.onnx"))
    with pytest.raises(BackendError, match=r"belongs to another export \(chain id f{32}, expected chain id"):
        OnnxBackend(tmp_path / "sd.vae_encoder.onnx")
    bad = [
        ('{"format": 1, "id": "x", "stages": []}', "lists no stages"),
        ('{"format": 2, "id": "x", "stages": []}', "format 2"),
        ('{"format": 1, "id": "x", "stages": [{"name": "a", "file": "a.onnx", "inputs": ["latents"], "outputs": '
         '["colors"]}]}', r"needs \['latents'\], which no earlier stage produces"),
        ('{"format": 1, "id": "x", "stages": [{"name": "a", "file": "../a.onnx", "inputs": ["images"], "outputs": '
         '["colors"]}]}', "same folder"),
        ('{"format": 1, "id": "x", "stages": [{"name": "a", "file": "a.onnx", "inputs": ["images"], "outputs": '
         '["latents"]}]}', "does not produce 'colors'"),
    ]
    for text, message in bad:
        with pytest.raises(OnnxFormatError, match=message):
            ChainManifest.from_json(text, Path("m.onnx"))


# -------------------------------------------------------------------------------------------------- fp16


def test_sd_fp16_parity_and_fp32_islands(sd_fp16: Path, sd_single: Path, sd_net) -> None:
    backend = OnnxBackend(sd_fp16)
    assert backend.precision == "fp16" and backend.spec.input_hw == (64, 96) and "fp16" in backend.describe()
    x = _batch(2, 64, 96, seed=3)
    ref = _torch_run(sd_net, x)
    ours = backend.run(x)
    diff = _rel_diff(ours, ref)
    print(f"SD fp16 (ORT CPU) vs torch fp32: max rel diff {diff:.3g}, mean abs diff {np.abs(ours - ref).mean():.3g}")
    assert diff <= FP16_TOL["sd"]
    # What a robot sees: the 0..255 colour maps after the shared post-processing.
    geo = [FrameGeometry((64, 96), (64, 96))] * 2
    maps16 = [m.colors for m in postprocess(ours, geo, backend.spec)]
    maps32 = [m.colors for m in postprocess(ref, geo, backend.spec)]
    color_diff = max(float(np.abs(a - b).max()) for a, b in zip(maps16, maps32))
    print(f"SD fp16 colour maps: max diff {color_diff:.3g} of 255")
    assert color_diff <= 255 * FP16_TOL["sd"]

    model = onnx.load(str(sd_fp16))
    types = _types(model)
    F16, F32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    assert [types[v.name] for v in (*model.graph.input, *model.graph.output)] == [F32, F32]  # IO stays float32
    by_op: dict[str, set[int]] = {}
    for node in model.graph.node:
        if node.op_type in ("Softmax", "InstanceNormalization", "LayerNormalization", "Conv", "Gemm"):
            by_op.setdefault(node.op_type, set()).add(types[node.input[0]])
    assert by_op["Softmax"] == by_op["InstanceNormalization"] == by_op["LayerNormalization"] == {F32}
    assert by_op["Conv"] == {F16}
    # Attention scores: the MatMuls on either side of every Softmax compute in float32.
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type == "Softmax":
            score = producer[node.input[0]]
            while score.op_type != "MatMul":
                score = producer[score.input[0]]
            assert {types[i] for i in score.input} == {F32}
    weights = [t for t in model.graph.initializer if len(t.dims) >= 2]
    assert sum(t.data_type == F16 for t in weights) / len(weights) > 0.8
    fp32_bytes = sum(t.ByteSize() for t in onnx.load(str(sd_single)).graph.initializer)
    assert sum(t.ByteSize() for t in model.graph.initializer) < 0.6 * fp32_bytes


def test_mae_fp16_parity(mae_fp16: Path, mae_net, tiny_mae_path: Path) -> None:
    backend = OnnxBackend(mae_fp16)
    x = _batch(3, 32, 32, seed=4)
    ref = _torch_run(mae_net, x)
    diff = _rel_diff(backend.run(x), ref)
    print(f"MAE fp16 (ORT CPU) vs torch fp32: max rel diff {diff:.3g}")
    assert diff <= FP16_TOL["mae"]
    record = json.loads(read_onnx_metadata(mae_fp16)[EXPORT_KEY])
    assert record["precision"] == "fp16" and record["io"] == {"images": ["batch", 3, 32, 32], "colors": ["batch", 3, 32, 32]}


def test_convert_to_fp16_on_a_hand_built_graph() -> None:
    """Schema-driven operand typing (Resize scales stay float32), attention and norm islands, the output Cast,
    clamping, and a graph that passes onnx's strict type check."""
    h = onnx.helper
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 8)).astype(np.float32)
    w[0, 0] = 1e6  # beyond float16: clamped
    inits = [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(np.float32(0.35), "scale"),
             onnx.numpy_helper.from_array(np.ones(8, np.float32), "gamma"),
             onnx.numpy_helper.from_array(np.zeros(8, np.float32), "beta"),
             onnx.numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    nodes = [
        h.make_node("MatMul", ["x", "w"], ["q"]),                      # float16
        h.make_node("MatMul", ["q", "q_t"], ["s"]),                    # attention scores: float32
        h.make_node("Transpose", ["q"], ["q_t"], perm=[0, 1, 3, 2]),
        h.make_node("Mul", ["s", "scale"], ["s2"]),                    # score scale: float32
        h.make_node("Softmax", ["s2"], ["p"], axis=-1),                # float32
        h.make_node("MatMul", ["p", "q"], ["a"]),                      # softmax · V: float32
        h.make_node("LayerNormalization", ["a", "gamma", "beta"], ["n"], axis=-1),
        h.make_node("Resize", ["n", "", "scales"], ["r"], mode="nearest"),
        h.make_node("Relu", ["r"], ["y"]),                             # float16, then Cast back for the output
    ]
    # topological order
    nodes = [nodes[0], nodes[2], nodes[1], *nodes[3:]]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 8, 8])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1, 16, 16])], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    x = rng.standard_normal((1, 1, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    report = convert_to_fp16(model)
    onnx.checker.check_model(model, full_check=True)
    types = _types(model)
    node = {n.output[0]: n for n in model.graph.node}
    F16, F32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    assert types["q"] == F16 and types["s"] == types["s2"] == types["p"] == types["a"] == types["n"] == F32
    assert types[node["r"].input[2]] == F32  # Resize scales: a concrete tensor(float) operand
    assert types[node["r"].input[0]] == F16 and node["y__fp16"].op_type == "Relu" and node["y"].op_type == "Cast"
    assert report.clamped_values == 1 and report.fp16_nodes == 4
    assert dict(report.fp32_nodes) == {"attention scores": 3, "attention softmax": 1, "normalisation": 1}
    out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert out.dtype == np.float32 and out.shape == ref.shape


# --------------------------------------------------------------------------------------- profiles, dynamic


def test_profiles_and_plans() -> None:
    assert PROFILES == {"480x640": (480, 640), "576x768": (576, 768), "224": (224, 224)}
    assert parse_profile("224") == (224, 224) and parse_profile("320x480") == (320, 480)
    with pytest.raises(ValueError, match="unknown profile 'vga'"):
        parse_profile("vga")
    sd2 = ModelSpec("sd", None, 64)
    # SD2 pads to 64: the 480×640 profile is a 512×640 graph the runtime edge-pads frames into.
    assert _export_plan(sd2, None, None, "480x640").spec.input_hw == (512, 640)
    assert _export_plan(sd2, None, None, "576x768").spec.input_hw == (576, 768)
    plan = _export_plan(sd2, None, None, None, dynamic=True)
    assert plan.dynamic and plan.spec.input_hw is None
    mae_h = ModelSpec("mae", (224, 224), 14)
    assert _export_plan(mae_h, None, None, "224").profile == "224"
    with pytest.raises(ValueError, match=r"fixed input of 224×224.*--profile 480x640"):
        _export_plan(mae_h, None, None, "480x640")
    with pytest.raises(ValueError, match="--dynamic applies to SD and conv models only"):
        _export_plan(mae_h, None, None, None, dynamic=True)
    with pytest.raises(ValueError, match="exclude each other"):
        _export_plan(sd2, 512, 640, "480x640")
    with pytest.raises(ValueError, match="exclude each other"):
        _export_plan(sd2, None, None, "480x640", dynamic=True)


def test_profile_export_is_static(sd_fp16: Path) -> None:
    meta = read_onnx_metadata(sd_fp16)
    record = json.loads(meta[EXPORT_KEY])
    assert record["profile"] == "64x96" and not record["dynamic"]
    assert record["io"]["images"] == ["batch", 3, 64, 96]
    assert ModelSpec.from_json(meta[SPEC_KEY]).input_hw == (64, 96)
    with pytest.raises(BackendError, match=r"1×3×64×64 does not fit the graph's input \?×3×64×96"):
        OnnxBackend(sd_fp16).run(_batch(1, 64, 64))


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_split_fp16_external_data(tiny_sd_path: Path, tiny_mae_path: Path, tmp_path: Path, sd_net,
                                     monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """export_onnx --split --fp16 --profile, with external data forced on every stage (as for a >2 GB UNet)."""
    monkeypatch.setattr(export_module, "EXTERNAL_DATA_THRESHOLD", 0)
    args = ["--model", str(tiny_sd_path), "--output", str(tmp_path / "sd.onnx"), "--split", "--fp16", "--profile", "64x64"]
    assert main(args) == 0
    out = capsys.readouterr().out
    path = tmp_path / "sd.vae_encoder.onnx"
    assert f"model path for the runtime: {path}" in out
    expected = [f"sd.{s}.onnx{ext}" for s in STAGES for ext in ("", ".data")]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(expected)
    assert [p.name for p in export_module.written_files(path)] == expected
    assert all(str(tmp_path / name) in out for name in expected)
    backend = OnnxBackend(path)
    assert backend.spec.input_hw == (64, 64) and backend.precision == "fp16"
    x = _batch(1, 64, 64, seed=5)
    diff = _rel_diff(backend.run(x), _torch_run(sd_net, x))
    print(f"SD fp16 split vs torch fp32: max rel diff {diff:.3g}")
    assert diff <= FP16_TOL["sd"]

    assert main(["--model", str(tiny_mae_path), "--output", str(tmp_path / "m.onnx"), "--dynamic"]) == 1
    assert "--dynamic applies to SD and conv models only" in capsys.readouterr().err
    assert main(["--model", str(tiny_mae_path), "--output", str(tmp_path / "m.onnx"), "--profile", "224"]) == 1
    assert "fixed input of 32×32" in capsys.readouterr().err
    assert main(["--model", str(tiny_mae_path), "--output", str(tmp_path / "m.onnx"), "--split"]) == 1
    assert "--split applies to SD models only" in capsys.readouterr().err
