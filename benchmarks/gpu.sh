#!/usr/bin/env bash
# The GPU checks in one command, on a CUDA machine with the project installed:
# the tests marked gpu, then configs/kaggle.yaml at Kaggle scale (benchmarks/gpu.py:
# 12,568 synthetic train images, 8 loader workers, bf16 or fp16 as `auto` picks,
# one epoch of each network, the 5,506 test images predicted), which writes
# benchmarks/results/gpu.json and gpu.md. About 10 minutes on an H200; a failed test
# does not stop the measurement, and is the script's exit status.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's steelflow, installed or not
python=${PYTHON:-python3}
tests=0
"$python" -m pytest -m gpu -q -p no:cacheprovider tests || tests=$?
cd benchmarks
"$python" gpu.py --train 12568 --test 5506 "$@"
exit "$tests"
