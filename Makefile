# Every target sets itself up: a fresh clone needs only python3 (3.10+) and this Makefile.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export SAGEMAKER_SUPPRESS_V2_WARNING := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: run test lint bench definition sample-data container-check clean

$(STAMP): requirements.txt requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -c requirements.lock
	touch $(STAMP)

# The bundled digits are 28x28 pixels: train them at their own size (your photos train at training.image_size),
# with a LeNet, the kind of network made for them (resnet18 costs ~5x more per image for about the same accuracy),
# with label smoothing, in batches of 32, 4-6 epochs (docs/local-mode.md: how this recipe was measured).
DIGITS_SETTINGS := --set training.image_size=28 --set training.model=lenet \
	--set training.hyperparameters.label-smoothing=0.1 --set 'tuning.ranges.batch-size.values=[32]' \
	--set tuning.ranges.epochs.min=4 --set tuning.ranges.epochs.max=6

## run: the main job: bundled real digits through every step of the pipeline, locally
run: $(STAMP)
	$(PY) -m pipeline sample-data --out data/digits
	$(PY) -m pipeline run-local --data data/digits $(DIGITS_SETTINGS) --demo

## test: ruff, then the whole test suite (first builds the cached Python 3.12 venv of the container requirements)
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) tests/container_env.py --optional
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .

## bench: speed and memory, as ratios measured in the same run (writes bench/results/)
bench: $(STAMP)
	$(PY) bench/bench.py

## container-check: train/debug/evaluate/inference once under the AWS container's Python 3.12, torch 2.6.0 and
## torchvision 0.21.0 (tests/container_check.py; not in `test`: the first run downloads a few GB of wheels)
container-check: $(STAMP)
	$(PY) tests/container_check.py

definition: $(STAMP)
	$(PY) -m pipeline definition

sample-data: $(STAMP)
	$(PY) -m pipeline sample-data --out data/digits

clean:
	rm -rf .store runs data .pytest_cache .ruff_cache
