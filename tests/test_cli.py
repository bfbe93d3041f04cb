"""The command's one-line errors: the project's own errors only; a bug keeps its traceback."""

from __future__ import annotations

import pytest
import yaml

from steelflow import cli
from steelflow.errors import SteelflowError
from tests.conftest import TEST_CONFIG


def failing_stage(error: Exception):
    def run(args):
        raise error

    return run


def test_the_projects_own_error_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_masks", failing_stage(SteelflowError("train.csv, line 3: bad")))
    assert cli.main(["masks"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["steelflow masks: error: train.csv, line 3: bad"]


@pytest.mark.parametrize("bug", [ValueError, OSError, KeyError])
def test_any_other_error_keeps_its_traceback(monkeypatch, bug):
    monkeypatch.setattr(cli, "_masks", failing_stage(bug("a bug, not bad input")))
    with pytest.raises(bug, match="a bug"):
        cli.main(["masks"])


def test_a_module_steelflow_needs_missing_is_one_line_naming_it(monkeypatch, capsys):
    missing = ModuleNotFoundError("No module named 'cv2'", name="cv2")
    monkeypatch.setattr(cli, "_masks", failing_stage(missing))
    assert cli.main(["masks"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("steelflow masks: error: module cv2 (OpenCV) is missing; ")
    assert (
        "steelflow needs cv2>=4.10 (pip install opencv-python-headless, or opencv-python)" in line
    )
    other = ModuleNotFoundError("No module named 'nope'", name="nope")
    monkeypatch.setattr(cli, "_masks", failing_stage(other))
    with pytest.raises(ModuleNotFoundError):  # not one of steelflow's: a bug, with traceback
        cli.main(["masks"])


@pytest.mark.parametrize("fold", ["-1", "5"])
def test_a_fold_outside_the_split_is_one_line_before_any_work(tmp_path, capsys, fold):
    outputs = [x for n in ("out", "history", "curves") for x in (f"--{n}", str(tmp_path / n))]
    args = ["train", "unet", "--fold", fold, "--config", str(TEST_CONFIG), "--set", "split.folds=5"]
    assert cli.main([*args, "--raw", str(tmp_path / "none"), *outputs]) == 1
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"steelflow train: error: --fold {fold}: expected a fold from 0 to split.folds - 1 (4)"
    )
    assert list(tmp_path.iterdir()) == []


def test_dvc_stages_compare_the_folds_with_their_own_config_yaml(tmp_path, monkeypatch, capsys):
    """A stage DVC runs checks train.folds against the config.yaml beside its dvc.yaml:
    an experiment in a temporary folder (dvc exp run --temp or --queue, which set
    DVC_ROOT to the workspace it came from) has its own, with its -S changes."""
    experiment, workspace = tmp_path / "experiment", tmp_path / "workspace"
    config = yaml.safe_load(TEST_CONFIG.read_text())
    for folder, folds in ((experiment, [0, 1]), (workspace, [0])):
        folder.mkdir()
        config.setdefault("train", {})["folds"] = folds
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("DVC_STAGE", "config")
    monkeypatch.setenv("DVC_ROOT", str(workspace))
    monkeypatch.chdir(experiment)
    assert cli.main(["config", "--config", "config.yaml"]) == 0
    monkeypatch.chdir(workspace)
    assert cli.main(["config", "--config", "config.yaml", "--set", "train.folds=[0,1]"]) == 1
    assert "dvc.yaml trains config.yaml's folds [0]" in capsys.readouterr().err
