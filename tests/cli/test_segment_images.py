"""segment_images end to end on tiny SD and MAE checkpoints, through the installed console script."""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from seg_node.pipeline import Segmenter

SCRIPT = str(Path(sys.executable).with_name("segment_images"))


def _run(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(((48, 64), (40, 72))):
        img = np.full((h, w, 3), 30, np.uint8)
        for _ in range(4):
            x, y = rng.integers(0, w - 12), rng.integers(0, h - 12)
            img[y:y + 12, x:x + 12] = rng.integers(60, 255, 3)
        path = folder / f"frame_{i}.png"
        cv2.imwrite(str(path), img)
        paths.append(path)
    return paths


def _check_outputs(out: Path, image: Path) -> dict:
    h, w = cv2.imread(str(image)).shape[:2]
    colors = np.load(out / f"{image.stem}_colors.npy")
    assert colors.shape == (h, w, 3) and colors.dtype == np.float32
    assert 0.0 <= colors.min() and colors.max() <= 255.0
    labels = cv2.imread(str(out / f"{image.stem}_labels.png"), cv2.IMREAD_UNCHANGED)
    assert labels.dtype == np.uint16 and labels.shape == (h, w)
    assert cv2.imread(str(out / f"{image.stem}_overlay.png")).shape == (h, w, 3)
    summary = json.loads((out / f"{image.stem}_segments.json").read_text())
    assert (summary["height"], summary["width"]) == (h, w)
    ids = sorted(s["id"] for s in summary["segments"])
    assert ids == sorted(set(np.unique(labels)) - {0})
    for s in summary["segments"]:
        assert s["area"] == int((labels == s["id"]).sum())
    return summary


@pytest.mark.parametrize("family", ["sd", "mae"])
@pytest.mark.parametrize("reference", [False, True])
def test_both_families_in_both_modes(family, reference, images, tiny_sd_path, tiny_mae_path, tmp_path):
    model = tiny_sd_path if family == "sd" else tiny_mae_path
    args = ["--model", model, "--output", tmp_path, "--processing-resolution", "64", *images]
    proc = _run(*(args + ["--reference-mode"] if reference else args))
    assert proc.returncode == 0, proc.stderr
    assert f"wrote 8 files for 2 of 2 images to {tmp_path}" in proc.stdout
    for image in images:
        summary = _check_outputs(tmp_path, image)
        assert summary["family"] == family and summary["mode"] == ("reference" if reference else "robot")
        colors = np.load(tmp_path / f"{image.stem}_colors.npy")
        # Reference mode ends like the official scripts: uint8 truncation, then a resize.
        assert np.array_equal(colors, np.round(colors)) == reference


def test_cli_matches_python_api(images, tiny_mae_path, tmp_path):
    """The CLI is a thin shell over Segmenter: same colour map, same labels."""
    assert _run("--model", tiny_mae_path, "--output", tmp_path, images[0]).returncode == 0
    rgb = cv2.cvtColor(cv2.imread(str(images[0])), cv2.COLOR_BGR2RGB)
    with Segmenter.from_model(tiny_mae_path) as seg:
        result = seg.segment(rgb)
    np.testing.assert_allclose(np.load(tmp_path / f"{images[0].stem}_colors.npy"), result.colors, atol=1e-3)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / f"{images[0].stem}_labels.png"), cv2.IMREAD_UNCHANGED), result.labels)


def test_unreadable_images_are_skipped_and_counted(images, tiny_mae_path, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    missing = tmp_path / "missing.jpg"
    # A valid PNG whose IHDR (checksum fixed) declares 100000x100000, and a JPEG whose SOF declares 65500x65500.
    bomb = bytearray(images[0].read_bytes())
    struct.pack_into(">II", bomb, 16, 100000, 100000)
    struct.pack_into(">I", bomb, 29, zlib.crc32(bytes(bomb[12:29])))
    (forged_png := tmp_path / "forged.png").write_bytes(bytes(bomb))
    jpeg = bytearray(cv2.imencode(".jpg", cv2.imread(str(images[0])))[1].tobytes())
    struct.pack_into(">HH", jpeg, jpeg.index(b"\xff\xc0") + 5, 65500, 65500)
    (forged_jpeg := tmp_path / "forged.jpg").write_bytes(bytes(jpeg))
    out = tmp_path / "out"
    proc = _run("--model", tiny_mae_path, "--output", out, images[0], broken, forged_png, missing, forged_jpeg, images[1])
    assert proc.returncode == 1
    assert "wrote 8 files for 2 of 6 images" in proc.stdout and "4 image(s) failed" in proc.stderr
    assert f"{broken}: unreadable PNG header" in proc.stderr and f"{missing}: no such file" in proc.stderr
    assert f"{forged_png} (PNG header) is 100000x100000: 10000000000 pixels > max_pixels 67108864" in proc.stderr
    assert f"{forged_jpeg} (JPEG header) is 65500x65500" in proc.stderr and "Traceback" not in proc.stderr
    for image in images:
        _check_outputs(out, image)


def test_same_stem_from_two_folders_is_not_overwritten(images, tiny_mae_path, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(images[1], other / images[0].name)
    out = tmp_path / "out"
    assert _run("--model", tiny_mae_path, "--output", out, images[0], other / images[0].name).returncode == 0
    assert (out / f"{images[0].stem}_labels.png").is_file() and (out / f"{images[0].stem}_2_labels.png").is_file()


def test_broken_checkpoint_names_the_missing_file(images, tiny_sd_path, tmp_path):
    broken = tmp_path / "sd"
    shutil.copytree(tiny_sd_path, broken)
    (broken / "vae" / "config.json").unlink()
    proc = _run("--model", broken, "--output", tmp_path / "out", images[0])
    assert proc.returncode == 2
    assert f"{broken / 'vae' / 'config.json'}: missing" in proc.stderr
    proc = _run("--model", tmp_path / "nowhere", "--output", tmp_path / "out", images[0])
    assert proc.returncode == 2 and "model path does not exist" in proc.stderr


def test_unwritable_output_is_a_clear_error(images, tiny_mae_path, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = _run("--model", tiny_mae_path, "--output", blocker / "out", images[0])
    assert proc.returncode == 2 and f"cannot create output folder {blocker / 'out'}" in proc.stderr


def test_bad_config_fails_before_loading(images, tiny_mae_path, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("backend:\n  precision: fp8\n")
    proc = _run("--model", tiny_mae_path, "--output", tmp_path, "--config", cfg, images[0])
    assert proc.returncode == 2 and f"{cfg}: backend.precision must be one of" in proc.stderr
