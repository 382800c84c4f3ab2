# Two commands: `make demo` (the main job) and `make test`. Both set themselves up: a .venv with torch (CPU)
# and pnnh, and Debian's Fashion-MNIST where apt-get can install it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
FASHION_MNIST := /usr/share/datasets/fashion-mnist

# timm needs torchvision, which imports only beside its own torch build: it gets its own environment.
TIMM_VENV := .venv-timm
TIMM_TORCH ?= $(if $(filter aarch64,$(shell uname -m)),torch==2.9.1 torchvision==0.24.1,torch==2.14.1 torchvision==0.29.1)

.PHONY: setup timm-setup data lint test demo soak fuzz clean

$(BIN)/pnnh: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

setup: $(BIN)/pnnh

$(TIMM_VENV)/bin/timm-ready: pyproject.toml
	$(PYTHON) -m venv $(TIMM_VENV)
	$(TIMM_VENV)/bin/pip install -q --disable-pip-version-check $(TIMM_TORCH)
	$(TIMM_VENV)/bin/pip install -q --disable-pip-version-check -e '.[timm,tat]' pytest
	touch $@

timm-setup: $(TIMM_VENV)/bin/timm-ready

# Debian ships the official Fashion-MNIST files (the tests and the demo read them; MD5-checked on read).
data:
	@if [ ! -d $(FASHION_MNIST) ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's dataset-fashion-mnist"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	  else \
	    echo "note: $(FASHION_MNIST) is missing and apt-get cannot install it here (needs root):"; \
	    echo "      sudo apt-get install dataset-fashion-mnist, or the Fashion-MNIST tests fail"; \
	  fi; \
	fi

# Lint and types (configured in pyproject.toml): ruff for lint and import order, mypy on src/pnnh.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

test: setup data timm-setup lint
	$(BIN)/python -m pytest -q
	$(TIMM_VENV)/bin/python -m pytest -q tests/test_timm.py tests/test_resnet_torchvision.py

# The main job: resnet56 in the three kinds, 2 seeds, side by side on Fashion-MNIST (about 5 minutes on 2 cores).
DEMO_OUT ?= reports/demo
demo: setup data
	$(BIN)/pnnh compare --model resnet56 --kinds residual,plain,pnnh --data fashion-mnist --download \
	  --train-subset 2000 --test-subset 1000 --epochs 3 --batch-size 32 --lr 0.05 --sched onecycle \
	  --seeds 2 --workers 0 --channels-last --output $(DEMO_OUT)
	@echo "report: $(DEMO_OUT)/report.md (results.json and plots beside it)"

# Kill-and-resume soak (not part of the tests): SIGKILL a training at random points for SOAK_SECONDS.
SOAK_SECONDS ?= 600
soak: setup data
	$(BIN)/python tests/kill_loop.py --seconds $(SOAK_SECONDS)

# The CLI fuzzer's full sweep (the tests run a sample): every sub-command x option x hostile value (about 10 minutes).
fuzz: setup data
	$(BIN)/python tests/fuzz_cli.py

clean:
	rm -rf $(VENV) $(TIMM_VENV) runs .pytest_cache
