"""``bag_eval``: run the Segmenter over a recorded ROS 2 bag, score it against ground truth, and write what the node
would have published.

    bag_eval BAG --model PATH --output DIR [--image-topic T] [--gt-topic T | --gt-coco FILE] [--depth-topic T]
             [--camera-info-topic T] [--workers N] [--config YAML] [--storage sqlite3|mcap] ...

Bags are read and written with ``rosbags`` (sqlite3 and MCAP, no ROS installation, no rclpy); the custom seg_msgs
types are registered in its typestore from the interface package's ``.msg`` files.

Data flow. The parent process reads the bag in log-time order and pairs every frame of the image topic with its
ground truth (same header stamp), depth (nearest header stamp within ``--depth-tolerance``) and the latest camera
info, waiting at most ``--sync-window`` seconds of bag time for them. Frames go in contiguous chunks to the network:
in-process with ``--workers 1``, else to N spawned worker processes, which compute the colour maps (the network) and
run the click protocol and ``--completion`` (all pure functions of the frame). The parent then runs, strictly in frame
order, what carries state or must be ordered: colour map → instances, geometry and tracking (``Segmenter.
segment_colors``, the node's own code), the metrics, and the output bag. Results are therefore identical for any
``--workers`` (given a backend whose output does not depend on its thread count; pass ``--threads`` to fix that
count, otherwise each worker gets cpu_count / N threads).

Outputs in ``--output``: ``metrics.json``, ``frames.jsonl`` (one line per frame), ``report.html`` (+ ``thumbnails/``)
and ``bag/``, a bag in the input's storage format with ``<ns>/labels`` (mono16, header copied from the input frame),
``<ns>/segments`` (seg_msgs/SegmentArray) and, on request, ``<ns>/colors`` and ``<ns>/overlay``, each logged at its
input frame's log time.

Bad input. A missing topic, a topic of the wrong type, an unreadable model or config: error, exit code 2. A bag whose
storage file is truncated or has a corrupt tail: the readable messages are processed (an MCAP file is scanned record
by record up to the damage; a sqlite3 file is read row by row with the missing pages served as zeros and every row
that touched one discarded), the rest is counted as unreadable against the counts in ``metadata.yaml``, and the exit
code is 1. Frames that cannot be decoded, have another resolution than the first frame, or whose network run fails
are skipped; ground truth that matches no frame, or cannot be decoded, or has another size than its frame, is
rejected. Each is counted by reason in metrics.json and the report, and makes the exit code 1. Frames without ground
truth are segmented and written but not scored (counted, not an error).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Sequence

from seg_node.backends.base import BACKEND_NAMES, PRECISIONS, BackendError
from seg_node.cli.common import (add_model_arguments, config_from_arguments, non_negative, output_folder_problem,
                                  positive)
from seg_node.config import ConfigError
from seg_node.evaluation.bag_io import STORAGES, BagReadError, BagSource, make_typestore
from seg_node.evaluation.bag_run import TINY_AREA, BagRun
from seg_node.evaluation.bag_topics import DEFAULT_TOPICS, resolve_topics
from seg_node.evaluation.completion_scoring import add_completion_arguments, completion_protocol
from seg_node.evaluation.ground_truth import CocoGroundTruth
from seg_node.evaluation.output_bag import OutputBag
from seg_node.evaluation.results import incomplete_reasons, metrics_json, print_summary, write_outputs
from seg_node.evaluation.workers import Workers
from seg_node.models.checkpoints import CheckpointError

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2
DEFAULT_NAMESPACE = "/segmenter"

__all__ = ["main"]


def _fail(message: str) -> int:
    print(f"bag_eval: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds, got {text}")
    return value


def _max_dets(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three comma-separated integers like 1,10,100, got {text!r}") from None
    if len(values) != 3 or values != sorted(values) or values[0] < 1:
        raise argparse.ArgumentTypeError(f"expected three increasing positive integers like 1,10,100, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bag_eval",
        description="Run the Segmenter over a ROS 2 bag (sqlite3 or MCAP; no ROS installation needed), score it against "
                    "ground truth, and write metrics.json, report.html and an output bag with the node's topics.",
        epilog="Exit codes: 0 all read and used; 1 done, but frames were skipped, ground truth rejected or part of the "
               "bag unreadable (counted in metrics.json); 2 nothing done (bad arguments, model, config or bag).")
    p.add_argument("bag", type=Path, metavar="BAG", help="bag folder (metadata.yaml + .db3/.mcap) or a bare .db3/.mcap file")
    p.add_argument("--model", required=True, type=Path, help="checkpoint folder (gen2seg SD or MAE) or .onnx file")
    p.add_argument("--output", required=True, type=Path, help="folder for metrics.json, report.html, frames.jsonl and bag/")
    g = p.add_argument_group("topics")
    g.add_argument("--image-topic", help="Image or CompressedImage topic (default: the bag's only image topic not named "
                                         "like depth, ground truth or labels)")
    g.add_argument("--gt-topic", help="ground-truth instance label images: mono16/16UC1/32SC1/mono8 ids or rgb8/bgr8 colours, "
                                      f"matched to frames by header stamp (default {DEFAULT_TOPICS['gt']} if the bag has it)")
    g.add_argument("--gt-coco", type=Path, help="ground truth as COCO instances JSON whose images carry stamp_ns")
    g.add_argument("--depth-topic", help="depth Image (32FC1 m or 16UC1 mm) for 3D segment geometry "
                                         f"(default {DEFAULT_TOPICS['depth']} if the bag has it)")
    g.add_argument("--camera-info-topic", help=f"CameraInfo for 3D segment geometry (default {DEFAULT_TOPICS['info']} if the bag has it)")
    g.add_argument("--sync-window", type=_seconds, default=1.0, help="bag seconds a frame waits for its ground truth and depth (default 1)")
    g.add_argument("--depth-tolerance", type=_seconds, default=0.02, help="max depth/image stamp difference, s (default 0.02)")
    m = p.add_argument_group("model")
    m.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override one config value by dotted name, e.g. --set tracking.enabled=false (repeatable)")
    # TensorRT engines and int8 are per device: the worker processes run the portable backends.
    add_model_arguments(m, backends=[b for b in BACKEND_NAMES if b != "tensorrt"],
                        precisions=[q for q in PRECISIONS if q != "int8"],
                        threads_help="backend threads per process (default: cpu_count / workers)")
    e = p.add_argument_group("evaluation")
    e.add_argument("--clicks", type=non_negative, default=5, help="point-prompt clicks per object, mIoU reported for 1..k (default 5; 0 = off)")
    e.add_argument("--max-dets", type=_max_dets, default=[1, 10, 100], help="COCO max detections per frame (default 1,10,100)")
    e.add_argument("--thumbnails", type=non_negative, default=4, help="best and worst frames shown in the report (default 4)")
    e.add_argument("--gt-max-tiny-instances", type=int, default=8, metavar="N",
                   help=f"reject a ground-truth frame with more than N instances of at most {TINY_AREA} px as corrupt "
                        "(default 8; -1 = never)")
    add_completion_arguments(e)
    e.add_argument("--max-frames", type=non_negative, default=0, help="stop after this many frames (default: all)")
    e.add_argument("--allow-mixed-resolution", action="store_true",
                   help="process frames whose size differs from the first frame's (default: skip and count them)")
    r = p.add_argument_group("run and output")
    r.add_argument("--workers", type=positive, default=1, help="processes running the network (default 1); results are identical for any N")
    r.add_argument("--chunk-size", type=positive, default=4, help="consecutive frames per worker task (default 4)")
    r.add_argument("--storage", choices=STORAGES, help="output bag storage (default: the input's)")
    r.add_argument("--namespace", default=DEFAULT_NAMESPACE, help=f"output topic namespace, the node's name (default {DEFAULT_NAMESPACE})")
    r.add_argument("--colors", action="store_true", help="also write <ns>/colors (rgb8 colour map)")
    r.add_argument("--overlay", action="store_true", help="also write <ns>/overlay (rgb8 segments on the image)")
    r.add_argument("--no-bag", action="store_true", help="do not write the output bag")
    r.add_argument("--overwrite", action="store_true", help="replace an output bag left by an earlier run")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.gt_topic and args.gt_coco:
        return _fail("give ground truth either as --gt-topic or as --gt-coco, not both")
    try:
        config = config_from_arguments(args, settings=args.set)
    except ConfigError as exc:
        return _fail(str(exc))

    out: Path = args.output
    problem = output_folder_problem(out)
    if problem:
        return _fail(problem)
    bag_out = out / "bag"
    if not args.no_bag and bag_out.exists() and not args.overwrite:
        return _fail(f"{bag_out} exists (an earlier run?); pass --overwrite to replace it, or choose another --output")

    source = None
    try:
        store = make_typestore()
        source = BagSource(args.bag)
        topics = resolve_topics(source, args)
        coco = CocoGroundTruth(args.gt_coco) if args.gt_coco else None
    except (BagReadError, ImportError, OSError, ValueError) as exc:
        if source is not None:
            source.close()
        return _fail(str(exc))
    if source.recovered:
        print(f"bag_eval: warning: {args.bag} is damaged ({source.open_error}); reading what is intact "
              f"(up to: {source.read_error})", file=sys.stderr)

    t0 = time.perf_counter()
    try:
        engine = Workers(config, args.workers, args.clicks, completion_protocol(args))
    except (ConfigError, CheckpointError, BackendError, ImportError, ValueError, OSError, BrokenProcessPool) as exc:
        source.close()
        return _fail(str(exc) if not isinstance(exc, BrokenProcessPool) else
                     f"a worker process died while loading the model ({exc}); run with --workers 1 to see why")
    engine.description = engine.segmenter.backend.describe()
    print(f"bag_eval: loaded {args.model} ({engine.segmenter.spec.family}, {engine.description}, "
          f"mode {config.model.mode}) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    storage = args.storage or source.storage
    writer = None
    try:
        if not args.no_bag and bag_out.exists():
            shutil.rmtree(bag_out)  # --overwrite, checked above
        writer = None if args.no_bag else OutputBag(bag_out, storage, store, args.namespace, args.colors, args.overlay)
        run = BagRun(args, source, store, topics, coco, engine, writer)
        t_run = time.perf_counter()
        run.process()
        wall = time.perf_counter() - t_run
    except BrokenProcessPool as exc:
        return _fail(f"a worker process died ({exc}); run with --workers 1 to see the error")
    except BackendError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        print("bag_eval: interrupted", file=sys.stderr)
        return 130
    finally:
        engine.close()
        if writer is not None:
            writer.close()
        source.close()

    metrics = metrics_json(args, config, source, topics, engine, run, storage, wall)
    problems = incomplete_reasons(metrics)
    metrics = {"complete": not problems, "incomplete_reasons": problems, **metrics}
    written = write_outputs(out, metrics, run, writer)
    print_summary(metrics, problems, written)
    return EXIT_PARTIAL if problems else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
