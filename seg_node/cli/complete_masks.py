"""``complete_masks``: complete a partial label map of an image with a gen2seg model (mask completion)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from seg_node.backends.base import BackendError
from seg_node.cli.common import add_model_arguments, config_from_arguments, output_folder_problem, read_image_rgb
from seg_node.config import ConfigError
from seg_node.models.checkpoints import CheckpointError
from seg_node.pipeline import Segmenter
from seg_node.processing.visualize import label_colors, overlay, panels

EXIT_OK, EXIT_USAGE = 0, 2
_HIDDEN_GREY = 128  # how unknown pixels show in the figure's partial panel


def _read_map(path: Path, what: str, hw: tuple[int, int]) -> np.ndarray:
    """A single-channel 8- or 16-bit PNG of the image's size (uint16); OSError names the file and the problem."""
    data = np.fromfile(str(path), dtype=np.uint8) if path.is_file() else None
    if data is None:
        raise OSError(f"{path}: no such file ({what})")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise OSError(f"{path}: not a readable image ({what})")
    if img.ndim != 2 or img.dtype not in (np.uint8, np.uint16):
        raise OSError(f"{path}: {what} must be a single-channel 8- or 16-bit image, got {img.dtype} {img.shape}")
    if img.shape != hw:
        raise OSError(f"{path}: {what} is {img.shape[1]}×{img.shape[0]}, the image is {hw[1]}×{hw[0]}")
    return img.astype(np.uint16)


def _write(path: Path, img: np.ndarray) -> Path:
    if not cv2.imwrite(str(path), img):
        raise OSError(f"{path}: could not be written")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="complete_masks",
        description="Complete a partial segmentation of an image: known pixels keep their ids, the others join a "
                    "known segment where the model's colour map says so, or get new ids. Writes <stem>_completed.png "
                    "(uint16, 0 = background), <stem>_completed_overlay.png and <stem>_completion.png (a figure).")
    parser.add_argument("image", type=Path, metavar="IMAGE")
    parser.add_argument("--partial", required=True, type=Path, help="partial label map (8/16-bit PNG, 0 = none)")
    parser.add_argument("--known", type=Path,
                        help="mask PNG, non-zero = label known (0 in --partial there = known background); "
                             "default: the non-zero labels of --partial")
    parser.add_argument("--ground-truth", type=Path, help="full label map PNG, for the figure and an IoU summary")
    parser.add_argument("--model", required=True, type=Path, help="checkpoint folder (gen2seg SD or MAE) or .onnx file")
    parser.add_argument("--output", required=True, type=Path, help="folder for the results (created if missing)")
    add_model_arguments(parser)
    args = parser.parse_args(argv)

    try:
        rgb = read_image_rgb(args.image)
        hw = rgb.shape[:2]
        partial = _read_map(args.partial, "the partial label map", hw)
        known = _read_map(args.known, "the known mask", hw) > 0 if args.known else None
        gt = _read_map(args.ground_truth, "the ground truth", hw) if args.ground_truth else None
    except OSError as exc:
        return _fail(str(exc))
    if not (partial > 0 if known is None else known).any():
        source = args.known or args.partial
        return _fail(f"{source}: no pixel is known (all zero): nothing to complete from")
    problem = output_folder_problem(args.output)
    if problem:
        return _fail(problem)
    try:
        config = config_from_arguments(args, {"tracking.enabled": False})
        segmenter = Segmenter(config)
    except (ConfigError, CheckpointError, BackendError, ImportError, ValueError) as exc:
        return _fail(str(exc))

    with segmenter:
        t0 = time.perf_counter()
        done = segmenter.complete(rgb, partial, known)
        ms = (time.perf_counter() - t0) * 1e3
    known_mask = partial > 0 if known is None else known
    known_ids = set(np.unique(partial[known_mask]).tolist())
    new_ids = sorted(set(np.unique(done).tolist()) - known_ids - {0})
    shown = label_colors(partial)
    shown[~known_mask] = _HIDDEN_GREY
    figure = [("partial (grey: unknown)", shown), ("completed", label_colors(done))]
    summary = ""
    if gt is not None:
        figure.append(("ground truth", label_colors(gt)))
        ious = [float(((gt == k) & (done == k)).sum() / ((gt == k) | (done == k)).sum()) for k in np.unique(gt[gt > 0])]
        summary = f"; mean IoU of the ground truth's ids {np.mean(ious):.3f} over {len(ious)} segments" if ious else ""
    stem = args.image.stem
    try:
        paths = [_write(args.output / f"{stem}_completed.png", done),
                 _write(args.output / f"{stem}_completed_overlay.png", cv2.cvtColor(overlay(rgb, done), cv2.COLOR_RGB2BGR)),
                 _write(args.output / f"{stem}_completion.png", cv2.cvtColor(panels(figure), cv2.COLOR_RGB2BGR))]
    except OSError as exc:
        return _fail(str(exc))
    print(f"completed {int((~known_mask).sum())} unknown pixels of {args.image} in {ms:.0f} ms: "
          f"{len(known_ids - {0})} known segments, {len(new_ids)} new ({', '.join(map(str, new_ids)) or 'none'}){summary}")
    print("wrote " + ", ".join(str(p) for p in paths))
    return EXIT_OK


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE
