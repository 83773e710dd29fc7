# CPU install path: torch is pinned to the CPU wheel (a plain `torch` would pull a multi-GB CUDA build).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_CPU := torch==2.13.0

.PHONY: install demo test test-fast bench clean

MODEL ?= CompVis/stable-diffusion-v1-4

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_CPU)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

# Segments the bundled sample photographs (samples/) into masks/.
demo: install
	@$(BIN)/python -m diffseg segment samples --out masks --model "$(MODEL)"; status=$$?; \
	if [ $$status -eq 2 ]; then echo "For a smoke run without weights: make demo MODEL=tiny" >&2; \
	elif [ $$status -eq 0 ]; then echo "View them: masks/NAME.overlay.png (colored preview), masks/NAME.mask.png (labels)"; fi; \
	exit $$status

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not integration"

bench: install
	$(BIN)/python benchmarks/bench_core.py

clean:
	rm -rf $(VENV) .pytest_cache masks
