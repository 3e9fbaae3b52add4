# Two entry points for a fresh machine: `make train` (the main job) and `make test`.
PY ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[plot,progress,threads,compiled]'
	touch $@

$(VENV)/.test: $(VENV)/.installed
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

$(VENV)/.torch: $(VENV)/.test
	$(VENV)/bin/pip install -q $(TORCH)
	touch $@

# On a machine with an NVIDIA driver, also CuPy with its CUDA libraries (the cuda12/cuda13 extra
# that scripts/gpu_extra.sh picks from nvidia-smi); otherwise it says why the GPU is not used
# (checked again on every `make train` until CuPy is installed).
$(VENV)/.gpu: $(VENV)/.installed
	@extra="$$(bash scripts/gpu_extra.sh)"; \
	if [ -z "$$extra" ]; then :; \
	elif echo "make: NVIDIA driver found: installing xpnet[$$extra] (CuPy with its CUDA libraries)" && \
	     $(VENV)/bin/pip install -q -e ".[$$extra]"; then touch $@; \
	else echo "make: installing xpnet[$$extra] failed, so the GPU is not used: training runs on the CPU"; fi

.PHONY: setup train test test-slow bench gpu-check
setup: $(VENV)/.installed

train: $(VENV)/.installed $(VENV)/.gpu
	$(VENV)/bin/python examples/train_mnist.py $(ARGS)

test: $(VENV)/.torch
	$(VENV)/bin/python -m pytest -q $(ARGS)

test-slow: $(VENV)/.torch
	$(VENV)/bin/python -m pytest -q -m slow $(ARGS)

bench: $(VENV)/.torch
	$(VENV)/bin/python benchmarks/run.py $(ARGS)

# The GPU proof in one run (DEVELOPERS.md): installs nothing, runs the checkout with $(PY).
gpu-check:
	PYTHON=$(PY) bash scripts/gpu_check.sh $(ARGS)
