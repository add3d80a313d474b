# crnn: every target installs what it needs into ./.venv first (a fresh machine needs nothing else).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.install-stamp
EMBEDDED_STAMP := $(VENV)/.embedded-stamp
ARGS   ?=

.DEFAULT_GOAL := help
.PHONY: help install install-embedded test test-full export train sweep eval profile tables bench lint clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored" || true
	# A plain (unpinned) torch resolves to the registry's build, which matches torchvision's wheels.
	$(BIN)/pip install --quiet --progress-bar off -e ".[dev,export,cluster]" 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import torch, torchvision, lightning, hydra, fvcore, pycocotools; torchvision.ops.nms" \
		|| { echo "install check failed: see the pip output above"; exit 1; }
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install crnn with its dev extras

$(EMBEDDED_STAMP): $(STAMP)
	$(BIN)/pip install --quiet --progress-bar off -e ".[dev,export,embedded]" 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import litert_torch, ai_edge_quantizer, tflite_micro" \
		|| { echo "embedded install check failed: see the pip output above"; exit 1; }
	touch $(EMBEDDED_STAMP)

install-embedded: $(EMBEDDED_STAMP)  ## add the embedded extra (litert-torch, ai-edge-quantizer, tflite-micro; large)

test: install  ## install, lint and run the fast test suite
	$(BIN)/ruff check crnn scripts tests
	$(BIN)/pytest -n 2 -m "not slow" $(ARGS)

test-full: install-embedded  ## every test, including the slow and embedded ones
	$(BIN)/pytest -n 2 $(ARGS)

train: install  ## run the default experiment (CIFAR-100, ResNet-20 + SWS-BiRNN); ARGS="key=value ..."
	$(BIN)/crnn-train $(ARGS)

sweep: install  ## a Hydra multirun; ARGS="experiment=... " or ARGS="rnn=none,srnn seed=0,1"
	$(BIN)/crnn-train -m $(ARGS)

eval: install  ## evaluate a checkpoint: ARGS="ckpt_path=outputs/.../checkpoints/last.ckpt"
	$(BIN)/crnn-eval $(ARGS)

profile: install  ## params, MACs, memory and latency without training; ARGS="-m rnn=none,srnn"
	$(BIN)/crnn-profile $(ARGS)

tables: install  ## tables and plots from finished sweeps; ARGS="outputs/multirun/..."
	$(BIN)/crnn-tables $(ARGS)

export: install  ## crnn-export: ONNX / TFLite (int8 needs install-embedded); ARGS="--ckpt ... --format tflite --int8"
	$(BIN)/crnn-export $(ARGS)

bench: install  ## layer throughput benchmark (prints a table)
	$(BIN)/python scripts/bench_layers.py $(ARGS)

lint: install  ## ruff
	$(BIN)/ruff check crnn scripts tests
	$(BIN)/ruff format --check crnn scripts tests

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache
