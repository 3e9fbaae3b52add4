# Two entry points for a fresh machine: `make train` (the main job) and `make test`.
PY ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[plot,progress]'
	touch $@

$(VENV)/.test: $(VENV)/.installed
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

$(VENV)/.torch: $(VENV)/.test
	$(VENV)/bin/pip install -q $(TORCH)
	touch $@

.PHONY: setup train test test-slow bench
setup: $(VENV)/.installed

train: $(VENV)/.installed
	$(VENV)/bin/python examples/train_mnist.py $(ARGS)

test: $(VENV)/.torch
	$(VENV)/bin/python -m pytest -q $(ARGS)

test-slow: $(VENV)/.torch
	$(VENV)/bin/python -m pytest -q -m slow $(ARGS)

bench: $(VENV)/.torch
	$(VENV)/bin/python benchmarks/run.py $(ARGS)
