"""``maskige_check``: how much of a mask survives an SD model's own VAE, by object size and processing resolution.

    maskige_check --model SD_PATH [--resolutions 256 384 512 768] [--scenes 20] [--size 480x640] [--output DIR]
                  [--shapes box,cable,...] [--fit] [--seed 7]

An SD-family gen2seg model produces its colour map through the VAE decoder at the processing resolution, so what
a maskige (``seg_node.processing.maskige``) keeps after a VAE encode → decode round trip at that resolution is the
ceiling any such model can reach there. For each resolution the ground-truth label map of a synthetic scene
(``training.synthetic``) is resized (nearest) so that its long edge is the resolution, padded to the VAE's
multiple, written as a maskige, sent through ``vae/`` (posterior mean, as the model runs), decoded back to labels,
resized back to the scene and scored per ground-truth piece (a connected piece of an instance; pieces smaller than
the decoder's ``min_area`` are not scored): best IoU with a decoded segment and the DAVIS boundary F of that match,
grouped by COCO size (small < 32², medium < 96², large) with thin structures (at most ~4 px wide) apart.
``--fit`` also fits the affine colour correction on separate calibration scenes and scores it.

Writes ``maskige_check.json``, ``maskige_check.md`` (table and the lowest resolution that keeps 95 % of the best
IoU), ``maskige_check.png`` (IoU against resolution per bucket) and ``maskige_roundtrip.png`` (a scene's maskige,
the VAE's output and the decoded segments, per resolution). Bad input: exit 2 with the file named.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from seg_node.evaluation import metrics as M
from seg_node.processing.maskige import MaskigeCodec
from seg_node.processing.visualize import overlay
from training.synthetic import SHAPES, SceneGenerator, scene_size

__all__ = ["main", "load_vae", "round_trip", "score_pieces", "summarise", "BUCKETS"]

BUCKETS = ("small", "medium", "large", "thin")
THIN_RADIUS = 2.0  # a piece whose widest point is at most this far from its border is "thin" (≤ ~4 px wide)


def load_vae(model: str | Path) -> Any:
    """The ``vae/`` of an SD checkpoint folder (diffusers AutoencoderKL), in eval mode; CheckpointError naming it."""
    from diffusers import AutoencoderKL

    from seg_node.models.checkpoints import CheckpointError, inspect_checkpoint

    info = inspect_checkpoint(model)
    if info.kind != "sd":
        raise CheckpointError(f"{info.path}: a gen2seg {info.kind.upper()} model; maskige_check needs an SD model "
                              "(its VAE)")
    return AutoencoderKL.from_pretrained(str(info.path), subfolder="vae", local_files_only=True).eval()


def round_trip(vae: Any, maskige: np.ndarray) -> np.ndarray:
    """uint8 H×W×3 maskige → float32 H×W×3 (0..255) after the VAE's encode (posterior mean) and decode. H and W must
    be multiples of the VAE's downsampling factor."""
    import torch

    x = torch.from_numpy(maskige.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mode()
        y = vae.decode(z, return_dict=False)[0]
    return ((y[0].permute(1, 2, 0).float().numpy() + 1.0) * 127.5).clip(0, 255)


def vae_factor(vae: Any) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def pieces(labels: np.ndarray) -> np.ndarray:
    """Each instance split into its 8-connected pieces: int32, 0 = background."""
    out, count = np.zeros(labels.shape, np.int32), 0
    for k in np.unique(labels[labels > 0]):
        n, comp = cv2.connectedComponents((labels == k).astype(np.uint8), connectivity=8)
        out[comp > 0] = comp[comp > 0] + count
        count += n - 1
    return out


def score_pieces(gt: np.ndarray, decoded: np.ndarray, min_area: int = 1) -> list[dict[str, Any]]:
    """Per ground-truth piece of at least ``min_area`` pixels: area, bucket, best IoU with a decoded segment and
    the boundary F of that match. Smaller pieces (and background specks) are ignored regions: the decoder merges
    such specks into a neighbour by design, so their pixels count for no segment."""
    gt_pieces = pieces(gt)
    n_gt, n_dt = int(gt_pieces.max()) + 1, int(decoded.max()) + 1
    ignore = (np.bincount(gt_pieces.ravel(), minlength=n_gt) < min_area)[gt_pieces] & (gt_pieces > 0)
    _, holes = cv2.connectedComponents((gt_pieces == 0).astype(np.uint8), connectivity=8)
    ignore |= (np.bincount(holes.ravel()) < min_area)[holes] & (holes > 0)  # background specks (holes) too
    # Contingency table: intersections of every (gt piece, decoded segment) pair in one pass.
    keys = gt_pieces[~ignore].astype(np.int64) * n_dt + decoded[~ignore]
    joint = np.bincount(keys, minlength=n_gt * n_dt).reshape(n_gt, n_dt)
    gt_area, dt_area = joint.sum(1), joint.sum(0)
    out = []
    for g in range(1, n_gt):
        if gt_area[g] < min_area:
            continue
        union = gt_area[g] + dt_area - joint[g]
        iou = np.where(np.arange(n_dt) > 0, joint[g] / np.maximum(union, 1), 0.0)
        best = int(iou.argmax())
        mask = gt_pieces == g
        radius = float(cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 3).max())
        bucket = "thin" if radius <= THIN_RADIUS else M.size_bucket(gt_area[g])
        bf = M.boundary_f((decoded == best) & ~ignore, mask)[0] if iou[best] > 0 else 0.0
        out.append({"area": int(gt_area[g]), "bucket": bucket, "iou": float(iou[best]), "boundary_f": float(bf)})
    return out


def summarise(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean IoU and boundary F, overall and per bucket, with counts."""
    def block(rs: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not rs:
            return {"count": 0, "iou": None, "boundary_f": None}
        return {"count": len(rs), "iou": round(float(np.mean([r["iou"] for r in rs])), 4),
                "boundary_f": round(float(np.mean([r["boundary_f"] for r in rs])), 4)}
    return {"all": block(records), **{b: block([r for r in records if r["bucket"] == b]) for b in BUCKETS}}


def at_resolution(labels: np.ndarray, resolution: int, factor: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Labels resized (nearest) to long edge ``resolution`` and edge-padded to a multiple of ``factor``; and the
    unpadded size."""
    h, w = labels.shape
    nh, nw = max(1, h * resolution // max(h, w)), max(1, w * resolution // max(h, w))
    small = cv2.resize(labels.astype(np.uint16), (nw, nh), interpolation=cv2.INTER_NEAREST)
    ph, pw = -nh % factor, -nw % factor
    return cv2.copyMakeBorder(small, 0, ph, 0, pw, cv2.BORDER_REPLICATE), (nh, nw)


def check(vae: Any, scenes: Sequence[np.ndarray], resolutions: Sequence[int], codecs: dict[str, MaskigeCodec],
          progress: Any = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Summaries per codec name and resolution; and per resolution one example (the first scene) for the figure."""
    factor = vae_factor(vae)
    results: dict[str, Any] = {name: {} for name in codecs}
    examples = []
    for res in resolutions:
        records: dict[str, list[dict[str, Any]]] = {name: [] for name in codecs}
        for i, labels in enumerate(scenes):
            padded, (nh, nw) = at_resolution(labels, res, factor)
            sent = MaskigeCodec().encode(padded)
            received = round_trip(vae, sent)
            for name, codec in codecs.items():
                decoded = codec.decode(received)[:nh, :nw]
                back = cv2.resize(decoded, labels.shape[::-1], interpolation=cv2.INTER_NEAREST)
                records[name] += score_pieces(labels, back, codec.min_area)
                if i == 0 and name == "fixed":
                    examples.append({"resolution": res, "sent": sent[:nh, :nw], "received": received[:nh, :nw],
                                     "decoded": back})
            if progress is not None:
                progress.update(1)
        for name in codecs:
            results[name][str(res)] = summarise(records[name])
    return results, examples


def fit_codec(vae: Any, scenes: Sequence[np.ndarray], resolution: int) -> MaskigeCodec:
    """The fixed codec with an affine colour correction fitted on the VAE's round trips of ``scenes``."""
    sent_all, received_all = [], []
    for labels in scenes:
        padded, _ = at_resolution(labels, resolution, vae_factor(vae))
        sent = MaskigeCodec().encode(padded)
        sent_all.append(sent.reshape(-1, 3))
        received_all.append(round_trip(vae, sent).reshape(-1, 3))
    return MaskigeCodec().fitted(np.concatenate(sent_all), np.concatenate(received_all))


def _plot(results: dict[str, Any], resolutions: Sequence[int], path: Path) -> None:
    """IoU against resolution per bucket (fixed codec), drawn with OpenCV (matplotlib is not a dependency)."""
    w, h, left, bottom, top = 640, 400, 60, 50, 30
    img = np.full((h, w, 3), 255, np.uint8)
    x_of = {r: left + int((w - left - 150) * (i / max(1, len(resolutions) - 1))) for i, r in enumerate(resolutions)}
    def y_of(v: float) -> int:
        return top + int((h - top - bottom) * (1.0 - v))
    cv2.rectangle(img, (left, top), (w - 150, h - bottom), (0, 0, 0), 1)
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        cv2.putText(img, f"{v:.2f}", (8, y_of(v) + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for r, x in x_of.items():
        cv2.putText(img, str(r), (x - 12, h - bottom + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "processing resolution (long edge, px)", (left + 80, h - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "maskige IoU after the VAE round trip", (left, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                cv2.LINE_AA)
    colors = {"all": (0, 0, 0), "small": (0, 0, 220), "medium": (0, 160, 0), "large": (220, 0, 0),
               "thin": (200, 0, 200)}
    for row, (bucket, color) in enumerate(colors.items()):
        pts = [(x_of[r], y_of(results[str(r)][bucket]["iou"])) for r in resolutions
               if results[str(r)][bucket]["iou"] is not None]
        for a, b in zip(pts, pts[1:]):
            cv2.line(img, a, b, color, 2, cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, p, 4, color, -1, cv2.LINE_AA)
        cv2.line(img, (w - 135, top + 10 + 20 * row), (w - 110, top + 10 + 20 * row), color, 2)
        cv2.putText(img, bucket, (w - 104, top + 14 + 20 * row), cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, 1, cv2.LINE_AA)
    cv2.imwrite(str(path), img)  # colours are given in OpenCV's BGR order


def _figure(examples: Sequence[dict[str, Any]], path: Path, height: int = 160) -> None:
    """One row per resolution: the maskige sent, what the VAE returned, the decoded segments."""
    rows = []
    for ex in examples:
        panels = [ex["sent"], ex["received"].astype(np.uint8), overlay(np.zeros(ex["decoded"].shape + (3,), np.uint8),
                                                                       ex["decoded"], 1.0)]
        panels = [cv2.resize(p, (int(p.shape[1] * height / p.shape[0]), height), interpolation=cv2.INTER_NEAREST)
                  for p in panels]
        row = np.concatenate([np.pad(p, ((0, 4), (0, 4), (0, 0)), constant_values=255) for p in panels], 1)
        cv2.putText(row, f"{ex['resolution']} px", (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                    cv2.LINE_AA)
        rows.append(row)
    width = max(r.shape[1] for r in rows)
    grid = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows])
    cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))


def _markdown(report: dict[str, Any]) -> str:
    lines = [f"# maskige_check: {report['model']}", "",
             f"{report['scenes']} synthetic scenes at {report['size'][0]}x{report['size'][1]} (shapes "
             f"{', '.join(report['shapes'])}), ground-truth maskiges through the model's VAE. IoU / boundary F per "
             "ground-truth piece; n = pieces scored.", ""]
    for name, per_res in report["results"].items():
        lines += [f"## codec: {name}", "", "| resolution | all | small | medium | large | thin |",
                  "|---|---|---|---|---|---|"]
        for res, s in per_res.items():
            cells = [f"{s[b]['iou']:.3f} / {s[b]['boundary_f']:.3f} (n={s[b]['count']})" if s[b]["count"] else "–"
                     for b in ("all",) + BUCKETS]
            lines.append(f"| {res} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Lowest resolution within 95 % of the best overall IoU (fixed codec): "
              f"**{report['recommended_resolution']}**.",
              "", "![IoU by resolution](maskige_check.png)", "", "![round trip](maskige_roundtrip.png)", ""]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="maskige_check", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="gen2seg SD checkpoint folder (diffusers layout, its vae/ is used)")
    p.add_argument("--resolutions", type=int, nargs="+", default=[256, 384, 512, 768])
    p.add_argument("--scenes", type=int, default=20)
    p.add_argument("--size", type=scene_size, default=(480, 640), help="HxW of the ground-truth scenes")
    # --families: the old spelling, still in scripts and users' commands
    p.add_argument("--shapes", "--families", default=",".join(SHAPES), help="comma-separated synthetic shapes")
    p.add_argument("--fit", action="store_true", help="also fit and score the affine colour correction")
    p.add_argument("--output", type=Path, default=Path("maskige_check"))
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    if args.scenes < 1 or min(args.resolutions) < 16:
        p.error("--scenes must be >= 1 and every resolution >= 16")
    args.shapes = tuple(s for s in args.shapes.split(",") if s)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from tqdm import tqdm

    try:
        vae = load_vae(args.model)
        generator = SceneGenerator(*args.size, shapes=args.shapes, seed=args.seed)
    except (OSError, ValueError) as exc:  # CheckpointError is an OSError; a bad shape list a ValueError
        print(f"maskige_check: {exc}", file=sys.stderr)
        return 2
    resolutions = sorted(set(args.resolutions))
    scenes = [generator.scene(i).labels for i in range(args.scenes)]
    codecs = {"fixed": MaskigeCodec()}
    if args.fit:
        calibration = [generator.scene(args.scenes + i).labels for i in range(4)]
        codecs["fitted"] = fit_codec(vae, calibration, max(resolutions))
    with tqdm(total=len(resolutions) * len(scenes), desc="maskige round trips", unit="scene") as bar:
        results, examples = check(vae, scenes, resolutions, codecs, bar)
    best = max(results["fixed"][str(r)]["all"]["iou"] or 0.0 for r in resolutions)
    recommended = next(r for r in resolutions if (results["fixed"][str(r)]["all"]["iou"] or 0.0) >= 0.95 * best)
    report = {"model": str(args.model), "scenes": len(scenes), "size": list(args.size), "shapes": list(args.shapes),
              "seed": args.seed, "resolutions": resolutions, "results": results, "recommended_resolution": recommended}
    if "fitted" in codecs:
        report["fitted_transform"] = np.asarray(codecs["fitted"].transform).round(5).tolist()
    args.output.mkdir(parents=True, exist_ok=True)
    written = {"JSON": args.output / "maskige_check.json", "report": args.output / "maskige_check.md",
               "plot": args.output / "maskige_check.png", "round-trip figure": args.output / "maskige_roundtrip.png"}
    written["JSON"].write_text(json.dumps(report, indent=2) + "\n")
    written["report"].write_text(_markdown(report))
    _plot(results["fixed"], resolutions, written["plot"])
    _figure(examples, written["round-trip figure"])
    for r in resolutions:
        s = results["fixed"][str(r)]
        print(f"{r:5d} px: IoU {s['all']['iou']:.3f}, boundary F {s['all']['boundary_f']:.3f}, thin IoU "
              f"{s['thin']['iou'] if s['thin']['count'] else '–'}")
    for what, path in written.items():
        print(f"wrote the {what} to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
