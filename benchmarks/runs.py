"""End-to-end ablations: finished workflow runs side by side, one row each.

Each run is a folder where `snakemake --cores all` finished on one fold (fold 0,
the default train.folds), a clone or a copy of one with a few settings changed.
A row holds what the run's config changed from the defaults, the stage times
(Snakemake benchmarks) and the workflow's wall time (its Snakemake log, first job
start to last job end), the commit and date of the run, the CPU and torch of the
machine that adds the row (add rows where the runs ran), the test score
(results/metrics.json), the U-Net's
last validation epoch and which classes tune switched on. Rows are added to
benchmarks/results/runs.json under their name (a second run of the same name
replaces the first) and the table is rewritten to runs.md.

    python benchmarks/runs.py NAME=RUN_FOLDER [NAME=RUN_FOLDER ...] [--note TEXT]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from datetime import datetime
from pathlib import Path

import pandas as pd
import torch
import yaml
from common import RESULTS, cpu_name, write_results

from steelflow.config import load

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("1", "2", "3", "4")
STAGES = ("train_unet_f0", "train_classifier_f0", "tune", "submit")


def changes(config: dict, defaults: dict, prefix: str = "") -> dict:
    """The settings of ``config`` that differ from ``defaults``, as dotted keys."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and isinstance(defaults.get(key), dict):
            out |= changes(value, defaults[key], f"{prefix}{key}.")
        elif defaults.get(key) != value and key != "machine":
            out[f"{prefix}{key}"] = value
    return out


def workflow_times(run: Path) -> tuple[datetime, datetime]:
    """The first job's start and the last job's end in the run's newest Snakemake log
    that ran jobs (dry runs and reports log none)."""
    logs = sorted((run / ".snakemake/log").glob("*.snakemake.log"), reverse=True)
    for log in logs:  # named by their start time
        stamps = re.findall(r"^\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]", log.read_text(), re.M)
        times = [datetime.strptime(" ".join(s.split()), "%a %b %d %H:%M:%S %Y") for s in stamps]
        if times:
            return min(times), max(times)
    raise SystemExit(f"{run}: no Snakemake log of a run in .snakemake/log")


def commit(run: Path) -> str | None:
    """The commit the run's checkout was at, if it is one."""
    result = subprocess.run(
        ["git", "-C", str(run), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return result.stdout.strip() or None


def row(name: str, run: Path) -> dict:
    """One finished run's figures."""
    config = yaml.safe_load((run / "results/config.yaml").read_text())
    seconds = {
        stage: float(pd.read_csv(run / f"logs/benchmarks/{stage}.tsv", sep="\t").s.iloc[-1])
        for stage in STAGES
    }
    metrics = json.loads((run / "results/metrics.json").read_text())
    history = pd.read_csv(run / "results/train/unet_f0.csv").iloc[-1]
    tuned = json.loads((run / "results/thresholds.json").read_text())["classes"]
    start, end = workflow_times(run)
    every_stage = {
        path.stem: float(pd.read_csv(path, sep="\t").s.iloc[-1])
        for path in sorted((run / "logs/benchmarks").glob("*.tsv"))
    }
    return {
        "name": name,
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "commit": commit(run),
        "date": start.date().isoformat(),
        "workflow_s": (end - start).total_seconds(),
        "stage_s": every_stage,
        "changes": changes(config, load(ROOT / "config.yaml")),
        "seconds": seconds,
        "test_dice": metrics["dice"],
        "empty_baseline": metrics["empty_baseline"],
        "test_dice_on_defects": metrics["dice_on_defects_per_class"],
        "val_pooled_dice": {c: history.get(f"pooled_dice_{c}") for c in CLASSES},
        "enabled": [c for c in CLASSES if tuned[c]["enabled"]],
    }


def markdown(rows: list[dict], note: str) -> str:
    def number(value) -> str:
        return "-" if value is None or pd.isna(value) else f"{value:.3f}"

    lines = [
        "End-to-end runs, one each, on the CPU each row names, preset clear unless the changes say "
        "otherwise. Test: Dice of `results/metrics.json` and its margin over all-empty, "
        "then Dice on each class's test defect pairs. Val pooled: the U-Net's last epoch, "
        "its pooled Dice per class (false positives count; - where the run did not "
        "record it). On: the classes tune switched on.",
        *([f"\n{note}"] if note else []),
        "",
        "| run | CPU | changes | U-Net s | classifier s | test Dice | margin | test 1/2/3/4 "
        "| val pooled 1/2/3/4 | on |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        changed = ", ".join(f"{k}={v}" for k, v in r["changes"].items()) or "default"
        test = " / ".join(number(r["test_dice_on_defects"][c]) for c in CLASSES)
        pooled = " / ".join(number(r["val_pooled_dice"][c]) for c in CLASSES)
        lines.append(
            f"| {r['name']} | {r['cpu']} | {changed} | {r['seconds']['train_unet_f0']:.0f} | "
            f"{r['seconds']['train_classifier_f0']:.0f} | {r['test_dice']:.3f} | "
            f"{r['test_dice'] - r['empty_baseline']:+.3f} | {test} | {pooled} | "
            f"{','.join(r['enabled'])} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME=RUN_FOLDER")
    parser.add_argument("--note", default="", help="a line under the table's heading")
    args = parser.parse_args()
    saved = RESULTS / "runs.json"
    results = json.loads(saved.read_text()) if saved.is_file() else {"rows": [], "note": ""}
    rows = {r["name"]: r for r in results["rows"]}
    for spec in args.runs:
        name, _, folder = spec.partition("=")
        rows[name] = row(name, Path(folder))
    note = args.note or results["note"]
    table = list(rows.values())
    write_results("runs", {"note": note, "rows": table}, markdown(table, note))


if __name__ == "__main__":
    main()
