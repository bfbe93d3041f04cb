#!/usr/bin/env bash
# Time submit.py of a bundle, end to end (pip install of the wheel, start-up, prediction),
# in bf16 (train.precision as bundled) and fp32, in a fresh venv that stands in for a Kaggle
# image: this environment's packages without steelflow, snakemake, dvc or kaggle.
#   benchmarks/bundle.sh [BUNDLE (dist/kaggle)] [RAW (resources/raw)]
# after `make run`; prints one line per precision and checks the bf16 submission against
# the run's submission.csv.
set -euo pipefail
bundle=$(realpath "${1:-dist/kaggle}"); raw=$(realpath "${2:-resources/raw}")
python=${PYTHON:-.venv/bin/python}
python=$(cd "$(dirname "$python")" && pwd)/$(basename "$python")  # absolute, not resolved: the venv's
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
data=$work/input/severstal-steel-defect-detection
mkdir -p "$data" "$work/image"
cp -r "$raw/test_images" "$raw/sample_submission.csv" "$data/"
site=$("$python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
for entry in "$site"/*; do
    case $(basename "$entry" | tr '[:upper:]' '[:lower:]') in
        *steelflow*|*__editable__*|*snakemake*|*dvc*|*kaggle*) ;;
        *) ln -s "$entry" "$work/image/" ;;
    esac
done
"$python" -m venv --without-pip "$work/env"
echo "$work/image" > "$(ls -d "$work"/env/lib/python3*/site-packages)/image.pth"
cp -r "$bundle" "$work/fp32"
sed -i 's/^  precision: .*/  precision: fp32/' "$work/fp32/config.yaml"
images=$(ls "$data/test_images" | wc -l)
for name in bundled fp32; do
    dir=$bundle; [ "$name" = fp32 ] && dir=$work/fp32
    start=$(date +%s.%N)
    (cd "$work" && PIP_CONFIG_FILE=/dev/null "$work/env/bin/python" "$dir/submit.py" \
        --data "$data" --out "$work/$name.csv" > /dev/null 2> "$work/$name.err") || { cat "$work/$name.err"; exit 1; }
    end=$(date +%s.%N)
    echo "$name precision: $(echo "$end - $start" | bc) s for $images images ($(du -sh "$bundle" | cut -f1) bundle)"
done
cmp "$work/bundled.csv" submission.csv && echo "bundled precision: identical to submission.csv"
