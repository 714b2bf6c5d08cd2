#!/usr/bin/env bash
# What a lent GPU machine without network needs beyond its own image (Python 3.12 with torch,
# typer, rich, pillow, safetensors, numpy): open_clip_torch, ftfy, wcwidth and emoji as wheels,
# and the Noto Color Emoji font for `diffgen data emoji`. Both go to .gpu/ (ignored by git).
#   bash benchmarks/gpu_carry.sh pack        here: fill .gpu/ (the versions of .venv)
#   bash benchmarks/gpu_carry.sh unpack      there, first: install them; then run with
#                                            PYTHONPATH=/tmp/site:$PWD (printed at the end)
# The 2026-11-30 H200 run: carry [".gpu"], then
#   bash benchmarks/gpu_carry.sh unpack && export PYTHONPATH=/tmp/site:$PWD && OUT=$OUT bash benchmarks/gpu_recipe.sh
set -euo pipefail
cd "$(dirname "$0")/.."
FONT=/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf
case "${1:-}" in
  pack)
    grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude
    mkdir -p .gpu/whl
    specs=()
    for name in open_clip_torch ftfy wcwidth emoji; do
      specs+=("$name==$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$name'))")")
    done
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl "${specs[@]}"
    cp "$FONT" .gpu/
    du -sh .gpu
    ;;
  unpack)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl
    mkdir -p "$(dirname "$FONT")" && cp .gpu/NotoColorEmoji.ttf "$FONT"
    echo "export PYTHONPATH=/tmp/site:$PWD"
    ;;
  *)
    echo "usage: bash benchmarks/gpu_carry.sh pack|unpack" >&2
    exit 2
    ;;
esac
