"""The workflow as users run it: Snakemake lint, a real run, and agreement with dvc.yaml."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

BIN = Path(sys.executable).parent
WORKFLOW_FILES = ["Snakefile", "workflow", "config.yaml", "dvc.yaml", "profiles", "steelflow"]
TINY = {"n_train": 16, "n_test": 4}  # the tiny data set of workflow tests


def run(args, cwd, check=True):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}  # rules call steelflow
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
        )
    return result


def snakemake(*args, cwd=ROOT, check=True):
    return run([BIN / "snakemake", *args], cwd, check)


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy of the workflow in a temp dir, so runs leave the checkout alone."""
    for name in WORKFLOW_FILES:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["data"]["synthetic"].update(TINY)
    config["train"]["threads"] = 1
    for network in ("classifier", "unet"):
        config[network].update({"epochs": 1, "batch_size": 4, "scale": 0.25})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def snakemake_stages(cwd: Path) -> dict[str, dict]:
    """Each rule's shell command, inputs and outputs, from a forced dry run."""
    out = snakemake("--dry-run", "--printshellcmds", "--forceall", "--cores", "1", cwd=cwd).stdout
    stages: dict[str, dict] = {}
    for block in re.split(r"\n(?=rule \w+:)", out)[1:]:
        name = re.match(r"rule (\w+):", block)[1]
        stage = stages.setdefault(name, {"cmd": None, "deps": set(), "outs": set()})
        for key, field in (("input", "deps"), ("output", "outs")):
            found = re.search(rf"^    {key}: (.+)$", block, re.MULTILINE)
            stage[field] |= set(found[1].split(", ")) if found else set()
        cmd = re.search(r"^Shell command: (.+)$", block, re.MULTILINE)[1]
        stage["cmd"] = " ".join(re.sub(r"\s*>\s*\S+\s+2>&1\s*$", "", cmd).split())
    return stages


def dvc_stages(path: Path) -> dict[str, dict]:
    """Each stage's command, dependencies and outputs (outs, metrics and plots)."""
    stages = yaml.safe_load(path.read_text())["stages"] or {}
    result = {}
    for name, stage in stages.items():
        outs = set()
        for key in ("outs", "metrics", "plots"):
            outs |= {next(iter(o)) if isinstance(o, dict) else o for o in stage.get(key, [])}
        result[name] = {
            "cmd": " ".join(stage["cmd"].split()),
            "deps": set(stage.get("deps", [])),
            "outs": outs,
        }
    return result


def test_snakemake_lint_passes():
    result = snakemake("--lint", check=False)
    assert result.returncode == 0 and "good condition" in result.stdout + result.stderr, (
        result.stderr
    )


def test_snakefile_and_dvc_yaml_describe_the_same_stages():
    ours = snakemake_stages(ROOT)
    ours.pop("all", None)
    theirs = dvc_stages(ROOT / "dvc.yaml")
    assert set(ours) == set(theirs), "stage names differ between the Snakefile and dvc.yaml"
    for name, stage in ours.items():
        dvc = theirs[name]
        assert dvc["cmd"] == stage["cmd"], f"{name}: commands differ"
        assert dvc["outs"] == stage["outs"], f"{name}: outputs differ"
        code = {d for d in dvc["deps"] - stage["deps"] if d.startswith("steelflow/")}
        assert dvc["deps"] - code == stage["deps"], f"{name}: dependencies differ"


def test_drift_is_detected(project):
    dvc = yaml.safe_load((project / "dvc.yaml").read_text())
    dvc["stages"] = {**(dvc["stages"] or {}), "stray": {"cmd": "steelflow stray", "outs": ["x"]}}
    (project / "dvc.yaml").write_text(yaml.safe_dump(dvc))
    assert set(dvc_stages(project / "dvc.yaml")) != set(snakemake_stages(project)) - {"all"}


def test_the_workflow_runs_in_a_fresh_folder(project):
    snakemake("--cores", "2", cwd=project)
    assert len(list((project / "resources/raw/train_images").glob("*.jpg"))) == TINY["n_train"]
    assert (project / "logs/fetch.log").is_file() and (
        project / "logs/benchmarks/fetch.tsv"
    ).is_file()
    again = snakemake("--cores", "2", "--dry-run", cwd=project)
    assert "Nothing to be done" in again.stdout + again.stderr
    snakemake("--report", "report.html", cwd=project)
    report = (project / "report.html").read_text(errors="replace")
    assert all(f"{name}.png" in report for name in ("class_balance", "mask_areas", "examples"))


def test_dvc_repro_runs_the_same_stages(project):
    for name in (".dvc/config", ".dvcignore"):
        (project / name).parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, project / name)
    run(["git", "init", "-q"], project)
    dvc = [BIN / "dvc"]
    result = run([*dvc, "repro"], project)
    for stage in dvc_stages(project / "dvc.yaml"):
        assert f"Running stage '{stage}'" in result.stdout
    assert len(list((project / "resources/raw/train_images").glob("*.jpg"))) == TINY["n_train"]
    assert (project / "results/split.csv").is_file() and (project / "dvc.lock").is_file()
    assert "up to date" in run([*dvc, "status"], project).stdout
    run([*dvc, "push"], project)
    assert any((project / "dvc-storage").rglob("*"))


def test_a_bad_config_stops_snakemake_with_one_clear_line(project):
    (project / "config.yaml").write_text("seed: -3\n")
    result = snakemake("--cores", "1", "--dry-run", cwd=project, check=False)
    assert result.returncode != 0
    assert "seed: expected a value >= 0, got -3" in result.stdout + result.stderr
