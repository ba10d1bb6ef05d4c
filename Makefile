# The README's commands. `make serve` and `make test` each set up what they need on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED_DATA ?= ../shared/data/cifar10-train-jpeg.tar.gz
DATA_DIR ?= data/cifar10-train
RUN_DIR ?= runs/baseline
EPOCHS ?= 15

# Container images (Dockerfile): TARGET=cpu|gpu|proxy|train.
TARGET ?= cpu

.PHONY: venv browser serve test lint lock image bench soak fuzz train train-default export-default card-default export evaluate \
	photos data clean docs

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11 or newer is needed"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The serving install: FastAPI, ONNX Runtime (CPU), Pillow, and the command-line client (`python -m service.client`,
# the `client` extra, which `cpu` includes). No TensorFlow. Made again whenever pyproject.toml changes.
$(VENV)/.serve-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[cpu]'
	touch $@

# Everything: serving, training (TensorFlow, tf2onnx) and the test tools.
$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[cpu,train,dev]'
	touch $@ $(VENV)/.serve-installed

# The environment for training on your own photos (and everything else): `.venv/bin/python -m training ...`.
venv: $(VENV)/.dev-installed

# MODEL=path/to/model.onnx serves another model than the bundled one.
serve: $(VENV)/.serve-installed
	$(if $(MODEL),CLASSIFIER_MODEL_PATH=$(MODEL)) $(BIN)/python -m service

test: $(VENV)/.dev-installed browser
	$(BIN)/python -m pytest

# The browser tests (tests/system/test_web_page.py) need Chromium and its driver: installed here from Debian where apt-get
# can (as root); elsewhere those tests are skipped with the reason.
browser:
	@command -v chromedriver >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
		  { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }; }; } || \
		echo "chromium and chromium-driver could not be installed: the browser tests will be skipped"

# Serving benchmark (not part of the tests): needs `hey` (apt-get install -y hey); writes benchmarks/results/.
bench: $(VENV)/.dev-installed
	@command -v hey >/dev/null || { echo "hey is missing: apt-get install -y hey"; exit 1; }
	$(BIN)/python -m benchmarks.serving

# 10 minutes of constant moderate load; fails on any error or on memory growth of 10% or more.
soak: $(VENV)/.dev-installed
	@command -v hey >/dev/null || { echo "hey is missing: apt-get install -y hey"; exit 1; }
	$(BIN)/python -m benchmarks.soak --attack

# 200,000 mutated image files through the decoder (not part of the tests; a seeded 3,000 are): exit 1 on a failure.
fuzz: $(VENV)/.dev-installed
	$(BIN)/python -m benchmarks.fuzz_decode --cases 200000

# The lock files the images install from (pinned, with hashes), written from pyproject.toml by uv. A pin already in
# a file is kept unless pyproject.toml no longer allows it; `make lock UPGRADE=1` moves every pin to the newest.
LOCK_DIR ?= requirements
LOCK = $(BIN)/uv pip compile pyproject.toml --quiet --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command "make lock" $(if $(UPGRADE),--upgrade)
lock: $(VENV)/.dev-installed
	$(LOCK) --extra cpu -o $(LOCK_DIR)/cpu.txt
	$(LOCK) --extra gpu -o $(LOCK_DIR)/gpu.txt
	$(LOCK) --extra cpu --extra train -o $(LOCK_DIR)/train.txt

# Builds image-classifier:$(TARGET) with docker, else podman (installed from Debian's packages where it can be, as
# root); where the Dockerfile's base image cannot be pulled, the base is made from Debian's packages first.
image:
	$(PYTHON) -m tests.container.engine image --target $(TARGET)

lint: $(VENV)/.dev-installed
	$(BIN)/python -m ruff check service training tests benchmarks
	$(BIN)/python -m ruff format --check service training tests benchmarks
	$(BIN)/python -m mypy service

# The reference in docs/ as a static site in site/ (mkdocs.yml; offline). --strict fails on a broken link or anchor.
docs: $(VENV)/.dev-installed
	$(BIN)/python -m mkdocs build --strict --site-dir site

$(DATA_DIR):
	mkdir -p $(DATA_DIR)
	tar -xzf $(SHARED_DATA) -C $(DATA_DIR) --strip-components=1

data: $(DATA_DIR)

# The bundled baseline: the source article's network on the shared CIFAR-10 images.
train: $(VENV)/.dev-installed $(DATA_DIR)
	$(BIN)/python -m training train --data $(DATA_DIR) --run-dir $(RUN_DIR) --epochs $(EPOCHS) --name cifar10-baseline

# The default model's recipe, three stages (training/presets/cifar10-resnet9*.json): 24 epochs from scratch, then
# two 18-epoch warm restarts, each from the previous stage's model. Run it again after a stop: a finished stage is
# skipped, a stopped one resumes from its last epoch.
DEFAULT_RUNS ?= runs/cifar10-resnet9
DEFAULT_RUN_DIR ?= $(DEFAULT_RUNS)/stage3
train_stage = if [ -f $(1)/model.keras ]; then echo "$(1) is finished"; \
	elif [ -f $(1)/run.json ]; then $(BIN)/python -m training train --run-dir $(1) --resume; \
	else $(BIN)/python -m training train --run-dir $(1) --data $(DATA_DIR) $(2); fi
train-default: $(VENV)/.dev-installed $(DATA_DIR)
	$(call train_stage,$(DEFAULT_RUNS)/stage1,--preset cifar10-resnet9)
	$(call train_stage,$(DEFAULT_RUNS)/stage2,--preset cifar10-resnet9-stage2 --init-from $(DEFAULT_RUNS)/stage1/model.keras)
	$(call train_stage,$(DEFAULT_RUN_DIR),--preset cifar10-resnet9-stage2 --init-from $(DEFAULT_RUNS)/stage2/model.keras)

export-default: $(VENV)/.dev-installed
	$(BIN)/python -m training export --run-dir $(DEFAULT_RUN_DIR) --output models/default.onnx --name cifar10-resnet9 \
		--version 3.0.0 --flip-averaging --quantize int8 --overwrite

card-default: $(VENV)/.dev-installed
	$(BIN)/python -m training card --run-dir $(DEFAULT_RUN_DIR) --model models/default.onnx \
		--reproduce "make train-default export-default card-default" --machine "2-core AMD EPYC CPU, no GPU"

# The baseline's export goes into its run directory: only export-default writes the bundled model.
export: $(VENV)/.dev-installed
	$(BIN)/python -m training export --run-dir $(RUN_DIR) --output $(RUN_DIR)/model.onnx --name cifar10-baseline

# Your own photos, end to end (README, "Train on your own photos"): PHOTOS=folder [NAME=photos] [IMAGE_SIZE=64]
# [PHOTO_EPOCHS=20]; everything goes into runs/NAME, nothing into models/. Then: make serve MODEL=runs/NAME/NAME.onnx
NAME ?= photos
IMAGE_SIZE ?= 64
PHOTO_EPOCHS ?= 20
photos: $(VENV)/.dev-installed
	@test -n "$(PHOTOS)" || { echo "error: give the folder of photos: make photos PHOTOS=path/to/folder" >&2; exit 2; }
	$(BIN)/python -m training train --data $(PHOTOS) --run-dir runs/$(NAME) --image-size $(IMAGE_SIZE) \
		--epochs $(PHOTO_EPOCHS) --skip-invalid
	$(BIN)/python -m training evaluate --run-dir runs/$(NAME)
	$(BIN)/python -m training export --run-dir runs/$(NAME) --output runs/$(NAME)/$(NAME).onnx --name $(NAME)
	$(BIN)/python -m training card --run-dir runs/$(NAME) --model runs/$(NAME)/$(NAME).onnx

evaluate: $(VENV)/.dev-installed $(DATA_DIR)
	$(BIN)/python -m training evaluate --model models/default.onnx --data $(DATA_DIR) --out $(RUN_DIR)/evaluation-onnx

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
