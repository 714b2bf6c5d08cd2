#!/usr/bin/env bash
# The default model's recipe on one CUDA GPU, in under 9 minutes: continue the shipped model on
# the composed emoji data (batch 512, bf16, EMA kept from the checkpoint) for MINUTES, then score
# it with the speedrun scorecard at the CLI's sampling settings and write everything under OUT.
#   OUT=$OUT bash benchmarks/gpu_recipe.sh            (on the lent GPU machine)
#   DEVICE=cpu MINUTES=0.5 COUNT=300 BATCH=4 EVAL_STEPS=1 EVAL_SEEDS=1 RUNS=/tmp/dry-runs OUT=/tmp/dry \
#     bash benchmarks/gpu_recipe.sh                   (a dry run of the plumbing on a CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the results folder}
DEVICE=${DEVICE:-cuda}
MINUTES=${MINUTES:-6.5}
COUNT=${COUNT:-30000}
BATCH=${BATCH:-512}
THREADS=${THREADS:-8}
EVAL_STEPS=${EVAL_STEPS:-20}
EVAL_SEEDS=${EVAL_SEEDS:-2}
RUNS=${RUNS:-runs/speedrun}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
{
  $PY benchmarks/speedrun.py gpu-composed --device "$DEVICE" --threads "$THREADS" --minutes "$MINUTES" \
    --config configs/gpu64.toml --init checkpoints/default.safetensors --data-recipe composed --count "$COUNT" \
    --set train.batch_size="$BATCH" --set train.ema_warmup=false --set train.checkpoint_every=100000 \
    --weights-dtype float16 --eval-steps "$EVAL_STEPS" --eval-seeds "$EVAL_SEEDS" --runs-dir "$RUNS"
  cp "$RUNS"/gpu-composed/model.safetensors "$RUNS"/gpu-composed/metrics.jsonl "$RUNS"/results.jsonl "$OUT"/
} 2>&1 | tee "$OUT/log.txt"
