"""The HTML page of a bag evaluation: the numbers of metrics.json, plots and thumbnails of the best and worst frames.

Plots are inline SVG written here (matplotlib is not a dependency of the runtime, and a page of a few polylines and
bars needs none); thumbnails are PNG files in ``thumbnails/`` beside the page, so the page stays small and opens
offline.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["write_report", "svg_lines", "svg_bars", "histogram"]

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
_W, _H = 560, 270
_M = dict(left=56, right=12, top=40, bottom=44)


def _esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return _esc(v)


def _ticks(lo: float, hi: float, n: int = 5, integer: bool = False) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    step = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * step:
            step *= m
            break
    if integer:
        step = max(1.0, round(step))
    start = math.ceil(lo / step - 1e-9) * step
    return [round(start + i * step, 10) for i in range(int((hi - start) / step + 1e-9) + 1)]


def _fmt_tick(v: float) -> str:
    return f"{v:g}" if abs(v) < 1e5 else f"{v:.2g}"


def _frame(title: str, xlabel: str, ylabel: str, body: list[str], legend: Sequence[str]) -> str:
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" '
             f'font-family="sans-serif" font-size="11">',
             f'<text x="{_W / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">{_esc(title)}</text>',
             *body,
             f'<text x="{(_M["left"] + _W - _M["right"]) / 2}" y="{_H - 6}" text-anchor="middle">{_esc(xlabel)}</text>',
             f'<text x="12" y="{(_M["top"] + _H - _M["bottom"]) / 2}" text-anchor="middle" '
             f'transform="rotate(-90 12 {(_M["top"] + _H - _M["bottom"]) / 2})">{_esc(ylabel)}</text>']
    x = _M["left"]
    for i, name in enumerate(legend):  # between the title and the plot
        parts.append(f'<rect x="{x}" y="{_M["top"] - 14}" width="10" height="10" fill="{_COLORS[i % len(_COLORS)]}"/>'
                     f'<text x="{x + 14}" y="{_M["top"] - 5}">{_esc(name)}</text>')
        x += 22 + 7 * len(name)
    parts.append("</svg>")
    return "\n".join(parts)


def _axes(x_lo: float, x_hi: float, y_lo: float, y_hi: float, x_ticks: bool = True,
          integer_x: bool = False) -> tuple[list[str], Any, Any]:
    left, right, top, bottom = _M["left"], _W - _M["right"], _M["top"], _H - _M["bottom"]
    sx = lambda v: left + (v - x_lo) / ((x_hi - x_lo) or 1.0) * (right - left)  # noqa: E731
    sy = lambda v: bottom - (v - y_lo) / ((y_hi - y_lo) or 1.0) * (bottom - top)  # noqa: E731
    body = [f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="none" stroke="#999"/>']
    for t in _ticks(y_lo, y_hi):
        if y_lo - 1e-9 <= t <= y_hi + 1e-9:
            body.append(f'<line x1="{left}" x2="{right}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#e8e8e8"/>'
                        f'<text x="{left - 4}" y="{sy(t) + 4:.1f}" text-anchor="end">{_fmt_tick(t)}</text>')
    if x_ticks:
        for t in _ticks(x_lo, x_hi, 6, integer_x):
            if x_lo - 1e-9 <= t <= x_hi + 1e-9:
                body.append(f'<text x="{sx(t):.1f}" y="{bottom + 14}" text-anchor="middle">{_fmt_tick(t)}</text>')
    return body, sx, sy


def svg_lines(title: str, series: Mapping[str, Sequence[tuple[float, float]]], xlabel: str, ylabel: str,
              y_range: tuple[float, float] | None = None, markers: bool = False, integer_x: bool = True) -> str:
    """A line chart of named (x, y) series as an SVG string (x ticks at integers by default: frames, clicks)."""
    pts = [p for s in series.values() for p in s if p[1] is not None and math.isfinite(p[1])]
    if not pts:
        return ""
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    y_lo, y_hi = y_range if y_range else (min(0.0, min(ys)), max(ys) * 1.05 or 1.0)
    body, sx, sy = _axes(min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1, y_lo, y_hi, integer_x=integer_x)
    for i, (name, s) in enumerate(series.items()):
        c = _COLORS[i % len(_COLORS)]
        good = [(x, y) for x, y in s if y is not None and math.isfinite(y)]
        if len(good) > 1:
            body.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.5" points="'
                        + " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in good) + '"/>')
        if markers or len(good) == 1:
            body += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{c}"/>' for x, y in good]
    return _frame(title, xlabel, ylabel, body, list(series))


def svg_bars(title: str, categories: Sequence[str], series: Mapping[str, Sequence[float | None]], xlabel: str, ylabel: str,
             y_range: tuple[float, float] | None = None) -> str:
    """Grouped bars: one group per category, one bar per series, as an SVG string."""
    vals = [v for s in series.values() for v in s if v is not None]
    if not vals or not categories:
        return ""
    y_lo, y_hi = y_range if y_range else (0.0, max(vals) * 1.05 or 1.0)
    body, _, sy = _axes(0, 1, y_lo, y_hi, x_ticks=False)
    left, right = _M["left"], _W - _M["right"]
    group = (right - left) / len(categories)
    bar = group * 0.8 / max(1, len(series))
    for j, cat in enumerate(categories):
        x0 = left + j * group + group * 0.1
        for i, s in enumerate(series.values()):
            v = s[j]
            if v is None:
                continue
            y = sy(min(max(v, y_lo), y_hi))
            body.append(f'<rect x="{x0 + i * bar:.1f}" y="{y:.1f}" width="{bar * 0.95:.1f}" height="{sy(y_lo) - y:.1f}" '
                        f'fill="{_COLORS[i % len(_COLORS)]}"><title>{_esc(cat)}: {v:.4g}</title></rect>')
        if len(categories) <= 8 or j % math.ceil(len(categories) / 5) == 0:
            body.append(f'<text x="{left + (j + 0.5) * group:.1f}" y="{_H - _M["bottom"] + 14}" '
                        f'text-anchor="middle">{_esc(cat)}</text>')
    return _frame(title, xlabel, ylabel, body, list(series) if len(series) > 1 else [])


def histogram(values: Sequence[float], bins: int = 20, lo: float = 0.0, hi: float = 1.0) -> list[int]:
    counts = [0] * bins
    for v in values:
        i = min(bins - 1, max(0, int((v - lo) / (hi - lo) * bins)))
        counts[i] += 1
    return counts


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in header) + "</tr>")
    for r in rows:
        out.append("<tr>" + "".join(f"<td class='n'>{_num(c)}</td>" if isinstance(c, (int, float)) or c is None
                                    else f"<td>{_num(c)}</td>" for c in r) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


_CSS = """body{font-family:sans-serif;margin:24px;max-width:1200px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}
th{background:#f4f4f4}td.n{text-align:right}.warn{background:#fff3cd;border:1px solid #e0c060;padding:8px;margin:8px 0}
.plots{display:flex;flex-wrap:wrap;gap:12px}.thumbs{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0}figcaption{font-size:12px;color:#555}pre{background:#f7f7f7;padding:8px;font-size:12px;overflow:auto}"""


def write_report(out: Path, metrics: Mapping[str, Any], frames: Sequence[Mapping[str, Any]],
                 prompt_ious: Sequence[Sequence[float]], prompt_buckets: Sequence[str], best_ious: Sequence[float],
                 thumbnails: Sequence[tuple[str, int, float | None, bytes]]) -> tuple[Path, int]:
    """Write ``out/report.html`` and ``out/thumbnails/*.png``; returns (page path, thumbnails written).

    ``prompt_ious``: per GT instance, IoU after 1..k clicks; ``prompt_buckets`` its COCO size bucket; ``best_ious``:
    per GT instance, its best IoU with any segment-everything segment; ``thumbnails``: (kind, frame, score, png).
    """
    out = Path(out)
    page: list[str] = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>bag_eval report</title><style>{_CSS}</style></head><body>"]
    bag, fr, model = metrics["bag"], metrics["frames"], metrics["model"]
    page.append(f"<h1>bag_eval: {_esc(Path(bag['path']).name)}</h1>")
    if not metrics.get("complete", True):
        page.append("<h2>Incomplete: these numbers do not cover the bag as recorded</h2>")
        page += [f"<div class='warn'>{_esc(r)}</div>" for r in metrics.get("incomplete_reasons", [])]
    if metrics.get("no_ground_truth"):
        page.append(f"<div class='warn'>{_esc(metrics['no_ground_truth'])}</div>")
    page.append(_table([("bag", bag["path"]), ("storage", bag["storage"]), ("checksums", bag.get("checksums")), ("image topic", bag["topics"].get("image")),
                        ("ground truth", (metrics.get("ground_truth") or {}).get("source", "none")),
                        ("model", f"{model['path']} ({model['family']}, {model['mode']})"), ("backend", model["backend"]),
                        ("frames processed", fr["processed"]), ("frames with ground truth", fr["evaluated"]),
                        ("throughput", f"{metrics['throughput']['frames_per_s']} frames/s, {metrics['throughput']['workers']} worker(s)")]))

    # Everything that was not used, up front: a metric over fewer frames than the bag holds must say so.
    warnings = []
    if bag.get("read_error"):
        damage = f"rosbags could not open it ({bag['open_error']}); " if bag.get("open_error") else ""
        warnings.append(f"The bag is damaged: {damage}reading stopped at: {bag['read_error']}. Read "
                        f"{bag['image_messages_read']} of {bag['image_messages_expected'] if bag['image_messages_expected'] is not None else '?'} "
                        "image messages.")
    for reason, n in sorted(fr["skipped"].items()):
        warnings.append(f"{n} frame(s) skipped: {reason}")
    gt = metrics.get("ground_truth") or {}
    if gt.get("without_frame"):
        warnings.append(f"{gt['without_frame']} ground-truth frame(s) match no image frame (stamps: {gt['without_frame_stamps']})")
    for reason, n in sorted((gt.get("rejected") or {}).items()):
        warnings.append(f"{n} ground-truth frame(s) rejected: {reason}")
    for reason, n in sorted(fr.get("warnings", {}).items()):
        warnings.append(f"{n}× {reason}")
    if fr.get("without_gt"):
        warnings.append(f"{fr['without_gt']} frame(s) have no ground truth: segmented and written, not scored.")
    if warnings:
        page.append("<h2>Skipped and rejected input</h2>")
        page += [f"<div class='warn'>{_esc(w)}</div>" for w in warnings]
        examples = fr.get("examples") or {}
        if examples:
            page.append("<pre>" + _esc(json.dumps(examples, indent=1)) + "</pre>")

    pp = metrics.get("point_prompt")
    if pp and pp.get("miou"):
        k = len(pp["miou"])
        page.append("<h2>Point prompts (SAM click protocol)</h2>")
        rows = [("all", pp["instances"], pp["miou"]["1"], pp["miou"][str(k)], pp["boundary_f"])]
        rows += [(b, v["instances"], (v["miou"] or {}).get("1"), (v["miou"] or {}).get(str(k)), v["boundary_f"])
                 for b, v in pp["by_size"].items()]
        page.append(_table(rows, ["objects", "instances", "mIoU@1", f"mIoU@{k}", "boundary F@1"]))
        plots = [svg_lines("mIoU vs clicks", {"all": [(int(c), v) for c, v in pp["miou"].items()],
                                              **{b: [(int(c), v) for c, v in (pp["by_size"][b]["miou"] or {}).items()]
                                                 for b in pp["by_size"] if pp["by_size"][b]["miou"]}},
                           "clicks", "mIoU", (0.0, 1.0), markers=True)]
        bins = [f"{i / 20:.2f}" for i in range(20)]
        series = {"1 click": histogram([v[0] for v in prompt_ious])}
        if k > 1:
            series[f"{k} clicks"] = histogram([v[-1] for v in prompt_ious])
        plots.append(svg_bars("IoU histogram (point prompts)", bins, series, "IoU (bin start)", "instances"))
        buckets = ["small", "medium", "large"]
        plots.append(svg_bars("mIoU by object size", buckets,
                              {"1 click": [(pp["by_size"][b]["miou"] or {}).get("1") for b in buckets],
                               f"{k} clicks": [(pp["by_size"][b]["miou"] or {}).get(str(k)) for b in buckets]},
                              "COCO size", "mIoU", (0.0, 1.0)))
        page.append("<div class='plots'>" + "".join(plots) + "</div>")

    se = metrics.get("segment_everything")
    if se:
        page.append("<h2>Segment everything (pycocotools)</h2>")
        page.append(_table([(k, v) for k, v in se.items()], ["metric", "value"]))
        plots = [svg_bars("AP and AR by object size", ["small", "medium", "large"],
                          {"AP": [se.get(f"AP_{b}") for b in ("small", "medium", "large")],
                           "AR": [se.get(f"AR_{b}") for b in ("small", "medium", "large")]}, "COCO size", "", (0.0, 1.0))]
        if best_ious:
            plots.append(svg_bars("Best IoU per ground-truth instance", [f"{i / 20:.2f}" for i in range(20)],
                                  {"instances": histogram(best_ious)}, "IoU (bin start)", "instances"))
        page.append("<div class='plots'>" + "".join(plots) + "</div>")

    tm = metrics.get("temporal")
    if tm:
        page.append("<h2>Temporal id consistency</h2>")
        page.append(_table([(k, v) for k, v in tm.items() if k != "definition"], ["metric", "value"]))
        page.append(f"<p>{_esc(tm['definition'])}</p>")

    mc = metrics.get("completion")
    if mc:
        page.append("<h2>Mask completion (LDMSeg inpainting) against a nearest-label fill</h2>")
        page += [f"<div class='warn'>{n} frame(s) with ground truth not scored: {_esc(reason)}</div>"
                 for reason, n in sorted(mc["not_scored"].items())]
        rows = mc["results"]
        page.append(_table([(name, r["frames"], r["instances"], r["completion_iou"], r["baseline_iou"],
                             r["completion_hidden_correct"], r["baseline_hidden_correct"]) for name, r in rows.items()],
                           ["hidden", "frames", "instances", "completion IoU", "baseline IoU", "hidden px right",
                            "baseline hidden px right"]))
        plots = [svg_bars("Completion vs nearest-label fill", list(rows),
                          {"completion": [r["completion_iou"] for r in rows.values()],
                           "nearest-label fill": [r["baseline_iou"] for r in rows.values()]}, "hidden", "mean IoU", (0.0, 1.0))]
        if mc["figure"]:
            caption = f"frame {mc['figure_frame']}: image, known part (hidden in grey), completed, ground truth"
            plots.append(f"<figure><img src='{_esc(mc['figure'])}' alt='{_esc(caption)}'><figcaption>{_esc(caption)}</figcaption></figure>")
        page.append("<div class='plots'>" + "".join(plots) + "</div>")
        page.append(f"<p>{_esc(mc['definition'])}</p>")

    page.append("<h2>Latency</h2>")
    lat = metrics.get("latency_ms") or {}
    page.append(_table([(k, v["mean"], v["p50"], v["p95"], v["max"]) for k, v in lat.items()],
                       ["stage (ms)", "mean", "p50", "p95", "max"]))
    stages = [s for s in ("network", "instances", "tracking", "total") if s in lat]
    if frames and stages:
        series = {s: [(f["frame"], f["timings_ms"].get(s)) for f in frames] for s in stages}
        plots = [svg_lines("Latency over the bag", series, "frame", "ms")]
        per_frame = [(f["frame"], f.get("miou_1", f.get("mean_best_iou"))) for f in frames if f.get("miou_1", f.get("mean_best_iou")) is not None]
        if per_frame:
            plots.append(svg_lines("Per-frame quality (mIoU@1, else mean best IoU)", {"frame score": per_frame}, "frame", "IoU", (0.0, 1.0)))
        plots.append(svg_lines("Segments per frame", {"segments": [(f["frame"], f["segments"]) for f in frames]}, "frame", "segments"))
        page.append("<div class='plots'>" + "".join(plots) + "</div>")

    written = 0
    if thumbnails:
        folder = out / "thumbnails"
        folder.mkdir(exist_ok=True)
        for old in folder.glob("*.png"):
            old.unlink()
        page.append("<h2>Frames</h2><p>Left: segments (overlay); right: ground truth, where there is one.</p>")
        for kind in ("best", "worst", "sample"):
            items = [t for t in thumbnails if t[0] == kind]
            if not items:
                continue
            page.append(f"<h3>{_esc(kind)}</h3><div class='thumbs'>")
            for n, (_, index, score, png) in enumerate(items, 1):
                name = f"{kind}_{n:02d}_frame{index:06d}.png"
                (folder / name).write_bytes(png)
                written += 1
                caption = f"frame {index}" + (f", score {score:.3f}" if score is not None else "")
                page.append(f"<figure><img src='thumbnails/{name}' alt='{_esc(caption)}'><figcaption>{_esc(caption)}</figcaption></figure>")
            page.append("</div>")

    page.append("<h2>Definitions</h2>")
    page.append(_table([(k, v) for k, v in (metrics.get("definitions") or {}).items()], ["", "definition"]))
    page.append("<h2>Configuration</h2><pre>" + _esc(json.dumps(metrics.get("config"), indent=1)) + "</pre>")
    page.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(page))
    return path, written
