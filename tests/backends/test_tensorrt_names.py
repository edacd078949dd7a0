"""Every TensorRT name the code uses exists in the real Python bindings of each supported TensorRT major, and the
names TensorRT 11 removed are why 11 is refused (seg_node.backends.tensorrt.cuda.SUPPORTED_TRT_MAJORS).

No GPU is needed: the `tensorrt-cu12-bindings` wheel from PyPI (1 MB, the pybind11 module only) is loaded against
stand-ins for libnvinfer / libnvonnxparser / libnvinfer_plugin, built here with `cc`, that define just the ten C
entry points the module links (createInferBuilder_INTERNAL, ...) so the dynamic loader is satisfied. Nothing is
ever called: the test only looks names up on the classes. Wheels are cached in $SEG_NODE_TRT_CACHE (default
~/.cache/seg_node/tensorrt-bindings); without the cache and without PyPI the test skips and says so.
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from seg_node.backends.tensorrt.cuda import SUPPORTED_TRT_MAJORS, TRT_OBJECT_API

REPO = Path(__file__).resolve().parents[2]
SOURCES = sorted((REPO / "seg_node" / "backends" / "tensorrt").glob("*.py")) + [REPO / "seg_node" / "cli" / "build_engine.py"]
# The oldest, JetPack 6.1's and the newest 10.x; and the 11.x release the refusal is about.
SUPPORTED = ["10.0.1", "10.3.0", "10.16.1.11"]
UNSUPPORTED = ["11.4.0.106"]
CACHE = Path(os.environ.get("SEG_NODE_TRT_CACHE", Path.home() / ".cache" / "seg_node" / "tensorrt-bindings"))
PY_TAG = f"cp{sys.version_info.major}{sys.version_info.minor}"

PROBE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import tensorrt_bindings as trt
missing = []
for chain in json.loads(sys.argv[2]):
    obj = trt
    for part in chain:
        if not hasattr(obj, part):
            missing.append(".".join(chain)); break
        obj = getattr(obj, part)
for cls, names in json.loads(sys.argv[3]).items():
    for alternatives in names:
        if not any(hasattr(getattr(trt, cls, None), n) for n in alternatives.split("|")):
            missing.append(cls + "." + alternatives)
print(json.dumps({"version": trt.__version__, "missing": missing}))
"""


def trt_module_names() -> list[tuple[str, ...]]:
    """`trt.X.Y...` chains in the sources (trt is the module alias throughout), dunders aside."""
    chains = set()
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                parts, cur = [], node
                while isinstance(cur, ast.Attribute):
                    parts.append(cur.attr)
                    cur = cur.value
                if isinstance(cur, ast.Name) and cur.id == "trt":
                    chain = tuple(p for p in reversed(parts) if not p.startswith("__"))
                    if chain:
                        chains.add(chain)
    # Keep only maximal chains: trt.BuilderFlag.FP16 covers trt.BuilderFlag.
    return sorted(c for c in chains if not any(o != c and o[: len(c)] == c for o in chains))


def _bindings(version: str, tmp_path: Path) -> Path:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler (cc) for the loader stand-ins")
    CACHE.mkdir(parents=True, exist_ok=True)
    wheels = sorted(CACHE.glob(f"tensorrt_cu12_bindings-{version}-{PY_TAG}-*.whl"))
    if not wheels:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                            "-d", str(CACHE), f"tensorrt-cu12-bindings=={version}"], capture_output=True, text=True, timeout=300)
        wheels = sorted(CACHE.glob(f"tensorrt_cu12_bindings-{version}-{PY_TAG}-*.whl"))
        if not wheels:
            pytest.skip(f"tensorrt-cu12-bindings {version} for {PY_TAG} not cached in {CACHE} and not downloadable: "
                        f"{(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    root = tmp_path / version
    zipfile.ZipFile(wheels[0]).extractall(root)
    module = next(root.glob("tensorrt_bindings/tensorrt*.so"))
    needed = subprocess.run(["readelf", "-d", str(module)], capture_output=True, text=True, check=True).stdout
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(module)], capture_output=True, text=True, check=True).stdout
    entry_points = [line.split()[-1] for line in undefined.splitlines()
                    if "@" not in line and not line.split()[-1].startswith(("Py", "_Py", "_ITM", "_ZGTt", "__"))]
    stub = root / "stub.c"
    stub.write_text("".join(f"int {name}(void) {{ return 0; }}\n" for name in entry_points))
    libs = [w.strip("[]") for w in needed.split() if w.startswith("[libnv")]
    assert libs and entry_points, (libs, entry_points)
    for lib in libs:
        subprocess.run(["cc", "-shared", "-o", str(root / lib), str(stub), f"-Wl,-soname,{lib}"], check=True)
    return root


def _missing(root: Path) -> dict:
    api = {cls: list(names) for cls, names in TRT_OBJECT_API.items()}
    out = subprocess.run([sys.executable, "-c", PROBE, str(root), json.dumps(trt_module_names()), json.dumps(api)],
                         env={**os.environ, "LD_LIBRARY_PATH": str(root)}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_names_are_collected_from_the_source() -> None:
    names = {".".join(c) for c in trt_module_names()}
    assert {"BuilderFlag.FP16", "IInt8EntropyCalibrator2", "Runtime", "OnnxParser"} <= names, names
    source = "".join(p.read_text() for p in SOURCES)
    stale = [f"{c}.{n}" for c, names in TRT_OBJECT_API.items() for alt in names
             if not any(f".{n}" in source for n in alt.split("|")) for n in [alt]]
    assert not stale, f"TRT_OBJECT_API lists names the code no longer uses: {stale}"


@pytest.mark.parametrize("version", SUPPORTED)
def test_every_name_exists_in_supported_tensorrt(version: str, tmp_path: Path) -> None:
    assert int(version.split(".")[0]) in SUPPORTED_TRT_MAJORS
    result = _missing(_bindings(version, tmp_path))
    assert result["version"].startswith(version.rsplit(".", 1)[0] if version.count(".") > 2 else version)
    assert result["missing"] == [], f"TensorRT {version} lacks {result['missing']}"


@pytest.mark.parametrize("version", UNSUPPORTED)
def test_unsupported_major_lacks_names_the_code_needs(version: str, tmp_path: Path) -> None:
    """Why TensorRT 11 is refused at run time, measured on its bindings (a check that the refusal stays justified)."""
    assert int(version.split(".")[0]) not in SUPPORTED_TRT_MAJORS
    missing = set(_missing(_bindings(version, tmp_path))["missing"])
    assert {"IInt8EntropyCalibrator2", "BuilderFlag.FP16", "BuilderFlag.INT8"} <= missing, missing
