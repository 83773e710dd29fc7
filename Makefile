PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet

# torch: the CPU build, from PyTorch's CPU index, where no NVIDIA GPU answers (PyPI's Linux torch is the multi-GB
# CUDA build); the regular (CUDA) build where one does. Override: make install TORCH=cpu|cuda, and
# TORCH_CPU_INDEX=URL for a mirror of the CPU index.
TORCH_VERSION := 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
ifeq ($(origin TORCH),undefined)
TORCH := $(shell nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu)
endif
# A CPU wheel pip already has at hand (its find-links, no index asked) comes first: a machine whose network
# reaches only its own package registry then installs without trying download.pytorch.org.
TORCH_INSTALL_cpu = $(PIP) --no-deps --no-index "torch==$(TORCH_VERSION)+cpu" 2>/dev/null || \
	$(PIP) "torch==$(TORCH_VERSION)+cpu" --index-url "$(TORCH_CPU_INDEX)"
TORCH_INSTALL_cuda = $(PIP) "torch==$(TORCH_VERSION)"

.PHONY: install demo lint test test-fast bench gpu-bundle clean

MODEL ?= CompVis/stable-diffusion-v1-4

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# PYTHONWARNINGS: setuptools' notice on every editable install (same-named folders may shadow the package on
# import) asks nothing of us, and pip prints it even with --quiet.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) --upgrade pip
	$(or $(TORCH_INSTALL_$(TORCH)),$(error TORCH must be cpu or cuda, got "$(TORCH)"))
	PYTHONWARNINGS="ignore:Editable installation" $(PIP) -e ".[test]"
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
