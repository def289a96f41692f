# Two entry points (see README): `make demo` and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch is pinned to the CPU wheel 2.13.0: any other torch spec pulls GBs of CUDA packages.
TORCH  := torch==2.13.0
CORES  ?= 2

.PHONY: demo test lint bench quickstart report clean gpu-lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.pipeline: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[pipeline]"
	touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@ $(VENV)/.pipeline

# The whole DAG on the embedded synthetic cohort with the CPU backend (all methods x 2 demo models).
demo: $(VENV)/.pipeline
	$(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml

# The lint gate: ruff, and snakemake --lint on config.yaml and every overlay (exits 1 on any lint).
lint: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/snakemake --lint
	for overlay in config/*.yaml; do $(BIN)/snakemake --lint --configfile $$overlay || exit 1; done

test: lint
	$(BIN)/python -m pytest -q

# One HTML report with every table and figure of the demo, after `make demo`.
report: $(VENV)/.pipeline
	$(BIN)/snakemake --configfile config/demo.yaml --report results/demo/report.html

quickstart: $(VENV)/.pipeline
	$(BIN)/python examples/quickstart.py

bench: $(VENV)/.pipeline
	$(BIN)/python benchmarks/bench_advantages.py
	$(BIN)/python benchmarks/bench_metrics.py
	$(BIN)/python benchmarks/bench_cohort.py

# envs/gpu.lock.txt, the exact GPU environment: envs/gpu.yaml's pip requirements resolved by uv for
# its Python on Linux x86_64 (manylinux_2_31 wheels: glibc >= 2.31), from PyPI as it was on
# GPU_LOCK_DATE (raise it to take newer releases). Only resolves; installs nothing but uv in .venv.
GPU_LOCK_DATE     ?= 2026-11-30
GPU_LOCK_PLATFORM ?= x86_64-manylinux_2_31
GPU_PYTHON        := $(shell sed -n 's/^ *- *python=\([0-9.]*\).*/\1/p' envs/gpu.yaml)

$(BIN)/uv: | $(BIN)/python
	$(BIN)/pip install --quiet uv

gpu-lock: | $(BIN)/uv
	awk '/^ *- pip: *$$/ {pip = 1; next} pip && /^ *- / {sub(/^ *- */, ""); print}' envs/gpu.yaml \
	  | $(BIN)/uv pip compile - --quiet --python-version $(GPU_PYTHON) --python-platform $(GPU_LOCK_PLATFORM) \
	      --exclude-newer $(GPU_LOCK_DATE) --annotation-style line --custom-compile-command "make gpu-lock" \
	      -o envs/gpu.lock.txt.new
	{ echo "# The exact GPU environment (rules train_verl, predict_vllm): envs/gpu.yaml's pip requirements"; \
	  echo "# resolved by uv for Python $(GPU_PYTHON) on $(GPU_LOCK_PLATFORM), from PyPI as of $(GPU_LOCK_DATE):"; \
	  echo "#   uv pip compile --python-version $(GPU_PYTHON) --python-platform $(GPU_LOCK_PLATFORM) --exclude-newer $(GPU_LOCK_DATE)"; \
	  echo "# Do not edit. After changing envs/gpu.yaml run \`make gpu-lock\` (GPU_LOCK_DATE=YYYY-MM-DD for newer"; \
	  echo "# releases); tests/verl/test_gpu_environment.py checks that the two agree. The CUDA wheels need the"; \
	  echo "# NVIDIA driver named at the top of envs/gpu.yaml. Install exactly this set into a Python $(GPU_PYTHON)"; \
	  echo "# environment: pip install -r envs/gpu.lock.txt (or uv pip sync envs/gpu.lock.txt)."; \
	  cat envs/gpu.lock.txt.new; } > envs/gpu.lock.txt
	rm envs/gpu.lock.txt.new

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .snakemake
