"""The runtime never imports the training package: a robot installs seg_node without training's dependencies, and
training imports seg_node, so an import back would be a cycle."""
from __future__ import annotations

import ast
from pathlib import Path

SEG_NODE = Path(__file__).resolve().parents[1] / "seg_node"


def _imported(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_seg_node_never_imports_training() -> None:
    offenders = [f"{path.relative_to(SEG_NODE.parent)}: {name}"
                 for path in sorted(SEG_NODE.rglob("*.py"))
                 for name in _imported(ast.parse(path.read_text(), str(path)))
                 if name == "training" or name.startswith("training.")]
    assert not offenders, "seg_node imports training:\n" + "\n".join(offenders)


def test_models_is_the_bottom_layer() -> None:
    """The model formats (spec, checkpoints, ONNX metadata) are read by the backends, the configuration and the
    exporter alike, so ``seg_node.models`` imports no other part of seg_node."""
    offenders = [f"{path.relative_to(SEG_NODE.parent)}: {name}"
                 for path in sorted((SEG_NODE / "models").rglob("*.py"))
                 for name in _imported(ast.parse(path.read_text(), str(path)))
                 if name.startswith("seg_node.") and not name.startswith("seg_node.models")]
    assert not offenders, "seg_node.models imports upward:\n" + "\n".join(offenders)


def test_the_check_sees_every_form_of_import() -> None:
    code = "import training\nimport training.loss as l\nfrom training import data\nfrom training.x import y\n"
    assert _imported(ast.parse(code)) == ["training", "training.loss", "training", "training.x"]
