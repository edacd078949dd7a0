"""The default model's training at a time budget on whatever device is there, and packing a run to carry it back
(``bench/bench_gpu.py train`` and ``pack``; the module docstring there says how they are used)."""
from __future__ import annotations

import io
import json
import re
import shutil
import statistics
import shlex
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "scripts" / "train_default_model.sh"


@dataclass
class Stage:
    name: str
    folder: Path
    args: list[str]

    @property
    def steps(self) -> int:
        return int(_flag(self.args, "--steps"))


def _flag(args: Sequence[str], flag: str) -> str:
    return args[list(args).index(flag) + 1]


def _override(args: Sequence[str], values: dict[str, str]) -> list[str]:
    """Set each ``--flag value`` pair: replaced where the flag is there, appended where not."""
    out = list(args)
    for flag, value in values.items():
        if flag in out:
            out[out.index(flag) + 1] = value
        else:
            out += [flag, value]
    return out


def recipe_stages(runs: Path, last_steps: int | None = None, pretrain_steps: int | None = None,
                  script: Path = RECIPE, model_config: Path | None = None) -> list[Stage]:
    """The stages of scripts/train_default_model.sh, read from it: COMMON plus each ``stage`` line's arguments, with
    $ROOT, $RUNS, the script's arrays ("${NAME[@]}") and its step counts (``STEPSn=${k:-N}``, the script's optional
    arguments, at their defaults) filled in, so the GPU runs the recipe the CPU runs, not a copy that drifts.
    ``last_steps`` sets the last of those counts (the last stage's); ``pretrain_steps`` replaces the steps of every
    stage but the last; ``model_config`` replaces the network the first stage builds from random weights."""
    text = script.read_text().replace("\\\n", " ")
    arrays = {name: body for name, body in re.findall(r"^([A-Z0-9_]+)=\((.*?)\)\s*$", text, re.S | re.M)}
    steps_vars = re.findall(r"^(STEPS\d*)=\$\{\d+:-(\d+)\}", text, re.M)
    if "COMMON" not in arrays or not steps_vars:
        raise ValueError(f"{script}: no COMMON=(...) array or STEPSn=${{k:-N}} default")
    steps = {"$" + name: default for name, default in steps_vars}
    steps["$" + steps_vars[-1][0]] = str(last_steps or steps_vars[-1][1])
    # Longest names first: $STEPS4 must not be read as $STEPS followed by "4".
    subs = {"$ROOT": str(REPO), "$RUNS": str(runs), **dict(sorted(steps.items(), key=lambda kv: -len(kv[0])))}

    def fill(token: str) -> str:
        for key, value in subs.items():
            token = token.replace(key, value)
        return token

    def expand(tokens: list[str]) -> list[str]:
        out = []
        for token in tokens:
            array = re.fullmatch(r"\$\{([A-Z0-9_]+)\[@\]\}", token)
            out += expand(shlex.split(arrays[array[1]])) if array else [fill(token)]
        return out

    base = expand(shlex.split(arrays["COMMON"]))
    stages = []
    for line in text.splitlines():
        if line.startswith('stage "'):
            _, name, folder, *args = expand(shlex.split(line))
            stages.append(Stage(name, Path(folder), [*base, "--output", folder, *args]))
    if not stages:
        raise ValueError(f"{script}: no stage lines")
    if pretrain_steps is not None:
        for stage in stages[:-1]:
            stage.args = _override(stage.args, {"--steps": str(pretrain_steps)})
    if model_config is not None:
        if "--model-config" not in stages[0].args:
            raise ValueError(f"{script}: the first stage builds no network from a --model-config to replace")
        stages[0].args = _override(stages[0].args, {"--model-config": str(model_config)})
    return stages


def latest_checkpoint(folder: Path) -> tuple[Path, int] | None:
    """The newest complete checkpoint (trainer.json is written last) and its step."""
    found = [(p.parent, json.loads(p.read_text())["step"]) for p in folder.glob("checkpoint-*/trainer.json")]
    return max(found, key=lambda c: c[1]) if found else None


def has_model(folder: Path) -> bool:
    """A stage's final model is saved: a conv-family or MAE ``config.json``, or an SD ``model_index.json``."""
    return any((folder / "model" / name).is_file() for name in ("config.json", "model_index.json"))


def stage_done(stage: Stage) -> bool:
    """Its model is there (as train_default_model.sh decides), and no checkpoint says it stopped short of its steps
    (a model carried from elsewhere without checkpoints counts as done)."""
    if not has_model(stage.folder):
        return False
    latest = latest_checkpoint(stage.folder)
    return latest is None or latest[1] >= stage.steps


def first_stage_to_run(stages: Sequence[Stage]) -> int:
    """Index of the latest stage with a model or a checkpoint: the stages before it are done, even where their models
    are gone (``pack_runs`` drops a model once the stage that loads it has finished)."""
    started = [i for i, s in enumerate(stages)
               if has_model(s.folder) or latest_checkpoint(s.folder)]
    return max(started, default=0)


def _log_rate(log: Path, first_line: int, samples_per_step: int) -> float | None:
    """Optimiser steps per second from train_log.jsonl records written since ``first_line`` (the first window, which
    holds the data workers' start, only when it is the only one)."""
    if not log.is_file():
        return None
    records = [json.loads(line) for line in log.read_text().splitlines()[first_line:]]
    rates = [r["samples_per_s"] / samples_per_step for r in records if "samples_per_s" in r]
    if len(rates) > 1:
        rates = rates[1:]
    return statistics.median(rates) if rates else None


def _line_count(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _check_same_network(stage: Stage) -> None:
    """A stage started from one --model-config cannot resume with another (the checkpoint's shapes would not fit):
    say so by name before training starts."""
    recorded = stage.folder / "args.json"
    if "--model-config" not in stage.args or not recorded.is_file():
        return
    before = json.loads(recorded.read_text()).get("model_config")
    asked = _flag(stage.args, "--model-config")
    if before is not None and Path(before).resolve() != Path(asked).resolve():
        raise ValueError(f"{stage.folder} was started with --model-config {before}, not {asked}: "
                         "give another runs folder (or carry none)")


def train_at_budget(runs: Path, budget_s: float, stages: Sequence[Stage], overrides: dict[str, str],
                    probe_steps: int, save_minutes: float, margin_s: float) -> list[dict[str, Any]]:
    """Train the recipe's stages in segments until they are done or the budget is spent; returns the segments.

    A stage's first segment in this process is a short probe that measures steps/s and the fixed cost of a segment
    (start, final save and evaluation); the next segment gets as many steps as the rest of the budget holds, and
    saves a checkpoint every ``save_minutes``. Each segment ends with a checkpoint, so the next call resumes there.
    """
    from training.train import parse_args, train

    deadline = time.monotonic() + budget_s
    segments: list[dict[str, Any]] = []
    for stage in stages[first_stage_to_run(stages):]:
        _check_same_network(stage)
        args = _override(stage.args, overrides)
        samples_per_step = int(_flag(args, "--batch-size")) * int(_flag(args, "--grad-accum"))
        rate: float | None = None
        overhead = 0.0
        while not stage_done(stage):
            latest = latest_checkpoint(stage.folder)
            done = latest[1] if latest else 0
            left = deadline - time.monotonic() - margin_s
            if rate is None:
                target = min(stage.steps, done + probe_steps)
                save_every = probe_steps
            else:
                affordable = int((left - overhead) * rate)
                if affordable < 1:
                    break
                target = min(stage.steps, done + affordable)
                save_every = max(1, int(rate * save_minutes * 60))
            if left <= 0:
                break
            run_args = _override(args, {"--steps": str(target), "--save-every": str(save_every),
                                        "--keep-checkpoints": "1"})
            if latest:
                run_args += ["--resume", str(latest[0])]
            log = stage.folder / "train_log.jsonl"
            first_line = _line_count(log)
            t0 = time.monotonic()
            train(parse_args(run_args))
            wall = time.monotonic() - t0
            measured = _log_rate(log, first_line, samples_per_step)
            if measured is not None:
                rate = measured
                overhead = max(0.0, wall - (target - done) / rate)
            if target < stage.steps:
                # train() writes model/ at the end of every call; train_default_model.sh would take it for a
                # finished stage. The same weights are in the checkpoint.
                shutil.rmtree(stage.folder / "model", ignore_errors=True)
            segments.append({"stage": stage.name, "from_step": done, "to_step": target, "of_steps": stage.steps,
                             "wall_s": round(wall, 2), "steps_per_s": rate, "fixed_cost_s": round(overhead, 2),
                             "samples_per_step": samples_per_step})
            print(f"== {stage.name}: steps {done}->{target} of {stage.steps} in {wall:.1f} s "
                  f"({rate or float('nan'):.2f} steps/s)", flush=True)
        if not stage_done(stage):
            break
    return segments


def pack_runs(runs: Path, prefix: Path, part_mib: int = 15, last_steps: int | None = None,
              pretrain_steps: int | None = None) -> list[Path]:
    """Tar what a later call needs to go on: every stage's logs and args; a finished stage's model while the next
    stage still loads it (unfinished, or the last stage, which may be extended); the latest checkpoint's state of an
    unfinished stage and of the last stage (its model/ copy is left out: resuming reads state/). Split into parts of
    at most ``part_mib`` MiB (the GPU machine returns files up to 16 MiB)."""
    stages = recipe_stages(runs, last_steps, pretrain_steps)
    keep: list[Path] = [p for p in [runs / "bench_train.json"] if p.is_file()]
    for i, stage in enumerate(stages):
        keep += [p for p in (stage.folder / "args.json", stage.folder / "train_log.jsonl") if p.is_file()]
        last = i == len(stages) - 1
        done = stage_done(stage)
        if done and (last or i + 1 == len(stages) - 1 or not stage_done(stages[i + 1])):
            keep.append(stage.folder / "model")
        if (not done or last) and (latest := latest_checkpoint(stage.folder)) is not None:
            keep += [latest[0] / "trainer.json", latest[0] / "state"]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in keep:
            tar.add(path, arcname=str(path.relative_to(runs)))
    data = buffer.getvalue()
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for stale in prefix.parent.glob(prefix.name + ".*"):
        stale.unlink()
    size = part_mib * 2**20
    parts = []
    for k in range(0, max(1, len(data)), size):
        part = prefix.parent / f"{prefix.name}.{k // size:02d}"
        part.write_bytes(data[k : k + size])
        parts.append(part)
    return parts


def unpack_runs(parts: Sequence[Path], runs: Path) -> None:
    """The inverse of ``pack_runs``: ``cat PREFIX.* | tar -x -C RUNS`` does the same."""
    runs.mkdir(parents=True, exist_ok=True)
    data = b"".join(p.read_bytes() for p in sorted(parts))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(runs, filter="data")
