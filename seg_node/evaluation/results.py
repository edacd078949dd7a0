"""What a finished ``bag_eval`` run hands back: the content of metrics.json (with the reasons it is incomplete), the
files it writes (metrics.json, frames.jsonl, the HTML report) and the summary on the console.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from seg_node.config import SegmenterConfig, config_to_dict
from seg_node.evaluation import metrics as M
from seg_node.evaluation.bag_io import BagSource
from seg_node.evaluation.bag_run import STAGES, BagRun
from seg_node.evaluation.bag_topics import no_gt_reason
from seg_node.evaluation.output_bag import OutputBag
from seg_node.evaluation.workers import Workers

__all__ = ["incomplete_reasons", "metrics_json", "print_summary", "write_outputs"]


def metrics_json(args: argparse.Namespace, config: SegmenterConfig, source: BagSource, topics: dict[str, str | None],
                 engine: Workers, run: BagRun, storage: str, wall: float) -> dict[str, Any]:
    """The content of metrics.json (without its ``complete`` and ``incomplete_reasons``)."""
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


def incomplete_reasons(metrics: dict[str, Any]) -> list[str]:
    """Why the run is incomplete (exit code 1): what was skipped, rejected, damaged or left unread."""
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


def write_outputs(out: Path, metrics: dict[str, Any], run: BagRun, writer: OutputBag | None) -> list[str]:
    """Write metrics.json, frames.jsonl and the report into ``out``; returns what was written (the output bag too)."""
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


def print_summary(metrics: dict[str, Any], problems: list[str], written: list[str]) -> None:
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
