#!/usr/bin/env bash
# The recipe of the shipped default model (engines/default): the conv family (seg_node.models.conv), a 0.52 M
# parameter UNet that draws the colour map directly, under gen2seg's instance-colouring loss, from scratch.
#   stage 1  the instance-colouring loss from a random initialisation, at a constant learning rate
#   stage 2  the same from stage 1's end, the rate decaying to a twentieth (IterExponential), new scenes
# then post-processing calibrated on the training shapes, the ONNX export and the held-out numbers
# (scripts/ship_default_model.py --model RUNS_DIR/conv2/model).
#
#   bash scripts/train_default_model.sh RUNS_DIR [STAGE1_STEPS] [STAGE2_STEPS]
#
# Every stage resumes from its latest checkpoint when run again and is skipped once its model/ exists, so the
# script can be stopped and restarted at any time (across machines too, given RUNS_DIR). Shapes blob and
# cylinder are held out of every stage for the zero-shot numbers. One thread per process (OMP_NUM_THREADS=1)
# and one data worker keep the two cores of a small machine busy; about 70 steps a minute there.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${1:?usage: train_default_model.sh RUNS_DIR [STAGE1_STEPS] [STAGE2_STEPS]}
STEPS1=${2:-8000}
STEPS2=${3:-5000}
BIN=${BIN:-$ROOT/.venv/bin}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
COMMON=(--family conv --data synthetic --synthetic-randomize --synthetic-size 256x320 --train-size 128x160
        --synthetic-exclude blob,cylinder --eval-shapes blob,cylinder --batch-size 8 --grad-accum 1
        --workers 1 --log-every 25 --objective instance --color-scale shift --color-gain 64 --eval-size 240x320
        --eval-resolution 160 --eval-scenes 30 --eval-every 1000 --save-every 250 --keep-checkpoints 2)
mkdir -p "$RUNS"

stage() {  # stage NAME FOLDER ARGS...: run (or resume) one training stage unless its model is there
  local name=$1 out=$2; shift 2
  if [ -f "$out/model/config.json" ] || [ -f "$out/model/model_index.json" ]; then
    echo "== $name: done ($out/model)"; return
  fi
  local resume=()
  if compgen -G "$out/checkpoint-*/trainer.json" >/dev/null; then resume=(--resume "$out"); fi
  echo "== $name -> $out ($(date -u +%FT%TZ))"
  "$BIN/train" "${COMMON[@]}" --output "$out" "${resume[@]}" "$@"
}

# A plain conv UNet learns grouping from the instance loss alone: no generative pre-training stage gave the
# SD miniature what its small VAE lost (docs/default_model.md).
stage "stage 1: instance colouring from scratch" "$RUNS/conv1" \
  --model-config "$ROOT/training/configs/conv_default.json" --steps "$STEPS1" --lr 1e-3 --warmup 0 \
  --lr-schedule constant --seed 900
stage "stage 2: instance colouring, decaying rate" "$RUNS/conv2" --model "$RUNS/conv1/model" \
  --steps "$STEPS2" --lr 1e-3 --warmup 50 --lr-total-iters "$STEPS2" --seed 901
echo "== stages done ($(date -u +%FT%TZ)); model: $RUNS/conv2/model"
