#!/usr/bin/env bash
# The default model's few-step student on one CUDA GPU, in under 9 minutes (issue 33): build the
# emoji data the model's U-Net last trained on (RECIPE pairs, 64 px), distil the shipped model
# (`diffgen train --distill`, bf16, BATCH images a step) within MINUTES, and write the student (in
# parts of 15 MB: a lent machine returns files of up to 16 MiB), its summary, metrics, sample grids
# and log under OUT. Measuring runs afterwards on any machine, so GPU minutes go to training:
#   OUT=$OUT bash benchmarks/distill_gpu.sh                          (on the GPU machine)
#   cat OUT/student.safetensors.part* > checkpoints/default.student.safetensors
#   sha256sum checkpoints/default.student.safetensors               (against OUT/student.sha256)
#   .venv/bin/python benchmarks/distill.py cost --student checkpoints/default.student.safetensors
# A dry run of the plumbing on a CPU:
#   DEVICE=cpu MINUTES=0.5 COUNT=200 BATCH=4 PY=.venv/bin/python OUT=/tmp/dry bash benchmarks/distill_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the results folder}
DEVICE=${DEVICE:-cuda}
MINUTES=${MINUTES:-7}
COUNT=${COUNT:-30000}
BATCH=${BATCH:-256}
RECIPE=${RECIPE:-pairs}
INIT=${INIT:-checkpoints/default.safetensors}
PY=${PY:-python3}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$OUT"
{
  date -u +"start %H:%M:%S"
  $PY -m diffgen data emoji "$WORK/data" --count "$COUNT" --size 64 --seed 0 --recipe "$RECIPE"
  date -u +"data built %H:%M:%S"
  # the budget counts from the run's start (data loading included) and plans the steps, the
  # learning-rate decay and the average to end in time; the student is written every 50 steps too
  $PY -m diffgen train "$WORK/data" --distill --init "$INIT" -o "$WORK/run" --device "$DEVICE" \
    --batch-size "$BATCH" --steps 100000 --budget "$MINUTES" --weights-dtype float16
  date -u +"distilled %H:%M:%S"
} 2>&1 | tee "$OUT/log.txt"
split -b 15000000 -d "$WORK/run/student.safetensors" "$OUT/student.safetensors.part"
cp "$WORK/run/summary.json" "$WORK/run/metrics.jsonl" "$WORK/run/loss.png" "$OUT/"
ls "$WORK/run/samples" | tail -1 | xargs -I{} cp "$WORK/run/samples/{}" "$OUT/last-samples.png"
sha256sum "$WORK/run/student.safetensors" | tee "$OUT/student.sha256"
