"""One ``bag_eval`` run over an open bag: its messages joined into frames (``FrameSync``), each frame decoded and
paired with its checked ground truth, depth and camera info; the workers run the network (and the click and
completion protocols) on chunks of frames; then, strictly in frame order, the Segmenter's stateful steps, the scores
and the output bag. What is skipped or rejected is counted by reason, with examples.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter, deque
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Iterator

import numpy as np

from seg_node.backends.base import BackendError
from seg_node.evaluation import metrics as M
from seg_node.evaluation.bag_io import BagSource
from seg_node.evaluation.completion_scoring import completion_protocol
from seg_node.evaluation.frame_sync import FrameSync, Released
from seg_node.evaluation.ground_truth import CocoGroundTruth, gt_label_image
from seg_node.evaluation.output_bag import OutputBag
from seg_node.evaluation.scoring import Evaluation
from seg_node.evaluation.workers import Frame, Job, Workers
from seg_node.processing.geometry3d import CameraIntrinsics
from seg_node.processing.image_codec import ImageCodecError, decode_depth, decode_to_rgb8

__all__ = ["BagRun", "STAGES", "TINY_AREA"]

# Stages of the node's latency, in pipeline order (the network's three, then the parent's three).
STAGES = ("preprocess", "network", "postprocess", "instances", "geometry", "tracking")
# Ground-truth instances this small are what damaged label payloads produce (specks), rarely what annotators draw.
TINY_AREA = 4


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


class BagRun:
    """One run over an open bag; ``process`` reads, segments, scores and writes it, and the counters say what was
    skipped, rejected or missing, by reason."""

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
