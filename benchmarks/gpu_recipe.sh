#!/usr/bin/env bash
# The default model's recipe on one CUDA GPU, in under 9 minutes: build the emoji data (RECIPE,
# default composed), continue the shipped model on it (CONFIG, default `gpu64-continue`: batch 512,
# bf16, the checkpoint's EMA kept) until MINUTES,
# and write the model (in parts of 15 MB: a lent machine returns files of up to 16 MiB), its
# summary, metrics and log under OUT. Scoring runs afterwards on any machine, so GPU minutes go
# to training:
#   OUT=$OUT bash benchmarks/gpu_recipe.sh                          (on the GPU machine)
#   cat OUT/model.safetensors.part* > runs/speedrun/NAME/model.safetensors; cp OUT/summary.json runs/speedrun/NAME/
#   .venv/bin/python benchmarks/speedrun.py NAME --score-run --trained-on "1 GPU" --minutes MINUTES \
#       --eval-steps 20 --eval-seeds 2
# A dry run of the plumbing on a CPU:
#   DEVICE=cpu MINUTES=0.3 COUNT=200 BATCH=4 PY=.venv/bin/python OUT=/tmp/dry bash benchmarks/gpu_recipe.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the results folder}
DEVICE=${DEVICE:-cuda}
MINUTES=${MINUTES:-7.3}
COUNT=${COUNT:-30000}
BATCH=${BATCH:-512}
RECIPE=${RECIPE:-composed}
CONFIG=${CONFIG:-gpu64-continue}
PY=${PY:-python3}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$OUT"
{
  date -u +"start %H:%M:%S"
  $PY -m diffgen data emoji "$WORK/data" --count "$COUNT" --size 64 --seed 0 --recipe "$RECIPE"
  date -u +"data built %H:%M:%S"
  # gpu64-continue: the shipped model's layers, batch 512, its EMA kept, the state written at the end
  $PY -m diffgen config show "$CONFIG" > "$WORK/recipe.toml"
  $PY -m diffgen train "$WORK/data" -o "$WORK/run" --config "$CONFIG" --device "$DEVICE" \
    --init checkpoints/default.safetensors --batch-size "$BATCH" --time-limit "$MINUTES" --weights-dtype float16
  date -u +"trained %H:%M:%S"
} 2>&1 | tee "$OUT/log.txt"
split -b 15000000 -d "$WORK/run/model.safetensors" "$OUT/model.safetensors.part"
cp "$WORK/run/summary.json" "$WORK/run/metrics.jsonl" "$WORK/recipe.toml" "$OUT/"
sha256sum "$WORK/run/model.safetensors" | tee "$OUT/model.sha256"
