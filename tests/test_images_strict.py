"""Images are read strictly and named one way: a JPEG or PNG that is not whole is refused
by name wherever it is read, and image files are .jpg, .jpeg or .png in any case."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from steelflow.cli import main
from steelflow.errors import SteelflowError
from steelflow.images import list_images, read_gray
from steelflow.io import read_masks, read_sample_ids
from steelflow.masks import MaskCache
from tests.conftest import TEST_CONFIG, models_args


def encoded(suffix: str, seed: int = 0) -> bytes:
    """A real 1600x256 gray image, textured (so its data is large), as a file's bytes."""
    gray = np.random.default_rng(seed).integers(0, 256, (256, 1600), np.uint8)
    ok, data = cv2.imencode(suffix, cv2.GaussianBlur(gray, (5, 5), 0))
    assert ok
    return data.tobytes()


def zero_filled(data: bytes) -> bytes:
    """As an interrupted copy leaves a file: its size, but zeros from halfway on."""
    return data[: len(data) // 2] + bytes(len(data) - len(data) // 2)


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


BAD = {
    "zero_filled.jpg": (zero_filled(encoded(".jpg")), "truncated or corrupt JPEG"),
    "truncated.jpg": (truncated(encoded(".jpg")), "truncated or corrupt JPEG"),
    "truncated.png": (truncated(encoded(".png")), "truncated or corrupt PNG"),
}


@pytest.fixture
def local_folder(tmp_path) -> Path:
    """A Kaggle-layout folder of real JPEGs: a.jpg (class 1) and b.jpg in train_images/,
    t.jpg in test_images/."""
    folder = tmp_path / "somewhere"
    for name, seed in (
        ("train_images/a.jpg", 0),
        ("train_images/b.jpg", 1),
        ("test_images/t.jpg", 2),
    ):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(encoded(".jpg", seed))
    (folder / "train.csv").write_text("ImageId,ClassId,EncodedPixels\na.jpg,1,1 10\n")
    (folder / "sample_submission.csv").write_text(
        "ImageId,EncodedPixels,ClassId\nt.jpg,1 409600,0\n"
    )
    return folder


def fetch(local_path: str | Path, out: Path) -> int:
    config = ["--config", str(TEST_CONFIG), "--set", "data.source=local"]
    return main(["fetch", *config, "--set", f"data.local_path={local_path}", "--out", str(out)])


def error_line(err: str, stage: str) -> str:
    """The one line of a refusal (a progress bar may precede it), checked as such."""
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith(f"steelflow {stage}: error: ")
    return errors[0]


def test_a_whole_image_is_read_and_one_not_whole_refused_by_name(tmp_path):
    for suffix in (".jpg", ".png"):
        (tmp_path / f"whole{suffix}").write_bytes(encoded(suffix))
        assert read_gray(tmp_path / f"whole{suffix}").shape == (256, 1600)
    assert cv2.imdecode(np.frombuffer(BAD["zero_filled.jpg"][0], np.uint8), 0) is not None
    for name, (data, problem) in BAD.items():  # the decoder alone would give pixels for one
        (tmp_path / name).write_bytes(data)
        with pytest.raises(
            SteelflowError, match=rf"{name}: cannot be read as an image \({problem}"
        ):
            read_gray(tmp_path / name)
    (tmp_path / "a.jpg").write_bytes(b"BM" + bytes(100))  # a BMP named .jpg
    with pytest.raises(SteelflowError, match=r"a.jpg: .*neither a JPEG nor a PNG"):
        read_gray(tmp_path / "a.jpg")


@pytest.mark.parametrize("name", list(BAD))
def test_fetch_refuses_an_image_that_is_not_whole_in_one_line(local_folder, tmp_path, capsys, name):
    (local_folder / "train_images" / name).write_bytes(BAD[name][0])
    out = tmp_path / "raw"
    assert fetch(local_folder, out) == 1
    line = error_line(capsys.readouterr().err, "fetch")
    assert f"{local_folder}/train_images/{name}: cannot be read as an image ({BAD[name][1]}" in line
    assert not out.exists()


def test_jpeg_and_upper_case_train_images_land_in_the_mask_cache(local_folder, tmp_path):
    images = local_folder / "train_images"
    (images / "a.jpg").rename(images / "a.jpeg")
    (images / "b.jpg").rename(images / "b.JPG")
    (images / "c.png").write_bytes(encoded(".png", 3))
    (local_folder / "train.csv").write_text("ImageId,ClassId,EncodedPixels\na.jpeg,1,1 10\n")
    (images / ".DS_Store").write_bytes(b"hidden files are skipped")
    raw = tmp_path / "raw"
    assert fetch(local_folder, raw) == 0
    assert main(["masks", "--raw", str(raw), "--out", str(tmp_path / "masks")]) == 0
    cache = MaskCache(tmp_path / "masks")
    assert cache.image_ids == ["a.jpeg", "b.JPG", "c.png"]
    assert cache["a.jpeg"].sum() == 10 and not cache["b.JPG"].any()


def test_a_link_to_nothing_among_the_images_is_refused_by_name(tmp_path):
    """Not passed over: its image would be missing from the predictions without a word."""
    (tmp_path / "a.jpg").write_bytes(encoded(".jpg"))
    (tmp_path / "b.jpg").symlink_to(tmp_path / "a.jpg")  # a link to an image is one
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.jpg"]
    (tmp_path / "c.jpg").symlink_to(tmp_path / "moved/c.jpg")
    with pytest.raises(SteelflowError, match=r"c.jpg: a link to .*moved/c.jpg, which is not"):
        list_images(tmp_path)


@pytest.mark.parametrize("name", ["notes.txt", "scan.bmp"])
def test_another_file_among_the_images_is_refused_by_name(local_folder, tmp_path, capsys, name):
    (local_folder / "train_images" / name).write_bytes(b"not an image")
    assert fetch(local_folder, tmp_path / "raw") == 1
    expected = f"train_images/{name}: not a JPEG or PNG image (expected .jpg, .jpeg or .png"
    assert expected in error_line(capsys.readouterr().err, "fetch")
    assert main(["masks", "--raw", str(local_folder), "--out", str(tmp_path / "masks")]) == 1
    assert expected in error_line(capsys.readouterr().err, "masks")
    assert not (tmp_path / "raw").exists() and not (tmp_path / "masks").exists()


def test_eda_and_report_refuse_an_image_that_is_not_whole(local_folder, tmp_path):
    from steelflow.eda import plot_examples
    from steelflow.masks import build
    from steelflow.report import plot_predictions

    images = local_folder / "train_images"
    build(local_folder / "train.csv", images, tmp_path / "masks")
    (images / "a.jpg").write_bytes(BAD["zero_filled.jpg"][0])
    with pytest.raises(SteelflowError, match=r"a.jpg: cannot be read as an image \(truncated"):
        plot_examples(MaskCache(tmp_path / "masks"), images, tmp_path / "examples.png", 1, 0)
    predicted = pd.DataFrame({"ImageId": ["a.jpg"], "ClassId": [1], "EncodedPixels": ["1 10"]})
    with pytest.raises(SteelflowError, match=r"a.jpg: cannot be read as an image \(truncated"):
        plot_predictions(images, None, predicted, tmp_path / "predictions.png")


@pytest.mark.parametrize(
    "written", ["~/somewhere", "$STEEL_DATA/somewhere", "${STEEL_DATA}/somewhere"]
)
def test_local_path_may_use_home_and_environment_variables(
    local_folder, tmp_path, monkeypatch, written
):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("STEEL_DATA", str(tmp_path))
    assert fetch(written, tmp_path / "raw") == 0
    assert read_masks(tmp_path / "raw/train.csv").ImageId.tolist() == ["a.jpg"]


def test_csv_files_with_crlf_line_endings_are_read(local_folder, tmp_path):
    for name in ("train.csv", "sample_submission.csv"):
        path = local_folder / name
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    assert fetch(local_folder, tmp_path / "raw") == 0
    train = read_masks(tmp_path / "raw/train.csv")
    assert train.values.tolist() == [["a.jpg", 1, "1 10"]]
    assert read_sample_ids(tmp_path / "raw/sample_submission.csv") == ["t.jpg"]
    launch = tmp_path / "launch.csv"  # the 2019 layout: its last field often empty
    launch.write_bytes(b"ImageId_ClassId,EncodedPixels\r\na.jpg_1,1 10\r\na.jpg_2,\r\n")
    assert read_masks(launch).values.tolist() == [["a.jpg", 1, "1 10"], ["a.jpg", 2, ""]]


def test_predict_names_each_overlay_after_its_whole_file_name(project, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    image = sorted((project / "raw/test_images").iterdir())[0]
    gray = read_gray(image)
    shutil.copy(image, folder / "coil.jpg")
    cv2.imwrite(str(folder / "coil.png"), gray)
    cv2.imwrite(str(folder / "COIL.JPEG"), gray)
    out = tmp_path / "out"
    assert (
        main(["predict", str(folder), "--out", str(out), "--overlays", *models_args(project)]) == 0
    )
    for name in ("COIL.JPEG", "coil.jpg", "coil.png"):
        assert cv2.imread(str(out / f"{name}.png")).shape == (256, 1600, 3), name
    table = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert table.ImageId.unique().tolist() == ["COIL.JPEG", "coil.jpg", "coil.png"]
    (folder / "coil.png").write_bytes(zero_filled((folder / "coil.png").read_bytes()))
    capsys.readouterr()
    assert (
        main(["predict", str(folder), "--out", str(tmp_path / "bad"), *models_args(project)]) == 1
    )
    assert "coil.png: cannot be read as an image (truncated or corrupt PNG" in error_line(
        capsys.readouterr().err, "predict"
    )


def test_submit_refuses_a_test_image_that_is_not_whole(project, tmp_path, capsys):
    raw = tmp_path / "raw"
    shutil.copytree(project / "raw", raw)
    image = read_sample_ids(raw / "sample_submission.csv")[-1]
    (raw / "test_images" / image).write_bytes(
        zero_filled((raw / "test_images" / image).read_bytes())
    )
    out = tmp_path / "submission.csv"
    assert main(["submit", *models_args(project), "--raw", str(raw), "--out", str(out)]) == 1
    line = error_line(capsys.readouterr().err, "submit")
    assert f"{image}: cannot be read as an image (truncated or corrupt JPEG" in line
    assert not out.exists()
