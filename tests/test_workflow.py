"""The workflow as users run it: Snakemake lint, a real run, and agreement with dvc.yaml."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT, TEST_CONFIG

BIN = Path(sys.executable).parent
WORKFLOW_FILES = ["Snakefile", "workflow", "config.yaml", "dvc.yaml", "profiles", "steelflow"]
TINY = yaml.safe_load(TEST_CONFIG.read_text())["data"]["synthetic"]  # the tiny data set


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
    shutil.copy(TEST_CONFIG, tmp_path / "config.yaml")
    return tmp_path


def snakemake_stages(cwd: Path) -> dict[str, dict]:
    """Each rule's shell command, inputs and outputs, from a forced dry run."""
    return snakemake_stages_with(cwd=cwd)


def snakemake_stages_with(*args: str, cwd: Path = ROOT) -> dict[str, dict]:
    out = snakemake(
        "--dry-run", "--printshellcmds", "--forceall", "--cores", "1", *args, cwd=cwd
    ).stdout
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


def git(*args, cwd):
    return run(
        ["git", "-c", "user.name=steelflow-test", "-c", "user.email=test@example.org", *args], cwd
    )


def dvc(*args, cwd):
    return run([BIN / "dvc", *args], cwd)


def as_dvc_repo(project: Path, remote: Path) -> None:
    """Make ``project`` a git + DVC repository like a clone, pushing to ``remote``."""
    for name in (".dvc/config", ".dvcignore", ".gitignore"):
        (project / name).parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, project / name)
    git("init", "-q", cwd=project)
    dvc("remote", "add", "--local", "-d", "shared", str(remote), cwd=project)


def test_snakemake_run_then_dvc_commit_push_and_pull_into_a_fresh_clone(project, tmp_path):
    snakemake("--cores", "2", cwd=project)
    assert len(list((project / "resources/raw/train_images").glob("*.jpg"))) == TINY["n_train"]
    assert (project / "logs/fetch.log").is_file() and (
        project / "logs/benchmarks/fetch.tsv"
    ).is_file()
    metrics = json.loads((project / "results/metrics.json").read_text())
    assert 0 <= metrics["dice"] <= 1 and metrics["images"] == TINY["n_test"]
    again = snakemake("--cores", "2", "--dry-run", cwd=project)
    assert "Nothing to be done" in again.stdout + again.stderr
    snakemake("--report", "report.html", cwd=project)
    report = (project / "report.html").read_text(errors="replace")
    for name in ("class_balance", "examples", "unet", "classifier", "thresholds", "predictions"):
        assert f"{name}.png" in report

    remote = tmp_path / "remote"
    as_dvc_repo(project, remote)
    dvc("commit", "--force", cwd=project)  # record what Snakemake built
    assert "up to date" in dvc("status", cwd=project).stdout
    git("add", "-A", cwd=project)
    git("commit", "-qm", "run", cwd=project)
    dvc("push", cwd=project)
    clone = tmp_path / "clone"
    git("clone", "-q", str(project), str(clone), cwd=tmp_path)
    dvc("remote", "add", "--local", "-d", "shared", str(remote), cwd=clone)
    dvc("pull", cwd=clone)
    for path in (
        "models/unet.pt",
        "models/classifier.pt",
        "submission.csv",
        "resources/raw/train.csv",
    ):
        assert (clone / path).read_bytes() == (project / path).read_bytes(), path


def test_dvc_repro_runs_the_same_stages(project, tmp_path):
    as_dvc_repo(project, tmp_path / "remote")
    result = dvc("repro", cwd=project)
    for stage in dvc_stages(project / "dvc.yaml"):
        assert f"Running stage '{stage}'" in result.stdout
    assert (project / "submission.csv").is_file() and (project / "dvc.lock").is_file()
    assert "up to date" in dvc("status", cwd=project).stdout
    assert "dice" in dvc("metrics", "show", cwd=project).stdout


def test_a_killed_run_resumes_training_and_finishes(project):
    config = yaml.safe_load((project / "config.yaml").read_text())
    config["unet"]["epochs"] = 3
    (project / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    process = subprocess.Popen(
        [BIN / "snakemake", "--cores", "2"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    last = project / "models/unet.last.pt"
    deadline = time.monotonic() + 600
    while not last.is_file() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert last.is_file(), "training never reached its first checkpoint"
    os.killpg(process.pid, signal.SIGKILL)  # kill Snakemake and the training, mid-run
    process.wait()
    assert not (project / "submission.csv").exists()
    snakemake("--unlock", cwd=project)
    snakemake("--cores", "2", cwd=project)  # the profile sets rerun-incomplete
    log = (project / "logs/train_unet.log").read_text()
    assert "resuming unet from epoch" in log
    history = pd.read_csv(project / "results/train/unet.csv")
    assert history.epoch.tolist() == [1, 2, 3]
    assert len(pd.read_csv(project / "submission.csv")) == 4 * TINY["n_test"]


def test_a_failing_stage_leaves_no_output_that_looks_complete(project):
    config = yaml.safe_load((project / "config.yaml").read_text())
    config["data"].update({"source": "local", "local_path": str(project / "missing.zip")})
    (project / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake("--cores", "2", cwd=project, check=False)
    assert result.returncode != 0
    assert "missing.zip does not exist" in (project / "logs/fetch.log").read_text()
    assert not (project / "resources/raw").exists()
    assert not [p for p in project.glob("resources/*") if p.name.endswith(".tmp")]


def test_a_bad_config_stops_snakemake_with_one_clear_line(project):
    (project / "config.yaml").write_text("seed: -3\n")
    result = snakemake("--cores", "1", "--dry-run", cwd=project, check=False)
    assert result.returncode != 0
    assert "seed: expected a value >= 0, got -3" in result.stdout + result.stderr


def test_another_config_file_reaches_every_stage():
    stages = snakemake_stages_with("--configfile", "configs/kaggle.yaml")
    configured = [s for s in stages.values() if "--config " in s["cmd"]]
    assert len(configured) >= 6
    assert all("--config configs/kaggle.yaml" in s["cmd"] for s in configured)


def test_command_line_overrides_are_refused_since_stages_would_not_see_them():
    result = snakemake("--dry-run", "--config", "seed=1", check=False)
    assert result.returncode != 0 and "not --config KEY=VALUE" in result.stdout + result.stderr


def test_the_submission_target_builds_what_it_needs_and_nothing_else():
    jobs = set(snakemake_stages_with("submission.csv"))
    assert jobs == {"fetch", "masks", "split", "train_classifier", "train_unet", "tune", "submit"}


@pytest.fixture
def local_slurm():
    """A real single-node Slurm from Debian's packages (scripts/slurm-local.sh)."""
    if os.geteuid() != 0:
        pytest.skip("starting a local Slurm (apt-get, munged, slurmctld, slurmd) needs root")
    script = ROOT / "scripts" / "slurm-local.sh"
    run([script, "start"], ROOT)
    yield
    run([script, "stop"], ROOT)


@pytest.mark.slurm
def test_the_tiny_workflow_runs_through_a_real_slurm(project, local_slurm):
    # The local node has 2 CPUs and no GPU: ask for what it has, not what the profile's cluster has.
    small = [
        f"{rule}:{key}={value}"
        for rule in ("masks", "eda", "train_classifier", "train_unet", "tune", "submit")
        for key, value in (("mem_mb", 3000), ("cpus_per_task", 1))
    ]
    command = [
        "timeout",
        "-k",
        "5",
        "-s",
        "INT",
        "900",
        BIN / "snakemake",
        "--profile",
        "profiles/slurm",
        "--slurm-no-account",
        "--set-resources",
        *small,
    ]
    result = run(command, project)
    submitted = re.findall(r"submitted with SLURM jobid \d+ \(log: \S*/rule_(\w+)/", result.stderr)
    assert sorted(submitted) == ["eda", "masks", "submit", "train_classifier", "train_unet", "tune"]
    submission = pd.read_csv(project / "submission.csv", keep_default_na=False)
    assert len(submission) == 4 * TINY["n_test"]
    assert json.loads((project / "results/metrics.json").read_text())["dice"] is not None
