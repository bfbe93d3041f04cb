"""The workflow as users run it: Snakemake lint, a real run, and agreement with dvc.yaml."""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

BIN = Path(sys.executable).parent
WORKFLOW_FILES = ["Snakefile", "workflow", "config.yaml", "dvc.yaml", "profiles"]


def run(args, cwd, check=True):
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
    return result


def snakemake(*args, cwd=ROOT, check=True):
    return run([BIN / "snakemake", *args], cwd, check)


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy of the workflow in a temp dir, so runs leave the checkout alone."""
    for name in WORKFLOW_FILES:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    return tmp_path


def snakemake_stages(cwd: Path) -> dict[str, dict]:
    """Each rule's shell command, inputs and outputs, from `snakemake --detailed-summary`."""
    out = snakemake("--detailed-summary", "--forceall", cwd=cwd).stdout
    table = out[out.index("output_file\t"):]
    stages: dict[str, dict] = {}
    for row in csv.DictReader(io.StringIO(table), delimiter="\t"):
        stage = stages.setdefault(row["rule"], {"cmd": None, "deps": set(), "outs": set()})
        cmd = re.sub(r"\s*>\s*\S+\s+2>&1\s*$", "", row["shellcmd"].strip())
        stage["cmd"] = " ".join(cmd.split())
        stage["deps"] |= {p for p in row["input-file(s)"].split(",") if p and p != "-"}
        stage["outs"].add(row["output_file"])
    return stages


def dvc_stages(path: Path) -> dict[str, dict]:
    """Each stage's command, dependencies and outputs (outs, metrics and plots)."""
    stages = yaml.safe_load(path.read_text())["stages"] or {}
    result = {}
    for name, stage in stages.items():
        outs = set()
        for key in ("outs", "metrics", "plots"):
            outs |= {next(iter(o)) if isinstance(o, dict) else o for o in stage.get(key, [])}
        result[name] = {"cmd": " ".join(stage["cmd"].split()), "deps": set(stage.get("deps", [])),
                        "outs": outs}
    return result


def test_snakemake_lint_passes():
    result = snakemake("--lint", check=False)
    assert result.returncode == 0 and "good condition" in result.stdout + result.stderr, result.stderr


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
    result = snakemake("--cores", "1", cwd=project)
    assert "steps (100%) done" in result.stdout + result.stderr


def test_a_bad_config_stops_snakemake_with_one_clear_line(project):
    (project / "config.yaml").write_text("seed: -3\n")
    result = snakemake("--cores", "1", "--dry-run", cwd=project, check=False)
    assert result.returncode != 0
    assert "seed: expected a value >= 0, got -3" in result.stdout + result.stderr
