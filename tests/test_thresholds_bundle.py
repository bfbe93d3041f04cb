"""Hand-edited thresholds and the bundle's inputs: refused in one line naming the file,
the key and what was expected, never a wrong submission or a bundle that fails on Kaggle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steelflow.cli import main
from steelflow.errors import SteelflowError
from steelflow.thresholds import Thresholds
from tests.conftest import FOLDS, TEST_CONFIG, models_args


def tuned(project: Path) -> dict:
    """The thresholds tune wrote for the tiny project."""
    return json.loads((project / "thresholds.json").read_text())


def edited(project: Path, folder: Path, edit) -> Path:
    """tune's thresholds.json after ``edit`` (of its dict, or of its text when a str)."""
    path = folder / "thresholds.json"
    if isinstance(edit, str):
        path.write_text(edit)
        return path
    data = tuned(project)
    edit(data)
    path.write_text(json.dumps(data, indent=2))  # json writes NaN and Infinity as such
    return path


def setting(cls: str, key: str, value):
    return lambda data: data["classes"][cls].__setitem__(key, value)


BAD = {
    "enabled as text": (
        setting("2", "enabled", "false"),
        'classes.2.enabled: expected true or false, got "false"',
    ),
    "negative threshold": (
        setting("1", "threshold", -0.1),
        "classes.1.threshold: expected a value >= 0, got -0.1",
    ),
    "gate above 1": (setting("3", "gate", 1.5), "classes.3.gate: expected a value <= 1, got 1.5"),
    "NaN": (setting("4", "threshold", float("nan")), "expected a finite number, got NaN"),
    "Infinity": (setting("1", "gate", float("inf")), "expected a finite number, got Infinity"),
    "fractional area": (
        setting("1", "min_area", 1.5),
        "classes.1.min_area: expected a whole number, got 1.5",
    ),
    "area as a float": (
        setting("2", "min_component_area", 100.0),
        "classes.2.min_component_area: expected a whole number, got 100.0",
    ),
    "bool as a number": (setting("2", "gate", True), "classes.2.gate: expected a finite number"),
    "missing class": (lambda data: data["classes"].pop("4"), "classes.4: missing"),
    "missing key": (lambda data: data["classes"]["3"].pop("gate"), "classes.3.gate: missing"),
    "misspelt key": (setting("2", "enable", False), "unknown key 'enable' in classes.2"),
    "fifth class": (
        lambda data: data["classes"].__setitem__("5", data["classes"]["1"]),
        "unknown key '5' in classes",
    ),
    "non_overlap as a number": (
        lambda data: data.__setitem__("non_overlap", 0),
        "non_overlap: expected true or false, got 0",
    ),
    "a key twice": (
        '{"non_overlap": false, "non_overlap": true, "classes": {}}',
        "key 'non_overlap' given twice",
    ),
    "YAML": (TEST_CONFIG.read_text(), "not thresholds from steelflow tune: not JSON"),
}


def one_error_line(capsys, stage: str, path: Path) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"steelflow {stage}: error: {path}: "), err
    return err[0]


def test_the_thresholds_tune_writes_are_read_as_written(project):
    data = tuned(project)
    th = Thresholds.load(project / "thresholds.json")
    classes = [data["classes"][c] for c in ("1", "2", "3", "4")]
    assert th.non_overlap is data["non_overlap"]
    assert th.enabled == [c["enabled"] for c in classes]
    assert th.gate == [c["gate"] for c in classes]
    assert th.pixel == [c["threshold"] for c in classes]
    assert th.min_area == [c["min_area"] for c in classes]
    assert th.min_component == [c["min_component_area"] for c in classes]


def test_whole_numbers_are_numbers_and_bounds_are_inclusive(project, tmp_path):
    def edit(data):
        data["classes"]["1"].update(gate=0, threshold=1)
        data["classes"]["2"].update(enabled=False, min_area=0, min_component_area=0)

    th = Thresholds.load(edited(project, tmp_path, edit))
    assert (th.gate[0], th.pixel[0], th.enabled[1]) == (0.0, 1.0, False)


@pytest.mark.parametrize("case", BAD)
def test_bad_thresholds_stop_bundle_in_one_line_naming_file_and_key(
    project, tmp_path, capsys, case
):
    edit, message = BAD[case]
    bad = edited(project, tmp_path, edit)
    out = tmp_path / "dist/kaggle"
    args = ["bundle", *models_args(project), "--thresholds", str(bad), "--out", str(out)]
    assert main(args) == 1
    line = one_error_line(capsys, "bundle", bad)
    assert message in line
    assert not (tmp_path / "dist").exists()  # not even the temporary folder


@pytest.mark.parametrize("case", ["enabled as text", "negative threshold", "NaN"])
def test_bad_thresholds_stop_submit_before_any_submission(project, tmp_path, capsys, case):
    edit, message = BAD[case]
    bad = edited(project, tmp_path, edit)
    out = tmp_path / "submission.csv"
    args = [*models_args(project), "--thresholds", str(bad)]  # the last --thresholds counts
    assert main(["submit", *args, "--raw", str(project / "raw"), "--out", str(out)]) == 1
    assert message in one_error_line(capsys, "submit", bad)
    assert not out.exists()


@pytest.mark.parametrize("swap", ["unet as classifier", "classifier as unet", "yaml as model"])
def test_bundle_refuses_a_checkpoint_of_the_wrong_kind_and_writes_nothing(
    project, tmp_path, capsys, swap
):
    bad = {
        "unet as classifier": project / "unet_f0.pt",
        "classifier as unet": project / "classifier_f0.pt",
        "yaml as model": TEST_CONFIG,
    }[swap]
    flag = "--unet" if swap == "classifier as unet" else "--classifier"
    args = [a for a in models_args(project) if a not in FOLDS]  # fold 0: one bad file
    args[args.index(flag) + 1] = str(bad)
    out = tmp_path / "dist/kaggle"
    assert main(["bundle", *args, "--out", str(out), "--dataset", "me/steel"]) == 1
    line = one_error_line(capsys, "bundle", bad)
    expected = {
        "unet as classifier": "a unet checkpoint, expected a classifier one",
        "classifier as unet": "a classifier checkpoint, expected a unet one",
    }
    assert expected.get(swap, "not a readable steelflow checkpoint") in line
    assert not (tmp_path / "dist").exists()


def test_bundle_refuses_folds_other_than_those_the_thresholds_were_tuned_with(
    project, tmp_path, capsys
):
    """As when the bundle is built with config.yaml alone after a run of an overlay."""
    args = [a for a in models_args(project) if a not in FOLDS]  # fold 0 of folds 0 and 1
    out = tmp_path / "dist/kaggle"
    assert main(["bundle", *args, "--out", str(out), "--dataset", "me/steel"]) == 1
    line = one_error_line(capsys, "bundle", project / "thresholds.json")
    assert "tuned with the models of folds [0, 1], but the bundle packs folds [0]" in line
    assert not (tmp_path / "dist").exists()


def test_a_folder_given_as_thresholds_is_not_found(tmp_path):
    with pytest.raises(SteelflowError, match="thresholds not found"):
        Thresholds.load(tmp_path)
