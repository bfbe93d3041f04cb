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
import zipfile
from datetime import datetime
from functools import cache
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from steelflow import synthetic
from steelflow.config import load
from steelflow.recorded import Stage, forget_overruled, locked_stages, snakemake_record
from tests.conftest import ROOT, TEST_CONFIG, fetch_synthetic

BIN = Path(sys.executable).parent
WORKFLOW_FILES = [
    "Snakefile",
    "workflow",
    "config.yaml",
    "configs",
    "params.yaml",
    "dvc.yaml",
    "profiles",
    "steelflow",
    "pyproject.toml",  # the bundle's wheel is built from the package and these
    "README.md",
    "LICENSE",
]
TINY = yaml.safe_load(TEST_CONFIG.read_text())["data"]["synthetic"]  # the tiny data set
WITHOUT_VENV = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != str(BIN))


def run(args, cwd, check=True, path=os.environ["PATH"]):
    """``args`` in ``cwd``; a project's own steelflow/ is the one its commands import,
    as an editable install of that checkout would be."""
    env = {**os.environ, "PATH": path}
    if (Path(cwd) / "steelflow").is_dir():
        env["PYTHONPATH"] = str(cwd)
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
        )
    return result


def snakemake(*args, cwd=ROOT, check=True):
    """Snakemake from the venv, which is not on PATH: the rules find steelflow themselves."""
    return run([BIN / "snakemake", *args], cwd, check, path=WITHOUT_VENV)


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy of the workflow in a temp dir, so runs leave the checkout alone."""
    for name in WORKFLOW_FILES:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    shutil.copy(TEST_CONFIG, tmp_path / "config.yaml")
    return tmp_path


def two_folds(project: Path) -> None:
    """Train folds 0 and 1 in ``project``: two jobs per network, an ensemble, tuned out of fold."""
    config = yaml.safe_load((project / "config.yaml").read_text())
    config["train"]["folds"] = [0, 1]
    (project / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def snakemake_stages(*args: str, cwd: Path = ROOT) -> dict[str, dict]:
    """Each job's shell command, inputs and outputs, from a forced dry run; a job of a
    rule with a fold is named as DVC names a foreach stage: train_unet@0."""
    out = snakemake(
        "--dry-run", "--printshellcmds", "--forceall", "--cores", "1", *args, cwd=cwd
    ).stdout
    stages: dict[str, dict] = {}
    for block in re.split(r"\n(?=rule \w+:)", out)[1:]:
        name = re.match(r"rule (\w+):", block)[1]
        fold = re.search(r"^    wildcards: fold=(\d+)$", block, re.MULTILINE)
        stage = stages.setdefault(f"{name}@{fold[1]}" if fold else name, {"deps": set()})
        for key, field in (("input", "deps"), ("output", "outs")):
            found = re.search(rf"^    {key}: (.+)$", block, re.MULTILINE)
            stage[field] = set(found[1].split(", ")) if found else set()
        cmd = re.search(r"^Shell command: (.+)$", block, re.MULTILINE)[1]
        stage["cmd"] = " ".join(re.sub(r"\s*>\s*\S+\s+2>&1\s*$", "", cmd).split())
    stages.pop("all", None)
    for stage in stages.values():  # Snakemake's own rerun cue (workflow/rules/common.smk)
        stage["deps"] = {d for d in stage["deps"] if not d.endswith(".rerun")}
    return stages


def dvc_stages(folder: Path) -> dict[str, dict]:
    """Each stage's command, dependencies and outputs (outs, metrics and plots), as DVC
    itself reads dvc.yaml: ${...} filled, foreach stages expanded."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(folder), uninitialized=True) as repo:
        return {
            stage.name: {
                "cmd": " ".join(stage.cmd.split()),
                "deps": {
                    dep.def_path for dep in stage.deps if not isinstance(dep, ParamsDependency)
                },
                "outs": {out.def_path for out in stage.outs},
            }
            for stage in repo.index.stages
        }


def rerun_record(stage: str) -> set[str]:
    """What a dvc.yaml stage depends on for its code and settings, which the Snakefile's
    rule has as params: the config stage the package (it writes every stage's
    fingerprint, and pyproject.toml, part of the bundle's), the others their own
    results/stages file."""
    name = stage.split("@")[0]
    return {"steelflow", "pyproject.toml"} if name == "config" else {f"results/stages/{name}.yaml"}


def drift(snakefile: dict[str, dict], dvc: dict[str, dict]) -> list[str]:
    """Where the two descriptions of the pipeline differ, one line each."""
    found = [f"stage {n} only in the Snakefile" for n in sorted(snakefile.keys() - dvc.keys())]
    found += [f"stage {n} only in dvc.yaml" for n in sorted(dvc.keys() - snakefile.keys())]
    for name in sorted(snakefile.keys() & dvc.keys()):
        if not rerun_record(name) <= dvc[name]["deps"]:
            found.append(f"{name}: dvc.yaml lacks the dep {sorted(rerun_record(name))}")
        for field in ("cmd", "deps", "outs"):
            ours, theirs = snakefile[name][field], dvc[name][field]
            if field == "deps":
                theirs = theirs - rerun_record(name)
            if field == "deps":  # a folder in dvc.yaml stands for the Snakefile's files in it
                inside = {d for d in ours for f in theirs if d.startswith(f"{f}/")}
                ours = ours - inside | {
                    f for f in theirs if any(d.startswith(f"{f}/") for d in ours)
                }
            if ours != theirs:
                detail = (
                    f"{ours!r} vs {theirs!r}"
                    if field == "cmd"
                    else (
                        f"Snakefile only {sorted(ours - theirs)}, dvc.yaml only {sorted(theirs - ours)}"
                    )
                )
                found.append(f"{name}: {field} differ: {detail}")
    return found


def test_snakemake_lint_passes():
    result = snakemake("--lint", check=False)
    assert result.returncode == 0 and "good condition" in result.stdout + result.stderr, (
        result.stderr
    )


@cache
def default_stages() -> dict[str, dict]:
    """The Snakefile's jobs with dvc.yaml's default overlay given to Snakemake too."""
    overlay = yaml.safe_load((ROOT / "params.yaml").read_text())["configfile"]
    return snakemake_stages("--configfile", overlay)


def test_snakefile_and_dvc_yaml_describe_the_same_stages():
    """Commands, data and code."""
    assert drift(default_stages(), dvc_stages(ROOT)) == []


@pytest.mark.parametrize(
    ("old", "new", "found"),
    [
        (
            "--curves results/train/unet_f${item}.png --resume",
            "--curves results/train/unet_f${item}.png",
            "train_unet@0: cmd differ",
        ),
        (
            "--unet models/unet_f{fold}.pt --out results/thresholds.json",
            "--unet models/unet_f0.pt --out results/thresholds.json",
            "tune: cmd differ",
        ),
        (
            "      - results/thresholds.png\n",
            "      - results/thresholds.svg\n",
            "tune: outs differ",
        ),
        (
            "        - results/split.csv\n",
            "",
            "train_classifier@0: deps differ: Snakefile only ['results/split.csv']",
        ),
        (
            "      - results/stages/tune.yaml  # its code fingerprint and settings\n",
            "",
            "tune: dvc.yaml lacks the dep ['results/stages/tune.yaml']",
        ),
        (
            "stages:\n",
            "stages:\n  stray:\n    cmd: steelflow stray\n    outs: [x]\n",
            "stage stray only in dvc.yaml",
        ),
    ],
)
def test_drift_in_a_command_an_output_or_a_dep_is_caught(project, old, new, found):
    ours = default_stages()  # the project's Snakefile is the checkout's
    text = (project / "dvc.yaml").read_text()
    assert old in text
    assert drift(ours, dvc_stages(project)) == []
    (project / "dvc.yaml").write_text(text.replace(old, new, 1))
    assert any(line.startswith(found) for line in drift(ours, dvc_stages(project)))


def git(*args, cwd):
    return run(
        ["git", "-c", "user.name=steelflow-test", "-c", "user.email=test@example.org", *args], cwd
    )


def dvc(*args, cwd):
    """DVC runs stage commands as written: steelflow must be on PATH (an activated venv)."""
    return run([BIN / "dvc", *args], cwd, path=f"{BIN}{os.pathsep}{os.environ['PATH']}")


def as_dvc_repo(project: Path, remote: Path) -> None:
    """Make ``project`` a git + DVC repository like a clone, pushing to ``remote``."""
    for name in (".dvc/config", ".dvcignore", ".gitignore"):
        (project / name).parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, project / name)
    git("init", "-q", cwd=project)
    git("add", "-A", cwd=project)
    git("commit", "-qm", "the project", cwd=project)
    dvc("remote", "add", "--local", "-d", "shared", str(remote), cwd=project)


def test_snakemake_run_then_dvc_commit_push_and_pull_into_a_fresh_clone(project, tmp_path):
    two_folds(project)
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
    figures = ("class_balance", "examples", "unet_f1", "classifier_f0", "thresholds", "predictions")
    for name in figures:
        assert f"{name}.png" in report

    remote = tmp_path / "remote"
    as_dvc_repo(project, remote)
    dvc("commit", "--force", cwd=project)  # the README's steps, exactly
    assert "up to date" in dvc("status", cwd=project).stdout
    assert "Nothing to be done" in snakemake("--dry-run", cwd=project).stdout  # no --touch
    git("add", "dvc.lock", cwd=project)
    git("commit", "-qm", "results of the run", cwd=project)
    dvc("push", cwd=project)
    clone = tmp_path / "clone"
    git("clone", "-q", str(project), str(clone), cwd=tmp_path)
    dvc("remote", "add", "--local", "-d", "shared", str(remote), cwd=clone)
    dvc("pull", cwd=clone)
    for path in (
        "models/unet_f0.pt",
        "models/unet_f1.pt",
        "models/classifier_f0.pt",
        "models/classifier_f1.pt",
        "submission.csv",
        "resources/raw/train.csv",
        "results/thresholds.json",
        "results/metrics.json",
        "results/eda/stats.json",
        "results/config.yaml",
        "dist/kaggle/submit.py",
        "dist/kaggle/models/unet_f1.pt",
    ):
        assert (clone / path).read_bytes() == (project / path).read_bytes(), path
    # the teammate's clone is complete: nothing to rerun under either tool
    assert "up to date" in dvc("status", cwd=clone).stdout
    assert "Running stage" not in dvc("repro", cwd=clone).stdout
    pulled = snakemake("--dry-run", cwd=clone)  # no --touch: dvc.lock vouches for the files
    assert "Nothing to be done" in pulled.stdout, pulled.stdout + pulled.stderr
    # another teammate pulls all but the EDA, and the split lands last: Snakemake redoes
    # the EDA alone, not the training dvc.lock vouches for
    partial = tmp_path / "partial"
    git("clone", "-q", str(project), str(partial), cwd=tmp_path)
    dvc("remote", "add", "--local", "-d", "shared", str(remote), cwd=partial)
    dvc("pull", *(s for s in dvc_stages(partial) if s != "eda"), cwd=partial)
    (partial / "results/split.csv").touch()
    planned = snakemake("--dry-run", cwd=partial).stdout
    assert set(re.findall(r"^rule (\w+):", planned, re.MULTILINE)) == {"eda", "all"}, planned
    # the teammate changes a tune setting: Snakemake, with no records of its own in the
    # clone, reruns tune and what reads its output, as dvc repro would, and no training
    config = yaml.safe_load((clone / "config.yaml").read_text())
    config["tune"]["min_gain"] += 0.01
    (clone / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    planned = snakemake("--dry-run", cwd=clone).stdout
    rules = set(re.findall(r"^rule (\w+):", planned, re.MULTILINE))
    assert "tune" in rules and rules <= {"all", "tune", "submit", "score", "bundle", "config"}
    snakemake("--cores", "2", cwd=clone)
    assert "Nothing to be done" in snakemake("--dry-run", cwd=clone).stdout

    # Back in the first project, Snakemake retunes for a new setting and rewrites the
    # stage records (its config rule), not the bundle; dvc commit --force records that
    # as it is. Snakemake's own record of the bundle, of the old setting, still counts.
    def more_gain():
        config = yaml.safe_load((project / "config.yaml").read_text())
        config["tune"]["min_gain"] += 0.01
        (project / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    more_gain()
    snakemake("--cores", "2", "results/thresholds.json", "results/config.yaml", cwd=project)
    dvc("commit", "--force", cwd=project)
    assert "rule bundle:" in snakemake("--dry-run", cwd=project).stdout
    # DVC remakes what a setting changes: Snakemake, whose own records are of its
    # earlier runs, takes dvc.lock's word for it and redoes nothing
    more_gain()
    assert "Running stage 'tune'" in dvc("repro", cwd=project).stdout
    after = snakemake("--dry-run", cwd=project)
    assert "Nothing to be done" in after.stdout, after.stdout + after.stderr
    assert "results/thresholds.json: made by DVC as it would be now" in after.stdout
    models = project / "models/unet_f0.pt"  # DVC did not remake it: Snakemake's record stays
    assert json.loads(snakemake_record(project, models).read_text())["rule"] == "train_unet"


def test_a_stage_of_another_tool_or_a_copy_without_its_repository_is_left_alone(tmp_path):
    """Snakemake reads DVC's records where they vouch for steelflow's stages alone: a
    stage of the user's own (``dvc add notes.txt``) is none of its business, and a
    dvc.lock without its DVC and git repositories (an exported copy) vouches for nothing."""
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    assert locked_stages(tmp_path) == []
    record = snakemake_record(tmp_path, tmp_path / "notes.txt")
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"params": ["'other'"]}))
    notes = Stage("notes.txt.dvc", [tmp_path / "notes.txt"], [])
    assert forget_overruled(tmp_path, [notes], load(TEST_CONFIG)) == []
    assert record.is_file()


def test_dvc_repro_and_experiments_run_the_same_stages(project, tmp_path):
    two_folds(project)
    as_dvc_repo(project, tmp_path / "remote")
    result = dvc("repro", cwd=project)
    assert {"train_unet@0", "train_unet@1", "train_classifier@1"} <= set(dvc_stages(project))
    for stage in dvc_stages(project):
        assert f"Running stage '{stage}'" in result.stdout
    assert json.loads((project / "results/thresholds.json").read_text())["folds"] == [0, 1]
    assert (project / "submission.csv").is_file() and (project / "dvc.lock").is_file()
    assert "up to date" in dvc("status", cwd=project).stdout
    assert "dice" in dvc("metrics", "show", cwd=project).stdout

    def stale():
        return sorted(re.findall(r"^([\w@]+):", dvc("status", cwd=project).stdout, re.MULTILINE))

    code = project / "steelflow/tune.py"
    source = code.read_text()
    for edit in ("config.py", "cli.py", "tune.py", "config.schema.yaml"):  # what code says
        file = project / "steelflow" / edit
        text = file.read_text()
        file.write_text(text.replace("description: ", "description: reworded, ", 1) + "# note\n")
    code.write_text(code.read_text().replace('"""', '"""Reworded. ', 1))
    assert stale() == ["config"]  # the stage that fingerprints the code, and no other
    ran = dvc("repro", cwd=project).stdout
    assert re.findall(r"Running stage '([\w@]+)'", ran) == ["config"]
    assert "up to date" in dvc("status", cwd=project).stdout
    code.write_text(source + "\n\ndef unused():\n    return 1\n")  # what code does
    dvc("repro", "config", cwd=project)
    assert stale() == ["bundle", "tune"]  # the bundle's wheel holds the whole package
    code.write_text(source)
    dvc("repro", "config", cwd=project)
    assert stale() == []

    git("add", "dvc.lock", cwd=project)
    git("commit", "-qm", "results of the run", cwd=project)

    def experiment(setting, *targets):
        ran = dvc("exp", "run", "-S", setting, *targets, cwd=project).stdout
        return set(re.findall(r"Running stage '([\w@]+)'", ran))

    stages = experiment("config.yaml:classifier.epochs=2")  # a setting of one network
    networks = {"train_classifier@0", "train_classifier@1"}
    assert {"config", *networks, "tune", "submit"} <= stages  # score: if the csv changed
    assert not stages & {"fetch", "masks", "eda", "split", "train_unet@0", "train_unet@1"}
    assert len(pd.read_csv(project / "results/train/classifier_f1.csv")) == 2

    config = project / "config.yaml"  # a third fold: its stages would run, and not the others'
    two = config.read_text()
    three = yaml.safe_load(two)
    three["train"]["folds"] = [0, 1, 2]
    config.write_text(yaml.safe_dump(three, sort_keys=False))
    dvc("repro", "config", cwd=project)  # the stage records of the new settings
    assert {"train_classifier@2", "train_unet@2", "tune", "submit"} <= set(stale())
    assert not set(stale()) & {"train_classifier@0", "train_unet@0", "train_unet@1"}
    config.write_text(two)
    dvc("repro", "config", cwd=project)

    gain = "configs/none.yaml:+tune.min_gain=0.02"  # a tune setting, in the overlay
    assert experiment(gain, "config") == {"config"}  # the records, then what they make stale
    assert yaml.safe_load((project / "configs/none.yaml").read_text())["tune"]["min_gain"] == 0.02
    assert stale() == ["bundle", "tune"]  # and what reads tune's output, if it changes

    (project / "configs/folds.yaml").write_text("train:\n  folds: [0]\n")  # DVC trains [0, 1]
    on_path = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    args = [BIN / "dvc", "exp", "run", "-S", "configfile=configs/folds.yaml"]
    failed = run(args, project, check=False, path=on_path)
    assert failed.returncode != 0
    assert re.findall(r"Running stage '([\w@]+)'", failed.stdout) == ["config"]
    assert (
        "steelflow config: error: train.folds [0]: dvc.yaml trains config.yaml's folds [0, 1]"
        in failed.stderr
    )

    (project / "configs/longer.yaml").write_text("classifier:\n  epochs: 3\n")
    targets = ["config", "train_classifier@1"]  # what the overlay changes, and not the rest
    ran = dvc("exp", "run", "-S", "configfile=configs/longer.yaml", *targets, cwd=project).stdout
    assert "Running stage 'train_classifier@1'" in ran
    assert len(pd.read_csv(project / "results/train/classifier_f1.csv")) == 3
    record = yaml.safe_load((project / "results/config.yaml").read_text())
    assert record["classifier"]["epochs"] == 3
    shown = dvc("exp", "show", "--csv", cwd=project).stdout
    assert "configs/longer.yaml" in shown
    assert "configfile" in dvc("params", "diff", cwd=project).stdout


def test_a_killed_run_resumes_training_and_finishes(project):
    config = yaml.safe_load((project / "config.yaml").read_text())
    config["unet"]["epochs"] = 3
    (project / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PATH": WITHOUT_VENV}
    process = subprocess.Popen(
        [BIN / "snakemake", "--cores", "2"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    last = project / "models/unet_f0.last.pt"
    deadline = time.monotonic() + 600
    while not last.is_file() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert last.is_file(), "training never reached its first checkpoint"
    os.killpg(process.pid, signal.SIGKILL)  # kill Snakemake and the training, mid-run
    process.wait()
    assert not (project / "submission.csv").exists()
    snakemake("--unlock", cwd=project)
    snakemake("--cores", "2", cwd=project)  # the profile sets rerun-incomplete
    log = (project / "logs/train_unet_f0.log").read_text()
    assert "resuming unet from epoch" in log
    history = pd.read_csv(project / "results/train/unet_f0.csv")
    assert history.epoch.tolist() == [1, 2, 3]
    assert len(pd.read_csv(project / "submission.csv")) == 4 * TINY["n_test"]


def test_a_failing_stage_leaves_no_output_that_looks_complete(project):
    config = yaml.safe_load((project / "config.yaml").read_text())
    config["data"].update({"source": "local", "local_path": str(project / "missing.zip")})
    (project / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake("--cores", "2", cwd=project, check=False)
    assert result.returncode != 0
    assert "missing.zip does not exist" in (project / "logs/fetch.log").read_text()
    assert "missing.zip does not exist" in result.stderr + result.stdout  # the profile shows it
    assert not (project / "resources/raw").exists()
    assert not [p for p in project.glob("resources/*") if p.name.endswith(".tmp")]


def test_a_bad_config_stops_snakemake_with_one_clear_line(project):
    (project / "config.yaml").write_text("seed: -3\n")
    result = snakemake("--cores", "1", "--dry-run", cwd=project, check=False)
    assert result.returncode != 0
    assert "seed: expected a value >= 0, got -3" in result.stdout + result.stderr


def test_every_stage_reads_the_config_snakemake_validated(project):
    """config.yaml, then a partial --configfile, then --config (a key and a section): the
    recorded config, the data and the trained network all follow that merge, and only a
    setting that changes a result reruns anything."""
    config = yaml.safe_load((project / "config.yaml").read_text())
    config["seed"] = 7
    (project / "config.yaml").write_text(yaml.safe_dump(config))
    (project / "my.yaml").write_text("unet:\n  epochs: 2\n")
    targets = ["models/unet_f1.pt", "results/config.yaml"]
    layers = ["--configfile", "my.yaml", "--config", "train={folds: [1]}", "unet={lr: 2e-3}"]
    snakemake("--cores", "2", *targets, *layers, cwd=project)

    record = yaml.safe_load((project / "results/config.yaml").read_text())
    assert record["seed"] == 7 and record["train"]["folds"] == [1]  # config.yaml, --config
    assert record["unet"]["epochs"] == 2 and record["unet"]["lr"] == 0.002  # my.yaml, --config
    assert record["unet"]["batch_size"] == config["unet"]["batch_size"]  # config.yaml
    assert "machine" not in record
    assert torch.load(project / "models/unet_f1.pt", weights_only=True)["config"] == record["unet"]
    assert pd.read_csv(project / "results/train/unet_f1.csv").epoch.tolist() == [1, 2]
    train_ids = set(pd.read_csv(project / "resources/raw/train.csv").ImageId)
    assert synthetic.image_id(7, "train", 0) in train_ids  # drawn with seed 7

    def planned(*extra):
        out = snakemake("--dry-run", *targets, *layers, *extra, cwd=project)
        return set(re.findall(r"^rule (\w+):", out.stdout, re.MULTILINE))

    assert planned() == set()
    assert planned("machine={workers: 1, threads: 1}") == set()  # how, not what
    assert planned("augment={hflip: false}") == {"train_unet", "config"}
    assert planned("train={folds: [0, 1]}") == {"config"}  # other folds: not this fold's job
    losses = project / "steelflow/losses.py"  # code only training imports
    source = losses.read_text()
    losses.write_text(source.replace('"""', '"""Reworded. ', 1) + "# a comment\n")
    assert planned() == set()  # what the code says: nothing reruns
    losses.write_text(source + "\n\ndef unused():\n    return 1\n")
    assert planned() == {"train_unet", "config"}  # what it does: the stage that runs it


def test_a_newer_local_zip_fetches_again_and_a_new_seed_does_not(project, tmp_path):
    data = fetch_synthetic(tmp_path / "data", 6, 2)
    archive = tmp_path / "severstal.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted(data.rglob("*")):
            if file.is_file():
                zf.write(file, file.relative_to(data))
    local = ["--config", f"data={{source: local, local_path: {archive}}}"]
    snakemake("--cores", "1", "resources/raw", *local, cwd=project)
    assert fetch_planned(project, *local) == set()
    assert fetch_planned(project, *local, "seed=7") == set()  # the synthetic draw's
    os.utime(archive, (time.time() + 60, time.time() + 60))  # a new copy of the zip
    assert fetch_planned(project, *local) == {"fetch"}


def test_a_local_folder_fetches_again_for_a_train_csv_copied_over_its_own(project, tmp_path):
    """A folder's time is that of its list of files: a file copied over another in the
    folder, or in the one folder the files were extracted inside, leaves it as it was."""
    data = fetch_synthetic(tmp_path / "download" / "severstal", 6, 2)
    local = ["--config", f"data={{source: local, local_path: {tmp_path / 'download'}}}"]
    snakemake("--cores", "1", "resources/raw", *local, cwd=project)
    assert fetch_planned(project, *local) == set()
    train = data / "train.csv"
    folders = {p: p.stat().st_mtime_ns for p in (data, data.parent)}
    train.write_text("".join(train.read_text().splitlines(keepends=True)[:-1]))  # in place
    assert {p: p.stat().st_mtime_ns for p in folders} == folders
    assert fetch_planned(project, *local) == {"fetch"}


def fetch_planned(project: Path, *config: str) -> set[str]:
    """The rules a dry run of resources/raw plans, with ``config`` (--config ...)."""
    out = snakemake("--dry-run", "resources/raw", *config, cwd=project).stdout
    return set(re.findall(r"^rule (\w+):", out, re.MULTILINE))


@pytest.mark.parametrize(
    ("offered", "threads"),
    [
        ([], 9),  # one GPU job at a time: its 8 loader workers and itself
        (["--resources", "gpu=4"], 4),  # four fold jobs side by side on 16 cores
        (["--resources", "gpu=4", "--config", "train={nproc_per_node: 2}"], 8),  # two
        (["--resources", "gpu=1"], 9),
    ],
)
def test_gpu_training_jobs_fit_side_by_side_in_the_cores(offered, threads):
    """configs/kaggle.yaml's training jobs each ask for their loader workers' cores, but
    no more than the cores' share of each job that the GPUs let run at once."""
    out = snakemake(
        "--dry-run", "--cores", "16", "--configfile", "configs/kaggle.yaml", *offered
    ).stdout
    jobs = re.findall(r"^rule train_\w+:\n(?:    .*\n)*?    threads: (\d+)", out, re.MULTILINE)
    assert len(jobs) == 10 and set(jobs) == {str(threads)}


def test_a_partial_configfile_alone_reaches_the_stages_layered_over_config_yaml():
    section = "unet={class_weights: [3, 2, 1, 1], lr: 1e-4}"
    stages = snakemake_stages("--configfile", "configs/kaggle.yaml", "--config", "seed=7", section)
    configured = [s["cmd"] for s in stages.values() if "--config " in s["cmd"]]
    assert len(configured) == len(stages) - 2  # all but masks and score
    layers = (
        "--config config.yaml --config configs/kaggle.yaml --set seed=7 "
        "--set 'unet.class_weights=[3, 2, 1, 1]' --set unet.lr=0.0001"
    )
    assert all(layers in cmd for cmd in configured)


def test_the_submission_target_builds_what_it_needs_and_nothing_else():
    jobs = set(snakemake_stages("submission.csv"))
    trained = {"train_classifier@0", "train_unet@0"}
    assert jobs == {"fetch", "masks", "split", *trained, "tune", "submit"}


@pytest.fixture
def local_slurm():
    """A real single-node Slurm from Debian's packages (scripts/slurm-local.sh)."""
    if os.geteuid() != 0:
        pytest.skip("starting a local Slurm (apt-get, munged, slurmctld, slurmd) needs root")
    script = ROOT / "scripts" / "slurm-local.sh"
    run([script, "start"], ROOT)
    yield
    run([script, "stop"], ROOT)


def slurm_times(job: str) -> tuple[datetime, datetime]:
    """When a Slurm job started and ended (Slurm keeps finished jobs for MinJobAge)."""
    shown = run(["scontrol", "show", "job", job], ROOT).stdout
    start, end = (re.search(rf"{key}=(\S+)", shown)[1] for key in ("StartTime", "EndTime"))
    return datetime.fromisoformat(start), datetime.fromisoformat(end)


@pytest.mark.slurm
def test_the_tiny_workflow_runs_through_a_real_slurm_with_folds_side_by_side(project, local_slurm):
    two_folds(project)
    # The local node has 2 CPUs and no GPU: ask for what it has, not what the profile's cluster has.
    small = [
        f"{rule}:{key}={value}"
        for rule in ("masks", "eda", "train_classifier", "train_unet", "tune", "submit")
        for key, value in (("mem_mb", 3000), ("cpus_per_task", 1))
    ]
    slurm = ["--profile", "profiles/slurm", "--slurm-no-account", "--set-resources", *small]
    timeout = ["timeout", "-k", "5", "-s", "INT", "900"]

    def submitted(result) -> dict[str, str]:
        jobs = re.findall(
            r"submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+)/(?:(\d+)/)?",
            result.stderr,
        )
        return {f"{rule}@{fold}" if fold else rule: job for job, rule, fold in jobs}

    # first the U-Nets of both folds: two jobs at once, one CPU each
    unets = ["models/unet_f0.pt", "models/unet_f1.pt"]  # before --set-resources, which takes all
    first = submitted(run([*timeout, BIN / "snakemake", *unets, *slurm], project))
    assert sorted(first) == ["masks", "train_unet@0", "train_unet@1"]
    (start_0, end_0), (start_1, end_1) = (slurm_times(first[f"train_unet@{f}"]) for f in (0, 1))
    assert start_0 < end_1 and start_1 < end_0, "the two folds' jobs did not overlap"

    rest = submitted(run([*timeout, BIN / "snakemake", *slurm], project))
    trained = ["train_classifier@0", "train_classifier@1"]
    assert sorted(rest) == ["eda", "submit", *trained, "tune"]
    submission = pd.read_csv(project / "submission.csv", keep_default_na=False)
    assert len(submission) == 4 * TINY["n_test"]
    assert json.loads((project / "results/metrics.json").read_text())["dice"] is not None


def test_each_stage_code_is_what_its_command_imports():
    from steelflow.code import stage_code

    train, tune = set(stage_code("train")), set(stage_code("tune"))
    assert {"steelflow/train.py", "steelflow/losses.py", "steelflow/tasks.py"} <= train
    assert "steelflow/tune.py" not in train and "steelflow/predict.py" not in train
    assert {"steelflow/tune.py", "steelflow/predict.py", "steelflow/models.py"} <= tune
    assert "steelflow/losses.py" not in tune
    assert "steelflow/config.schema.yaml" in train  # its defaults are settings
    assert "steelflow/config.schema.yaml" not in stage_code("masks")  # no config
    assert all((ROOT / f).is_file() for f in train | tune)
    with pytest.raises(ValueError, match="no stage 'nope'"):
        stage_code("nope")


def test_fold_jobs_side_by_side_claim_gpus_of_their_own(project, tmp_path_factory, monkeypatch):
    """--resources gpu=2 only counts GPUs: each training job claims its own and trains
    with CUDA_VISIBLE_DEVICES naming it. Two GPUs are offered as a user offers them, by
    CUDA_VISIBLE_DEVICES=0,1; the jobs ask for one each and a core, as train.device: cuda
    asks, while train.device: auto trains on the CPU where CUDA finds no GPU. Jobs that
    ran one after the other would both have GPU 0: different GPUs mean they overlapped."""
    two_folds(project)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path_factory.mktemp("run")))  # own locks
    as_gpu_jobs = ["--set-threads", "train_unet=1", "--set-resources", "train_unet:gpu=1"]
    unets = ["models/unet_f0.pt", "models/unet_f1.pt"]  # first: options take what follows
    snakemake(*unets, "--cores", "2", "--resources", "gpu=2", *as_gpu_jobs, cwd=project)
    logs = [(project / f"logs/train_unet_f{fold}.log").read_text() for fold in (0, 1)]
    claimed = [re.findall(r"CUDA_VISIBLE_DEVICES=(\S+): this job's GPU", log) for log in logs]
    assert sorted(claimed) == [["0"], ["1"]]

    # disk_mb: the decoded images of every row of the split at the scale, one file for
    # the job's processes; read from the split when the job runs (a dry run shows <TBD>),
    # so --touch runs it
    bigger = ["--config", "unet={scale: 1.0}", "train={nproc_per_node: 2}"]
    touch = ["models/unet_f0.pt", "--touch", "--cores", "2", "--forcerun", "train_unet"]
    shown = snakemake(*touch, *bigger, cwd=project).stderr
    rows = len(pd.read_csv(project / "results/split.csv"))
    assert f"disk_mb={round(rows * 256 * 1600 / 1e6) + 1000}," in shown


def test_a_stage_fingerprint_changes_with_what_its_code_does_not_with_what_it_says(
    tmp_path, monkeypatch
):
    from steelflow import code

    shutil.copytree(ROOT / "steelflow", tmp_path / "steelflow")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    monkeypatch.setattr(code, "PACKAGE", tmp_path / "steelflow")
    stages = ("fetch", "train", "tune", "submit", "bundle")

    def fingerprints():
        for cached in (code._tree, code._content, code.fingerprint):  # the files changed
            cached.cache_clear()
        return {stage: code.fingerprint(stage) for stage in stages}

    before = fingerprints()
    for name in ("cli.py", "config.py", "tune.py"):  # a docstring, a comment, help text
        path = tmp_path / "steelflow" / name
        text = path.read_text().replace('"""', '"""Reworded. ', 1)
        path.write_text(text.replace('help="', 'help="reworded ') + "# a comment\n")
    schema = tmp_path / "steelflow/config.schema.yaml"
    schema.write_text(schema.read_text().replace("description: ", "description: reworded ", 3))
    assert fingerprints() == before
    tune = tmp_path / "steelflow/tune.py"
    tune.write_text(tune.read_text() + "\n\ndef unused():\n    return 1\n")
    after = fingerprints()
    assert {s for s in stages if after[s] != before[s]} == {"tune", "bundle"}
    schema.write_text(schema.read_text().replace("default: 42", "default: 43", 1))
    assert fingerprints()["train"] != after["train"]  # a default is a setting
