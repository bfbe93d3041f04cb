"""Shared fixtures: the repository root and the real Severstal material in ../shared."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "severstal-real"
TEST_CONFIG = ROOT / ".test" / "config.yaml"  # the tiny config of tests and CI


@pytest.fixture
def real_data() -> Path:
    """Folder of real competition files; skipped where the clone has no ../shared."""
    if not REAL.is_dir():
        pytest.skip(
            f"real Severstal data not found at {REAL}: it ships with the development "
            "checkout (../shared), not with a user's clone"
        )
    return REAL


@pytest.fixture
def real_kaggle_folder(real_data, tmp_path) -> Path:
    """The 6 real train images with the old-layout train.csv, as a Kaggle folder.

    Two of them double as test images, with a sample_submission.csv.
    """
    folder = tmp_path / "kaggle"
    (folder / "train_images").mkdir(parents=True)
    (folder / "test_images").mkdir()
    images = sorted((real_data / "train_images").glob("*.jpg"))
    for image in images:
        shutil.copy(image, folder / "train_images" / image.name)
    for image in images[:2]:
        shutil.copy(image, folder / "test_images" / image.name)
    shutil.copy(real_data / "train_subset_oldformat.csv", folder / "train.csv")
    rows = [f"{image.name}_{c},1 1" for image in images[:2] for c in range(1, 5)]
    (folder / "sample_submission.csv").write_text(
        "ImageId_ClassId,EncodedPixels\n" + "\n".join(rows) + "\n"
    )
    return folder


def fetch_synthetic(out: Path, n_train: int, n_test: int) -> Path:
    """A small synthetic data set in the Kaggle layout, made by `steelflow fetch`."""
    from steelflow.cli import main

    sizes = [f"data.synthetic.n_train={n_train}", f"data.synthetic.n_test={n_test}"]
    args = ["fetch", "--config", str(TEST_CONFIG), "--out", str(out)]
    assert main(args + [arg for size in sizes for arg in ("--set", size)]) == 0
    return out


FOLDS = ["--set", "train.folds=[0, 1]"]  # two folds: an ensemble, tuned out of fold


@pytest.fixture(scope="session")
def project(tmp_path_factory) -> Path:
    """Tiny data, both networks trained one epoch on folds 0 and 1, thresholds tuned
    (the project of the answer stages: tune, submit, predict, bundle)."""
    from steelflow.cli import main
    from steelflow.masks import build

    root = tmp_path_factory.mktemp("answer")
    config = ["--config", str(TEST_CONFIG), *FOLDS]
    data = ["--raw", str(root / "raw"), "--masks", str(root / "masks")]
    fetch_synthetic(root / "raw", 20, 6)
    build(root / "raw/train.csv", root / "raw/train_images", root / "masks")
    split = ["--split", str(root / "split.csv")]
    assert main(["split", *config, "--masks", str(root / "masks"), "--out", split[1]]) == 0
    for network in ("unet", "classifier"):  # the classifier starts from the U-Net's encoder
        for fold in (0, 1):
            outputs = {
                "--out": f"{network}_f{fold}.pt",
                "--history": f"{network}_f{fold}.csv",
                "--curves": f"{network}_f{fold}.png",
            }
            if network == "classifier":
                outputs["--start"] = f"unet_f{fold}.pt"
            named = [x for flag, name in outputs.items() for x in (flag, str(root / name))]
            args = ["train", network, *config, "--fold", str(fold), *data, *split, *named]
            assert main(args) == 0
    tuned = ["--out", str(root / "thresholds.json"), "--figure", str(root / "thresholds.png")]
    assert main(["tune", *config, *data, *split, *networks(root), *tuned]) == 0
    return root


def networks(root: Path) -> list[str]:
    """Every fold's checkpoints, as the rules name them."""
    return [
        "--classifier",
        str(root / "classifier_f{fold}.pt"),
        "--unet",
        str(root / "unet_f{fold}.pt"),
    ]


def models_args(root: Path) -> list[str]:
    thresholds = ["--thresholds", str(root / "thresholds.json")]
    return ["--config", str(TEST_CONFIG), *FOLDS, *networks(root), *thresholds]


MOUNTS = {  # shell lines mounting $0 in a mount namespace of the test's own
    "read-only": 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0"',
    "512 KiB": 'mount -t tmpfs -o size=512k tmpfs "$0"',
}


@pytest.fixture(scope="session")
def mounts():
    """Skip where no process may mount in a namespace of its own (``unshare -rm``)."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode:
        pytest.skip("needs unshare -rm (a mount namespace) to mount a read-only or small folder")


def on_mount(kind: str, folder: Path, *command: str) -> subprocess.CompletedProcess:
    """``command`` run with ``folder`` mounted as MOUNTS[kind] says (permissions alone do not
    stop root); its stdout ends with a line ``left: NAMES``, what the folder then holds."""
    script = f'{MOUNTS[kind]} || exit 99; "$@"; code=$?; echo "left: $(ls -A "$0")"; exit $code'
    unshare = ["unshare", "--map-root-user", "--mount", "sh", "-c", script, str(folder)]
    return subprocess.run([*unshare, *command], capture_output=True, text=True)
