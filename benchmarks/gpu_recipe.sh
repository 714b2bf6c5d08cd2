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
# The upscaler of the default model (configs/upscale-stage.toml: its stage alone, on 128 px scenes):
#   SIZE=128 RECIPE=pairs COUNT=20000 CONFIG=upscale-stage UPSCALE_BATCH=512 MINUTES=8 OUT=$OUT \
#       bash benchmarks/gpu_recipe.sh
# The U-Net continuation for three- and four-object scenes (docs/SCENES.md; INIT: the layout-groups
# model, carried to the machine):
#   RECIPE=groups COUNT=20000 CONFIG=groups-tune INIT=runs/layout-groups/model.safetensors MINUTES=8 \
#       OUT=$OUT bash benchmarks/gpu_recipe.sh
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
SIZE=${SIZE:-64}
UPSCALE_BATCH=${UPSCALE_BATCH:-}
PY=${PY:-python3}
INIT=${INIT:-checkpoints/default.safetensors}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$OUT"
{
  date -u +"start %H:%M:%S"
  $PY -m diffgen data emoji "$WORK/data" --count "$COUNT" --size "$SIZE" --seed 0 --recipe "$RECIPE"
  date -u +"data built %H:%M:%S"
  # gpu64-continue: the shipped model's layers, batch 512, its EMA kept, the state written at the end
  $PY -m diffgen config show "$CONFIG" > "$WORK/recipe.toml"
  if [ -n "$UPSCALE_BATCH" ]; then  # the upscaling stage's batch (--batch-size sets the U-Net's)
    sed -i "s/^upscale_batch_size = .*/upscale_batch_size = $UPSCALE_BATCH/" "$WORK/recipe.toml"
  fi
  $PY -m diffgen train "$WORK/data" -o "$WORK/run" --config "$WORK/recipe.toml" --device "$DEVICE" \
    --init "$INIT" --batch-size "$BATCH" --time-limit "$MINUTES" --weights-dtype float16
  date -u +"trained %H:%M:%S"
} 2>&1 | tee "$OUT/log.txt"
split -b 15000000 -d "$WORK/run/model.safetensors" "$OUT/model.safetensors.part"
cp "$WORK/run/summary.json" "$WORK/run/metrics.jsonl" "$WORK/recipe.toml" "$OUT/"
sha256sum "$WORK/run/model.safetensors" | tee "$OUT/model.sha256"
