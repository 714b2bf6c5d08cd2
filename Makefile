# Every target creates the virtual environment it needs, so a fresh clone needs only `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch build is installed first and explicitly: on this project's CI machine these releases
# lie on local disk. Elsewhere override it, e.g. `make install TORCH_SPEC=torch`. diffgen does not
# use torchvision itself: open-clip-torch imports it, and it must match the torch build.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install lint fuzz test test-all wheel-check sample pictures bench speedrun speedrun-table clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# The suite without the tests marked slow (pyproject.toml), one process per core: about 1 min 40 s
# on the 2-core machine.
# test-all runs everything; .ci/run runs `make test` and then the slow tests.
test: install
	$(PY) -m pytest -q -n auto -m "not slow"

test-all: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy diffgen

# The wheel stands alone: built, installed into a fresh environment, and run outside the source
# tree (the default model and the config presets travel inside it).
WHEEL_DIR ?= build/wheel-check
wheel-check: install
	rm -rf $(WHEEL_DIR) && mkdir -p $(WHEEL_DIR)/run
	$(PY) -m pip wheel . --no-deps -q -w $(WHEEL_DIR)
	$(PYTHON) -m venv $(WHEEL_DIR)/venv
	$(WHEEL_DIR)/venv/bin/python -m pip install -q $(TORCH_SPEC)
	$(WHEEL_DIR)/venv/bin/python -m pip install -q $(WHEEL_DIR)/diffgen-*.whl
	cd $(WHEEL_DIR)/run && ../venv/bin/diffgen config show gpu64 > gpu64.toml && grep -q "image_size = 64" gpu64.toml
	cd $(WHEEL_DIR)/run && ../venv/bin/diffgen sample "panda on a bike" -n 1 --steps 2 --seed 0 -q -o out && test -f out/00000-0-panda-on-a-bike.png
	@echo "wheel-check: the installed wheel sampled the default model outside the source tree"

# The parser fuzzers with 20,000 examples each instead of the test suite's 150 (about 7 minutes).
fuzz: install
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q tests/test_fuzz.py

# The main job: images from the embedded default model, into outputs/.
sample: install
	$(VENV)/bin/diffgen sample "panda on a bike" -n 8 --seed 0 --grid -o outputs

# Redraws the README grid and the model card's pictures from the default model (after replacing
# checkpoints/default.safetensors; seeds fixed, nothing picked). The card's text is updated by hand.
pictures: install
	rm -rf runs/pictures
	$(VENV)/bin/diffgen sample -f docs/readme_grid_prompts.txt -n 1 --seed 0 --grid -q -o runs/pictures/readme
	$(VENV)/bin/diffgen sample "panda on a bike" -n 8 --seed 0 --grid -q -o runs/pictures/panda
	$(VENV)/bin/diffgen sample -f docs/single_object_prompts.txt -n 2 --seed 0 --grid -q -o runs/pictures/single
	$(VENV)/bin/diffgen sample "a dog riding a bicycle" "a cat on a bike" "a panda on a car" -n 8 --seed 0 --grid -q -o runs/pictures/words
	$(VENV)/bin/diffgen sample -f docs/seen_pairs.txt -n 1 --seed 0 --grid -q -o runs/pictures/seen-pairs
	$(VENV)/bin/diffgen sample -f docs/heldout_pairs.txt -n 1 --seed 0 --grid -q -o runs/pictures/heldout-pairs
	$(VENV)/bin/diffgen sample "a panda on a car" --init-image docs/images/panda-input.png --xy strength=0.3,0.5,0.7,0.9 --seed 0 -q -o runs/pictures/img2img
	$(VENV)/bin/diffgen sample "a panda on a car" --init-image docs/images/panda-input.png --mask docs/images/mask-lower-half.png --strength 1 --xy seed=0,1,2,3 --seed 0 -q -o runs/pictures/inpaint
	$(VENV)/bin/diffgen sample "a red car" --xy guidance=1,3,6 --xy steps=5,10,20 --seed 0 -q -o runs/pictures/xy
	$(VENV)/bin/diffgen sample "a dog to the left of a cat" -n 8 --seed 0 --grid -q --no-auto-layout -o runs/pictures/layout-plain
	$(VENV)/bin/diffgen sample "a dog to the left of a cat" -n 8 --seed 0 --grid -q -o runs/pictures/layout-auto
	$(VENV)/bin/diffgen sample "a dog to the left of a cat" -n 8 --seed 0 --grid -q --place dog=0,0,0.5,1 --place cat=0.5,0,1,1 -o runs/pictures/layout-placed
	$(VENV)/bin/diffgen noise docs/images/panda-input.png --denoise --prompt "panda on a bike" -o runs/pictures/forward-process.png
	cp runs/pictures/img2img/xy-a-panda-on-a-car-0.png docs/images/img2img.png
	cp runs/pictures/inpaint/xy-a-panda-on-a-car-0.png docs/images/inpaint.png
	cp runs/pictures/xy/xy-a-red-car-0.png docs/images/xy-grid.png
	cp runs/pictures/forward-process.png docs/images/forward-process.png
	cp runs/pictures/layout-plain/grid-00000-0.png docs/images/layout-plain.png
	cp runs/pictures/layout-placed/grid-00000-0.png docs/images/layout-placed.png
	cp runs/pictures/layout-auto/grid-00000-0.png docs/images/layout-auto.png
	cp runs/pictures/readme/grid-00000-0.png docs/images/default-grid.png
	cp runs/pictures/panda/grid-00000-0.png checkpoints/panda-on-a-bike-8-seeds.png
	cp runs/pictures/single/grid-00000-0.png checkpoints/single-objects.png
	cp runs/pictures/words/grid-00000-0.png checkpoints/showcase-words-8-seeds.png
	cp runs/pictures/seen-pairs/grid-00000-0.png checkpoints/seen-pairs.png
	cp runs/pictures/heldout-pairs/grid-00000-0.png checkpoints/heldout-pairs.png

# Regenerates docs/BENCHMARKS.md on this machine (EVAL_DATA=folder adds the quality section).
bench: install
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/run_all.py $(if $(EVAL_DATA),--eval-data $(EVAL_DATA))

# One training recipe for a fixed wall-clock budget on this machine, then the scorecard (see
# benchmarks/speedrun.py; needs Debian's fonts-noto-color-emoji). Override any of these, e.g.
# `make speedrun NAME=pixel32 CONFIG=configs/cpu32.toml MINUTES=40`; `make speedrun-table` prints the results.
NAME ?= cpu64
CONFIG ?= configs/cpu64.toml
MINUTES ?= 20
THREADS ?= 2
SPEEDRUN_ARGS ?= --text-encoder checkpoints/default.safetensors
speedrun: install
	$(PY) benchmarks/speedrun.py $(NAME) --config $(CONFIG) --minutes $(MINUTES) --threads $(THREADS) $(SPEEDRUN_ARGS)

speedrun-table: install
	$(PY) benchmarks/speedrun.py --table

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
