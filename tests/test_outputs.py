"""Outputs never destroy input: an existing path a command did not write survives it."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from steelflow.atomic import MARKER
from steelflow.cli import main
from tests.conftest import TEST_CONFIG, models_args


def tree(path: Path) -> dict[str, str]:
    """Every file under ``path`` (or ``path`` itself) and the digest of its bytes."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"steelflow {command}: error: "), err
    return err[0]


@pytest.fixture
def images(project, tmp_path) -> Path:
    """A user's folder of two test images."""
    folder = tmp_path / "mine"
    folder.mkdir()
    for path in sorted((project / "raw/test_images").glob("*.jpg"))[:2]:
        shutil.copy(path, folder / path.name)
    return folder


def predict(images: Path, out: Path, project: Path, *extra: str) -> int:
    return main(["predict", str(images), "--out", str(out), *models_args(project), *extra])


@pytest.mark.parametrize("target", ["input", "user folder", "file", "models", "working folder"])
def test_predict_refuses_an_out_it_did_not_write(
    project, images, tmp_path, capsys, monkeypatch, target
):
    user = tmp_path / "notes"
    user.mkdir()
    (user / "keep.txt").write_text("mine")
    (tmp_path / "report.txt").write_text("mine too")
    monkeypatch.chdir(tmp_path)
    out = {
        "input": images,
        "user folder": user,
        "file": tmp_path / "report.txt",
        "models": project,  # the folder of the checkpoints and thresholds it reads
        "working folder": tmp_path,
    }[target]
    before = tree(tmp_path) | tree(project)
    assert predict(images, out, project, *(["--force"] if target != "user folder" else [])) == 1
    assert f"--out {out.resolve()}" in one_error_line(capsys, "predict")
    assert tree(tmp_path) | tree(project) == before  # byte for byte, nothing added


def test_predict_replaces_its_own_output_and_with_force_a_user_folder(
    project, images, tmp_path, capsys, caplog
):
    out = tmp_path / "out"
    assert predict(images, out, project) == 0
    assert (out / MARKER).read_text() == "steelflow predict\n"
    (out / "stale.txt").write_text("from before")
    assert predict(images, out, project) == 0  # an earlier run's folder: replaced whole
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "predictions.csv"]

    user = tmp_path / "user"
    user.mkdir()
    (user / "keep.txt").write_text("mine")
    capsys.readouterr()
    assert predict(images, user, project) == 1
    assert "pass --force to replace it" in one_error_line(capsys, "predict")
    assert predict(images, user, project, "--force") == 0
    assert f"replacing {user} and everything in it (--force)" in caplog.text
    assert not (user / "keep.txt").exists()


def test_other_folder_outputs_refuse_what_they_did_not_write(project, tmp_path, capsys):
    user = tmp_path / "user"
    user.mkdir()
    (user / "keep.txt").write_text("mine")
    before = tree(user)
    assert main(["masks", "--raw", str(project / "raw"), "--out", str(user)]) == 1
    assert "not a folder steelflow wrote" in one_error_line(capsys, "masks")
    bundle = ["bundle", *models_args(project), "--out"]
    assert main([*bundle, str(project / "masks")]) == 1  # another command's output
    assert "the output of steelflow masks" in one_error_line(capsys, "bundle")
    assert main(["masks", "--raw", str(project / "raw"), "--out", str(project / "raw")]) == 1
    assert "would replace" in one_error_line(capsys, "masks")
    assert main(["fetch", "--config", str(TEST_CONFIG), "--out", str(user)]) == 1
    assert "pass --force to replace it" in one_error_line(capsys, "fetch")
    assert tree(user) == before


def test_a_file_output_where_a_folder_is_is_one_line(project, tmp_path, capsys):
    folder = tmp_path / "split.csv"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    args = ["split", "--masks", str(project / "masks"), "--out", str(folder)]
    assert main(args) == 1
    assert "is a folder; expected the path of a file" in one_error_line(capsys, "split")
    assert (folder / "keep.txt").read_text() == "mine"
