"""`steelflow fetch`: the synthetic source, local folders and zips, Kaggle's error paths, bad input."""

from __future__ import annotations

import hashlib
import io
import os
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from steelflow import rle, synthetic
from steelflow.cli import main
from steelflow.config import load
from steelflow.io import read_masks
from steelflow.sources import SourceError, fetch
from tests.conftest import ROOT, TEST_CONFIG, fetch_synthetic, on_mount


def data_config(**synthetic):
    config = load(ROOT / "config.yaml")
    config["data"]["synthetic"].update({"n_train": 12, "n_test": 4, **synthetic})
    return config


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def synthetic_raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "raw"
    return fetch_synthetic(out, 12, 4)


def test_synthetic_source_writes_the_kaggle_layout(synthetic_raw):
    names = {p.name for p in synthetic_raw.iterdir()}
    assert names == {
        ".steelflow",
        "train.csv",
        "test_truth.csv",
        "sample_submission.csv",
        "train_images",
        "test_images",
    }
    train_images = sorted(p.name for p in (synthetic_raw / "train_images").glob("*.jpg"))
    test_images = sorted(p.name for p in (synthetic_raw / "test_images").glob("*.jpg"))
    assert len(train_images) == 12 and len(test_images) == 4
    assert all(len(name) == 13 and name.endswith(".jpg") for name in train_images + test_images)
    assert (synthetic_raw / "train.csv").read_text().startswith("ImageId,ClassId,EncodedPixels\n")
    train = read_masks(synthetic_raw / "train.csv")
    assert set(train.ImageId) <= set(train_images) and (train.EncodedPixels != "").all()
    sample = (synthetic_raw / "sample_submission.csv").read_text().splitlines()
    assert sample == ["ImageId,EncodedPixels,ClassId"] + [f"{i},1 409600,0" for i in test_images]
    truth = read_masks(synthetic_raw / "test_truth.csv")  # every image, clean ones too
    assert truth.groupby("ImageId").ClassId.apply(list).to_dict() == {
        i: [1, 2, 3, 4] for i in test_images
    }


def test_synthetic_images_look_like_severstal_jpegs(synthetic_raw):
    for path in sorted((synthetic_raw / "train_images").glob("*.jpg"))[:4]:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert image.shape == (256, 1600, 3) and image.dtype == np.uint8
        spread = image.max(axis=2).astype(int) - image.min(axis=2)
        assert spread.max() <= 2  # three (nearly) identical channels
        assert 20 < image.mean() < 140 and image.std() > 8


def test_synthetic_masks_never_overlap(synthetic_raw):
    for name in ("train.csv", "test_truth.csv"):
        table = read_masks(synthetic_raw / name)
        for _, rows in table.groupby("ImageId"):
            stacked = rle.decode_many(rows.EncodedPixels.tolist()).astype(int)
            assert stacked.sum(axis=0).max() == 1


def test_synthetic_output_is_byte_identical_for_any_worker_count(synthetic_raw, tmp_path):
    config = data_config()
    fetch(config["data"], config["seed"], tmp_path / "raw", workers=1)
    assert digest(tmp_path / "raw") == digest(synthetic_raw)
    fetch(config["data"], config["seed"] + 1, tmp_path / "raw2", workers=1)
    assert digest(tmp_path / "raw2") != digest(synthetic_raw)


def test_presets_change_how_visible_defects_are():
    """Same seed, same steel and masks; only the defect contrast differs."""
    for cls in (1, 2, 3, 4):
        steel = synthetic.draw_image(np.random.default_rng(cls), (), 1.0).image.astype(float)
        signal = {}
        for preset, visibility in synthetic.PRESETS.items():
            drawn = synthetic.draw_image(np.random.default_rng(cls), (cls,), visibility)
            inside = drawn.masks[cls - 1].astype(bool)
            assert inside.any() and not drawn.masks[np.arange(4) != cls - 1].any()
            change = np.abs(drawn.image - steel)
            assert change[~inside].max() <= 1  # the defect is drawn inside its mask only
            signal[preset] = change[inside].mean()
        assert signal["clear"] > 2 * signal["realistic"], cls


def test_local_folder_is_checked_and_train_csv_rewritten_in_the_new_layout(
    real_kaggle_folder, real_data, tmp_path
):
    out = tmp_path / "raw"
    fetch({"source": "local", "local_path": str(real_kaggle_folder)}, 0, out)
    new = read_masks(out / "train.csv").reset_index(drop=True)
    expected = read_masks(real_data / "train_subset_newformat.csv").reset_index(drop=True)
    pd.testing.assert_frame_equal(new, expected)
    assert len(list((out / "train_images").glob("*.jpg"))) == 6
    assert not (out / "test_truth.csv").exists()


def zip_folder(folder: Path, archive: Path, nested_images: bool = False) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not (nested_images and path.parent.name == "train_images"):
                zf.write(path, path.relative_to(folder))
        if nested_images:  # Kaggle ships train_images.zip inside the competition zip
            inner = io.BytesIO()
            with zipfile.ZipFile(inner, "w") as izf:
                for path in sorted((folder / "train_images").glob("*.jpg")):
                    izf.write(path, path.name)
            zf.writestr("train_images.zip", inner.getvalue())
    return archive


def test_local_zip_with_nested_zips(real_kaggle_folder, tmp_path):
    (real_kaggle_folder / "train_images").rename(tmp_path / "images")
    (real_kaggle_folder / "train_images").mkdir()
    archive = tmp_path / "severstal.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(real_kaggle_folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(real_kaggle_folder))
        inner = io.BytesIO()
        with zipfile.ZipFile(inner, "w") as izf:
            for path in sorted((tmp_path / "images").glob("*.jpg")):
                izf.write(path, f"train_images/{path.name}")
        zf.writestr("train_images.zip", inner.getvalue())
    out = tmp_path / "raw"
    fetch({"source": "local", "local_path": str(archive)}, 0, out)
    assert len(list((out / "train_images").glob("*.jpg"))) == 6
    assert not list(out.glob("*.zip"))


@pytest.mark.parametrize(
    "entry", ["../escaped.txt", "/tmp/absolute-escape.txt", "train_images/../../x.txt"]
)
def test_zip_entries_may_not_escape_the_target(tmp_path, entry):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("train.csv", "ImageId,ClassId,EncodedPixels\n")
        zf.writestr(entry, "gotcha")
    out = tmp_path / "work" / "raw"
    with pytest.raises(SourceError, match="would be extracted outside"):
        fetch({"source": "local", "local_path": str(archive)}, 0, out)
    assert not out.exists() and not leftovers(out.parent)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "x.txt").exists()


def test_zip_symlinks_are_refused(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("train.csv")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(SourceError, match="symbolic link"):
        fetch({"source": "local", "local_path": str(archive)}, 0, tmp_path / "raw")


def test_a_previous_good_output_survives_a_failed_fetch(real_kaggle_folder, tmp_path):
    out = tmp_path / "raw"
    fetch({"source": "local", "local_path": str(real_kaggle_folder)}, 0, out)
    before = digest(out)
    (real_kaggle_folder / "train.csv").write_text("nonsense\n")
    with pytest.raises(Exception, match="fits no layout"):
        fetch({"source": "local", "local_path": str(real_kaggle_folder)}, 0, out)
    assert digest(out) == before and not leftovers(tmp_path)


def corrupt(folder: Path) -> str:
    image = sorted((folder / "train_images").glob("*.jpg"))[2]
    image.write_bytes(image.read_bytes()[:5000])
    return image.name


def wrong_size(folder: Path) -> str:
    image = sorted((folder / "train_images").glob("*.jpg"))[1]
    cv2.imwrite(str(image), np.zeros((256, 800, 3), np.uint8))
    return image.name


def missing(folder: Path) -> str:
    image = sorted((folder / "train_images").glob("*.jpg"))[0]
    image.unlink()
    return image.name


def header_only(folder: Path) -> str:
    (folder / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n")
    return "train.csv"


def past_the_end(folder: Path) -> str:
    """The last mask of the 2019-layout train.csv runs past the image's 409,600 pixels."""
    lines = (folder / "train.csv").read_text().splitlines()
    last = max(i for i, line in enumerate(lines) if not line.endswith(","))
    lines[last] = lines[last].split(",")[0] + ",409590 20"
    (folder / "train.csv").write_text("\n".join(lines) + "\n")
    return str(last + 1)


def stray_zip(folder: Path) -> str:
    zip_folder(folder, folder / "backup.zip")  # a zip of its own files, beside them
    return "backup.zip"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (corrupt, r"train_images/{name}: cannot be read as an image \(truncated or corrupt JPEG"),
        (header_only, r"{name}: no defect masks; expected rows of ImageId,ClassId,EncodedPixels"),
        (past_the_end, r"kaggle/train.csv, line {name}: "),
        (stray_zip, r"kaggle: holds {name}, which is not part of the competition's layout"),
        (wrong_size, r"train_images/{name}: image is 800x256, expected 1600x256"),
        (missing, r"train.csv, line 2: image train_images/{name} is missing"),
    ],
)
def test_bad_local_data_names_the_file(real_kaggle_folder, tmp_path, damage, message):
    name = damage(real_kaggle_folder)
    with pytest.raises(SourceError, match=message.format(name=name)):
        fetch({"source": "local", "local_path": str(real_kaggle_folder)}, 0, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_a_damaged_zip_is_one_line_naming_it(real_kaggle_folder, tmp_path):
    archive = tmp_path / "severstal.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(real_kaggle_folder / "train.csv", "train.csv")
        for path in sorted(real_kaggle_folder.rglob("*")):
            if path.is_file() and path.name != "train.csv":
                zf.write(path, path.relative_to(real_kaggle_folder))
    data = bytearray(archive.read_bytes())
    data[60:90] = bytes(30)  # inside train.csv's deflated data: its CRC no longer holds
    archive.write_bytes(data)
    with pytest.raises(SourceError, match=rf"^{archive}: not a valid zip archive, or damaged"):
        fetch({"source": "local", "local_path": str(archive)}, 0, tmp_path / "raw")
    assert not leftovers(tmp_path)


@pytest.mark.parametrize("given", ["zip", "folder"])
def test_a_full_disk_is_one_line_and_leaves_nothing(mounts, real_kaggle_folder, tmp_path, given):
    source = {
        "zip": zip_folder(real_kaggle_folder, tmp_path / "s.zip"),
        "folder": real_kaggle_folder,
    }
    small = tmp_path / "small"  # 512 KiB: the 1 MB of real images do not fit
    small.mkdir()
    local = ["--set", "data.source=local", "--set", f"data.local_path={source[given]}"]
    args = ["fetch", "--config", str(TEST_CONFIG), *local, "--out", str(small / "raw")]
    done = on_mount("512 KiB", small, sys.executable, "-m", "steelflow", *args)
    assert done.returncode == 1, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("steelflow fetch: error: ") and f"{source[given]}: could not" in line
    assert "could not be copied into the output (No space left on device): free space" in line
    assert done.stdout.splitlines()[-1] == "left: "


def test_the_download_unzipped_beside_its_zip_is_read_and_the_zip_left(
    real_kaggle_folder, tmp_path
):
    """`kaggle competitions download` then `unzip` in the same folder."""
    zip_folder(real_kaggle_folder, real_kaggle_folder / "severstal-steel-defect-detection.zip")
    out = tmp_path / "raw"
    fetch({"source": "local", "local_path": str(real_kaggle_folder)}, 0, out)
    assert not list(out.glob("*.zip")) and len(list((out / "train_images").iterdir())) == 6


@pytest.mark.parametrize("given", ["zip", "folder"])
def test_files_inside_one_folder_are_read_from_it(real_kaggle_folder, tmp_path, given):
    """A zip of the extracted folder, or the folder it extracts to, one level deeper."""
    wrapper = tmp_path / "download"
    wrapper.mkdir()
    real_kaggle_folder.rename(wrapper / "severstal")
    (wrapper / "__MACOSX").mkdir()  # what a Mac's archiver and Finder add beside
    (wrapper / ".DS_Store").write_bytes(b"\0")
    if given == "folder":  # unzipped into a folder of its own, beside the download
        zip_folder(wrapper / "severstal", wrapper / "severstal-steel-defect-detection.zip")
    source = wrapper
    if given == "zip":
        source = tmp_path / "severstal.zip"
        with zipfile.ZipFile(source, "w") as zf:
            for path in sorted(wrapper.rglob("*")):
                zf.write(path, path.relative_to(wrapper))
    out = tmp_path / "raw"
    fetch({"source": "local", "local_path": str(source)}, 0, out)
    assert {p.name for p in out.iterdir()} == {
        ".steelflow",
        "train.csv",
        "sample_submission.csv",
        "train_images",
        "test_images",
    }
    assert len(list((out / "train_images").iterdir())) == 6
    (wrapper / "severstal" / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n")
    if given == "folder":  # errors name the file where it is
        with pytest.raises(SourceError, match=rf"^{wrapper}/severstal/train.csv: no defect masks"):
            fetch({"source": "local", "local_path": str(source)}, 0, tmp_path / "again")


def test_a_zip_made_on_windows_separates_folders_by_backslashes(real_kaggle_folder, tmp_path):
    archive = tmp_path / "severstal.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(real_kaggle_folder.rglob("*")):
            if path.is_file():  # as PowerShell's Compress-Archive of .NET Framework wrote them
                zf.write(path, "\\".join(path.relative_to(real_kaggle_folder).parts))
    assert "train_images\\" in "".join(zf.namelist())
    out = tmp_path / "raw"
    fetch({"source": "local", "local_path": str(archive)}, 0, out)
    assert len(list((out / "train_images").glob("*.jpg"))) == 6
    assert len(list((out / "test_images").glob("*.jpg"))) == 2


@pytest.mark.parametrize("given", ["zip", "folder"])
def test_a_source_without_the_layout_is_refused_before_anything_is_copied(tmp_path, given):
    """A wrong folder (here of images alone) is named at once, not copied whole first:
    its named pipe would stop any copy."""
    folder = tmp_path / "photos"
    (folder / "train_images").mkdir(parents=True)
    (folder / "train_images" / "a.jpg").write_bytes(b"\xff\xd8")
    os.mkfifo(folder / "pipe")
    source = folder
    if given == "zip":
        source = tmp_path / "photos.zip"
        with zipfile.ZipFile(source, "w") as zf:
            zf.write(folder / "train_images" / "a.jpg", "train_images/a.jpg")
    out = tmp_path / "raw"
    with pytest.raises(SourceError, match=rf"{source}: train.csv is missing; expected the "):
        fetch({"source": "local", "local_path": str(source)}, 0, out)
    assert not out.exists() and not leftovers(tmp_path)


def test_a_folder_holding_the_downloaded_zip_alone_points_at_it(real_kaggle_folder, tmp_path):
    folder = tmp_path / "downloads"
    folder.mkdir()
    zip_folder(real_kaggle_folder, folder / "severstal-steel-defect-detection.zip")
    with pytest.raises(
        SourceError,
        match=r"train.csv is missing \(it holds severstal-steel-defect-detection.zip: set "
        r"data.local_path to that zip\)",
    ):
        fetch({"source": "local", "local_path": str(folder)}, 0, tmp_path / "raw")


def test_local_source_needs_a_path(tmp_path):
    with pytest.raises(SourceError, match="data.local_path is not set"):
        fetch({"source": "local", "local_path": None}, 0, tmp_path / "raw")
    with pytest.raises(SourceError, match="does not exist"):
        fetch({"source": "local", "local_path": str(tmp_path / "nope.zip")}, 0, tmp_path / "raw")


@pytest.fixture
def no_kaggle_credentials(monkeypatch, tmp_path):
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))


def test_kaggle_without_credentials_says_what_to_do(no_kaggle_credentials, tmp_path, capsys):
    code = main(
        [
            "fetch",
            "--config",
            str(ROOT / "config.yaml"),
            "--out",
            str(tmp_path / "raw"),
            "--set",
            "data.source=kaggle",
        ]
    )
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "no Kaggle credentials" in lines[0]
    assert "accept the rules" in lines[0] and captured.out == ""
    assert not (tmp_path / "raw").exists() and not leftovers(tmp_path)
