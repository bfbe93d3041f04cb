"""The Kaggle bundle: built from a tiny run, installed offline into a fresh venv that
has only what a Kaggle image has (OpenCV as opencv-python, not -headless), its submit.py
writes what `steelflow submit` writes, and tells a missing or old module in one line."""

from __future__ import annotations

import email.parser
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from steelflow import kaggle_submit
from steelflow.atomic import MARKER
from steelflow.bundle import build_wheel
from steelflow.cli import main
from tests.conftest import FOLDS, TEST_CONFIG, models_args, networks

NOT_ON_KAGGLE = ("steelflow", "__editable__", "snakemake", "dvc", "kaggle")
HEADLESS = ("cv2", "opencv_python_headless")  # a Kaggle image has opencv-python instead


@pytest.fixture(scope="module")
def bundle(project, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist") / "kaggle"
    args = ["bundle", "--config", str(TEST_CONFIG), *FOLDS, *networks(project)]
    thresholds = ["--thresholds", str(project / "thresholds.json")]
    assert main([*args, *thresholds, "--out", str(out), "--dataset", "me/steel"]) == 0
    return out


def stand_in(root: Path, leave_out: tuple[str, ...] = HEADLESS, first: tuple[Path, ...] = ()):
    """The python of a fresh venv standing in for a Kaggle image: this environment's
    packages (torch, numpy, ...) but not steelflow, snakemake, dvc or kaggle, nor those whose
    names start with ``leave_out`` (by default this venv's OpenCV, opencv-python-headless);
    the folders ``first`` come before them on sys.path."""
    image = root / "preinstalled"
    image.mkdir(parents=True)
    here = Path(sysconfig.get_paths()["purelib"])
    for entry in here.iterdir():
        name = entry.name.lower()
        if not any(n in name for n in NOT_ON_KAGGLE) and not name.startswith(leave_out):
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
    (Path(site) / "preinstalled.pth").write_text("".join(f"{p}\n" for p in (*first, image)))
    return python


@pytest.fixture(scope="module")
def opencv_python(tmp_path_factory) -> Path:
    """A folder with the real opencv-python distribution (not -headless) at the version of
    this venv's opencv-python-headless: the OpenCV of a Kaggle image. From PyPI; pip's
    cache keeps it to one download."""
    version = importlib.metadata.version("opencv-python-headless")
    target = tmp_path_factory.mktemp("opencv-python")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target)]
    done = subprocess.run([*pip, f"opencv-python=={version}"], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"opencv-python=={version} not installed from PyPI: {done.stderr.strip()}")
    return target


@pytest.fixture(scope="module")
def kaggle_python(opencv_python, tmp_path_factory) -> Path:
    """A Kaggle image's python: this environment's packages, OpenCV as opencv-python."""
    return stand_in(tmp_path_factory.mktemp("kaggle-image"), first=(opencv_python,))


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
        MARKER,  # a later bundle may replace the folder
    }
    assert json.loads((bundle / "dataset-metadata.json").read_text())["id"] == "me/steel"
    assert "folds:\n  - 0\n  - 1" in (bundle / "config.yaml").read_text().replace(
        "- 0\n- 1", "  - 0\n  - 1"
    )


def test_submit_py_installs_offline_and_writes_what_steelflow_submit_writes(
    project, bundle, kaggle_python, opencv_python, tmp_path
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

    where = "import steelflow, cv2; print(steelflow.__file__, cv2.__file__); import snakemake"
    found = run_offline(kaggle_python, "-P", "-c", where, cwd=working)
    installed, opencv = found.stdout.split()
    assert str(kaggle_python.parents[1]) in installed  # the wheel's install, in the new venv
    assert opencv.startswith(str(opencv_python))  # opencv-python's cv2, not -headless's
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


def test_submit_py_finds_the_competition_where_todays_notebooks_or_2019s_mount_it(tmp_path):
    today, then = tmp_path / "competitions/severstal", tmp_path / "severstal"
    assert kaggle_submit.mounted((today, then)) is None
    then.mkdir()
    assert kaggle_submit.mounted((today, then)) == then
    today.mkdir(parents=True)
    assert kaggle_submit.mounted((today, then)) == today


def test_submit_py_without_data_reads_the_mounted_folder_or_names_both_in_one_line(
    tmp_path, monkeypatch, capsys
):
    today, then = tmp_path / "competitions/severstal", tmp_path / "severstal"
    monkeypatch.setattr(kaggle_submit, "KAGGLE_DATA", (today, then))
    assert kaggle_submit.main(["--out", str(tmp_path / "submission.csv")]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("submit.py: error: ") and f"neither {today} nor {then}" in line
    (then / "test_images").mkdir(parents=True)  # the 2019 folder, without its sample
    assert kaggle_submit.main(["--out", str(tmp_path / "submission.csv")]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert f"{then / 'sample_submission.csv'} not found" in line
    assert not (tmp_path / "submission.csv").exists()


def test_submit_py_refuses_a_mistyped_device_at_once_with_the_config_s_choices(capsys):
    schema = Path(kaggle_submit.__file__).with_name("config.schema.yaml")
    train = yaml.safe_load(schema.read_text())["properties"]["train"]["properties"]
    assert tuple(train["device"]["enum"]) == kaggle_submit.DEVICES
    with pytest.raises(SystemExit) as stop:
        kaggle_submit.main(["--data", ".", "--device", "gpu"])
    assert stop.value.code == 2 and "--device: invalid choice: 'gpu'" in capsys.readouterr().err


def one_error_line(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize("missing", ["cv2", "numba"])
def test_a_module_the_image_lacks_is_one_line_naming_it(
    project, bundle, opencv_python, tmp_path, missing
):
    data = kaggle_input(project, tmp_path)
    if missing == "cv2":  # no OpenCV at all
        python = stand_in(tmp_path / "image")
    else:
        python = stand_in(tmp_path / "image", (*HEADLESS, missing), first=(opencv_python,))
    done = run_offline(python, bundle / "submit.py", "--data", str(data), cwd=tmp_path)
    line = one_error_line(done)
    if missing == "cv2":
        assert line == (
            "submit.py: error: module cv2 (OpenCV) is missing; steelflow needs cv2>=4.10 "
            "(pip install opencv-python-headless, or opencv-python)"
        )
    else:
        assert line == (
            "submit.py: error: module numba is missing; steelflow needs numba>=0.60 "
            "(pip install numba)"
        )
    assert not (tmp_path / "submission.csv").exists()


def test_a_module_older_than_steelflow_needs_is_one_line_naming_the_version(
    project, bundle, opencv_python, tmp_path
):
    data = kaggle_input(project, tmp_path)
    old = tmp_path / "old"
    (old / "tqdm").mkdir(parents=True)  # before the image's tqdm 4.x on sys.path
    (old / "tqdm/__init__.py").write_text("__version__ = '1.0'\n")
    python = stand_in(tmp_path / "image", first=(old, opencv_python))
    done = run_offline(python, bundle / "submit.py", "--data", str(data), cwd=tmp_path)
    assert one_error_line(done) == (
        "submit.py: error: module tqdm is 1.0, too old; steelflow needs tqdm>=4.66 "
        "(pip install tqdm)"
    )
    assert not (tmp_path / "submission.csv").exists()


def test_the_wheel_caps_no_torch_and_asks_for_opencv_only_in_an_extra(tmp_path):
    """pip resolves what the wheel declares, even offline: an upper cap on torch or an
    OpenCV distribution in the base requirements would stop it in a Kaggle image."""
    with zipfile.ZipFile(build_wheel(tmp_path)) as wheel:
        (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = email.parser.Parser().parsestr(wheel.read(name).decode())
    requires = [Requirement(r) for r in metadata.get_all("Requires-Dist")]
    names = {r.name.lower() for r in requires}
    assert {"torch", "torchvision", "opencv-python-headless"} <= names
    for requirement in requires:
        if requirement.name.lower() in ("torch", "torchvision"):
            capped = [s for s in requirement.specifier if s.operator in ("<", "<=", "==", "~=")]
            assert not capped, f"{requirement}: a Kaggle image's newer torch would not install"
        if "opencv" in requirement.name.lower():
            assert requirement.marker is not None, f"{requirement}: not under an extra"
            assert requirement.marker.evaluate({"extra": "opencv"})
            assert not requirement.marker.evaluate({"extra": ""})
    assert "opencv" in metadata.get_all("Provides-Extra")
