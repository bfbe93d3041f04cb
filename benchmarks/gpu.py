"""The Kaggle config on a GPU: training and prediction speed at Kaggle scale.

One command on a CUDA machine; it downloads nothing (synthetic data, no ImageNet
weights: the speed is the same):

    python benchmarks/gpu.py [--train 3000] [--test 5506]

1. A synthetic data set in the Kaggle layout: --train images, and --test test
   images (5,506, as many as Kaggle's test set); its mask cache and folds.
2. Per network at configs/kaggle.yaml settings (full resolution, bf16 where the
   GPU has it, channels_last, 8 loader workers): images/s of the images' one
   decoding pass, of the data pipeline alone, of the model step alone and of real
   training steps; of validation; peak GPU memory; and from these the estimated
   time of the config's epochs on Kaggle's 12,568 train images, per fold.
3. One epoch of each network (fold 0) and tune on its validation fold; then the
   test images end to end (JPEG files in, RLE out) against the forward passes
   alone (and, with one model, against the device's and the CPU's parts of
   prediction each alone: ``predict.measure``), with one model (decoding and RLE
   encoding on the device, then on the CPU) and as the Kaggle config predicts
   (every fold's models, flip TTA: the fold-0 models stand in for the others),
   every image through both networks (every class on, no gate: the slowest case);
   and JPEG decoding by libjpeg in the loader against nvJPEG on the GPU.

Writes benchmarks/results/gpu.json after each section (a run cut short keeps
what it measured) and gpu.md at the end. On an H200 the defaults took about 7
minutes, ``--train 1000 --batches 20`` about 4.5 (the five-fold prediction is
the last 2.5), before the two parts of prediction were timed alone (about 30 s
more, an estimate). On a CPU, ``--device cpu --train 60 --test 24 --batches 2``
checks the script in a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch
from common import cpu_name, write_json, write_results
from predict import measure
from train import make_data, network_speeds

from steelflow import train
from steelflow.config import load
from steelflow.device import memory_format, pick_device, pick_precision
from steelflow.masks import MaskCache
from steelflow.predict import Predictor, Thresholds
from steelflow.tasks import TASKS
from steelflow.tune import out_of_fold, search

ROOT = Path(__file__).resolve().parents[1]
KAGGLE_TRAIN_IMAGES = 12_568


def kaggle_config(device: str, workers: int | None) -> dict:
    """configs/kaggle.yaml over config.yaml, without ImageNet weights, on ``device``."""
    overrides = {
        "classifier.pretrained": "none",
        "unet.pretrained": "none",
        "train.device": device,
    }
    if workers is not None:
        overrides["machine.workers"] = workers
    return load([ROOT / "config.yaml", ROOT / "configs/kaggle.yaml"], overrides)


def peak_gpu_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None


def training(name: str, config: dict, data: Path, batches: int) -> dict:
    """Speeds of one network at the config's settings, and its estimated epochs."""
    task = TASKS[name](config, 0)
    device = pick_device(config["train"]["device"])
    start = time.perf_counter()
    loader, val_loader = train.make_loaders(
        task, data / "raw/train_images", data / "masks", data / "split.csv", device, data
    )
    decode_seconds = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    precision = {"config": config["train"]["precision"]}
    row = network_speeds(task, loader, device, precision, batches, ema=True)
    row["peak_gpu_mb"] = peak_gpu_mb(device)
    row["decode_once_images_per_s"] = len(loader.dataset.decoded.rows) / decode_seconds
    dtype = pick_precision(config["train"]["precision"], device)
    fmt = memory_format(config["train"]["channels_last"])
    model = task.model().to(device, memory_format=fmt)
    start = time.perf_counter()
    train.evaluate(model, val_loader, task, device, dtype, fmt)
    row["val_images_per_s"] = len(val_loader.dataset) / (time.perf_counter() - start)
    row["data_to_model_ratio"] = row["data_images_per_s"] / row["model_images_per_s_config"]
    val = KAGGLE_TRAIN_IMAGES / config["split"]["folds"]  # one fold validates
    epoch = (KAGGLE_TRAIN_IMAGES - val) / row["train_images_per_s_config"]
    epoch += val / row["val_images_per_s"]
    row["epochs"] = task.cfg["epochs"]
    row["estimated_minutes_per_fold"] = task.cfg["epochs"] * epoch / 60
    return row


def trained_models(config: dict, data: Path, out: Path) -> dict[str, Path]:
    """One epoch of each network on fold 0: checkpoints to predict with."""
    paths = {}
    for name in ("classifier", "unet"):
        short = {**config, name: {**config[name], "epochs": 1}}
        paths[name] = out / f"{name}_f0.pt"
        outputs = {
            "out": paths[name],
            "history": out / f"{name}.csv",
            "curves": out / f"{name}.png",
        }
        train.run(
            name, 0, short, data / "raw/train_images", data / "masks", data / "split.csv", outputs
        )
    return paths


def tuned(config: dict, models: dict[str, Path], data: Path, out: Path) -> Thresholds:
    """Thresholds tuned on fold 0's validation images (tune's inference pass on the GPU),
    with every class on and no gate: every image goes through both networks, the
    slowest case (after one epoch, tune may switch classes off)."""
    predictor = Predictor([models["classifier"]], [models["unet"]], config["train"])
    evidence = out_of_fold(
        lambda fold: predictor,
        [0],
        data / "split.csv",
        data / "raw/train_images",
        MaskCache(data / "masks"),
        config["tune"],
    )
    (out / "thresholds.json").write_text(json.dumps(search(evidence, config["tune"])))
    found = Thresholds.load(out / "thresholds.json")
    return replace(found, enabled=[True] * len(found.enabled), gate=[0.0] * len(found.gate))


def decoding(paths: list[Path], device: torch.device) -> dict:
    """Images/s of JPEG decoding: libjpeg at the U-Net's full scale, one thread and one
    per core, and (on a GPU) nvJPEG in batches of 64, with how far its pixels are from
    libjpeg's."""
    files = [np.fromfile(p, np.uint8) for p in paths]

    def libjpeg(data):
        return cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)

    row = {}
    start = time.perf_counter()
    list(map(libjpeg, files))
    row["libjpeg_1_thread"] = len(files) / (time.perf_counter() - start)
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        start = time.perf_counter()
        list(pool.map(libjpeg, files, chunksize=16))
        row["libjpeg_all_cores"] = len(files) / (time.perf_counter() - start)
    if device.type == "cuda":
        from torchvision.io import ImageReadMode, decode_jpeg

        tensors = [torch.from_numpy(f) for f in files]
        decode_jpeg(tensors[:64], mode=ImageReadMode.GRAY, device=device)  # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(0, len(tensors), 64):
            decode_jpeg(tensors[i : i + 64], mode=ImageReadMode.GRAY, device=device)
        torch.cuda.synchronize()
        row["nvjpeg"] = len(files) / (time.perf_counter() - start)
        first = decode_jpeg(tensors[:256], mode=ImageReadMode.GRAY, device=device)
        diffs = [  # nvJPEG's pixels against libjpeg's
            np.abs(got[0].cpu().numpy().astype(np.int16) - libjpeg(data))
            for data, got in zip(files[:256], first, strict=True)
        ]
        row["nvjpeg_difference_mean"] = float(np.mean([d.mean() for d in diffs]))
        row["nvjpeg_difference_max"] = int(max(d.max() for d in diffs))
    return row


def save(results: dict, done: str) -> None:
    """Record when ``done`` finished (seconds since the start) and save what is measured
    so far (gpu.json): a run cut short by a time limit keeps its figures."""
    results.setdefault("seconds", {})[done] = round(time.perf_counter() - START, 1)
    write_json("gpu", results)
    print(f"[{results['seconds'][done]:.0f} s] {done} done", flush=True)


START = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=3000, help="synthetic train images")
    parser.add_argument("--test", type=int, default=5506, help="synthetic test images")
    parser.add_argument("--batches", type=int, default=30, help="batches per speed measurement")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workers", type=int, help="loader workers (default: the config's)")
    args = parser.parse_args()
    config = kaggle_config(args.device, args.workers)
    device = pick_device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else cpu_name()
    results = {"device": name, "torch": torch.__version__, "train_images": args.train}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        data = work / "data"
        data.mkdir()
        make_data(data, 0, args.train, args.test, os.cpu_count())
        paths = sorted((data / "raw/test_images").glob("*.jpg"))
        results["test_images"] = len(paths)
        save(results, "data")
        results["training"] = {n: training(n, config, data, args.batches) for n in TASKS}
        save(results, "training")
        models = trained_models(config, data, work)
        thresholds = tuned(config, models, data, work)
        save(results, "one epoch and tune")
        results["decoding"] = decoding(paths, device)
        save(results, "decoding")
        folds = len(config["train"]["folds"])
        batch = config["predict"]["batch_size"]
        results["prediction"] = {}
        for label, copies, tta, on_device in (
            ("one model", 1, "none", True),
            ("one model, decoding and RLE on the CPU", 1, "none", False),
            (f"{folds} folds, {config['predict']['tta']}", folds, config["predict"]["tta"], True),
        ):
            predictor = Predictor(
                [models["classifier"]] * copies,
                [models["unet"]] * copies,
                config["train"],
                tta,
                on_device=on_device and device.type == "cuda",
            )
            results["prediction"][label] = measure(
                predictor, thresholds, paths, batch, repeats=1, parts=copies == 1
            )
            save(results, f"prediction, {label}")
    write_results("gpu", results, markdown(results))


def figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def markdown(r: dict) -> str:
    lines = [
        f"`configs/kaggle.yaml` on {r['device']} (torch {r['torch']}), synthetic data, one run.",
        "",
        "Training, images/s (training estimate: the config's epochs on 12,568 images, "
        "a fifth of them validating):",
        "",
        "| network | input | batch | data pipeline | model step | model step with EMA | "
        "training | data / model | validation | peak GPU memory | estimated time per fold |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, t in r["training"].items():
        memory = f"{t['peak_gpu_mb'] / 1024:.1f} GiB" if t["peak_gpu_mb"] else "-"
        ema = t.get("model_ema_images_per_s_config")
        lines.append(
            f"| {name} | {t['input']} | {t['batch_size']} | {t['data_images_per_s']:.0f} | "
            f"{t['model_images_per_s_config']:.0f} ({t['dtype_config']}) | "
            f"{f'{ema:.0f}' if ema else '-'} | "
            f"{t['train_images_per_s_config']:.0f} | {t['data_to_model_ratio']:.1f}x | "
            f"{t['val_images_per_s']:.0f} | {memory} | "
            f"{t['estimated_minutes_per_fold']:.1f} min ({t['epochs']} epochs) |"
        )
    lines += [
        "",
        "Decoding the train images once per training, images/s: "
        + ", ".join(
            f"{name} {t['decode_once_images_per_s']:.0f}" for name, t in r["training"].items()
        ),
        "",
        f"Prediction of {r['test_images']} test images (JPEG files in, RLE out):",
        "",
        "| models | forward passes alone, images/s | device's part alone | CPU's part alone "
        "| end to end, images/s | end to end / forward | end to end | images past the gate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, p in r["prediction"].items():
        lines.append(
            f"| {label} | {p['images_per_s_forward']:.1f} "
            f"| {figure(p['images_per_s_device_part'])} | {figure(p['images_per_s_cpu_part'])} "
            f"| {p['images_per_s_end_to_end']:.1f} "
            f"| {p['ratio']:.2f} | {p['seconds_end_to_end']:.1f} s | {p['past_gate']} |"
        )
    d = r["decoding"]
    lines += [
        "",
        "JPEG decoding, full size, images/s: libjpeg "
        f"{d['libjpeg_1_thread']:.0f} (one thread), {d['libjpeg_all_cores']:.0f} (every core)"
        + (f"; nvJPEG {d['nvjpeg']:.0f}" if "nvjpeg" in d else ""),
    ]
    if "nvjpeg_difference_mean" in d:
        lines.append(
            f"\nnvJPEG's pixels against libjpeg's (the first 256 test images): mean absolute "
            f"difference {d['nvjpeg_difference_mean']:.3f}, at most {d['nvjpeg_difference_max']} "
            "gray levels"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
