# Two commands: `make demo` (the main job) and `make test`. Both set themselves up in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: setup test demo clean

$(BIN)/pnnh: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

setup: $(BIN)/pnnh

test: setup
	$(BIN)/python -m pytest -q

# The main job: resnet56 in the three kinds, 2 seeds, side by side on Fashion-MNIST (about 5 minutes on 2 cores).
DEMO_OUT ?= reports/demo
demo: setup
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian's dataset-fashion-mnist"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	  || echo "apt-get failed; pnnh will download the official Fashion-MNIST files"; fi
	$(BIN)/pnnh compare --model resnet56 --kinds residual,plain,pnnh --data fashion-mnist --download \
	  --train-subset 2000 --test-subset 1000 --epochs 3 --batch-size 32 --lr 0.05 --sched onecycle \
	  --seeds 2 --workers 0 --output $(DEMO_OUT)
	@echo "report: $(DEMO_OUT)/report.md (results.json and plots beside it)"

clean:
	rm -rf $(VENV) runs .pytest_cache
