"""``calibrate_instances``: pick ``label_instances`` thresholds for a model on scenes of the shapes it was trained on.

    calibrate_instances --model engines/default/model.onnx --shapes box tool cable flat --output FILE.yaml
                        [--scenes 40] [--size 240x320] [--seed 2000003] [--config BASE.yaml]

A model trained from scratch does not push every background pixel to black or every instance to one colour as
far as gen2seg's pre-trained ones do, nor draw borders finer than its patches, so the defaults of
``InstanceParams`` (tuned on clean colour maps) can split its instances or keep background blotches. This runs the
network once per scene and guided-refinement radius (``model.refine_radius``, ``seg_node.refine``), then tries a
small grid of the thresholds that decide those cases (background, merging, smallest instance) with the Segmenter's
own post-processing. It keeps the radius and thresholds with the best segment-everything AP50 (AP breaks ties),
then at that point how instance scores weigh a soft border (``instances.border_contrast``) and the smallest score
kept (``instances.min_score``), and, for point prompts, the map's radius (``model.prompt_refine_radius``) and the colour distance that counts as
the clicked object (``prompting.tau``) with the best single-point mIoU: a wide window that rounds instances for
segment-everything bleeds a clicked mask into its neighbours, and a model trained from scratch colours an object
less evenly than the paper's (a thin cable darkens where it covers part of a pixel), so each user API gets its
own. Use scenes of the *training* shapes: the held-out shapes stay unseen for the model card's numbers.

Writes a Segmenter config YAML (the base config, or the defaults, with the chosen radii, ``instances`` thresholds
and ``prompting.tau``; no model path, so it is given with the model: ``--model M --config FILE``) that
``segment_images``, ``bag_eval``, ``synthetic_stream`` and ``python -m training.evaluate`` take, and prints every
grid point's scores.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from seg_node.evaluation import metrics as M
from seg_node.model_settings import resolve_config
from seg_node.config import ConfigError, SegmenterConfig, config_to_dict
from seg_node.processing.model_io import ColorMap
from seg_node.models.checkpoints import CheckpointError
from seg_node.pipeline import Segmenter
from seg_node.processing.tracking import TrackerParams
from training.evaluate import evaluation_scenes, single_point_ious
from training.synthetic import SHAPES, Scene, scene_size

__all__ = ["BORDER_CONTRASTS", "GRID", "MIN_SCORE_COST", "MIN_SCORES", "PROMPT_TAUS", "REFINE_RADII", "UPSAMPLE_RADII", "calibrate",
           "main"]

EXIT_OK, EXIT_USAGE = 0, 2

# The thresholds that decide whether a blotch is background, whether two neighbouring regions are one instance,
# and how small an instance may be; the rest of InstanceParams is left as configured.
GRID: dict[str, Sequence[Any]] = {
    "background_threshold": (30.0, 60.0, 90.0, 120.0),
    "merge_distance": (15.0, 30.0, 50.0),
    "min_area": (30, 200, 500, 1000),
}
# Guided refinement of the colour map (model.refine_radius, in network pixels; 0 = off), up to about one ViT patch:
# that moves borders onto the frame's edges, while much wider windows start to re-segment by the frame's colours,
# which would credit the filter with what the model is meant to do.
REFINE_RADII: Sequence[int] = (0, 4, 8, 12)
# Point prompts' colour distance (prompting.tau; a pixel is the clicked object's when d <= tau / min_similarity):
# from the paper's clean maps (12) to about half the background threshold's range, where neighbours start to join.
PROMPT_TAUS: Sequence[float] = (8.0, 12.0, 16.0, 20.0, 25.0, 30.0)
# Colour step across an instance's border below which its score is scaled down (instances.border_contrast), tried at
# the chosen point before min_score; the best AP50 (then AP) is kept if it beats none. A model trained from scratch
# draws soft borders where it is unsure (shadows, lit-up table patches, a piece split off an object), so ranking by
# how sharply a segment ends puts those below the objects.
BORDER_CONTRASTS: Sequence[float] = (50.0, 75.0, 100.0, 150.0)
# Smallest instance score kept (instances.min_score), tried at the chosen point: the largest that costs at most
# MIN_SCORE_COST of AP50. What it drops ranks below nearly every object, so AP50 hardly moves while the share of
# published segments that are objects rises; a strict "no cost" would let one object scored 0.04 among a hundred
# scenes keep every shadow.
MIN_SCORES: Sequence[float] = (0.05, 0.1, 0.2, 0.3)
MIN_SCORE_COST = 0.005
# Joint upsampling of the click map to the frame (model.prompt_upsample_radius), tried at the chosen click setting.
UPSAMPLE_RADII: Sequence[int] = (1, 2)


def _ap(segmenter: Segmenter, maps: Sequence[ColorMap], scenes: Sequence[Scene]) -> dict[str, float | None]:
    coco = M.CocoEvaluator()
    for index, (color_map, scene) in enumerate(zip(maps, scenes)):
        result = segmenter.segment_colors(color_map)
        coco.add(index, M.GtFrame.from_label_image(scene.labels),
                 M.label_rles(result.labels, [s.id for s in result.segments]), [s.instance.score for s in result.segments])
    return coco.evaluate()


def _click_row(segmenter: Segmenter, maps: Sequence[Any], scenes: Sequence[Scene], **setting: Any) -> dict[str, Any]:
    """Single-point mIoU (and its standard error) of the segmenter's current config on ``maps`` (arrays or
    ColorMaps), as a row with ``setting``."""
    ious = [iou for m, scene in zip(maps, scenes)
            for iou in single_point_ious(segmenter, m, M.GtFrame.from_label_image(scene.labels))]
    miou = round(float(np.mean(ious)), 6) if ious else 0.0
    se = round(float(np.std(ious) / np.sqrt(len(ious))), 6) if ious else 0.0
    return {**setting, "miou_1": miou, "se": se}


def _try_instances(segmenter: Segmenter, scenes: Sequence[Scene], maps: Sequence[ColorMap], config: SegmenterConfig,
                   rows: list[dict[str, Any]], log: Any, name: str, value: float
                   ) -> tuple[SegmenterConfig, dict[str, Any]]:
    """``config`` with the ``instances`` setting ``name`` at ``value``, and its AP on ``maps`` (a row and a log
    line)."""
    trial = replace(config, instances=replace(config.instances, **{name: value}))
    segmenter.update_config(trial)
    ap = _ap(segmenter, maps, scenes)
    rows.append({"refine_radius": trial.model.refine_radius, **{n: getattr(trial.instances, n) for n in GRID},
                 name: value, "AP50": ap.get("AP50"), "AP": ap.get("AP")})
    log(f"  at the chosen point, {name} {value}: AP50 {ap.get('AP50'):.3f}, AP {ap.get('AP'):.3f}")
    return trial, ap


def _with_border_contrast(segmenter: Segmenter, scenes: Sequence[Scene], maps: Sequence[ColorMap],
                          best: tuple[float, float], config: SegmenterConfig, contrasts: Sequence[float],
                          rows: list[dict[str, Any]], log: Any) -> tuple[SegmenterConfig, float]:
    """The one of ``contrasts`` with the best AP50 (then AP) at the chosen point, if it beats ``best`` (that
    point's AP50, AP); ``maps`` are its colour maps. Returns the config and its AP50."""
    chosen = config
    for contrast in contrasts:
        trial, ap = _try_instances(segmenter, scenes, maps, config, rows, log, "border_contrast", float(contrast))
        key = (ap.get("AP50") or 0.0, ap.get("AP") or 0.0)
        if key > best:
            best, chosen = key, trial
    return chosen, best[0]


def _with_min_score(segmenter: Segmenter, scenes: Sequence[Scene], maps: Sequence[ColorMap], best_ap50: float,
                    config: SegmenterConfig, min_scores: Sequence[float], rows: list[dict[str, Any]],
                    log: Any) -> SegmenterConfig:
    """The largest of ``min_scores`` that lowers the chosen point's AP50 by at most ``MIN_SCORE_COST`` (AP50 only
    falls as the threshold rises: the tried ones stop at the first that costs more); ``maps`` are its colour maps."""
    for min_score in sorted(min_scores):
        trial, ap = _try_instances(segmenter, scenes, maps, config, rows, log, "min_score", float(min_score))
        if (ap.get("AP50") or 0.0) < best_ap50 - MIN_SCORE_COST:
            break
        config = trial
    return config


def _with_clicks(segmenter: Segmenter, scenes: Sequence[Scene], config: SegmenterConfig,
                 clicks: list[dict[str, Any]], upsample_radii: Sequence[int], log: Any) -> SegmenterConfig:
    """``config`` with the click setting of the one-standard-error rule among ``clicks``, then the best of
    ``upsample_radii`` at it if one beats none."""
    top = max(clicks, key=lambda r: r["miou_1"])
    near = [r for r in clicks if r["miou_1"] >= top["miou_1"] - top["se"]]
    click = min(near, key=lambda r: (r["tau"], r["refine_radius"] != config.model.refine_radius, -r["miou_1"]))
    prompt_radius = -1 if click["refine_radius"] == config.model.refine_radius else click["refine_radius"]
    config = replace(config, model=replace(config.model, prompt_refine_radius=prompt_radius),
                     prompting=replace(config.prompting, tau=click["tau"]))
    best_miou = click["miou_1"]
    for upsample in upsample_radii:
        trial = replace(config, model=replace(config.model, prompt_upsample_radius=upsample))
        segmenter.update_config(trial)
        maps = [segmenter.color_maps([scene.rgb])[0] for scene in scenes]
        clicks.append(_click_row(segmenter, maps, scenes, **{**click, "upsample_radius": upsample}))
        log(f"  clicks at the chosen setting, upsample_radius {upsample}: mIoU {clicks[-1]['miou_1']:.3f}")
        if clicks[-1]["miou_1"] > best_miou:
            best_miou, config = clicks[-1]["miou_1"], trial
    return config


def calibrate(segmenter: Segmenter, scenes: Sequence[Scene], grid: dict[str, Sequence[Any]] = GRID,
              radii: Sequence[int] = REFINE_RADII, taus: Sequence[float] = PROMPT_TAUS,
              min_scores: Sequence[float] = MIN_SCORES, upsample_radii: Sequence[int] = UPSAMPLE_RADII,
              log: Any = print, border_contrasts: Sequence[float] = BORDER_CONTRASTS
              ) -> tuple[SegmenterConfig, list[dict[str, Any]], list[dict[str, Any]]]:
    """The best config over ``radii`` × ``grid`` (segment-everything) and ``radii`` × ``taus`` (clicks) on
    ``scenes``, with every point's scores. Returns (config, segment-everything rows, click rows).

    Segment-everything: ``refine_radius`` and the ``grid`` thresholds with the best AP50 (then AP); at that point,
    the best of ``border_contrasts`` if one beats none (``instances.border_contrast``), then the largest of
    ``min_scores`` that lowers AP50 by at most ``MIN_SCORE_COST`` (``instances.min_score``: a node
    that publishes the segments it drops hands a robot shadows and lit-up table patches as objects).

    Clicks, by the one-standard-error rule: of the (radius, tau) settings whose single-point mIoU is within one
    standard error of the best, the smallest ``prompting.tau``, then ``refine_radius`` for ``prompt_refine_radius``
    (-1; it saves a second filter), then the higher mIoU. Past its best, mIoU over tau is flat within the scenes'
    noise, and there the smaller distance is the safer mask: it leaks less into a neighbour of similar colour on
    objects unlike the calibration scenes, and a grasp on a neighbour costs more than a missed stretch of cable. At
    that setting, the ``upsample_radii`` (``model.prompt_upsample_radius``) are tried; the best is kept if it beats
    none.

    The network runs once per scene and radius (and again for each upsampling radius); each grid point only
    re-labels the colour maps, each tau only re-prompts them.
    """
    base = segmenter.config
    rows: list[dict[str, Any]] = []
    clicks: list[dict[str, Any]] = []
    best: tuple[tuple[float, float], SegmenterConfig, list[ColorMap]] | None = None
    names = list(grid)
    for radius in radii:
        refined = replace(base, model=replace(base.model, refine_radius=radius))
        segmenter.update_config(refined)
        maps = [segmenter.color_maps([scene.rgb])[0] for scene in scenes]
        for tau in taus:
            segmenter.update_config(replace(refined, prompting=replace(base.prompting, tau=float(tau))))
            clicks.append(_click_row(segmenter, [m.colors for m in maps], scenes, refine_radius=radius,
                                     tau=float(tau), upsample_radius=0))
            log(f"  clicks: refine_radius {radius}, tau {tau}: mIoU {clicks[-1]['miou_1']:.3f} "
                f"± {clicks[-1]['se']:.3f}")
        for values in itertools.product(*(grid[n] for n in names)):
            chosen = dict(zip(names, values))
            config = replace(refined, instances=replace(base.instances, **chosen))
            segmenter.update_config(config)
            ap = _ap(segmenter, maps, scenes)
            rows.append({"refine_radius": radius, **chosen, "AP50": ap.get("AP50"), "AP": ap.get("AP")})
            log(f"  refine_radius {radius}, " + ", ".join(f"{k} {v}" for k, v in chosen.items())
                + f": AP50 {ap.get('AP50'):.3f}, AP {ap.get('AP'):.3f}")
            key = (ap.get("AP50") or 0.0, ap.get("AP") or 0.0)
            if best is None or key > best[0]:
                best = (key, config, maps)
    assert best is not None
    key, config, best_maps = best
    config, best_ap50 = _with_border_contrast(segmenter, scenes, best_maps, key, config, border_contrasts, rows, log)
    config = _with_min_score(segmenter, scenes, best_maps, best_ap50, config, min_scores, rows, log)
    config = _with_clicks(segmenter, scenes, config, clicks, upsample_radii, log)
    segmenter.update_config(base)
    return config, rows, clicks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="calibrate_instances", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint folder or .onnx file")
    # --families: the old spelling, still in scripts and users' commands
    parser.add_argument("--shapes", "--families", nargs="+", required=True, choices=SHAPES,
                        help="shapes of the calibration scenes (the model's training shapes)")
    parser.add_argument("--output", required=True, type=Path, help="Segmenter config YAML to write")
    parser.add_argument("--scenes", type=int, default=40)
    parser.add_argument("--size", type=scene_size, default=(240, 320), help="scene size HxW (default 240x320)")
    parser.add_argument("--seed", type=int, default=2_000_003, help="scene seed (apart from training's and evaluation's)")
    parser.add_argument("--config", type=Path, help="base Segmenter config YAML (default: the defaults)")
    parser.add_argument("--threads", type=int, default=0, help="network threads (0 = the library's default)")
    args = parser.parse_args(argv)
    h, w = args.size
    if args.scenes < 1:
        parser.error("--scenes must be >= 1")
    try:
        config = resolve_config(args.model, args.config, {"backend.threads": args.threads, "tracking.enabled": False})
        segmenter = Segmenter(config)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"calibrate_instances: {exc}", file=sys.stderr)
        return EXIT_USAGE
    scenes = evaluation_scenes(args.shapes, args.scenes, (h, w), args.seed)
    print(f"calibrate_instances: {args.model} on {len(scenes)} scenes of {', '.join(args.shapes)} ({h}x{w}); "
          f"{len(REFINE_RADII) * len(list(itertools.product(*GRID.values())))} grid points, "
          f"{len(REFINE_RADII) * len(PROMPT_TAUS)} click settings")
    with segmenter:
        best, _, _ = calibrate(segmenter, scenes, GRID, REFINE_RADII, PROMPT_TAUS, MIN_SCORES, UPSAMPLE_RADII,
                               border_contrasts=BORDER_CONTRASTS)
    # The file describes the post-processing; tracking is the node's business, left at its default.
    # Without the model path: the file goes beside the model and is given with it (``--model M --config FILE``).
    data = config_to_dict(replace(best, model=replace(best.model, path=""), tracking=TrackerParams(),
                                  backend=replace(best.backend, threads=0)))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(f"# calibrate_instances on {args.scenes} synthetic scenes of {', '.join(args.shapes)} "
                           f"({h}x{w}, seed {args.seed})\n" + yaml.safe_dump(data, sort_keys=False))
    m = best.model
    chosen = ", ".join([f"refine_radius {m.refine_radius}", f"prompt_refine_radius {m.prompt_refine_radius}",
                        f"prompting.tau {best.prompting.tau}", f"prompt_upsample_radius {m.prompt_upsample_radius}"]
                       + [f"{k} {getattr(best.instances, k)}" for k in (*GRID, "border_contrast", "min_score")])
    print(f"chose {chosen}; wrote {args.output}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
