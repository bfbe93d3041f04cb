#!/usr/bin/env bash
# The tests on the oldest releases pyproject.toml allows, in a venv of their own
# (.venv-oldest): `bash scripts/oldest.sh [pytest arguments]`. First steelflow's own
# dependencies at constraints-oldest.txt, every test but Slurm's (the Slurm executor that
# profiles/slurm needs, 2.0.1 or newer, needs pandas 2.2.3); then the kaggle extra at its
# minimums, for the kaggle source's tests alone (DVC's dulwich needs a newer urllib3).
set -euo pipefail
cd "$(dirname "$0")/.."
python=.venv-oldest/bin/python
test -x $python || python3 -m venv .venv-oldest
$python -m pip install --quiet --upgrade pip
$python -m pip install --quiet -c constraints.txt -c constraints-oldest.txt \
    -e '.[workflow]' pytest pytest-xdist hypothesis packaging
pinned='^(torch|torchvision|numpy|pandas|numba|tqdm|matplotlib|pyyaml|jsonschema|opencv-python-headless|kaggle|requests|urllib3)=='
$python -m pip list --format freeze | grep -iE "$pinned"
export PATH="$PWD/.venv-oldest/bin:$PATH"
$python -m pytest -n auto --maxprocesses 4 -p no:cacheprovider -m "not slurm" "$@"

kaggle=$($python -c '
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
print(*(r.replace(">=", "==") for r in project["optional-dependencies"]["kaggle"]))')
$python -m pip install --quiet -c constraints.txt $kaggle
$python -m pip list --format freeze | grep -iE "$pinned"
$python -m pytest -p no:cacheprovider tests/test_fetch_kaggle.py tests/test_fetch.py -k kaggle "$@"
