# Two entry points (see README): `make demo` and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch is pinned to the CPU wheel 2.13.0: any other torch spec pulls GBs of CUDA packages.
TORCH  := torch==2.13.0
CORES  ?= 2

.PHONY: demo test bench quickstart report clean

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

test: $(VENV)/.test
	$(BIN)/python -m pytest -q

# One HTML report with every table and figure of the demo, after `make demo`.
report: $(VENV)/.pipeline
	$(BIN)/snakemake --configfile config/demo.yaml --report results/demo/report.html

quickstart: $(VENV)/.pipeline
	$(BIN)/python examples/quickstart.py

bench: $(VENV)/.pipeline
	$(BIN)/python benchmarks/bench_advantages.py
	$(BIN)/python benchmarks/bench_metrics.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .snakemake
