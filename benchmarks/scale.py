"""Kaggle scale through the workflow: every stage at 1/12, 1/4 and the full size.

For each size, a copy of the workflow, a git and DVC repository of its own, runs
`snakemake --cores all` on configs/scale.yaml with Kaggle's 12,568 train and 5,506
test images divided by the size's divisor (five folds trained and tuned out of
fold, flip TTA). Each stage's wall time and peak RSS are read from Snakemake's own
benchmark files (logs/benchmarks/*.tsv) and divided by the images the stage reads.
Then the run is recorded the README's way, each step timed: `dvc commit --force`,
`dvc push` to a local remote, and `dvc pull` into a fresh `git clone`. Last, on the
largest size, submit's prediction is compared with its networks' forward passes
alone (benchmarks/predict.py's ``measure``, on a sample of the test images, with the
run's five folds and flips, fp32 and bf16).

    python benchmarks/scale.py [--sizes 12 4 1] [--work DIR] [--sample 64]
    python benchmarks/scale.py --sizes 12 --set train.precision=fp32 --name scale_fp32
    python benchmarks/scale.py --render [--name NAME]   # NAME.md again from NAME.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import yaml
from common import RESULTS, commit, cpu_name, write_results
from predict import measure
from report import workflow_scale
from runs import workflow_times

from steelflow.config import parse_value, set_dotted
from steelflow.predict import Predictor, Thresholds

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
KAGGLE_TRAIN, KAGGLE_TEST = 12568, 5506
WORKFLOW = [
    "Snakefile", "workflow", "config.yaml", "configs", "params.yaml", "dvc.yaml", "profiles",
    "steelflow", "pyproject.toml", "README.md", "LICENSE", ".dvc/config", ".dvcignore",
    ".gitignore",
]  # fmt: skip
GIT = ["git", "-c", "user.name=steelflow-benchmark", "-c", "user.email=benchmark@example.org"]


def sh(args: list, cwd: Path) -> float:
    """Run ``args`` in ``cwd`` with the venv first on PATH; its wall seconds."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    start = time.perf_counter()
    result = subprocess.run(list(map(str, args)), cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(map(str, args))} failed in {cwd}:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def workflow_copy(folder: Path, n_train: int, n_test: int, changes: dict) -> None:
    """The workflow in ``folder`` as a clone would hold it, config.yaml training every
    fold of configs/scale.yaml (DVC's foreach reads train.folds there), and params.yaml
    layering an overlay of configs/scale.yaml at this size, with ``changes`` (dotted keys)."""
    for name in WORKFLOW:
        src, dest = ROOT / name, folder / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest)
    overlay = yaml.safe_load((ROOT / "configs/scale.yaml").read_text())
    overlay["data"]["synthetic"] |= {"n_train": n_train, "n_test": n_test}
    for key, value in changes.items():
        set_dotted(overlay, key, value)
    (folder / "configs/scale_run.yaml").write_text(yaml.safe_dump(overlay, sort_keys=False))
    folds = overlay["train"]["folds"]
    config = folder / "config.yaml"
    config.write_text(config.read_text().replace("folds: [0]", f"folds: {folds}", 1))
    (folder / "params.yaml").write_text("configfile: configs/scale_run.yaml\n")


def stage_images(stage: str, n_train: int, n_test: int) -> int | None:
    """The images a stage reads: every train image for the data stages, each fold's
    training (its training and validation images) and tune; the test images for
    submit and score; none for config and bundle, whose work does not grow with them."""
    if stage == "fetch":
        return n_train + n_test
    if stage in ("submit", "score"):
        return n_test
    if stage in ("config", "bundle"):
        return None
    return n_train


def past_gate(folder: Path) -> int:
    """The test images submit's U-Nets ran on, as its log says (the rest stopped at the
    classifiers' gate): what its work grows with, besides the images."""
    found = re.search(r"the U-Net ran on (\d+)", (folder / "logs/submit.log").read_text())
    if not found:
        raise SystemExit(f"{folder}/logs/submit.log: no count of the images past the gate")
    return int(found.group(1))


def stages(folder: Path, n_train: int, n_test: int) -> dict:
    """Each stage's seconds, peak RSS (MB) and images, from Snakemake's benchmark files."""
    out = {}
    for path in sorted((folder / "logs/benchmarks").glob("*.tsv")):
        last = pd.read_csv(path, sep="\t").iloc[-1]
        out[path.stem] = {
            "s": float(last["s"]),
            "max_rss_mb": float(last["max_rss"]),
            "cpu_s": float(last["cpu_time"]),
            "images": stage_images(path.stem.rsplit("_f", 1)[0], n_train, n_test),
        }
    return out


def size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def record(folder: Path, work: Path) -> dict:
    """The README's recording steps, timed: commit, push to a local remote, pull into
    a fresh clone (which then has nothing to rerun)."""
    remote, clone = work / "remote", work / "clone"
    sh([*GIT, "init", "-q"], folder)
    sh([*GIT, "add", "-A"], folder)
    sh([*GIT, "commit", "-qm", "the workflow"], folder)
    sh(["dvc", "remote", "add", "--local", "-d", "shared", remote], folder)
    out = {"commit_s": sh(["dvc", "commit", "--force"], folder)}
    sh([*GIT, "add", "dvc.lock"], folder)
    sh([*GIT, "commit", "-qm", "the run"], folder)
    out["push_s"] = sh(["dvc", "push"], folder)
    out["remote_bytes"] = size_of(remote)
    sh([*GIT, "clone", "-q", folder, clone], work)
    sh(["dvc", "remote", "add", "--local", "-d", "shared", remote], clone)
    out["pull_s"] = sh(["dvc", "pull"], clone)
    status = subprocess.run(
        [BIN / "dvc", "status"], cwd=clone, capture_output=True, text=True
    ).stdout
    out["clone_up_to_date"] = "up to date" in status
    return out


def prediction(folder: Path, sample: int) -> dict:
    """Submit's prediction against its forward passes alone, on ``sample`` test images
    with the run's models and TTA, in fp32 and bf16."""
    config = yaml.safe_load((folder / "results/config.yaml").read_text())
    folds = config["train"]["folds"]
    models = [
        [folder / f"models/{network}_f{k}.pt" for k in folds] for network in ("classifier", "unet")
    ]
    paths = sorted((folder / "resources/raw/test_images").glob("*.jpg"))[:sample]
    thresholds = Thresholds.load(folder / "results/thresholds.json")
    out = {"sample": len(paths)}
    for precision in ("fp32", "bf16"):
        train_cfg = {**config["train"], "precision": precision}
        predictor = Predictor(*models, train_cfg, config["predict"]["tta"])
        out[precision] = measure(
            predictor, thresholds, paths, config["predict"]["batch_size"], repeats=2, parts=False
        )
    return out


def run_size(divisor: int, work: Path, sample: int | None, changes: dict) -> dict:
    n_train, n_test = round(KAGGLE_TRAIN / divisor), round(KAGGLE_TEST / divisor)
    folder = work / "run"
    workflow_copy(folder, n_train, n_test, changes)
    print(f"1/{divisor}: {n_train} train, {n_test} test images in {folder}", flush=True)
    wall = sh(["snakemake", "--cores", "all", "--configfile", "configs/scale_run.yaml"], folder)
    start, end = workflow_times(folder)
    row = {
        "size": "full" if divisor == 1 else f"1/{divisor}",
        "n_train": n_train,
        "n_test": n_test,
        "snakemake_s": wall,
        "workflow_s": (end - start).total_seconds(),
        "stages": stages(folder, n_train, n_test),
        "submit_past_gate": past_gate(folder),
        "outputs_bytes": sum(
            size_of(folder / p) for p in ("resources", "models", "results", "dist")
        ),
        "dvc": record(folder, work),
    }
    if sample:
        row["prediction"] = prediction(folder, sample)
    print(json.dumps(row, indent=1), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[12, 4, 1], help="divisors")
    parser.add_argument("--work", type=Path, default=Path("/tmp/steelflow-scale"))
    parser.add_argument("--sample", type=int, default=64, help="test images for prediction")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--name", default="scale", help="results/NAME.{json,md}")
    parser.add_argument("--render", action="store_true", help="rewrite NAME.md from NAME.json")
    args = parser.parse_args()
    if args.render:
        data = json.loads((RESULTS / f"{args.name}.json").read_text())
        write_results(args.name, data, "\n".join(workflow_scale(data, args.name)) + "\n")
        return
    changes = {k: parse_value(v) for k, _, v in (c.partition("=") for c in args.set)}
    data = {
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "commit": commit(),
        "date": datetime.date.today().isoformat(),
        "changes": changes,
        "load_before": os.getloadavg()[0],
        "sizes": [],
    }
    for divisor in sorted(args.sizes, reverse=True):
        work = args.work / f"size_{divisor}"
        shutil.rmtree(work, ignore_errors=True)
        largest = divisor == min(args.sizes)
        sample = args.sample if largest else None
        data["sizes"].append(run_size(divisor, work, sample, changes))
        if not largest:  # the largest is kept to look at; of the others, their logs
            shutil.copytree(work / "run/logs", args.work / f"logs_{divisor}", dirs_exist_ok=True)
            shutil.rmtree(work)
        data["load_after"] = os.getloadavg()[0]
        markdown = "\n".join(workflow_scale(data, args.name)) + "\n"
        write_results(args.name, data, markdown)  # size by size


if __name__ == "__main__":
    main()
