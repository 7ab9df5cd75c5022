# Setup and entry points. torch is pinned to the CPU build present on the dev/CI machines;
# pyproject.toml declares the open range torch>=2.4 for users.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench quality clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_PIN)"
	$(PIP) install -q -e ".[test,export,distributed]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/floodlora demo --out runs/demo

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff format --check src tests benchmarks scripts

# Measures, writes benchmarks/results/*.json, then regenerates every generated section of
# docs/performance.md from them (benchmarks/docs.py alone regenerates without measuring).
bench: $(STAMP)
	$(PY) benchmarks/strategies.py
	$(PY) benchmarks/predict.py
	$(PY) benchmarks/predict.py --checkpoint random:clay-v1-base --size 1024 --variants merged,merged-bf16 \
		--ab-rounds 0 --json benchmarks/results/predict-base.json
	$(PY) benchmarks/startup.py
	$(PY) benchmarks/budgets.py
	$(PY) benchmarks/docs.py

# Real-data quality, leave one event group out (about an hour on 2 cores): docs/quality.md, README.
quality: $(STAMP)
	$(PY) benchmarks/quality.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
