"""The Kaggle bundle: what a notebook without internet needs to write submission.csv.

    dist/kaggle/
      wheels/steelflow-VERSION-py3-none-any.whl   the package (a Kaggle image has its dependencies)
      models/classifier_fF.pt, unet_fF.pt         the models of every trained fold
      thresholds.json, config.yaml                tune's choices, the run's resolved settings
      dataset-metadata.json                       for `kaggle datasets create -p dist/kaggle
                                                  --dir-mode zip` (without it, no subfolders)
      submit.py                                   installs offline, writes submission.csv

submit.py installs the wheel alone (pip --no-index --no-deps), so the image's own
packages are used whatever their distribution or version (opencv-python or -headless,
a torch newer than this project's tested one), then checks with steelflow.requirements
that each module steelflow imports is there and new enough: a missing or old one is a
line naming it, not a traceback. The wheel's metadata caps nothing above and asks for
OpenCV only in the ``opencv`` extra. The same folder serves a production line without
internet.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from steelflow import checkpoint
from steelflow.atomic import atomic_dir
from steelflow.errors import SteelflowError
from steelflow.thresholds import Thresholds

ROOT = Path(__file__).resolve().parents[1]  # the source checkout the wheel is built from
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "steelflow")
SCRIPT = Path(__file__).with_name("kaggle_submit.py")


def build_wheel(out: Path) -> Path:
    """The steelflow wheel in ``out``, built offline from a copy of the sources, so
    that the checkout gets no build folders."""
    missing = [name for name in SOURCES if not (ROOT / name).exists()]
    if missing:
        raise SteelflowError(
            f"{ROOT / missing[0]} not found: the bundle builds its wheel from a steelflow "
            "source checkout"
        )
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "source"
        for name in SOURCES:
            if (ROOT / name).is_dir():
                ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
                shutil.copytree(ROOT / name, source / name, ignore=ignore)
            else:
                source.mkdir(exist_ok=True)
                shutil.copy(ROOT / name, source / name)
        pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
        subprocess.run([*pip, "--wheel-dir", str(out), str(source)], check=True)
    return next(out.glob("steelflow-*.whl"))


def build(
    out: Path,
    models: dict[str, dict[int, Path]],
    thresholds: Path,
    settings: str,
    dataset: str,
) -> list[Path]:
    """Write the bundle folder ``out`` (atomically): ``models`` maps each network to its
    checkpoint per fold, ``settings`` is the resolved config as YAML text, ``dataset``
    the Kaggle dataset id (``owner/slug``). Returns the files written.

    Each file is checked before anything is written: the thresholds as ``submit``
    reads them, each checkpoint as its network's (a U-Net given as the classifier is
    refused), and the folds packed must be those the thresholds were tuned with (else
    the settings are another run's); a bad one is SteelflowError naming it."""
    Thresholds.load(thresholds)
    for network, folds in models.items():
        for path in folds.values():
            checkpoint.load(path, task=network)
    tuned = json.loads(thresholds.read_text()).get("folds")
    packed = sorted({fold for folds in models.values() for fold in folds})
    if isinstance(tuned, list) and sorted(tuned) != packed:
        raise SteelflowError(
            f"{thresholds}: tuned with the models of folds {tuned}, but the bundle packs folds "
            f"{packed} (train.folds): bundle with the settings of the run that tuned them "
            "(--config, --set)"
        )
    with atomic_dir(out, "bundle") as tmp:
        build_wheel(tmp / "wheels")
        (tmp / "models").mkdir()
        for network, folds in models.items():
            for fold, path in folds.items():
                shutil.copy(path, tmp / "models" / f"{network}_f{fold}.pt")
        shutil.copy(thresholds, tmp / "thresholds.json")
        (tmp / "config.yaml").write_text(settings)
        shutil.copy(SCRIPT, tmp / "submit.py")
        metadata = {"title": "steelflow models", "id": dataset, "licenses": [{"name": "other"}]}
        (tmp / "dataset-metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return sorted(p for p in Path(out).rglob("*") if p.is_file())
