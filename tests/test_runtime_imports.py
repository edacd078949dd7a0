"""The runtime runs on a robot without torch; missing optional packages say which extra to install."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

RUNTIME_MODULES = [
    "seg_node", "seg_node.config", "seg_node.processing.image_codec", "seg_node.processing.model_io", "seg_node.instances",
    "seg_node.processing.prompting", "seg_node.prompting", "seg_node.processing.geometry", "seg_node.processing.visualize",
    "seg_node.pipeline", "seg_node.cli.segment_images", "seg_node.cli.build_engine",
    "seg_node.backends", "seg_node.backends.onnx_backend", "seg_node.models.checkpoints", "seg_node.models.spec",
    "seg_node.models.onnx_format",
    "seg_node.processing.geometry3d", "seg_node.processing.tracking", "seg_node.processing.refine",
    "seg_node.evaluation.completion_scoring",
    "seg_node.backends.tensorrt.cache", "seg_node.backends.tensorrt.backend", "seg_node.backends.tensorrt.builder",
]


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_runtime_imports_without_torch():
    code = (
        "import sys\n"
        f"for m in {RUNTIME_MODULES!r}: __import__(m)\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'accelerate') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"runtime imported {proc.stdout.strip()}"


@pytest.mark.parametrize("blocked, path_fixture, backend, package", [
    ("torch", "tiny_mae_path", "torch", "'seg_node[torch]'"),
    ("onnxruntime", "tiny_mae_onnx", "onnxruntime", "'seg_node[onnx]'"),
])
def test_missing_optional_package_names_the_extra(blocked, path_fixture, backend, package, request):
    path: Path = request.getfixturevalue(path_fixture)
    # sys.modules[name] = None makes every import of it fail, as on a machine without the package.
    code = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        "from seg_node.backends import create_backend, MissingDependencyError\n"
        f"try:\n    create_backend({str(path)!r}, {backend!r})\n"
        "except MissingDependencyError as e:\n    print('ERR', e)\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ERR") and f"'{blocked}'" in proc.stdout and package in proc.stdout, proc.stdout


@pytest.fixture(scope="session")
def tiny_mae_onnx(tiny_mae_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.export_onnx import export_onnx

    return export_onnx(tiny_mae_path, tmp_path_factory.mktemp("onnx") / "mae.onnx")


def test_package_exports_the_segmenter_lazily() -> None:
    code = ("import sys, seg_node\n"
            "assert 'seg_node.pipeline' not in sys.modules and 'numba' not in sys.modules\n"
            "from seg_node import Segmenter, SegmenterConfig\n"
            "from seg_node.pipeline import Segmenter as S\n"
            "assert Segmenter is S and SegmenterConfig.__name__ == 'SegmenterConfig'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
