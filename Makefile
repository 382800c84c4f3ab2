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

demo: setup
	$(BIN)/python -m pnnh models 'resnet*'

clean:
	rm -rf $(VENV) runs .pytest_cache
