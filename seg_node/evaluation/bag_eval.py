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
import json
import shutil
import sys
import time
from collections import Counter, deque
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from seg_node.backends.base import BackendError
from seg_node.config import ConfigError, SegmenterConfig, config_to_dict
from seg_node.evaluation import metrics as M
from seg_node.backends.base import BACKEND_NAMES, PRECISIONS
from seg_node.cli.common import (add_model_arguments, config_from_arguments, non_negative, output_folder_problem,
                                  positive)
from seg_node.evaluation.bag_io import STORAGES, BagReadError, BagSource, make_typestore
from seg_node.evaluation.bag_topics import DEFAULT_TOPICS, no_gt_reason, resolve_topics
from seg_node.evaluation.completion_scoring import add_completion_arguments, completion_protocol
from seg_node.evaluation.frame_sync import FrameSync, Released
from seg_node.evaluation.ground_truth import CocoGroundTruth, gt_label_image
from seg_node.evaluation.output_bag import OutputBag
from seg_node.evaluation.scoring import Evaluation
from seg_node.evaluation.workers import Frame, Job, Workers
from seg_node.models.checkpoints import CheckpointError
from seg_node.processing.geometry3d import CameraIntrinsics
from seg_node.processing.image_codec import ImageCodecError, decode_depth, decode_to_rgb8

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2
DEFAULT_NAMESPACE = "/segmenter"
# Stages of the node's latency, in pipeline order (the network's three, then the parent's three).
# Ground-truth instances this small are what damaged label payloads produce (specks), rarely what annotators draw.
TINY_AREA = 4
STAGES = ("preprocess", "network", "postprocess", "instances", "geometry", "tracking")

__all__ = ["main"]

# ----------------------------------------------------------------------------------------------- the run


class _Progress:
    def __init__(self, total: int | None, every: float = 2.0) -> None:
        self.total, self.every = total, every
        self.start = self.last = time.perf_counter()
        self.done = 0

    def tick(self, final: bool = False) -> None:
        if not final:
            self.done += 1
        now = time.perf_counter()
        if not final and now - self.last < self.every:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        fps = self.done / elapsed
        of = f"/{self.total}" if self.total else ""
        eta = f", ETA {(self.total - self.done) / fps:.0f} s" if self.total and fps > 0 and not final and self.total > self.done else ""
        print(f"bag_eval: {self.done}{of} frames, {fps:.2f} frames/s{eta}", file=sys.stderr, flush=True)

    @property
    def fps(self) -> float:
        return self.done / max(time.perf_counter() - self.start, 1e-9)


class _Run:
    def __init__(self, args: argparse.Namespace, source: BagSource, store: Any, topics: dict[str, str | None],
                 coco: CocoGroundTruth | None, engine: Workers, writer: OutputBag | None) -> None:
        self.args, self.source, self.store, self.topics, self.coco = args, source, store, topics, coco
        self.engine, self.writer = engine, writer
        self.skipped: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.gt_rejected: Counter[str] = Counter()
        self.warnings: Counter[str] = Counter()
        self.without_gt = 0
        self.size: tuple[int, int] | None = None
        self.index = 0
        self.image_messages = 0
        self.read_counts: Counter[str] = Counter()
        self.stopped_early = False
        total = source.expected_count(topics["image"]) if topics["image"] else None
        if args.max_frames:
            total = min(total, args.max_frames) if total is not None else args.max_frames
        self.progress = _Progress(total)
        self.evaluation = Evaluation(args.clicks, args.max_dets, args.thumbnails, max(1, (total or 1) // max(1, args.thumbnails)),
                                     completion_protocol(args))
        self.sync: FrameSync | None = None

    def _note(self, counter: Counter[str], reason: str, detail: str) -> None:
        counter[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < 5:
            examples.append(detail)

    def _released(self) -> Iterator[Released]:
        """Messages read in log order and joined into frames by FrameSync (lazily: reading stops when the caller does)."""
        kinds = {self.topics[k]: k for k in ("image", "gt", "depth", "info") if self.topics.get(k)}
        msgtypes = {t: self.source.topics[t].msgtype for t in kinds}
        a = self.args
        self.sync = sync = FrameSync(bool(self.topics.get("gt")), bool(self.topics.get("depth")), bool(self.topics.get("info")),
                                 int(a.sync_window * 1e9), int(a.depth_tolerance * 1e9))
        for topic, log_time, raw in self.source.messages(kinds):
            kind = kinds[topic]
            self.read_counts[topic] += 1
            if kind == "image":
                self.image_messages += 1
            try:
                msg = self.store.deserialize_cdr(raw, msgtypes[topic])
            except Exception as exc:  # a corrupt message in a readable bag: rosbags raises several types
                reason = "unreadable_message" if kind == "image" else f"unreadable_{kind}_message"
                self._note(self.skipped if kind == "image" else self.warnings, reason, f"{topic} at {log_time}: {exc}")
                continue
            yield from sync.push(kind, log_time, msg)
        yield from sync.flush()

    def _frames(self) -> Iterator[Frame]:
        """The bag's frames, prepared, up to ``--max-frames`` (the rest of the bag is then not read)."""
        for released in self._released():
            frame = self._prepare(released)
            if frame is not None:
                yield frame
            if self.args.max_frames and self.index >= self.args.max_frames:
                self.stopped_early = True
                return

    def _prepare(self, r: Released) -> Frame | None:
        where = f"frame {r.seq} (stamp {r.stamp})"
        if self.coco is not None:  # its ground truth has a frame, even if the frame is skipped below
            self.coco.unused.discard(r.stamp)
        try:
            rgb = decode_to_rgb8(r.msg)
        except ImageCodecError as exc:
            self._note(self.skipped, "decode_error", f"{where}: {exc}")
            return None
        hw = rgb.shape[:2]
        if self.size is None:
            self.size = hw
        elif hw != self.size and not self.args.allow_mixed_resolution:
            self._note(self.skipped, "resolution_mismatch",
                       f"{where}: {hw[1]}x{hw[0]}, the first frame was {self.size[1]}x{self.size[0]}")
            return None
        gt: M.GtFrame | None = None
        if self.topics.get("gt"):
            if r.gt is None:
                self.without_gt += 1
            else:
                try:
                    labels = gt_label_image(r.gt)
                    if labels.shape != hw:
                        self._note(self.gt_rejected, "size_mismatch", f"{where}: ground truth {labels.shape[1]}x{labels.shape[0]}, frame {hw[1]}x{hw[0]}")
                    else:
                        gt = M.GtFrame.from_label_image(labels)
                except ImageCodecError as exc:
                    self._note(self.gt_rejected, "decode_error", f"{where}: {exc}")
        elif self.coco is not None:
            try:
                gt = self.coco.take(r.stamp)
                if gt is None:
                    self.without_gt += 1
            except (ValueError, KeyError, TypeError) as exc:
                self._note(self.gt_rejected, "bad_annotation", f"{where}: {exc}")
                gt = None
            if gt is None:
                pass
            elif (gt.height, gt.width) != hw:
                self._note(self.gt_rejected, "size_mismatch", f"{where}: COCO image {gt.width}x{gt.height}, frame {hw[1]}x{hw[0]}")
                gt = None
        limit = self.args.gt_max_tiny_instances
        if gt is not None and limit >= 0 and (tiny := sum(a <= TINY_AREA for a in gt.areas)) > limit:
            self._note(self.gt_rejected, "looks_corrupt", f"{where}: {tiny} ground-truth instances of at most {TINY_AREA} px "
                                                          f"(more than --gt-max-tiny-instances {limit}); not scored")
            gt = None
        depth = None
        if self.topics.get("depth"):
            if r.depth is None:
                self._note(self.warnings, "frames_without_depth", where)
            else:
                try:
                    depth = np.array(decode_depth(r.depth), dtype=np.float32)
                except ImageCodecError as exc:
                    self._note(self.warnings, "depth_decode_error", f"{where}: {exc}")
        info = None
        if self.topics.get("info"):
            if r.info is None:
                self._note(self.warnings, "frames_without_camera_info", where)
            else:
                try:
                    info = CameraIntrinsics.from_camera_info(r.info)
                except ValueError as exc:
                    self._note(self.warnings, "camera_info_invalid", f"{where}: {exc}")
        frame = Frame(self.index, r.seq, r.log_time, r.stamp, r.msg.header, np.ascontiguousarray(rgb), depth, info, gt)
        self.index += 1
        return frame

    def process(self) -> None:
        chunk_size = self.args.chunk_size
        max_inflight = 2 * self.engine.workers
        inflight: deque[tuple[list[Frame], Future]] = deque()
        chunk: list[Frame] = []

        def submit() -> None:
            jobs = [Job(f.rgb, f.gt, f.seq) for f in chunk]
            inflight.append((list(chunk), self.engine.submit(jobs)))
            chunk.clear()

        for frame in self._frames():
            chunk.append(frame)
            if len(chunk) >= chunk_size:
                submit()
            while inflight and (len(inflight) > max_inflight or inflight[0][1].done()):
                self._finish(*inflight.popleft())
        if chunk:
            submit()
        while inflight:
            self._finish(*inflight.popleft())
        self.progress.tick(final=True)

    def _finish(self, frames: list[Frame], future: Future) -> None:
        try:
            results = future.result()
        except RuntimeError as exc:  # a worker that could not load the model (BrokenProcessPool is handled by main)
            if isinstance(exc, BrokenProcessPool):
                raise
            raise BackendError(str(exc)) from exc
        for frame, inferred in zip(frames, results):
            if inferred.error is not None:
                self._note(self.skipped, "inference_error", f"frame {frame.seq} (stamp {frame.stamp}): {inferred.error}")
                continue
            assert inferred.color_map is not None
            result = self.engine.segmenter.segment_colors(inferred.color_map, frame.depth, frame.camera_info)
            result.nonfinite_pixels = inferred.nonfinite
            timings = {**inferred.timings, **result.timings_ms}
            timings["total"] = sum(timings.get(k, 0.0) for k in STAGES)
            self.evaluation.add(frame, result, inferred, timings)
            if self.writer is not None:
                self.writer.write(frame, result)
            self.progress.tick()


# ----------------------------------------------------------------------------------------------- CLI


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
        run = _Run(args, source, store, topics, coco, engine, writer)
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

    metrics = _metrics(args, config, source, topics, engine, run, storage, wall)
    problems = _problems(metrics)
    metrics = {"complete": not problems, "incomplete_reasons": problems, **metrics}
    written = _write_outputs(out, metrics, run, writer)
    _print_summary(metrics, problems, written)
    return EXIT_PARTIAL if problems else EXIT_OK


def _metrics(args: argparse.Namespace, config: SegmenterConfig, source: BagSource, topics: dict[str, str | None],
             engine: Workers, run: _Run, storage: str, wall: float) -> dict[str, Any]:
    ev = run.evaluation
    image_topic = topics["image"]
    assert image_topic is not None
    expected = source.expected_count(image_topic)
    unreadable = max(0, expected - run.image_messages) if expected is not None and source.read_error and not run.stopped_early else 0
    skipped = dict(run.skipped)
    if unreadable:
        skipped["unreadable_bag_tail"] = unreadable
    gt_source = f"topic {topics['gt']}" if topics["gt"] else f"coco {args.gt_coco}" if args.gt_coco else None
    gt_unmatched = list(run.sync.gt_unmatched) if run.sync and topics["gt"] else []
    if run.coco is not None and not run.stopped_early:
        gt_unmatched += sorted(run.coco.unused)
    processed = len(ev.records)
    summary = ev.summary(STAGES)
    metrics: dict[str, Any] = {
        "tool": "bag_eval",
        "format_version": 1,
        "bag": {"path": str(args.bag), "storage": source.storage, "recovered": source.recovered,
                "open_error": source.open_error, "read_error": source.read_error,
                "topics": topics, "image_messages_expected": expected, "image_messages_read": run.image_messages,
                "topics_in_bag": {t.name: t.msgtype for t in source.topics.values()},
                "message_counts": {t: {"expected": source.expected_count(t), "read": run.read_counts[t]}
                                   for t in dict.fromkeys(v for v in topics.values() if v)},
                "checksums": source.checksums()},
        "model": {"path": str(args.model), "family": engine.segmenter.spec.family, "backend": engine.description,
                  "mode": config.model.mode},
        "config": config_to_dict(config),
        "frames": {"processed": processed, "evaluated": ev.evaluated, "without_gt": run.without_gt if gt_source else None,
                   "skipped": skipped, "skipped_total": sum(skipped.values()), "stopped_at_max_frames": run.stopped_early,
                   "nonfinite_frames": ev.nonfinite_frames, "warnings": dict(run.warnings),
                   "examples": run.examples},
        "no_ground_truth": no_gt_reason(source) if gt_source is None else None,
        "ground_truth": None if gt_source is None else {
            "source": gt_source,
            "frames": run.sync.gt_messages if topics["gt"] and run.sync else len(run.coco.images) if run.coco else None,
            "frames_matched": ev.evaluated + sum(run.gt_rejected.values()),
            "without_frame": len(gt_unmatched), "without_frame_stamps": gt_unmatched[:20],
            "rejected": dict(run.gt_rejected), "instances": ev.ids.gt_instances},
        "point_prompt": summary.get("point_prompt"),
        "segment_everything": summary.get("segment_everything"),
        "temporal": summary.get("temporal"),
        "completion": summary.get("completion"),
        "latency_ms": summary["latency_ms"],
        "latency_ms_evaluation_only": summary.get("latency_ms_evaluation_only"),
        "segments_per_frame": summary["segments_per_frame"],
        "throughput": {"wall_s": round(wall, 3), "frames_per_s": round(processed / wall, 3) if wall > 0 else None,
                       "workers": args.workers, "chunk_size": args.chunk_size},
        "output_bag": None if run.writer is None else {
            "path": str(run.writer.path), "storage": storage, "messages_per_topic": run.writer.count,
            "topics": {k: {"name": n, "type": t} for k, (n, t) in run.writer.topics.items()}},
        "definitions": {
            "point_prompt": "SAM protocol (docs/design.md, Evaluation protocol): per non-crowd GT instance, click 1 at the maximum of the mask's "
                            "distance transform (1 px zero border), each next click at the distance-transform maximum of the "
                            "deeper error region (false negatives -> positive, false positives -> negative; positive only if "
                            "strictly deeper), all clicks given to Segmenter.prompt; miou[k] = mean IoU after k clicks; "
                            "boundary_f of the 1-click mask.",
            "segment_everything": "pycocotools COCOeval iouType=segm, one category, scores = Segment.score; AP = IoU .50:.95; "
                                  "size buckets small < 32^2, medium < 96^2 px; mean_best_iou = mean over GT of the best IoU "
                                  "with any segment; boundary_f = DAVIS F (tolerance ceil(0.008 x diagonal) px) of each GT "
                                  "with its IoU >= 0.5 match, 0 when unmatched; boundary_f_matched over matches only.",
            "temporal": M.IdConsistency.DEFINITION,
            "latency_ms": "per frame and stage as the node runs it: preprocess/network/postprocess (worker), "
                          "instances/geometry/tracking (Segmenter.segment_colors); total = their sum.",
            "skipped": "frames not processed, by reason; unreadable_bag_tail = image messages metadata.yaml lists but the "
                       "damaged bag no longer holds.",
        },
    }
    return metrics


def _problems(metrics: dict[str, Any]) -> list[str]:
    problems = []
    frames = metrics["frames"]
    for reason, n in sorted(frames["skipped"].items()):
        problems.append(f"{n} frame(s) skipped: {reason}")
    bag = metrics["bag"]
    if bag["recovered"]:
        problems.append(f"bag salvaged: rosbags could not open it ({bag['open_error']})")
    if bag["read_error"]:
        problems.append(f"bag partly unreadable: {bag['read_error']}")
    if not frames["stopped_at_max_frames"]:
        for topic, n in bag["message_counts"].items():
            if n["expected"] is not None and n["expected"] != n["read"]:
                problems.append(f"{topic}: the bag's metadata lists {n['expected']} messages, {n['read']} were read")
    for reason, n in sorted(frames["warnings"].items()):
        if reason.startswith("unreadable_") or reason.endswith("decode_error"):
            problems.append(f"{n} message(s) not used: {reason}")
    gt = metrics["ground_truth"]
    if gt:
        if gt["without_frame"]:
            problems.append(f"{gt['without_frame']} ground-truth frame(s) match no image frame")
        for reason, n in sorted(gt["rejected"].items()):
            problems.append(f"{n} ground-truth frame(s) rejected: {reason}")
    return problems


def _write_outputs(out: Path, metrics: dict[str, Any], run: _Run, writer: OutputBag | None) -> list[str]:
    from seg_node.evaluation.report import write_report

    written = []
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    written.append(f"{out / 'metrics.json'}")
    with open(out / "frames.jsonl", "w") as f:
        for rec in run.evaluation.records:
            f.write(json.dumps(rec) + "\n")
    written.append(f"{out / 'frames.jsonl'} ({len(run.evaluation.records)} frames)")
    prompts = run.evaluation.prompts
    report, thumbs = write_report(out, metrics, run.evaluation.records, [p.ious for p in prompts],
                                  [p.bucket for p in prompts], run.evaluation.best_ious, run.evaluation.thumbnails())
    written.append(f"{report}" + (f" (+ {thumbs} thumbnails in {out / 'thumbnails'})" if thumbs else ""))
    figure = run.evaluation.completion.write_figure(out) if run.evaluation.completion else None
    if figure:
        written.append(f"{figure}")
    if writer is not None:
        names = ", ".join(n for n, _ in writer.topics.values())
        written.append(f"{writer.path} ({writer.storage}, {writer.count} frames on {names})")
    return written


def _print_summary(metrics: dict[str, Any], problems: list[str], written: list[str]) -> None:
    f, b = metrics["frames"], metrics["bag"]
    print(f"bag_eval: {b['image_messages_read']} image messages read from {b['path']} ({b['storage']}); "
          f"{f['processed']} frames processed, {f['evaluated']} with ground truth, {f['skipped_total']} skipped")
    pp = metrics.get("point_prompt")
    if pp and pp.get("miou"):
        k = max(pp["miou"], key=int)
        more = f", mIoU@{k} {pp['miou'][k]:.3f}" if k != "1" else ""
        print(f"  point prompts: mIoU@1 {pp['miou']['1']:.3f}{more} over {pp['instances']} instances")
    se = metrics.get("segment_everything")
    if se:
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        top = max(int(k[2:]) for k in se if k.startswith("AR") and k[2:].isdigit())
        print(f"  segment everything: AP {fmt(se['AP'])}, AP50 {fmt(se['AP50'])}, AR{top} {fmt(se[f'AR{top}'])}, "
              f"boundary F {fmt(se['boundary_f'])}")
    tm = metrics.get("temporal")
    if tm and tm.get("id_switch_rate") is not None:
        print(f"  temporal: id switch rate {tm['id_switch_rate']:.3f} ({tm['id_switches']} of {tm['matched_pairs']} pairs)")
    for name, row in ((metrics.get("completion") or {}).get("results") or {}).items():
        print(f"  completion {name}: IoU {row['completion_iou']:.3f} (nearest-label fill {row['baseline_iou']:.3f}) "
              f"over {row['instances']} instances in {row['frames']} frames")
    tp, lat = metrics["throughput"], metrics["latency_ms"]
    if tp["frames_per_s"] is not None and "total" in lat and lat["total"]["p50"] is not None:
        print(f"  throughput: {tp['frames_per_s']:.2f} frames/s with {tp['workers']} worker(s); "
              f"latency p50 {lat['total']['p50']:.1f} ms (network {lat.get('network', {}).get('p50') or 0:.1f} ms)")
    for p in problems:
        print(f"bag_eval: warning: {p}", file=sys.stderr)
    for w in written:
        print(f"wrote {w}")


if __name__ == "__main__":
    sys.exit(main())
