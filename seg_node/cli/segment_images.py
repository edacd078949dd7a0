"""Command-line tools. ``segment_images``: run the Segmenter on image files and write what it found."""
from __future__ import annotations

import argparse
import json
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
from seg_node.pipeline import SegmentationResult, Segmenter
from seg_node.processing.image_codec import DEFAULT_LIMITS, SizeLimits
from seg_node.processing.visualize import overlay

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _write_outputs(result: SegmentationResult, rgb: np.ndarray, out: Path, stem: str, source: Path, meta: dict) -> list[Path]:
    paths = [out / f"{stem}_{suffix}" for suffix in ("colors.npy", "labels.png", "overlay.png", "segments.json")]
    np.save(paths[0], result.colors.astype(np.float32))
    for path, img in ((paths[1], result.labels), (paths[2], cv2.cvtColor(overlay(rgb, result.labels), cv2.COLOR_RGB2BGR))):
        if not cv2.imwrite(str(path), img):
            raise OSError(f"{path}: could not be written")
    summary = {
        "image": str(source),
        "height": int(result.labels.shape[0]),
        "width": int(result.labels.shape[1]),
        **meta,
        "timings_ms": {k: round(v, 3) for k, v in result.timings_ms.items()},
        "nonfinite_pixels": result.nonfinite_pixels,
        "segments": [s.to_dict() for s in result.segments],
    }
    paths[3].write_text(json.dumps(summary, indent=1))
    return paths


def _unique_stems(images: Sequence[Path]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for p in images:
        n = seen.get(p.stem, 0)
        seen[p.stem] = n + 1
        stems.append(p.stem if n == 0 else f"{p.stem}_{n + 1}")
    return stems


def segment_images_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="segment_images",
        description="Segment every object in images with a gen2seg model. Writes per image <stem>_colors.npy "
                    "(float32 H×W×3 colour map, 0..255), <stem>_labels.png (uint16, 0 = background), "
                    "<stem>_overlay.png and <stem>_segments.json.",
    )
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    parser.add_argument("--model", required=True, type=Path, help="checkpoint folder (gen2seg SD or MAE) or .onnx file")
    parser.add_argument("--output", required=True, type=Path, help="folder for the results (created if missing)")
    parser.add_argument("--max-pixels", type=int, default=4 * DEFAULT_LIMITS.max_pixels,
                        help="images whose header declares more pixels are skipped (default %(default)s)")
    add_model_arguments(parser)
    args = parser.parse_args(argv)

    out: Path = args.output
    problem = output_folder_problem(out)
    if problem:
        return _fail(problem)

    try:
        limits = SizeLimits(max_pixels=args.max_pixels)
        # The images are unrelated, so ids must not be carried from one to the next.
        config = config_from_arguments(args, {"tracking.enabled": False})
        t0 = time.perf_counter()
        segmenter = Segmenter(config)
    except (ConfigError, CheckpointError, BackendError, ImportError, ValueError) as exc:
        return _fail(str(exc))
    print(f"loaded {args.model} ({segmenter.spec.family}, {segmenter.backend.describe()}, mode {config.model.mode}) "
          f"in {time.perf_counter() - t0:.1f} s")

    meta = {"model": str(args.model), "family": segmenter.spec.family, "mode": config.model.mode}
    failed: list[str] = []
    written = 0
    total = len(args.images)
    with segmenter:
        for i, (path, stem) in enumerate(zip(args.images, _unique_stems(args.images)), 1):
            try:
                rgb = read_image_rgb(path, limits)
                t = time.perf_counter()
                result = segmenter.segment(rgb)
                ms = (time.perf_counter() - t) * 1e3
                paths = _write_outputs(result, rgb, out, stem, path, meta)
            except Exception as exc:  # any per-image failure is reported and skipped; the next image may be fine
                reason = str(exc) if str(path) in str(exc) else f"{path}: {type(exc).__name__}: {exc}"
                failed.append(reason)
                print(f"[{i}/{total}] FAILED {reason}", file=sys.stderr)
                continue
            written += len(paths)
            print(f"[{i}/{total}] {path.name}: {len(result.segments)} segments, {ms:.0f} ms -> {out / stem}_*")
    print(f"wrote {written} files for {total - len(failed)} of {total} images to {out}")
    if failed:
        print(f"{len(failed)} image(s) failed:", *failed, sep="\n  ", file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(segment_images_main())
