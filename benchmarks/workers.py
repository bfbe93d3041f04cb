"""Loader workers across epochs: kept alive (the epoch travels with each index) against
started afresh each epoch (the other way to reach them with a new epoch).

The U-Net's and the classifier's training loaders of the default config (the real
``train.make_loaders``, images decoded once), with 1 and 2 workers started by fork
(Linux's default) and by spawn (macOS's and Windows'): seconds of each of three
epochs of the data pipeline alone (no model), and of the first batch of each epoch.
Persistent workers start once; fresh ones start every epoch, and under spawn each
imports torch and steelflow again. Writes benchmarks/results/workers.json and .md.

    python benchmarks/workers.py [--images 1000] [--epochs 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import cpu_name, write_results
from torch.utils.data import DataLoader
from train import make_data

from steelflow import train
from steelflow.config import load
from steelflow.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]


def epoch_seconds(loader: DataLoader, epochs: int) -> tuple[list[float], list[float]]:
    """Seconds of each epoch and of its first batch, the workers' start included."""
    whole, first = [], []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        start = time.perf_counter()
        for i, _ in enumerate(loader):
            if i == 0:
                first.append(time.perf_counter() - start)
        whole.append(time.perf_counter() - start)
    return whole, first


def measure(name: str, data: Path, workers: int, context: str, epochs: int) -> dict:
    overrides = {"machine.workers": workers, "classifier.pretrained": "none"}
    config = load(ROOT / "config.yaml", overrides)
    task = TASKS[name](config, 0)
    paths = (data / "raw/train_images", data / "masks", data / "split.csv")
    loader, _ = train.make_loaders(task, *paths, torch.device("cpu"), data)
    row = {}
    for persistent in (True, False):
        kept = DataLoader(
            loader.dataset,
            batch_size=loader.batch_size,
            sampler=loader.sampler,
            drop_last=loader.drop_last,
            num_workers=workers,
            persistent_workers=persistent,
            multiprocessing_context=context,
        )
        whole, first = epoch_seconds(kept, epochs)
        row["persistent" if persistent else "fresh"] = {"epoch_s": whole, "first_batch_s": first}
    row["images"] = len(loader.dataset)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="synthetic train images")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    results = {"machine": cpu_name(), "torch": torch.__version__, "rows": {}}
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder)
        make_data(data, seed=0, n_train=args.images)
        for context in ("fork", "spawn"):
            for workers in (1, 2):
                for name in TASKS:
                    key = f"{name}, {workers} worker(s), {context}"
                    results["rows"][key] = measure(name, data, workers, context, args.epochs)
                    print(key, results["rows"][key], flush=True)
    write_results("workers", results, markdown(results))


def markdown(results: dict) -> str:
    def seconds(values: list[float]) -> str:
        return " / ".join(f"{v:.2f}" for v in values)

    lines = [
        f"Loader workers across epochs ({results['machine']}, torch {results['torch']}): "
        "seconds of each epoch of the data pipeline alone, and of each epoch's first "
        "batch, with the workers kept alive (persistent, the epoch handed with each index) "
        "or started afresh each epoch:",
        "",
        "| network, workers, start | images | epochs, persistent | epochs, fresh "
        "| first batch, persistent | first batch, fresh |",
        "|---|---|---|---|---|---|",
    ]
    for key, r in results["rows"].items():
        p, f = r["persistent"], r["fresh"]
        lines.append(
            f"| {key} | {r['images']} | {seconds(p['epoch_s'])} | {seconds(f['epoch_s'])} "
            f"| {seconds(p['first_batch_s'])} | {seconds(f['first_batch_s'])} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
