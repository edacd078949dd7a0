"""``hypersim_to_png``: Hypersim's semantic-instance HDF5 files → instance-colour PNGs for training.

    hypersim_to_png --hypersim ROOT [--output DIR] [--min-scene-instances 10] [--workers N] [--overwrite]

Reads ``ROOT/<scene>/images/scene_cam_NN_geometry_hdf5/frame.NNNN.semantic_instance.hdf5`` (dataset ``"dataset"``,
instance ids, -1 = unlabelled) and writes ``DIR/<scene>/images/scene_cam_NN_geometry_hdf5/frame.NNNN.png``
(default DIR: ``ROOT/instance-rgb``, where ``training.data.HypersimDataset`` looks): black background and one
distinct colour per instance id, never black or white, the same colour for the same id in every frame of a scene.
As the gen2seg README advises, frames without any annotated instance and scenes with fewer than
``--min-scene-instances`` distinct annotated objects are not written. ``DIR/conversion.json`` lists what was
written and what was skipped, and why.

Exit status: 0 = every file read; 1 = some files could not be read (listed); 2 = nothing to convert.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from training.data import instance_colors

EXIT_OK, EXIT_SOME_FAILED, EXIT_NOTHING = 0, 1, 2
HDF5_GLOB = "*/images/scene_cam_*_geometry_hdf5/frame.*.semantic_instance.hdf5"


def read_instances(path: Path) -> np.ndarray:
    """int64 H×W instance ids of one frame, -1 = unlabelled."""
    import h5py

    with h5py.File(path, "r") as f:
        return np.asarray(f["dataset"]).astype(np.int64)


def output_path(hdf5: Path, root: Path, output: Path) -> Path:
    rel = hdf5.relative_to(root)
    return output / rel.parent / (hdf5.name.split(".semantic_instance")[0] + ".png")


def _scan(path: Path) -> tuple[str, list[int] | str]:
    """(path, the frame's distinct instance ids) or (path, error message)."""
    try:
        ids = read_instances(path)
        return str(path), np.unique(ids[ids >= 0]).tolist()
    except Exception as exc:  # any unreadable file is reported and skipped, not fatal
        return str(path), f"{type(exc).__name__}: {exc}"


def _write(job: tuple[str, str]) -> str | None:
    src, dst = job
    try:
        ids = read_instances(Path(src))
        # id + 1 so that -1 (unlabelled) becomes black and every id a colour.
        colors = instance_colors(np.maximum(ids + 1, 0))
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(dst, cv2.cvtColor(colors, cv2.COLOR_RGB2BGR)):
            return f"{dst}: cannot be written"
        return None
    except Exception as exc:  # reported per file
        return f"{src}: {type(exc).__name__}: {exc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hypersim_to_png", description=__doc__.splitlines()[0])
    parser.add_argument("--hypersim", required=True, type=Path, help="Hypersim root (folders ai_VVV_NNN/)")
    parser.add_argument("--output", type=Path, help="where the PNGs go (default: HYPERSIM/instance-rgb)")
    parser.add_argument("--min-scene-instances", type=int, default=10,
                        help="skip scenes with fewer distinct annotated objects (default 10)")
    parser.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite PNGs that exist already")
    args = parser.parse_args(argv)
    from tqdm import tqdm

    root = args.hypersim.expanduser()
    output = (args.output or root / "instance-rgb").expanduser()
    files = sorted(root.glob(HDF5_GLOB))
    if not files:
        print(f"hypersim_to_png: no {HDF5_GLOB} under {root}", file=sys.stderr)
        return EXIT_NOTHING
    print(f"{len(files)} semantic-instance files under {root}")

    workers = max(1, args.workers)
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    mapper = pool.map if pool is not None else map
    failed: list[str] = []
    frames: dict[str, dict[Path, list[int]]] = defaultdict(dict)
    try:
        for path, result in tqdm(mapper(_scan, files), total=len(files), desc="scanning", unit="frame"):
            if isinstance(result, str):
                failed.append(f"{path}: {result}")
            else:
                frames[Path(path).relative_to(root).parts[0]][Path(path)] = result
        jobs, skipped = [], {"scenes": {}, "frames_without_instances": 0, "existing": 0}
        for scene, per_frame in sorted(frames.items()):
            objects = set().union(*per_frame.values())
            if len(objects) < args.min_scene_instances:
                skipped["scenes"][scene] = f"{len(objects)} annotated objects < {args.min_scene_instances}"
                continue
            for path, ids in sorted(per_frame.items()):
                dst = output_path(path, root, output)
                if not ids:
                    skipped["frames_without_instances"] += 1
                elif dst.is_file() and not args.overwrite:
                    skipped["existing"] += 1
                else:
                    jobs.append((str(path), str(dst)))
        errors = [e for e in tqdm(mapper(_write, jobs), total=len(jobs), desc="writing", unit="png") if e]
    finally:
        if pool is not None:
            pool.shutdown()
    failed += errors
    summary = {"hypersim": str(root), "output": str(output), "files": len(files), "written": len(jobs) - len(errors),
               "skipped": skipped, "failed": failed}
    output.mkdir(parents=True, exist_ok=True)
    (output / "conversion.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {summary['written']} PNGs under {output} ({len(skipped['scenes'])} scenes skipped for too few "
          f"objects, {skipped['frames_without_instances']} frames without instances, {skipped['existing']} already "
          f"there, {len(failed)} failed); summary in {output / 'conversion.json'}")
    for line in failed[:20]:
        print(f"  failed: {line}", file=sys.stderr)
    if len(jobs) - len(errors) == 0 and skipped["existing"] == 0:
        return EXIT_NOTHING
    return EXIT_SOME_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
