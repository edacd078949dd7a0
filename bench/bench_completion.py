"""Mask completion against a nearest-label fill, on synthetic tabletop scenes with part of every instance hidden.

Run from the repository root:  .venv/bin/python bench/bench_completion.py [--scenes N] [--model engines/default]

Scenes come from ``training.synthetic.SceneGenerator`` (ground-truth instance maps and images). No trained model
good enough to stand for gen2seg is shipped yet, so the main colour map is the ground truth rendered as a
gen2seg-like colouring (``tests/helpers/synthetic_colors.py``: one colour per instance, 30+ apart for neighbours,
black background, soft borders, Gaussian noise); with ``--model`` the same scenes are also completed on that
model's colour map of the scene image (the small shipped model is far from gen2seg quality: a lower bound). Per instance, 30, 60 or 90 % of its pixels are hidden, either as random discs ("blobs") or
as one band across it ("band"); every other pixel (background included) is known. The score is the mean over
instances of the IoU of the completed map's pixels with that instance's id against its ground-truth mask, and the
share of hidden pixels given the right id (the protocol and scores are ``seg_node.evaluation.completion_scoring``'s,
which ``bag_eval --completion`` runs on recorded bags). Writes bench/results/completion.json and completion[_model].png.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from seg_node.evaluation.completion_scoring import HIDDEN_GREY, PATTERNS, Tally, compare, hide, row_name  # noqa: E402
from seg_node.pipeline import Segmenter  # noqa: E402
from seg_node.processing.completion import complete_labels, nearest_label_fill  # noqa: E402
from seg_node.processing.visualize import label_colors, panels  # noqa: E402
from tests.helpers import synthetic_colors  # noqa: E402
from training.synthetic import SceneGenerator  # noqa: E402

FRACTIONS = (0.3, 0.6, 0.9)



def run(gen: SceneGenerator, n_scenes: int, color_map, params: dict, figure: Path) -> dict:
    """Scores per hiding pattern and fraction; ``color_map(index, scene, rng)`` gives the map to complete on."""
    tally = Tally()
    t_complete = []
    for i in range(n_scenes):
        scene = gen.scene(i)
        gt, rng = scene.labels, np.random.default_rng([17, i])
        colors = color_map(scene, rng)
        for fraction in FRACTIONS:
            for pattern in PATTERNS:
                hidden = hide(gt, fraction, pattern, rng)
                partial = np.where(hidden, 0, gt).astype(np.uint16)
                t0 = time.perf_counter()
                done = complete_labels(colors, partial, ~hidden, **params)
                t_complete.append(time.perf_counter() - t0)
                base = nearest_label_fill(partial, ~hidden)
                tally.add(row_name(round(fraction * 100), pattern), compare(done, base, gt, hidden))
                if i == 0 and fraction == 0.6 and pattern == "band":
                    shown = label_colors(partial)
                    shown[hidden] = HIDDEN_GREY
                    fig = panels([("image", scene.rgb), ("colour map", colors.astype(np.uint8)),
                                  ("known (grey: 60% hidden, band)", shown), ("completed", label_colors(done)),
                                  ("nearest-label fill", label_colors(base)), ("ground truth", label_colors(gt))], 200)
                    cv2.imwrite(str(figure), cv2.cvtColor(fig, cv2.COLOR_RGB2BGR))
        print(f"scene {i + 1}/{n_scenes}", flush=True)
    results: dict = {"median_complete_ms": round(1e3 * float(np.median(t_complete)), 1), "figure": str(figure.relative_to(ROOT))}
    for key, r in tally.summary().items():
        results[key] = r
        print(f"{key:>10}: IoU {r['completion_iou']:.3f} (nearest-label fill {r['baseline_iou']:.3f}); "
              f"hidden pixels right {r['completion_hidden_correct']:.3f} ({r['baseline_hidden_correct']:.3f})")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--noise", type=float, default=3.0, help="rendered colour-map noise std per channel (0..255)")
    parser.add_argument("--model", type=Path, help="also complete on this model's colour maps of the scene images")
    args = parser.parse_args()
    sc = synthetic_colors
    gen = SceneGenerator(240, 320, seed=17)
    out = ROOT / "bench" / "results"

    def rendered(scene, rng: np.random.Generator) -> np.ndarray:
        return sc.render_colors(scene.labels, sc.make_palette(scene.labels, 1, 0, rng), args.noise, 1.2, 0.6, rng)

    summary = {
        "command": "python " + " ".join(shlex.quote(a) for a in ["bench/bench_completion.py", *sys.argv[1:]]),
        "scenes": f"{args.scenes} SceneGenerator(240, 320, seed=17) scenes; background always known",
        "score": "mean per-instance IoU of the full instance mask (known part included); share of hidden pixels right",
        "rendered": {"colour_map": f"ground truth rendered as a gen2seg-like colouring (tests/helpers/synthetic_colors.py,"
                                   f" noise sigma {args.noise}, blur 1.2, halo 0.6, one similar pair per scene)",
                     **run(gen, args.scenes, rendered, {}, out / "completion.png")},
    }
    if args.model:
        seg = Segmenter(args.model)
        params = {"instances": seg.config.instances, "prompting": seg.config.prompting}
        summary["model"] = {"colour_map": f"{args.model} on the scene images ({seg.backend.describe()})",
                            **run(gen, args.scenes, lambda scene, rng: seg.color_maps([scene.rgb])[0].colors, params,
                                  out / "completion_model.png")}
    (out / "completion.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {out / 'completion.json'} and the figures beside it")


if __name__ == "__main__":
    main()
