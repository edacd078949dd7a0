"""The TensorRT engine cache: keys, names, sidecars, lookup, build-once, fail-with-reason, IO validation, hashing.

Pure Python with fake device facts: no GPU, no tensorrt, no torch.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from seg_node.backends.tensorrt.cache import (
    CACHE_FORMAT,
    HASH_MEMO,
    KEY_FIELDS,
    BuildResult,
    DeviceFacts,
    EngineCache,
    EngineCacheError,
    EngineIOError,
    EngineKey,
    TensorIO,
    calibration_digest,
    check_prebuilt,
    default_cache_dir,
    io_differences,
    onnx_digest,
    read_sidecar,
    resolve_engine,
    sidecar_path,
    validate_io,
)

REPO = Path(__file__).resolve().parents[2]
ORIN = DeviceFacts("Orin", "8.7", "10.3.0", "12.6")
IO = (TensorIO("images", "input", (-1, 3, 224, 224), "float32"), TensorIO("colors", "output", (-1, 3, 224, 224), "float32"))


def key(**changes) -> EngineKey:
    base = EngineKey.for_device(ORIN, precision="fp16", input_shape=(1, 3, 224, 224), onnx_sha256="a" * 64)
    return dataclasses.replace(base, **changes)


class Builder:
    """Counts builds; returns engine bytes that name the key's digest."""

    def __init__(self, io=IO, delay: float = 0.0) -> None:
        self.count = 0
        self.io = io
        self.delay = delay
        self._lock = threading.Lock()

    def __call__(self) -> BuildResult:
        with self._lock:
            self.count += 1
        time.sleep(self.delay)
        return BuildResult(b"engine-bytes-%d" % self.count, self.io, 12.5, {"fp32_layers": 3})


# ------------------------------------------------------------------------------------------------- keys


def test_key_fields_and_file_name() -> None:
    k = key(dla_core=1, workspace_mb=1024)
    assert KEY_FIELDS == ("gpu_name", "compute_capability", "trt_version", "precision", "input_shape", "onnx_sha256",
                          "dla_core", "workspace_mb", "calibration")
    name = k.file_name("gen2seg-mae")
    assert name.startswith("gen2seg-mae.Orin.sm87.trt10.3.0.fp16.1x3x224x224.dla1.") and name.endswith(".engine")
    assert k.digest()[:12] in name
    assert EngineKey(gpu_name="NVIDIA GeForce RTX 4090 / PCIe", compute_capability="8.9", trt_version="10.7.0",
                     precision="fp32", input_shape=(2, 3, 576, 768), onnx_sha256="b" * 64).file_name("sd.unet") \
        .startswith("sd.unet.NVIDIA-GeForce-RTX-4090-PCIe.sm89.trt10.7.0.fp32.2x3x576x768.")


def test_every_field_changes_the_digest_and_round_trips() -> None:
    k = key()
    variants = {"gpu_name": "Xavier", "compute_capability": "7.2", "trt_version": "10.7.0", "precision": "int8",
                "input_shape": (1, 3, 480, 640), "onnx_sha256": "b" * 64, "dla_core": 0, "workspace_mb": 256,
                "calibration": "c" * 64}
    assert set(variants) == set(KEY_FIELDS)
    digests = {k.digest()} | {key(**{f: v}).digest() for f, v in variants.items()}
    assert len(digests) == len(variants) + 1
    assert len({key(**{f: v}).file_name("m") for f, v in variants.items()}) == len(variants)
    assert EngineKey.from_dict(json.loads(json.dumps(k.to_dict()))) == k


def test_differences_name_each_field() -> None:
    cached = key()
    needed = key(trt_version="10.7.0", onnx_sha256="f" * 64)
    assert needed.differences(cached) == [
        "trt_version: cached 10.3.0, needed 10.7.0",
        f"onnx_sha256: cached {'a' * 12}…, needed {'f' * 12}…",
    ]
    assert key(input_shape=(2, 3, 224, 224)).differences(cached) == ["input_shape: cached 1×3×224×224, needed 2×3×224×224"]
    assert cached.differences(cached) == []


def test_key_validation() -> None:
    with pytest.raises(ValueError, match="precision"):
        key(precision="fp8")
    with pytest.raises(ValueError, match="static shape"):
        key(input_shape=(-1, 3, 224, 224))
    with pytest.raises(ValueError, match="dla_core"):
        key(dla_core=-2)
    with pytest.raises(ValueError, match="unknown key fields"):
        EngineKey.from_dict({**key().to_dict(), "colour": "blue"})


# ----------------------------------------------------------------------------------------------- IO


def test_io_differences() -> None:
    assert io_differences(IO, (TensorIO("images", "input", (4, 3, 224, 224), "float32"), IO[1])) == []  # -1 = any batch
    actual = (TensorIO("images", "input", (-1, 3, 224, 256), "float16"), TensorIO("logits", "output", (-1, 10), "float32"))
    assert io_differences(IO, actual) == sorted([
        "images: dtype float16, expected float32",
        "images: shape -1×3×224×256, expected -1×3×224×224 (-1 = any)",
        "missing output colors ?×3×224×224 float32",
        "unexpected output logits ?×10 float32",
    ])
    with pytest.raises(EngineIOError, match=r"engine X: inputs/outputs do not match: .*is an output, expected an input"):
        validate_io(IO, (TensorIO("images", "output", (-1, 3, 224, 224), "float32"), IO[1]), "engine X")


# --------------------------------------------------------------------------------------- store / lookup


def test_store_lookup_and_sidecar(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    k = key()
    assert cache.lookup(k, "mae") == (None, f"no cached engine for mae in {tmp_path}")
    entry = cache.store(k, "mae", Builder()(), {"stage": "model", "spec": "{}"})
    assert entry.engine == tmp_path / k.file_name("mae") and entry.engine.read_bytes() == b"engine-bytes-1"
    sidecar = json.loads(sidecar_path(entry.engine).read_text())
    assert sidecar["format"] == CACHE_FORMAT and sidecar["key"] == k.to_dict() and sidecar["stage"] == "model"
    assert sidecar["built"]["seconds"] == 12.5 and sidecar["fp32_layers"] == 3 and sidecar["onnx_stem"] == "mae"
    found, why = cache.lookup(k, "mae")
    assert why == "" and found is not None and found.key == k and found.io == IO
    assert read_sidecar(entry.engine).meta["stage"] == "model"
    # Other machine or other ONNX: the reason names the closest engine and every differing field.
    missing, why = cache.lookup(key(trt_version="10.7.0", compute_capability="8.9"), "mae")
    assert missing is None
    assert why == (f"the closest cached engine, {entry.engine.name}, differs in compute_capability: cached 8.7, "
                   "needed 8.9; trt_version: cached 10.3.0, needed 10.7.0")


def test_corrupt_or_mismatched_sidecar(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    entry = cache.store(key(), "mae", Builder()())
    sidecar_path(entry.engine).write_text("{not json")
    found, why = cache.lookup(key(), "mae")
    assert found is None and "unreadable sidecar" in why
    # A sidecar whose key does not match its file name (copied by hand): not trusted.
    good = cache.store(key(), "mae", Builder()())
    raw = json.loads(sidecar_path(good.engine).read_text())
    raw["key"]["precision"] = "fp32"
    sidecar_path(good.engine).write_text(json.dumps(raw))
    found, why = cache.lookup(key(), "mae")
    assert found is None and "sidecar key differs (precision: cached fp32, needed fp16)" in why
    raw["format"] = 99
    sidecar_path(good.engine).write_text(json.dumps(raw))
    with pytest.raises(EngineCacheError, match="cache format 99"):
        read_sidecar(good.engine)


# --------------------------------------------------------------------------------------------- resolve


def test_resolve_builds_once(tmp_path: Path) -> None:
    cache, build = EngineCache(tmp_path), Builder()
    entry, built = resolve_engine(cache, key(), "mae", build, expected_io=IO)
    assert built and build.count == 1
    for _ in range(3):  # every later launch: the cached engine, no build
        again, built = resolve_engine(cache, key(), "mae", build, expected_io=IO)
        assert not built and again.engine == entry.engine
    assert build.count == 1
    # A new key (e.g. after a JetPack upgrade) builds its own engine beside the old one.
    newer, built = resolve_engine(cache, key(trt_version="10.7.0"), "mae", build)
    assert built and build.count == 2 and newer.engine != entry.engine
    assert len(list(tmp_path.glob("*.engine"))) == 2


def test_resolve_fail_mode_says_which_field_differs(tmp_path: Path) -> None:
    cache, build = EngineCache(tmp_path), Builder()
    with pytest.raises(EngineCacheError, match=r"no usable TensorRT engine for mae: no cached engine for mae.*"
                                               r"on_missing=fail\); prebuild with X"):
        resolve_engine(cache, key(), "mae", build, on_missing="fail", hint="prebuild with X")
    resolve_engine(cache, key(), "mae", build)
    with pytest.raises(EngineCacheError, match=r"differs in trt_version: cached 10\.3\.0, needed 10\.7\.0") as info:
        resolve_engine(cache, key(trt_version="10.7.0"), "mae", build, on_missing="fail")
    assert "gpu_name" not in str(info.value) and build.count == 1
    with pytest.raises(EngineCacheError, match=r"differs in onnx_sha256: cached aaaaaaaaaaaa…, needed bbbbbbbbbbbb…"):
        resolve_engine(cache, key(onnx_sha256="b" * 64), "mae", build, on_missing="fail")
    with pytest.raises(ValueError, match="on_missing"):
        resolve_engine(cache, key(), "mae", build, on_missing="rebuild")


def test_resolve_checks_io(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    wrong = (IO[0], TensorIO("logits", "output", (-1, 10), "float32"))
    with pytest.raises(EngineIOError, match="freshly built engine for mae: .*missing output colors"):
        resolve_engine(cache, key(), "mae", Builder(io=wrong), expected_io=IO)
    # A cached engine with other IO is not used: it is rebuilt (or refused in fail mode).
    cache.store(key(), "mae", Builder(io=wrong)())
    with pytest.raises(EngineCacheError, match=r"has other IO \(missing output colors"):
        resolve_engine(cache, key(), "mae", Builder(), on_missing="fail", expected_io=IO)
    build = Builder()
    entry, built = resolve_engine(cache, key(), "mae", build, expected_io=IO)
    assert built and build.count == 1 and entry.io == IO


def test_concurrent_launches_build_once(tmp_path: Path) -> None:
    cache, build = EngineCache(tmp_path), Builder(delay=0.3)
    results = []
    threads = [threading.Thread(target=lambda: results.append(resolve_engine(cache, key(), "mae", build)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert build.count == 1 and sorted(built for _, built in results) == [False, False, True]


def test_unwritable_cache(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(EngineCacheError, match="cannot write the engine cache.*SEG_NODE_ENGINE_CACHE"):
        EngineCache(blocker / "sub").store(key(), "mae", Builder()())


# ------------------------------------------------------------------------------------------- prebuilt


def test_check_prebuilt(tmp_path: Path) -> None:
    entry = EngineCache(tmp_path).store(key(precision="int8", calibration="c" * 64), "mae", Builder()())
    assert check_prebuilt(entry.engine, ORIN).key == entry.key
    xavier = DeviceFacts("Xavier", "7.2", "8.5.2")
    with pytest.raises(EngineCacheError, match=r"gpu_name: cached Orin, needed Xavier; compute_capability: cached 8\.7, "
                                               r"needed 7\.2; trt_version: cached 10\.3\.0, needed 8\.5\.2"):
        check_prebuilt(entry.engine, xavier)
    entry.engine.unlink()
    with pytest.raises(EngineCacheError, match="engine file does not exist"):
        check_prebuilt(entry.engine, ORIN)
    with pytest.raises(EngineCacheError, match=r"other\.engine\.json: missing"):
        check_prebuilt(tmp_path / "other.engine", ORIN)


# -------------------------------------------------------------------------------------------- hashing


def test_onnx_digest_and_memo(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"graph")
    plain = onnx_digest(model)
    assert len(plain) == 64 and onnx_digest(model) == plain
    (tmp_path / "m.onnx.data").write_bytes(b"weights")
    with_data = onnx_digest(model)
    assert with_data != plain  # the external weights are part of the model
    memo_dir = tmp_path / "cache"
    assert onnx_digest(model, memo_dir) == with_data
    memo = json.loads((memo_dir / HASH_MEMO).read_text())
    entry = memo[str(model.resolve())]
    # The memo answers while size and mtime are unchanged (a multi-GB model is not re-read on every launch) ...
    entry["sha256"] = "memo" * 16
    (memo_dir / HASH_MEMO).write_text(json.dumps(memo))
    assert onnx_digest(model, memo_dir) == "memo" * 16
    # ... and not after the file changes.
    (tmp_path / "m.onnx.data").write_bytes(b"new weights")
    assert onnx_digest(model, memo_dir) not in ("memo" * 16, with_data)
    (memo_dir / HASH_MEMO).write_text("garbage")
    assert len(onnx_digest(model, memo_dir)) == 64
    with pytest.raises(EngineCacheError, match="does not exist"):
        onnx_digest(tmp_path / "none.onnx")


def test_calibration_digest(tmp_path: Path) -> None:
    for name, data in (("a.png", b"1"), ("b.png", b"2")):
        (tmp_path / name).write_bytes(data)
    files = sorted(tmp_path.iterdir())
    d = calibration_digest(files)
    assert d == calibration_digest(files[::-1])
    (tmp_path / "b.png").write_bytes(b"3")
    assert calibration_digest(files) != d


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SEG_NODE_ENGINE_CACHE", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("SEG_NODE_ENGINE_CACHE")
    if (REPO / "engines").is_dir() and os.access(REPO / "engines", os.W_OK):
        assert default_cache_dir() == REPO / "engines" / "cache"
    else:
        assert default_cache_dir().parts[-2:] == ("seg_node", "engines")
    # engines/cache/ is git-ignored.
    proc = subprocess.run(["git", "check-ignore", "-q", "engines/cache/x.engine"], cwd=REPO)
    assert proc.returncode == 0


def test_module_imports_neither_torch_nor_tensorrt() -> None:
    code = ("import sys; import seg_node.backends.tensorrt.cache\n"
            "print(sorted(m for m in ('torch', 'tensorrt', 'pycuda', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
