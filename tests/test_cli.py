"""The command's one-line errors: the project's own errors only; a bug keeps its traceback."""

from __future__ import annotations

import pytest

from steelflow import cli
from steelflow.errors import SteelflowError


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
