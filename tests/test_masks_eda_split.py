"""The mask cache, EDA and folds: on synthetic data, on the real images and on bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from steelflow import rle
from steelflow.cli import main
from steelflow.eda import run_eda
from steelflow.io import read_masks
from steelflow.masks import MaskCache, MaskError, build
from steelflow.sources import fetch
from steelflow.split import assign_folds
from tests.conftest import ROOT, fetch_synthetic


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "raw"
    return fetch_synthetic(out, 40, 2)


@pytest.fixture(scope="module")
def cache_dir(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "masks"
    build(raw / "train.csv", raw / "train_images", out)
    return out


def test_cache_returns_the_decoded_masks_of_every_image(raw, cache_dir):
    cache = MaskCache(cache_dir)
    images = sorted(p.name for p in (raw / "train_images").glob("*.jpg"))
    assert cache.image_ids == images
    table = read_masks(raw / "train.csv")
    areas = cache.areas()
    for i, image in enumerate(images):
        masks = cache[image]
        assert masks.shape == (4, 256, 1600) and masks.dtype == np.uint8
        np.testing.assert_array_equal(areas[i], masks.sum(axis=(1, 2)))
        rows = table[table.ImageId == image]
        expected = np.zeros_like(masks)
        for cls, text in zip(rows.ClassId, rows.EncodedPixels, strict=True):
            expected[cls - 1] = rle.decode(text)
        np.testing.assert_array_equal(masks, expected)
    flags = cache.classes()
    assert flags.sum().sum() == len(table) and set(flags.columns) == {1, 2, 3, 4}
    with pytest.raises(KeyError, match="not in the mask cache"):
        cache["nope.jpg"]


def write_train(raw, tmp_path, rows):
    folder = tmp_path / "raw"
    shutil.copytree(raw / "train_images", folder / "train_images")
    image = sorted(p.name for p in (folder / "train_images").glob("*.jpg"))[0]
    lines = ["ImageId,ClassId,EncodedPixels"] + [f"{image},{c},{t}" for c, t in rows]
    (folder / "train.csv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([(1, "1 5"), (3, "10 x")], r"train.csv, line 3: malformed RLE at character 3: token 'x'"),
        (
            [(1, "100 50"), (4, "120 5")],
            r"train.csv, line 3: the class 4 mask of \w+.jpg overlaps its class 1 mask \(line 2\)",
        ),
        ([(2, "1 5"), (2, "9 5")], r"train.csv, line 3: duplicate row for image \w+.jpg class 2"),
    ],
)
def test_bad_masks_name_the_row(raw, tmp_path, rows, message):
    folder = write_train(raw, tmp_path, rows)
    with pytest.raises(ValueError, match=message):
        build(folder / "train.csv", folder / "train_images", tmp_path / "masks")
    assert not (tmp_path / "masks").exists() and not list(tmp_path.glob(".*tmp"))


def test_masks_of_an_unknown_image_are_an_error(raw, tmp_path):
    folder = write_train(raw, tmp_path, [(1, "1 5")])
    for image in (folder / "train_images").glob("*.jpg"):
        image.unlink()
    with pytest.raises(MaskError, match="has masks but is not in"):
        build(folder / "train.csv", folder / "train_images", tmp_path / "masks")


def test_folds_are_stratified_balanced_and_reproducible():
    rng = np.random.default_rng(0)
    flags = pd.DataFrame(
        rng.random((500, 4)) < [0.07, 0.02, 0.4, 0.06],
        columns=[1, 2, 3, 4],
        index=[f"{i:04d}.jpg" for i in range(500)],
    ).astype(int)
    folds = assign_folds(flags, 5, seed=1)
    assert folds.ImageId.tolist() == sorted(flags.index)
    sizes = folds.groupby("fold").size()
    assert sizes.max() - sizes.min() <= 1 and sorted(sizes.index) == [0, 1, 2, 3, 4]
    for combo, group in folds.groupby("classes"):
        counts = group.fold.value_counts().reindex(range(5), fill_value=0)
        assert counts.max() - counts.min() <= 1, combo
    pd.testing.assert_frame_equal(folds, assign_folds(flags, 5, seed=1))
    assert not folds.fold.equals(assign_folds(flags, 5, seed=2).fold)


EDA_FILES = {
    "stats": "stats.json",
    "class_balance": "class_balance.png",
    "defects_per_image": "defects_per_image.png",
    "mask_areas": "mask_areas.png",
    "examples": "examples.png",
}


def test_split_and_eda_commands(raw, cache_dir, tmp_path, capsys):
    out = tmp_path / "split.csv"
    assert (
        main(
            [
                "split",
                "--config",
                str(ROOT / "config.yaml"),
                "--masks",
                str(cache_dir),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    folds = pd.read_csv(out, keep_default_na=False)
    assert len(folds) == 40 and set(folds.fold) == set(range(5))
    assert (
        main(
            [
                "eda",
                "--config",
                str(ROOT / "config.yaml"),
                "--masks",
                str(cache_dir),
                "--raw",
                str(raw),
                *[
                    arg
                    for name in EDA_FILES
                    for arg in (
                        f"--{name.replace('_', '-')}",
                        str(tmp_path / "eda" / EDA_FILES[name]),
                    )
                ],
            ]
        )
        == 0
    )
    stats = json.loads((tmp_path / "eda" / "stats.json").read_text())
    table = read_masks(raw / "train.csv")
    assert stats["images"] == 40 and stats["masks"] == len(table)
    assert stats["with_defect"] == table.ImageId.nunique() == 40 - stats["clean"]
    for name in ("class_balance", "defects_per_image", "mask_areas", "examples"):
        assert (tmp_path / "eda" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_fold_beyond_the_split_is_a_config_error(cache_dir, tmp_path, capsys):
    code = main(
        [
            "split",
            "--config",
            str(ROOT / "config.yaml"),
            "--masks",
            str(cache_dir),
            "--out",
            str(tmp_path / "s.csv"),
            "--set",
            "train.folds=[0, 5]",
        ]
    )
    assert (
        code == 1
        and "train.folds: expected folds below split.folds (5), got 5" in capsys.readouterr().err
    )


def test_real_data_through_local_masks_and_eda(real_kaggle_folder, real_data, tmp_path):
    """The 6 real images: local source, mask cache, EDA; the figure is looked at by hand too."""
    raw = tmp_path / "raw"
    fetch({"source": "local", "local_path": str(real_kaggle_folder)}, 0, raw)
    build(raw / "train.csv", raw / "train_images", tmp_path / "masks")
    outputs = {name: tmp_path / "eda" / file for name, file in EDA_FILES.items()}
    stats = run_eda(tmp_path / "masks", raw / "train_images", outputs, per_class=2, seed=0)
    assert all(path.read_bytes() for path in outputs.values())
    assert stats["images"] == 6 and stats["clean"] == 0 and stats["masks"] == 7
    assert stats["images_per_class"] == {"1": 2, "2": 1, "3": 3, "4": 1}
    cache = MaskCache(tmp_path / "masks")
    first = cache["0002cc93b.jpg"]
    assert (
        first[0].sum()
        == rle.decode(
            read_masks(real_data / "train_subset_newformat.csv").EncodedPixels.iloc[0]
        ).sum()
    )
    assert first[1:].sum() == 0
