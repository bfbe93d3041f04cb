# Quick start: `make run` (set up, then run the workflow) and `make test`.
VENV := .venv
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: run test venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	snakemake --cores all

# pytest-xdist: a worker per core, at most 4 (each may train and run Snakemake with 2 cores)
test: $(STAMP)
	ruff check .
	ruff format --check .
	pytest -n auto --maxprocesses 4

# docs/benchmarks.md (from benchmarks/results/*.json) and docs/settings.md (from the
# config schema), rebuilt byte for byte; `python benchmarks/report.py --check` only compares.
.PHONY: docs
docs: $(STAMP)
	python benchmarks/report.py
