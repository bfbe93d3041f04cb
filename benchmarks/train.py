"""Training speed of both networks at the default config: data pipeline vs model step.

For each network, in its own process (so peak memory is its own): images per
second of the data pipeline alone (loading, decoding, cropping, augmenting),
of the model step alone (forward, loss, backward, Adam, on a batch already in
memory), and of real training steps (both), in fp32 and the config's precision;
and peak resident memory. Writes benchmarks/results/train.json and train.md.

    python benchmarks/train.py [--batches 12]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

import torch
from common import cpu_name, write_results
from torch.utils.data import DataLoader, RandomSampler

from steelflow import synthetic, train
from steelflow.config import load
from steelflow.dataset import EpochSampler
from steelflow.device import memory_format, pick_precision
from steelflow.masks import MaskCache, build
from steelflow.split import assign_folds
from steelflow.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]


def make_data(folder: Path, seed: int, n_train: int = 240, n_test: int = 1, workers: int = 2):
    """A synthetic data set in ``folder``: raw/ in the Kaggle layout, masks/ and split.csv."""
    (folder / "raw").mkdir()
    synthetic.generate(
        folder / "raw", n_train, n_test, seed=seed, preset="clear", jpeg_quality=95, workers=workers
    )
    build(folder / "raw/train.csv", folder / "raw/train_images", folder / "masks")
    folds = assign_folds(MaskCache(folder / "masks").classes(), 5, seed)
    folds.to_csv(folder / "split.csv", index=False)


def images_per_s(step, batches: int, batch_size: int) -> float:
    step(), step()  # warm-up: the first steps also build the kernels
    start = time.perf_counter()
    for _ in range(batches):
        step()
    return batches * batch_size / (time.perf_counter() - start)


def endless(loader: DataLoader):
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def network_speeds(
    task, loader: DataLoader, device, precisions: dict, batches: int, ema: bool = False
) -> dict:
    """Images/s of the data pipeline alone, and per precision (``{label: precision}``) of
    the model step alone (a batch already on the device) and of real training steps;
    with ``ema``, also of the model step with the network's weight average (None where
    its ``ema_decay`` is 0), as training takes it."""
    fmt = memory_format(task.config["train"]["channels_last"])
    size = loader.batch_size
    stream = endless(loader)
    row = {"batch_size": size}
    row["data_images_per_s"] = images_per_s(lambda: next(stream), batches, size)
    batch = [t.to(device) for t in next(stream)]
    row["input"] = "x".join(map(str, batch[0].shape[-2:]))
    for label, precision in precisions.items():
        dtype = pick_precision(precision, device)
        model = task.model().to(device, memory_format=fmt).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=task.cfg["lr"])
        schedule = train.lr_schedule(optimizer, task.cfg, len(loader))
        scaler = train.loss_scaler(device, dtype)  # the engine's step
        step = train.Step(model, task, optimizer, schedule, scaler, device, dtype, fmt)
        row[f"model_images_per_s_{label}"] = images_per_s(
            lambda step=step: step(*batch), batches, size
        )
        row[f"train_images_per_s_{label}"] = images_per_s(
            lambda step=step: step(*next(stream)), batches, size
        )
        if ema:
            average = train.averaged(model, task.cfg)
            step = train.Step(model, task, optimizer, schedule, scaler, device, dtype, fmt, average)
            row[f"model_ema_images_per_s_{label}"] = average and images_per_s(
                lambda step=step: step(*batch), batches, size
            )
        row[f"dtype_{label}"] = str(dtype).replace("torch.", "") if dtype else "fp32"
    return row


def measure(name: str, folder: str, batches: int, queue) -> None:
    folder = Path(folder)
    config = load(ROOT / "config.yaml", {"classifier.pretrained": "none"})  # speed: any weights
    task = TASKS[name](config, 0)
    torch.manual_seed(0)
    dataset, _ = task.datasets(
        folder / "raw/train_images", MaskCache(folder / "masks"), folder / "split.csv", folder
    )
    loader = DataLoader(
        dataset,
        batch_size=task.cfg["batch_size"],
        sampler=EpochSampler(RandomSampler(dataset)),
        num_workers=config["machine"]["workers"],
    )
    precisions = {"fp32": "fp32", "config": config["train"]["precision"]}
    row = network_speeds(task, loader, torch.device("cpu"), precisions, batches)
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((name, row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=12)
    args = parser.parse_args()
    results = {
        "machine": f"{cpu_name()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "networks": {},
    }
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as folder:
        make_data(Path(folder), seed=0)
        for name in ("classifier", "unet"):
            queue = ctx.Queue()
            process = ctx.Process(target=measure, args=(name, folder, args.batches, queue))
            process.start()
            network, row = queue.get()
            process.join()
            row["data_to_model_ratio"] = row["data_images_per_s"] / row["model_images_per_s_config"]
            results["networks"][network] = row
    write_results("train", results, markdown(results))


def markdown(results: dict) -> str:
    lines = [
        f"Training speed, images/s at the default config ({results['machine']}, "
        f"torch {results['torch']}), one run per network:",
        "",
        "| network | input | batch | data pipeline | model step fp32 | model step, "
        "config precision | training fp32 | training, config precision | data / model | "
        "peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["networks"].items():
        lines.append(
            f"| {name} | {r['input']} | {r['batch_size']} | {r['data_images_per_s']:.0f} | "
            f"{r['model_images_per_s_fp32']:.1f} | {r['model_images_per_s_config']:.1f} "
            f"({r['dtype_config']}) | {r['train_images_per_s_fp32']:.1f} | "
            f"{r['train_images_per_s_config']:.1f} | {r['data_to_model_ratio']:.1f}x | "
            f"{r['peak_rss_mb']:.0f} MB |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
