"""The numba kernels of seg_node.instances against the OpenCV operations they reproduce, and numba's cache fallback."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from seg_node.instances import _seeds as seed_kernels
from tests.helpers.synthetic_colors import SceneSpec, make_scene

REPO = Path(__file__).resolve().parents[2]


def _grids(n: int):
    """Coarse grids of many shapes: uniform noise (with values outside 0..255), few grey levels (ties between
    watershed priorities) and block means of synthetic scenes."""
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        if i % 3 == 0:
            grid = rng.uniform(-20, 280, (h, w, 3))
        elif i % 3 == 1:
            grid = rng.integers(0, 5, (h, w, 3)) * 40.0
        else:
            scene = make_scene(SceneSpec(seed=i, n_instances=3, size=(4 * h + 40, 4 * w + 40))).colors
            grid = cv2.resize(scene, (w, h), interpolation=cv2.INTER_AREA)
        yield rng, np.ascontiguousarray(grid, dtype=np.float32)


def test_flat_regions_match_opencv_sobel_and_labelling():
    for _, grid in _grids(60):
        labels, count, sums, _, finite = seed_kernels._flat_regions(grid, 6.0)
        gx = cv2.Sobel(grid, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
        gy = cv2.Sobel(grid, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
        g2 = cv2.transform(cv2.add(cv2.multiply(gx, gx), cv2.multiply(gy, gy)), np.ones((1, 3), np.float32))
        n, ref = cv2.connectedComponentsWithAlgorithm((g2 < 36.0).view(np.uint8), 4, cv2.CV_32S, cv2.CCL_DEFAULT)
        np.testing.assert_array_equal(labels, ref)
        assert finite and len(count) == n and count[0] == 0
        np.testing.assert_array_equal(count[1:], np.bincount(ref.ravel(), minlength=n)[1:])
        np.testing.assert_allclose(sums[1:, 0], np.bincount(ref.ravel(), grid[..., 0].ravel(), n)[1:], rtol=1e-9)


def test_a_non_finite_value_reaches_the_gradients():
    for bad in (np.nan, np.inf, -np.inf):
        for shape in ((1, 1), (1, 7), (9, 5)):
            grid = np.full(shape + (3,), 100.0, np.float32)
            grid[-1, -1, 2] = bad
            assert not seed_kernels._flat_regions(grid, 6.0)[4]


def _opencv_seed_growth(grid: np.ndarray, seeds: np.ndarray, lut: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    markers = cv2.copyMakeBorder((lut + 1).astype(np.int32)[seeds], 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    edge = markers[1:-1, 1:-1] == 0
    if markers.any():
        cv2.watershed(cv2.copyMakeBorder(cv2.convertScaleAbs(grid), 1, 1, 1, 1, cv2.BORDER_REPLICATE), markers)
    part = (markers[1:-1, 1:-1] - 1).astype(np.float32)
    cv2.copyTo(cv2.dilate(part, np.ones((3, 3), np.uint8)), (part < 0).view(np.uint8), part)
    part[part < 0] = 0
    return part.astype(np.int32), edge


def test_seed_growth_matches_opencv_watershed():
    for rng, grid in _grids(300):
        h, w = grid.shape[:2]
        seeds = rng.integers(0, 8, (h, w)) * (rng.random((h, w)) < rng.random())
        lut = rng.integers(-1, 5, 8)
        lut[0] = -1
        part, edge = seed_kernels._grow_seeds(grid, seeds, lut)
        ref_part, ref_edge = _opencv_seed_growth(grid, seeds, lut)
        np.testing.assert_array_equal(part, ref_part)
        np.testing.assert_array_equal(edge, ref_edge)


def test_kernels_compile_without_a_writable_cache(tmp_path):
    """numba refuses cache=True where neither the package's __pycache__ nor the user's cache folder is writable (a
    read-only install run without a home); the module then compiles per process, silently."""
    shutil.copy(REPO / "seg_node" / "instances" / "_seeds.py", tmp_path / "seeds.py")
    (tmp_path / "__pycache__").write_text("")  # a file: no cache folder can be made here
    blocked = tmp_path / "no_home"
    blocked.write_text("")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(HOME=str(blocked), XDG_CACHE_HOME=str(blocked), PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(tmp_path))
    code = "import seeds; print(seeds._mirror(-1, 5), seeds._mirror(5, 5))"
    proc = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "3"] and proc.stderr == ""
