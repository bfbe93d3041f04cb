"""The Kaggle bundle: built from a tiny run, installed offline into a fresh venv that
has only what a Kaggle image has, its submit.py writes what `steelflow submit` writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from steelflow.cli import main
from tests.conftest import FOLDS, TEST_CONFIG, models_args, networks

NOT_ON_KAGGLE = ("steelflow", "__editable__", "snakemake", "dvc", "kaggle")


@pytest.fixture(scope="module")
def bundle(project, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist") / "kaggle"
    args = ["bundle", "--config", str(TEST_CONFIG), *FOLDS, *networks(project)]
    thresholds = ["--thresholds", str(project / "thresholds.json")]
    assert main([*args, *thresholds, "--out", str(out), "--dataset", "me/steel"]) == 0
    return out


@pytest.fixture(scope="module")
def kaggle_python(tmp_path_factory) -> Path:
    """A fresh venv standing in for a Kaggle image: this environment's packages (torch,
    numpy, ...) but not steelflow, snakemake, dvc or kaggle."""
    root = tmp_path_factory.mktemp("kaggle-image")
    image = root / "preinstalled"
    image.mkdir()
    here = Path(sysconfig.get_paths()["purelib"])
    for entry in here.iterdir():
        if not any(name in entry.name.lower() for name in NOT_ON_KAGGLE):
            (image / entry.name).symlink_to(entry)
    # without pip of its own: the image's pip and setuptools (torch needs setuptools>=77)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "env")], check=True)
    python = root / "env/bin/python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "preinstalled.pth").write_text(f"{image}\n")
    return python


def kaggle_input(project: Path, root: Path) -> Path:
    """The competition's folder as a Kaggle notebook sees it: /kaggle/input/<competition>."""
    data = root / "input/severstal-steel-defect-detection"
    shutil.copytree(project / "raw/test_images", data / "test_images")
    shutil.copy(project / "raw/sample_submission.csv", data)
    return data


def run_offline(python: Path, *args, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(
        p for p in env["PATH"].split(os.pathsep) if p != str(Path(sys.executable).parent)
    )
    env["PIP_CONFIG_FILE"] = os.devnull  # no index or find-links of this machine's pip.conf:
    env["PIP_NO_INDEX"] = "1"  # the wheels of the bundle alone
    return subprocess.run([python, *args], cwd=cwd, capture_output=True, text=True, env=env)


def test_the_bundle_holds_the_package_every_fold_thresholds_config_and_script(bundle):
    names = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()}
    (wheel,) = [n for n in names if n.startswith("wheels/")]
    assert wheel.startswith("wheels/steelflow-") and wheel.endswith("-py3-none-any.whl")
    models = {
        f"models/{network}_f{fold}.pt" for network in ("classifier", "unet") for fold in (0, 1)
    }
    assert names == {
        wheel,
        *models,
        "thresholds.json",
        "config.yaml",
        "submit.py",
        "dataset-metadata.json",
    }
    assert json.loads((bundle / "dataset-metadata.json").read_text())["id"] == "me/steel"
    assert "folds:\n  - 0\n  - 1" in (bundle / "config.yaml").read_text().replace(
        "- 0\n- 1", "  - 0\n  - 1"
    )


def test_submit_py_installs_offline_and_writes_what_steelflow_submit_writes(
    project, bundle, kaggle_python, tmp_path
):
    data = kaggle_input(project, tmp_path)
    working = tmp_path / "working"
    (working / "steelflow").mkdir(parents=True)  # a stray folder of that name is not imported
    (working / "steelflow/__init__.py").write_text("raise ImportError('the stray folder')\n")
    done = run_offline(kaggle_python, bundle / "submit.py", "--data", str(data), cwd=working)
    assert done.returncode == 0, done.stderr
    reference = tmp_path / "reference.csv"
    assert main(["submit", *models_args(project), "--raw", str(data), "--out", str(reference)]) == 0
    assert (working / "submission.csv").read_bytes() == reference.read_bytes()

    where = "import steelflow, sys; print(steelflow.__file__); import snakemake"
    found = run_offline(kaggle_python, "-P", "-c", where, cwd=working)
    assert str(kaggle_python.parents[1]) in found.stdout  # the wheel's install, in the new venv
    assert "No module named 'snakemake'" in found.stderr  # prediction ran without it


@pytest.mark.parametrize("missing", ["folder", "test_images", "sample_submission.csv"])
def test_a_missing_input_folder_is_one_line_naming_it(
    project, bundle, kaggle_python, tmp_path, missing
):
    data = kaggle_input(project, tmp_path)
    gone = {"folder": data, "test_images": data / "test_images"}.get(missing, data / missing)
    (shutil.rmtree if gone.is_dir() else Path.unlink)(gone)
    done = run_offline(kaggle_python, bundle / "submit.py", "--data", str(data), cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1
    assert lines[0].startswith("submit.py: error: ") and str(data) in lines[0]
    assert not (tmp_path / "submission.csv").exists()
