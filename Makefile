# CPU install path: torch is pinned to the CPU wheel (a plain `torch` would pull a multi-GB CUDA build).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_CPU := torch==2.13.0

.PHONY: install demo lint test test-fast bench gpu-bundle clean

MODEL ?= CompVis/stable-diffusion-v1-4

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_CPU)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

# Labels the bundled sample photographs (samples/) with the labeling job on a local Ray cluster.
DEMO_OUT = out/demo/$(subst /,--,$(MODEL))
demo: install
	@$(BIN)/python jobs/label.py --input samples --output "$(DEMO_OUT)" --model "$(MODEL)"; status=$$?; \
	if [ $$status -eq 2 ]; then echo "If the model could not be downloaded, a smoke run without weights: make demo MODEL=tiny" >&2; \
	elif [ $$status -eq 0 ]; then $(BIN)/python jobs/export.py "$(DEMO_OUT)" --out "$(DEMO_OUT)-png" && \
	echo "Masks: $(DEMO_OUT)/*.parquet (one row per image, mask = label PNG). View them: $(DEMO_OUT)-png/NAME.overlay.png"; fi; \
	exit $$status

lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

test-fast: lint
	$(BIN)/python -m pytest -q -m "not integration"

bench: install
	$(BIN)/python benchmarks/bench_core.py
	$(BIN)/python benchmarks/bench_job.py
	$(BIN)/python benchmarks/bench_eval.py
	$(BIN)/python benchmarks/bench_driver.py

# The wheels the offline GPU host lacks, into gpu-wheels/ (benchmarks/README.md, "Offline GPU check").
gpu-bundle: install
	PYTHON=$(BIN)/python benchmarks/gpu_bundle.sh

clean:
	rm -rf $(VENV) .pytest_cache masks out
