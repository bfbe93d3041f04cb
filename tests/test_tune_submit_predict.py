"""Tuning, the submission, scoring and predict, on tiny trained models and by hand."""

from __future__ import annotations

import json
import logging
import os
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from steelflow import rle
from steelflow.atomic import MARKER
from steelflow.cli import main
from steelflow.config import load
from steelflow.io import COLUMNS, read_masks, read_sample_ids, write_submission
from steelflow.masks import MaskCache, build
from steelflow.models import build_classifier, build_unet
from steelflow.predict import Thresholds, drop_small_components, postprocess
from steelflow.tune import Evidence, area_bounds, areas_above, class_dice, search
from tests.conftest import FOLDS, TEST_CONFIG, models_args
from tests.test_rle import reference_decode

EMPTY = pd.DataFrame(columns=COLUMNS)

TUNE = load(TEST_CONFIG)["tune"]


def test_tune_writes_settings_for_every_class_and_a_figure(project):
    result = json.loads((project / "thresholds.json").read_text())
    assert set(result["classes"]) == {"1", "2", "3", "4"}
    assert result["folds"] == [0, 1]
    assert result["val_images"] == 8  # folds 0 and 1 of 20 images in 5 folds
    assert result["non_overlap"] in TUNE["non_overlap"]
    for setting in result["classes"].values():
        assert (
            setting["gate"] in TUNE["gates"]
            and setting["threshold"] in TUNE["pixel_thresholds"]
            and setting["min_area"] in TUNE["min_areas"]
            and setting["min_component_area"] in TUNE["min_component_areas"]
        )
        assert (
            setting["support"] < TUNE["min_support"] and not setting["enabled"]
        )  # too few to trust
    assert result["val_dice"] == pytest.approx(result["val_dice_empty"])
    assert (project / "thresholds.png").read_bytes()[:4] == b"\x89PNG"


PLAIN = {**TUNE, "non_overlap": [False], "min_component_areas": [0]}  # what evidence() holds


def evidence(n=60, seed=0) -> Evidence:
    """Class 3 predicted well on the images that have it; class 1 predicted as noise.
    One non-overlap option (off) and one minimum component area (0), as PLAIN searches."""
    rng = np.random.default_rng(seed)
    grid = TUNE["pixel_thresholds"]
    truth = np.zeros((n, 4), int)
    truth[: n // 2, 2] = 5000  # half the images have a class 3 defect
    truth[:3, 0] = 800  # three have class 1: too few to trust
    area = np.zeros((n, 4, len(grid)), int)
    overlap = np.zeros_like(area)
    for t, threshold in enumerate(grid):  # class 3: a good mask whose size falls with the threshold
        size = int(10000 * (1 - threshold))
        area[: n // 2, 2, t] = size
        overlap[: n // 2, 2, t] = min(size, 5000)
    area[n // 2 :, 2, :] = 300  # small false positives on clean images
    area[:, 0, :] = rng.integers(0, 2000, (n, len(grid)))  # class 1: noise
    class_prob = np.repeat(np.where(truth.any(axis=1), 0.9, 0.2)[:, None], 4, axis=1)  # binary
    ids = np.array([f"{i}.jpg" for i in range(n)])
    return Evidence(ids, class_prob, area[:, None, ..., None], overlap[:, None, ..., None], truth)


def with_option(ev: Evidence, axis: int, area: np.ndarray, overlap: np.ndarray) -> Evidence:
    """``ev`` with a second non-overlap option (axis 1) or component minimum (axis -1)."""
    return Evidence(
        ev.image_ids,
        ev.class_prob,
        np.concatenate([ev.area, area], axis=axis),
        np.concatenate([ev.overlap, overlap], axis=axis),
        ev.truth,
    )


def test_class_dice_matches_a_direct_computation():
    ev = evidence()
    gates, areas = TUNE["gates"], TUNE["min_areas"]
    table = class_dice(ev, 0, 2, gates, areas)
    for g, a, t in [(0, 0, 6), (3, 4, 2), (9, 10, 12), (1, 2, 0)]:
        scores = []
        for i in range(len(ev.class_prob)):
            pred, hit = ev.area[i, 0, 2, t, 0], ev.overlap[i, 0, 2, t, 0]
            kept = ev.class_prob[i, 2] >= gates[g] and pred >= areas[a]
            p, o, x = (pred, hit, ev.truth[i, 2]) if kept else (0, 0, ev.truth[i, 2])
            scores.append(1.0 if p + x == 0 else 2 * o / (p + x))
        assert table[g, t, a, 0] == pytest.approx(np.mean(scores))


def test_search_switches_on_what_works_and_off_what_does_not():
    result = search(evidence(), PLAIN)
    three, one = result["classes"]["3"], result["classes"]["1"]
    assert three["enabled"] and three["val_dice"] > three["val_dice_empty"] + 0.3
    assert three["threshold"] == 0.5  # where the predicted size matches the truth
    assert not one["enabled"] and one["support"] == 3 and one["val_dice"] == one["val_dice_empty"]
    assert not result["classes"]["2"]["enabled"]
    # the false positives (300 px on clean images) are removed by the gate or a minimum area
    assert three["gate"] > 0.2 or three["min_area"] > 300
    assert result["val_dice"] > result["val_dice_empty"]
    assert not result["non_overlap"] and three["min_component_area"] == 0


def test_the_minimum_area_stays_within_the_bound_of_its_class():
    """Only a minimum area above 300 px removes class 3's false positives on five clean
    images (no gate can: every image has probability 0.9); bounded at 250 px, the
    search keeps them."""
    ev = evidence()
    ev.class_prob[:] = 0.9
    ev.area[len(ev.area) // 2 + 5 :, 0, 2] = 0
    free = search(ev, PLAIN)["classes"]["3"]
    assert free["min_area"] > 300 and free["min_area_bound"] is None
    bounded = search(ev, PLAIN, np.array([np.inf, np.inf, 250.0, np.inf]))["classes"]["3"]
    assert bounded["min_area"] <= 250 and bounded["min_area_bound"] == 250
    assert bounded["enabled"] and bounded["val_dice"] < free["val_dice"]


def test_area_bounds_are_a_quantile_of_each_class_s_true_areas(tmp_path):
    """Class 1 masks of 100, 200, ... 1000 px: its 10% quantile is 190 px; a class
    without masks, or no quantile, is not bounded."""
    rows = [(f"{i}.jpg", 1, f"1 {100 * i}") for i in range(1, 11)]
    (tmp_path / "raw/train_images").mkdir(parents=True)
    for i in range(1, 11):
        cv2.imwrite(str(tmp_path / f"raw/train_images/{i}.jpg"), np.zeros((256, 1600), np.uint8))
    table = pd.DataFrame(rows, columns=["ImageId", "ClassId", "EncodedPixels"])
    table.to_csv(tmp_path / "raw/train.csv", index=False)
    build(tmp_path / "raw/train.csv", tmp_path / "raw/train_images", tmp_path / "masks")
    cache = MaskCache(tmp_path / "masks")
    assert area_bounds(cache, 0.1).tolist() == pytest.approx([190, np.inf, np.inf, np.inf])
    assert np.isinf(area_bounds(cache, None)).all()


def test_each_class_gets_its_own_gate():
    """A multilabel classifier: class 4's false positives sit on class 3 images, where
    class 4's probability is low; class 3 needs no gate."""
    ev = evidence()
    has3 = ev.truth[:, 2] > 0
    ev.truth[:10, 3] = 3000  # ten class 3 images also have class 4, found exactly
    ev.area[:10, 0, 3], ev.overlap[:10, 0, 3] = 3000, 3000
    ev.area[10 : len(has3) // 2, 0, 3] = 3000  # false class 4 masks on the other class 3 images
    ev.class_prob[:, 3] = np.where(ev.truth[:, 3] > 0, 0.8, 0.1)
    ev.area[~has3, 0, 2] = 0  # class 3: no false positives, nothing to gate
    result = search(ev, PLAIN)
    three, four = result["classes"]["3"], result["classes"]["4"]
    assert three["gate"] == 0.0 and four["enabled"] and 0.1 < four["gate"] <= 0.8
    assert four["val_dice"] == pytest.approx(1.0)


def test_ties_go_to_the_simplest_setting():
    ev = evidence()
    ev.area[..., 2, :, :] = ev.area[..., 2, 6:7, :]  # every threshold gives the same masks
    ev.overlap[..., 2, :, :] = ev.overlap[..., 2, 6:7, :]
    ev.area[ev.truth[:, 2] == 0, :, 2] = 0  # and no false positives: no gate, no area needed
    three = search(ev, PLAIN)["classes"]["3"]
    assert (three["threshold"], three["min_area"]) == (0.5, 0)
    assert three["gate"] == 0.0
    # a second non-overlap option or component minimum that changes nothing is not taken
    same = with_option(ev, 1, ev.area, ev.overlap)
    assert not search(same, {**PLAIN, "non_overlap": [False, True]})["non_overlap"]
    same = with_option(ev, -1, ev.area, ev.overlap)
    tried = search(same, {**PLAIN, "min_component_areas": [0, 100]})
    assert tried["classes"]["3"]["min_component_area"] == 0


def test_non_overlap_and_small_components_are_chosen_when_they_help():
    ev = evidence()
    noisy = ev.truth[:, 2] > 0  # 400 px of another class's pixels or of specks in each class 3 mask
    ev.area[noisy, 0, 2] += 400
    ev.class_prob[:] = 0.9  # no gate or mask-level minimum area can remove them
    clean_area, clean_overlap = ev.area.copy(), ev.overlap.copy()
    clean_area[noisy, 0, 2] -= 400
    tried = search(
        with_option(ev, 1, clean_area, clean_overlap), {**PLAIN, "non_overlap": [False, True]}
    )
    assert tried["non_overlap"]
    tried = search(
        with_option(ev, -1, clean_area, clean_overlap), {**PLAIN, "min_component_areas": [0, 100]}
    )
    assert not tried["non_overlap"] and tried["classes"]["3"]["min_component_area"] == 100
    assert tried["classes"]["3"]["val_dice"] > search(ev, PLAIN)["classes"]["3"]["val_dice"]


def test_submission_layout_and_score(project, tmp_path, capsys):
    out = tmp_path / "submission.csv"
    assert (
        main(["submit", *models_args(project), "--raw", str(project / "raw"), "--out", str(out)])
        == 0
    )
    image_ids = read_sample_ids(project / "raw/sample_submission.csv")
    submission = pd.read_csv(out, keep_default_na=False)
    assert list(submission.columns) == ["ImageId", "EncodedPixels", "ClassId"]
    assert submission.ImageId.tolist() == [i for i in image_ids for _ in range(4)]
    assert submission.ClassId.tolist() == [1, 2, 3, 4] * len(image_ids)
    for text in submission.EncodedPixels:
        assert text == "" or rle.encode(rle.decode(text)) == text
    metrics = tmp_path / "metrics.json"
    figure = tmp_path / "predictions.png"
    assert (
        main(
            [
                "score",
                "--submission",
                str(out),
                "--truth",
                str(project / "raw/test_truth.csv"),
                "--test-images",
                str(project / "raw/test_images"),
                "--out",
                str(metrics),
                "--figure",
                str(figure),
            ]
        )
        == 0
    )
    result = json.loads(metrics.read_text())
    assert figure.read_bytes()[:4] == b"\x89PNG"
    # an independent implementation of the metric gives the same dice
    truth = read_masks(project / "raw/test_truth.csv")
    pred = read_masks(out)

    def mask(table, image, cls):
        rows = table[(table.ImageId == image) & (table.ClassId == cls)].EncodedPixels
        return reference_decode(rows.iloc[0] if len(rows) else "", rle.SHAPE).astype(bool)

    scores = []
    for image in dict.fromkeys(pred.ImageId):
        for cls in range(1, 5):
            t, p = mask(truth, image, cls), mask(pred, image, cls)
            scores.append(
                1.0 if t.sum() + p.sum() == 0 else 2 * (t & p).sum() / (t.sum() + p.sum())
            )
    assert result["dice"] == pytest.approx(np.mean(scores))
    assert result["empty_baseline"] <= 1 and result["images"] == 6


SAMPLES = {  # sample_submission.csv as Kaggle served it at launch and serves it today
    "launch": lambda ids: (
        ["ImageId_ClassId,EncodedPixels"] + [f"{i}_{c},1 1" for i in ids for c in range(1, 5)]
    ),
    "current": lambda ids: ["ImageId,EncodedPixels,ClassId"] + [f"{i},1 409600,0" for i in ids],
}


@pytest.mark.parametrize("sample", SAMPLES)
def test_a_local_zip_in_todays_layout_goes_from_fetch_to_submit_to_score(project, tmp_path, sample):
    raw = project / "raw"
    ids = read_sample_ids(raw / "sample_submission.csv")[::-1]  # an order of its own
    archive = tmp_path / "severstal-steel-defect-detection.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(raw / "train.csv", "train.csv")  # ImageId,ClassId,EncodedPixels
        for image in sorted((raw / "train_images").iterdir()):
            zf.write(image, f"train_images/{image.name}")
        for image in ids:
            zf.write(raw / "test_images" / image, f"test_images/{image}")
        zf.writestr("sample_submission.csv", "\n".join(SAMPLES[sample](ids)) + "\n")
    fetched = tmp_path / "raw"
    local = ["--set", "data.source=local", "--set", f"data.local_path={archive}"]
    assert main(["fetch", "--config", str(TEST_CONFIG), *local, "--out", str(fetched)]) == 0

    scores = {}
    for layout in ("current", "launch"):
        out = tmp_path / f"{layout}.csv"
        args = ["submit", *models_args(project), "--set", f"submit.layout={layout}"]
        assert main([*args, "--raw", str(fetched), "--out", str(out)]) == 0
        metrics = tmp_path / f"{layout}.json"
        truth = ["--truth", str(raw / "test_truth.csv"), "--out", str(metrics)]
        assert main(["score", "--submission", str(out), *truth]) == 0
        scores[layout] = json.loads(metrics.read_text())
    lines = (tmp_path / "current.csv").read_text().splitlines()
    assert lines[0] == "ImageId,EncodedPixels,ClassId" and len(lines) == 1 + 4 * len(ids)
    assert [line.split(",")[0] for line in lines[1::4]] == ids
    assert [line.rsplit(",", 1)[1] for line in lines[1:]] == ["1", "2", "3", "4"] * len(ids)
    assert scores["current"] == scores["launch"] and scores["current"]["images"] == len(ids)
    pd.testing.assert_frame_equal(
        read_masks(tmp_path / "current.csv").reset_index(drop=True),
        read_masks(tmp_path / "launch.csv").reset_index(drop=True),
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ImageId,ClassId\nx.jpg,0\n", ", line 1: header 'ImageId,ClassId' fits no layout"),
        (
            "ImageId,EncodedPixels,ClassId\nx.jpg,1 409600,9\n",
            ", line 2: ClassId '9' is not one of 0,",
        ),
        (
            "ImageId,EncodedPixels,ClassId\ngone.jpg,1 409600,0\n",
            ": image test_images/gone.jpg is missing",
        ),
    ],
)
def test_a_bad_sample_submission_stops_fetch_with_one_line_naming_file_and_line(
    project, tmp_path, capsys, text, message
):
    folder = tmp_path / "kaggle"
    shutil.copytree(project / "raw", folder)
    (folder / "sample_submission.csv").write_text(text)
    local = ["--set", "data.source=local", "--set", f"data.local_path={folder}"]
    out = tmp_path / "raw"
    assert main(["fetch", "--config", str(TEST_CONFIG), *local, "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{folder}/sample_submission.csv{message}" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("fault", ["missing", "800x128"])
def test_submit_refuses_a_test_image_it_cannot_submit_for_in_one_line(
    project, tmp_path, capsys, fault
):
    """A listed image that is not there is told before any prediction; one of another
    size than 1600x256 (the RLE's) when it is read, as in a Kaggle folder fetch never saw."""
    raw = tmp_path / "raw"
    shutil.copytree(project / "raw", raw)
    ids = read_sample_ids(raw / "sample_submission.csv")
    last = raw / "test_images" / ids[-1]
    if fault == "missing":
        last.unlink()
        expected = (
            f"{raw}/sample_submission.csv lists {ids[-1]}, which {raw}/test_images does not "
            f"have (1 of its {len(ids)} images missing); expected a file for each"
        )
    else:
        cv2.imwrite(str(last), cv2.resize(cv2.imread(str(last)), (800, 128)))
        expected = f"{last}: image is 800x128, expected 1600x256 (width x height)"
    out = tmp_path / "submission.csv"
    assert main(["submit", *models_args(project), "--raw", str(raw), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if "error" in line]
    assert line == f"steelflow submit: error: {expected}"
    assert (fault == "missing") == ("prediction" not in err)  # before any prediction
    assert not out.exists() and not list(tmp_path.glob(".submission.csv*"))


def test_the_device_path_refuses_an_image_of_another_size_naming_it(project, tmp_path):
    from steelflow.errors import SteelflowError
    from steelflow.predict import Predictor

    images = tmp_path / "test_images"
    shutil.copytree(project / "raw/test_images", images)
    names = sorted(p.name for p in images.glob("*.jpg"))
    cv2.imwrite(str(images / names[1]), cv2.resize(cv2.imread(str(images / names[1])), (1600, 128)))
    predictor = Predictor(*trained_pair(project, 0), load(TEST_CONFIG)["train"], on_device=True)
    assert len(predictor.reader(images)(names)) == len(names)  # any size, for predict
    with pytest.raises(SteelflowError, match=rf"{names[1]}: image is 1600x128, expected"):
        predictor.reader(images, severstal=True)(names)


def empty_submission(project: Path, path: Path) -> Path:
    """A submission of no masks for the project's test images."""
    write_submission(path, EMPTY, read_sample_ids(project / "raw/sample_submission.csv"))
    return path


def test_score_without_truth_says_so(project, tmp_path):
    sub = empty_submission(project, tmp_path / "sub.csv")
    assert (
        main(
            [
                "score",
                "--submission",
                str(sub),
                "--truth",
                str(tmp_path / "none.csv"),
                "--allow-missing-truth",
                "--out",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "m.json").read_text())["dice"] is None
    assert main(["score", "--submission", str(sub), "--truth", str(tmp_path / "none.csv")]) == 1


def test_predict_on_a_folder_of_user_images(project, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    tests = sorted((project / "raw/test_images").glob("*.jpg"))
    shutil.copy(tests[0], folder / "a.jpg")
    gray = cv2.imread(str(tests[1]), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(folder / "b.png"), gray)
    cv2.imwrite(str(folder / "small.png"), cv2.resize(gray, (800, 128)))
    plain, out = tmp_path / "plain", tmp_path / "out"
    assert main(["predict", str(folder), "--out", str(plain), *models_args(project)]) == 0
    assert sorted(p.name for p in plain.iterdir()) == [MARKER, "predictions.csv"]  # no overlays
    args = ["predict", str(folder), "--out", str(out), "--overlays", *models_args(project)]
    assert main(args) == 0
    table = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert table.equals(pd.read_csv(plain / "predictions.csv", keep_default_na=False))
    assert table.ImageId.tolist() == [n for n in ("a.jpg", "b.png", "small.png") for _ in range(4)]
    assert table.ClassId.tolist() == [1, 2, 3, 4] * 3
    for image, text in zip(table.ImageId, table.EncodedPixels, strict=True):
        shape = (128, 800) if image.startswith("small") else (256, 1600)
        rle.decode(text, shape)  # the RLE fits the image's own size
    for name in ("a.jpg", "b.png", "small.png"):  # each named after its image's whole name
        overlay = cv2.imread(str(out / f"{name}.png"))
        assert overlay.shape[:2] == ((128, 800) if name == "small.png" else (256, 1600))


def test_predict_names_the_images_it_stretched_to_the_networks_shape(project, tmp_path, caplog):
    folder = tmp_path / "mine"
    folder.mkdir()
    gray = cv2.imread(str(sorted((project / "raw/test_images").glob("*.jpg"))[0]), 0)
    cv2.imwrite(str(folder / "a.png"), gray)
    cv2.imwrite(str(folder / "small.png"), cv2.resize(gray, (800, 128)))  # the same shape
    cv2.imwrite(str(folder / "tile.png"), gray[:, :256])
    with caplog.at_level(logging.WARNING, logger="steelflow.predict"):
        assert (
            main(["predict", str(folder), "--out", str(tmp_path / "out"), *models_args(project)])
            == 0
        )
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        warning.startswith("1 of 3 images are not shaped as 1600x256")
        and "tile.png (256x256)" in warning
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({}, "holds no images"),
        ({"notes.txt": b"hello"}, r"notes.txt: not a JPEG or PNG image"),
        ({"broken.jpg": b"\xff\xd8\xff\xe0garbage"}, r"broken.jpg: cannot be read as an image"),
        ({b"lat\xe9in.jpg": b"\xff\xd8"}, "in.jpg' is not UTF-8; expected UTF-8 names"),
    ],
)
def test_predict_refuses_bad_folders_clearly(project, tmp_path, capsys, content, message):
    folder = tmp_path / "bad"
    folder.mkdir()
    for name, data in content.items():
        (folder / os.fsdecode(name)).write_bytes(data)
    assert (
        main(["predict", str(folder), "--out", str(tmp_path / "out"), *models_args(project)]) == 1
    )
    assert message.split(r"\.")[0].replace("\\", "") in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_areas_above_every_threshold_come_from_one_pass():
    gen = torch.Generator().manual_seed(0)
    prob = torch.rand(3, 4, 20, 30, generator=gen)
    prob[0, 0, 0, :3] = torch.tensor([0.2, 0.5, 0.9])  # exactly on a threshold: not above it
    truth = torch.rand(3, 4, 20, 30, generator=gen) > 0.7
    grid = torch.tensor([0.5, 0.2, 0.25, 0.8, 0.9])  # in any order
    area, overlap = areas_above(prob, truth, grid, np.array([0]))
    above = prob.unsqueeze(2) > grid.view(1, 1, -1, 1, 1)
    assert np.array_equal(area[..., 0], above.sum(dim=(-2, -1)).numpy())
    assert np.array_equal(overlap[..., 0], (above & truth.unsqueeze(2)).sum(dim=(-2, -1)).numpy())


def test_areas_above_count_only_components_of_each_minimum():
    gen = torch.Generator().manual_seed(1)
    prob = torch.rand(2, 4, 40, 60, generator=gen) ** 3  # specks and a few larger blobs
    prob[1, 2, 4:26, 9:41] = 0  # one big component, apart from the specks
    prob[1, 2, 5:25, 10:40] = 0.95
    truth = torch.rand(2, 4, 40, 60, generator=gen) > 0.5
    grid, minimums = torch.tensor([0.3, 0.6, 0.9]), np.array([0, 3, 50])
    area, overlap = areas_above(prob, truth, grid, minimums)
    for i, k, t, m in np.ndindex(2, 4, 3, 3):
        mask = (prob[i, k] > grid[t]).numpy().astype(np.uint8)
        kept = drop_small_components(mask, int(minimums[m])).astype(bool)
        assert area[i, k, t, m] == kept.sum()
        assert overlap[i, k, t, m] == (kept & truth[i, k].numpy()).sum()
    assert area[1, 2, 2, 2] == 20 * 30  # the big component alone survives a minimum of 50


def test_postprocess_keeps_the_most_probable_class_and_drops_small_components():
    prob = torch.zeros(1, 4, 256, 1600)
    prob[0, 0, 10:20, 10:20] = 0.9  # class 1: a 100 px square ...
    prob[0, 0, 100, 100] = 0.9  # ... and a speck
    prob[0, 2, 10:20, 15:30] = 0.7  # class 3 overlaps class 1 where class 1 is more probable
    th = Thresholds(False, [True] * 4, [0.5] * 4, [0.5] * 4, [0] * 4, [0] * 4)
    gated = np.ones((1, 4), bool)
    plain = postprocess(prob, th, gated)[0]
    assert plain[0].sum() == 101 and plain[2].sum() == 150
    exclusive = postprocess(prob, replace(th, non_overlap=True), gated)[0]
    assert exclusive[0].sum() == 101 and exclusive[2].sum() == 150 - 50
    assert not (exclusive[0] & exclusive[2]).any()
    despeckled = postprocess(prob, replace(th, min_component=[2, 0, 0, 0]), gated)[0]
    assert despeckled[0].sum() == 100 and despeckled[0, 100, 100] == 0
    gone = postprocess(
        prob, replace(th, min_component=[2, 0, 0, 0], min_area=[101, 0, 0, 0]), gated
    )
    assert gone[0, 0].sum() == 0  # the minimum area counts what the components left
    below_gate = postprocess(prob, th, np.array([[False, True, True, True]]))[0]
    assert below_gate[0].sum() == 0 and below_gate[2].sum() == 150
    off = replace(th, enabled=[True, True, True, False])
    assert off.gated(np.array([[0.4, 0.5, 0.9, 0.9]])).tolist() == [[False, True, True, False]]


@pytest.mark.parametrize("non_overlap", [False, True])
def test_thresholds_on_the_unets_output_size_upsample_only_what_can_pass(non_overlap):
    """Low-resolution probabilities (channels_last, as the U-Net gives them) give the
    masks of upsampling every class first, though classes whose peak is below their
    threshold, or not gated, are skipped."""
    from steelflow.predict import threshold

    gen = torch.Generator().manual_seed(2)
    low = torch.nn.functional.avg_pool2d(torch.rand(4, 4, 68, 404, generator=gen), 5, 1)
    low[:, 1] *= 0.4  # class 2 peaks below its threshold in every image
    low[1] *= 0.5  # image 2: nothing reaches a threshold
    low = low.contiguous(memory_format=torch.channels_last)
    pixel = [0.55, 0.3, 0.5, 0.52]
    th = Thresholds(non_overlap, [True] * 4, [0.5] * 4, pixel, [0, 0, 5000, 0], [0, 0, 0, 5])
    gated = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 1, 0], [0, 1, 0, 1]], bool)
    full = torch.nn.functional.interpolate(low.contiguous(), size=(256, 1600), mode="bilinear")
    if non_overlap:
        full = full * (full == full.amax(dim=1, keepdim=True))
    above = full > torch.tensor(pixel).view(1, 4, 1, 1)
    area = above.sum(dim=(-2, -1))
    by_area = (area >= torch.tensor(th.min_area)) | torch.tensor([m > 0 for m in th.min_component])
    expected = (above & (torch.from_numpy(gated) & by_area)[..., None, None]).numpy()
    assert expected.any(axis=(2, 3)).sum() >= 3 and not expected[1].any()  # masks to find
    assert np.array_equal(threshold(low, th, gated), expected.astype(np.uint8))
    assert not threshold(low[1:2], th, gated[1:2]).any()  # a batch where nothing can pass


def test_in_background_keeps_order_works_one_item_ahead_and_passes_errors_on():
    import threading

    from steelflow.predict import in_background

    produced, threads = [], set()

    def work(i):
        if i == 7:
            raise ValueError("item 7 is bad")
        produced.append(i)
        threads.add(threading.get_ident())
        return 10 * i

    got = []
    with pytest.raises(ValueError, match="item 7 is bad"):
        for result in in_background(work, range(20)):
            assert len(produced) <= len(got) + 2  # this one, and at most one ahead
            got.append(result)
    assert got == [10 * i for i in range(7)]
    assert threading.get_ident() not in threads


def test_prediction_streams_and_matches_postprocessing_each_batch(project):
    """The overlapped pipeline reads at most a few batches ahead of what it yields, and
    gives what the serial composition (networks, then ``postprocess``) gives."""
    from steelflow.predict import Predictor, predict_images

    predictor = Predictor(*trained_pair(project, 0), load(TEST_CONFIG)["train"])
    files = sorted((project / "raw/test_images").glob("*.jpg"))
    path_of = {f"image{i}": files[i % len(files)] for i in range(4 * len(files))}
    names, read_calls = list(path_of), []

    def read(name):
        read_calls.append(name)
        return predictor.read(path_of[name])

    views = [predictor.read(path_of[n]) for n in names]
    prob = predictor.mask_prob(views)
    pixel = [float(np.percentile(prob[:, k].numpy(), 95)) for k in range(4)]  # some found
    th = Thresholds(True, [True] * 4, [0.0] * 4, pixel, [50] * 4, [0, 20, 0, 20])
    found = predict_images(predictor, th, names, predictor.each(read), batch_size=2)
    first = next(found)
    assert (
        len(read_calls) <= 3 * 2 < len(names)
    )  # the batch yielded, one in the networks, one decoding
    results = [first, *found]
    assert [name for name, _ in results] == names
    expected = postprocess(prob, th, th.gated(predictor.class_prob(views)))
    for (name, texts), want in zip(results, expected, strict=True):
        assert texts == rle.encode_many(want), name
    assert any(any(texts) for _, texts in results)  # something was found: the test can fail
    assert predictor.past_gate == len(names)  # every gate open: the U-Net saw every image


def test_the_unet_runs_on_the_images_past_the_gate_and_says_how_many(project):
    """``past_gate`` counts the images the U-Net ran on: those with a class past its gate."""
    from steelflow.predict import Predictor, predict_images

    predictor = Predictor(*trained_pair(project, 0), load(TEST_CONFIG)["train"])
    files = sorted((project / "raw/test_images").glob("*.jpg"))
    names = [f.name for f in files]
    probs = predictor.class_prob([predictor.read(f) for f in files])
    gate = float(np.median(probs[:, 0]))  # class 1 alone, past its gate on half the images
    th = Thresholds(True, [True, False, False, False], [gate] * 4, [0.5] * 4, [0] * 4, [0] * 4)
    past = int((probs[:, 0] >= gate).sum())
    assert 0 < past < len(names)
    list(predict_images(predictor, th, names, predictor.reader(files[0].parent), 2))
    assert predictor.past_gate == past


def test_the_device_path_gives_the_cpu_path_s_submission(project):
    """Decoding, downscaling and RLE encoding as a GPU does them (``on_device``), run on
    the CPU: the same rows as the CPU path, for classes with and without a component
    minimum, and the same inputs for tune's pass."""
    from steelflow.predict import Predictor, submission_rows

    train = load(TEST_CONFIG)["train"]
    images = project / "raw/test_images"
    names = sorted(p.name for p in images.glob("*.jpg"))
    predictors = {
        path: Predictor(*trained_pair(project, 0), train, on_device=path) for path in (False, True)
    }
    views = {path: p.reader(images)(names) for path, p in predictors.items()}
    for scale in predictors[True].scales:
        for cpu, device in zip(views[False], views[True], strict=True):
            assert np.array_equal(cpu[scale], device[scale].numpy())
    prob = predictors[False].mask_prob(views[False])
    pixel = [float(np.percentile(prob[:, k].numpy(), 95)) for k in range(4)]  # some found
    th = Thresholds(False, [True] * 4, [0.0] * 4, pixel, [50] * 4, [0, 20, 0, 20])
    rows = {path: submission_rows(p, th, images, names, 2) for path, p in predictors.items()}
    assert rows[False] == rows[True]
    found = {cls for _, cls, text in rows[True] if text}
    assert {1, 3} & found and {2, 4} & found  # without and with a component minimum


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")
@pytest.mark.parametrize("kaggle", [False, True], ids=["one-model", "two-folds-hflip"])
def test_prediction_on_a_gpu_finds_what_the_cpu_finds(project, kaggle):
    """Decoding, thresholds and RLE on the device: the same masks as on the CPU (fp32),
    but for pixels within rounding of a threshold (nvJPEG's inverse DCT, float sums);
    also as configs/kaggle.yaml predicts: every fold's models, flip TTA, one class a pixel."""
    from steelflow.predict import Predictor, predict_images

    train = {**load(TEST_CONFIG)["train"], "precision": "fp32"}
    images = project / "raw/test_images"
    names = sorted(p.name for p in images.glob("*.jpg"))
    classifiers, unets = trained_pair(project, 0)
    if kaggle:
        more = trained_pair(project, 1)
        classifiers, unets = classifiers + more[0], unets + more[1]
    tta = "hflip" if kaggle else "none"
    predictors = {
        device: Predictor(classifiers, unets, {**train, "device": device}, tta)
        for device in ("cpu", "cuda")
    }
    prob = predictors["cpu"].mask_prob([predictors["cpu"].read(images / n) for n in names])
    pixel = [float(np.percentile(prob[:, k].numpy(), 95)) for k in range(4)]  # some found
    th = Thresholds(kaggle, [True] * 4, [0.0] * 4, pixel, [0] * 4, [0, 5, 0, 0])
    found = {}
    for device, predictor in predictors.items():
        rows = predict_images(predictor, th, names, predictor.reader(images), 2)
        found[device] = np.stack([rle.decode_many(texts) for _, texts in rows])
    assert found["cpu"].any()
    assert (found["cpu"] != found["cuda"]).mean() < 1e-3


def trained_pair(project: Path, fold: int) -> tuple[list[Path], list[Path]]:
    return [project / f"classifier_f{fold}.pt"], [project / f"unet_f{fold}.pt"]


def test_an_ensemble_averages_its_models(project):
    from steelflow.predict import Predictor

    train = load(TEST_CONFIG)["train"]
    views = [
        Predictor(*trained_pair(project, 0), train).read(p)
        for p in sorted((project / "raw/test_images").glob("*.jpg"))[:3]
    ]
    (classifier_0, unet_0), (classifier_1, unet_1) = (trained_pair(project, f) for f in (0, 1))
    one, other = Predictor(classifier_0, unet_0, train), Predictor(classifier_1, unet_1, train)
    twice = Predictor(classifier_0 * 2, unet_0 * 2, train)
    assert torch.equal(twice.mask_prob(views), one.mask_prob(views))  # nothing changes
    assert np.array_equal(twice.class_prob(views), one.class_prob(views))
    both = Predictor(classifier_0 + classifier_1, unet_0 + unet_1, train)
    mean = (one.mask_prob(views) + other.mask_prob(views)) / 2
    assert not torch.allclose(one.mask_prob(views), other.mask_prob(views))
    assert torch.allclose(both.mask_prob(views), mean, atol=1e-6)
    mean = (one.class_prob(views) + other.class_prob(views)) / 2
    assert np.allclose(both.class_prob(views), mean, atol=1e-6)


@pytest.mark.parametrize("tta", ["hflip", "hflip+vflip"])
def test_flip_tta_gives_a_mirrored_image_the_mirrored_masks(project, tta):
    from steelflow.predict import Predictor

    predictor = Predictor(*trained_pair(project, 0), load(TEST_CONFIG)["train"], tta)
    gray = cv2.imread(str(sorted((project / "raw/test_images").glob("*.jpg"))[0]), 0)
    prob = predictor.mask_prob([predictor.views_of(gray)])
    mirrored = predictor.mask_prob([predictor.views_of(gray[:, ::-1].copy())])
    assert torch.allclose(mirrored, prob.flip(-1), atol=1e-5)
    symmetric = np.concatenate([gray[:, :800], gray[:, :800][:, ::-1]], axis=1)
    th = Thresholds(False, [True] * 4, [0.0] * 4, [0.3] * 4, [0] * 4, [0] * 4)
    masks = postprocess(
        predictor.mask_prob([predictor.views_of(symmetric)]), th, np.ones((1, 4), bool)
    )[0]
    assert np.array_equal(masks, masks[:, :, ::-1])  # an hflip-symmetric image: the same mask
    if tta == "hflip+vflip":
        upside_down = predictor.mask_prob([predictor.views_of(gray[::-1].copy())])
        assert torch.allclose(upside_down, prob.flip(-2), atol=1e-5)


def bad_files(folder: Path, good: Path) -> dict[str, Path]:
    """A missing, a truncated and a foreign (text) version of the file ``good``."""
    folder.mkdir(exist_ok=True)
    truncated = folder / f"truncated{good.suffix}"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    foreign = folder / f"foreign{good.suffix}"
    foreign.write_text("ImageId,ClassId,EncodedPixels\n")
    return {"missing": folder / f"missing{good.suffix}", "truncated": truncated, "foreign": foreign}


@pytest.mark.parametrize("kind", ["missing", "truncated", "foreign", "other network"])
@pytest.mark.parametrize("network", ["classifier", "unet"])
def test_a_bad_checkpoint_stops_submit_with_one_line_naming_it(
    project, tmp_path, capsys, network, kind
):
    good = project / f"{network}_f0.pt"
    other = project / ("unet_f0.pt" if network == "classifier" else "classifier_f0.pt")
    bad = other if kind == "other network" else bad_files(tmp_path / "bad", good)[kind]
    args = [a for a in models_args(project) if a not in FOLDS]  # fold 0: one bad file
    args[args.index(f"--{network}") + 1] = str(bad)
    out = tmp_path / "submission.csv"
    assert main(["submit", *args, "--raw", str(project / "raw"), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("steelflow submit: error: ") and str(bad) in err[0]
    expected = {"missing": "not found", "other network": f"expected a {network} one"}
    assert expected.get(kind, "not a readable steelflow checkpoint") in err[0]
    assert not out.exists()


@pytest.mark.parametrize("kind", ["missing", "truncated", "foreign"])
def test_bad_thresholds_stop_predict_with_one_line_naming_them(project, tmp_path, capsys, kind):
    bad = bad_files(tmp_path / "bad", project / "thresholds.json")[kind]
    args = models_args(project)
    args[args.index("--thresholds") + 1] = str(bad)
    folder = project / "raw/test_images"
    assert main(["predict", str(folder), "--out", str(tmp_path / "out"), *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("steelflow predict: error: ") and str(bad) in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["missing", "truncated", "foreign", "binary"])
def test_a_bad_submission_stops_score_with_one_line_naming_it(project, tmp_path, capsys, kind):
    good = empty_submission(project, tmp_path / "good.csv")
    files = bad_files(tmp_path / "bad", good)
    files["foreign"].write_text('{"non_overlap": false}\n')  # thresholds JSON, not a CSV
    files["binary"] = tmp_path / "bad/binary.csv"
    files["binary"].write_bytes((project / "classifier_f0.pt").read_bytes()[:4000])
    bad = files[kind]
    truth = str(project / "raw/test_truth.csv")
    assert main(["score", "--submission", str(bad), "--truth", truth]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("steelflow score: error: ") and str(bad) in err[0]


def test_each_network_sees_at_prediction_the_pixels_it_trained_on(project, tmp_path, monkeypatch):
    """A classifier at 1/4 and a U-Net at 1/2 scale: each view the predictor makes of an
    image equals, pixel for pixel, the training set's sample of that image at that scale;
    the predictor decodes each image once for both."""
    from steelflow import checkpoint
    from steelflow.dataset import DecodedImages, SteelDataset
    from steelflow.predict import Predictor

    config = load(TEST_CONFIG, {"unet.scale": 0.5})
    paths = {}
    for network, build_net in (("classifier", build_classifier), ("unet", build_unet)):
        cfg = config[network]
        paths[network] = tmp_path / f"{network}.pt"
        state = {"model": build_net(cfg).state_dict(), "config": cfg, "epoch": 0}
        checkpoint.save(paths[network], state | {"metrics": {}, "task": network})
    predictor = Predictor([paths["classifier"]], [paths["unet"]], config["train"])
    cache = MaskCache(project / "masks")
    ids = cache.image_ids[:3]
    images = project / "raw/train_images"
    decodes, imdecode = [], cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda *a: decodes.append(1) or imdecode(*a))
    views = [predictor.read(images / image) for image in ids]
    assert len(decodes) == len(ids)
    for network in ("classifier", "unet"):
        scale = config[network]["scale"]
        decoded = DecodedImages(images, ids, scale, tmp_path)
        trained_on = SteelDataset(decoded, cache, ids)
        for i, image in enumerate(ids):
            seen = torch.from_numpy(views[i][scale])[None]
            assert torch.equal(seen, trained_on[i, 0][0]), f"{network}, {image}"


def test_out_of_fold_evidence_holds_each_validation_image_once_by_its_own_models(project):
    from steelflow.predict import Predictor
    from steelflow.tune import out_of_fold

    train = load(TEST_CONFIG)["train"]
    predictors = {f: Predictor(*trained_pair(project, f), train) for f in (0, 1)}
    images = project / "raw/train_images"
    cache = MaskCache(project / "masks")
    ev = out_of_fold(predictors.get, [0, 1], project / "split.csv", images, cache, TUNE)
    split = pd.read_csv(project / "split.csv")
    assert sorted(ev.image_ids) == sorted(split.ImageId[split.fold.isin([0, 1])])
    assert len(set(ev.image_ids)) == len(ev.image_ids)  # each once
    fold_of = dict(zip(split.ImageId, split.fold, strict=True))
    for image, prob in zip(ev.image_ids, ev.class_prob, strict=True):
        own = predictors[fold_of[image]].class_prob([predictors[0].read(images / image)])
        assert prob == pytest.approx(own[0], abs=1e-6)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_prediction_threads_follow_the_cores_granted_not_the_machines():
    """Under Slurm or ``taskset`` a job may use fewer cores than the machine has: the
    decoding and RLE threads are sized by the process's CPU affinity."""
    import subprocess
    import sys

    granted = sorted(os.sched_getaffinity(0))[:1]
    code = (
        f"import os; os.sched_setaffinity(0, {granted}); "
        "import steelflow.predict as p; print(p.CORES)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def test_under_dvc_a_file_beside_the_models_is_named(project, tmp_path, monkeypatch, caplog):
    """dvc.yaml's submit depends on the whole models folder: a checkpoint of another
    fold there is counted by dvc.lock but never pushed, so DVC's stages name it."""
    models = tmp_path / "models"
    models.mkdir()
    for name in ("classifier", "unet"):
        for fold in (0, 1):
            shutil.copy(project / f"{name}_f{fold}.pt", models)
    shutil.copy(project / "unet_f1.pt", models / "unet_f3.pt")  # of an earlier 5-fold run
    (models / ".gitignore").write_text("/unet_f0.pt\n")  # DVC's own, in git
    args = ["submit", "--config", str(TEST_CONFIG), *FOLDS, "--raw", str(project / "raw")]
    args += ["--classifier", str(models / "classifier_f{fold}.pt")]
    args += ["--unet", str(models / "unet_f{fold}.pt")]
    args += ["--thresholds", str(project / "thresholds.json")]
    caplog.set_level("WARNING", logger="steelflow.cli")
    assert main([*args, "--out", str(tmp_path / "plain.csv")]) == 0
    assert not caplog.messages  # Snakemake, or steelflow alone: none of its business
    monkeypatch.setenv("DVC_STAGE", "submit")
    monkeypatch.chdir(tmp_path)  # where DVC runs it: beside a config.yaml of these folds
    (tmp_path / "config.yaml").write_text(
        TEST_CONFIG.read_text().replace("folds: [0]", "folds: [0, 1]")
    )
    assert main([*args, "--out", str(tmp_path / "dvc.csv")]) == 0
    assert caplog.messages == [
        f"{models / 'unet_f3.pt'}: not a model of train.folds [0, 1], yet dvc.lock counts it "
        "among this stage's inputs (the whole folder); a clone without it sees the stage "
        f"changed: move it out of {models}"
    ]
