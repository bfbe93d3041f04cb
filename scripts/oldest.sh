#!/usr/bin/env bash
# The tests on the oldest releases pyproject.toml allows (constraints-oldest.txt), in a
# venv of their own (.venv-oldest): `bash scripts/oldest.sh [pytest arguments]`. Not the
# Slurm test, nor the dev extra: the Slurm executor profiles/slurm needs (2.0.1 or newer)
# needs pandas 2.2.3.
set -euo pipefail
cd "$(dirname "$0")/.."
test -x .venv-oldest/bin/python || python3 -m venv .venv-oldest
.venv-oldest/bin/python -m pip install --quiet --upgrade pip
.venv-oldest/bin/python -m pip install --quiet -c constraints.txt -c constraints-oldest.txt \
    -e '.[workflow]' pytest pytest-xdist hypothesis packaging
.venv-oldest/bin/python -m pip list --format freeze | grep -iE '^(torch|torchvision|numpy|pandas|numba|tqdm|matplotlib|pyyaml|jsonschema|opencv-python-headless)=='
PATH="$PWD/.venv-oldest/bin:$PATH" .venv-oldest/bin/python -m pytest -n auto --maxprocesses 4 \
    -p no:cacheprovider -m "not slurm" "$@"
