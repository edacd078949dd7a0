#!/usr/bin/env bash
# The one prepared script for the lent GPU machine (docs/gpu.md says how to launch it through the device tool):
#   1. install the carried diffusers wheel (the machine has torch, transformers and accelerate, but no diffusers);
#   2. this package's SD path against the official pipeline at 576x768, SD2-sized random weights, fp32/fp16/bf16;
#   3. the default model's training for the rest of the time, resumed from a carried gpu_runs/ if there is one;
#   4. pack the runs (what the next call resumes from) and the results into $OUT.
#
#   bash bench/gpu_session.sh [TOTAL_S]     from the repo root; TOTAL_S (default 540) must be under the call's timeout_s
#   TOY=1 bash bench/gpu_session.sh 400     the same steps at toy sizes (a CPU rehearsal of this script)
#   MODEL_CONFIG=training/configs/conv_wide.json bash bench/gpu_session.sh 480
#                                          the recipe on another network (a runs folder of its own: do not carry
#                                          gpu_runs/ from the default network's calls)
#
# Every step has its own timeout, and the packing runs whatever happened before, so a killed step loses at most the
# training since its last checkpoint (every 2 minutes).
set -uo pipefail
TOTAL=${1:-540}
OUT=${OUT:-$PWD/out}
RUNS=/tmp/gpu_runs
TRAIN_ARGS=()
if [ "${TOY:-0}" = 1 ]; then TRAIN_ARGS=(--toy --last-steps 4); fi
if [ -n "${MODEL_CONFIG:-}" ]; then TRAIN_ARGS+=(--model-config "$MODEL_CONFIG"); fi
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TQDM_DISABLE=1
log() { echo "== $* (t=${SECONDS}s)" | tee -a "$OUT/session.log"; }

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site wheels/*.whl \
  || { log "wheel install failed"; exit 1; }
export PYTHONPATH=$PWD:/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$OUT/session.log" 2>&1
python3 -c "import torch, diffusers, transformers, accelerate; print('torch', torch.__version__, 'diffusers',
diffusers.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__,
'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$OUT/session.log"

if compgen -G "gpu_runs/runs.tar.*" >/dev/null; then
  cat gpu_runs/runs.tar.* | tar -x -C "$RUNS" && log "resuming from the carried gpu_runs/"
fi

SIZE=(--size 576x768)
if [ "${TOY:-0}" = 1 ]; then SIZE=(--toy); fi
log "sd-pipeline ${SIZE[*]}"
timeout --kill-after=10 240 python3 bench/bench_gpu.py sd-pipeline "${SIZE[@]}" --dtypes fp32,fp16,bf16 \
  --output "$OUT/sd_pipeline.json" >>"$OUT/session.log" 2>&1
log "sd-pipeline exit $?"

# What is left, less a minute for packing and the call's own transfers; train_at_budget stops itself in time, and
# timeout is the backstop if its estimate was off.
LEFT=$((TOTAL - SECONDS - 60))
if [ "$LEFT" -gt 60 ]; then
  log "train for ${LEFT}s"
  timeout --kill-after=15 $((LEFT + 30)) python3 bench/bench_gpu.py train --budget-min "$(awk "BEGIN{print $LEFT/60}")" \
    --output "$RUNS" "${TRAIN_ARGS[@]}" >"$OUT/train.log" 2>&1
  log "train exit $?"
else
  log "no time left to train"
fi

PACK_ARGS=()
if [ "${TOY:-0}" = 1 ]; then PACK_ARGS=(--last-steps 4 --pretrain-steps 2); fi
python3 bench/bench_gpu.py pack "$RUNS" "$OUT/runs.tar" "${PACK_ARGS[@]}" 2>&1 | tee -a "$OUT/session.log"
cp "$RUNS/bench_train.json" "$OUT/" 2>/dev/null
tail -n 12 "$OUT/session.log"; tail -n 5 "$OUT/train.log" 2>/dev/null
