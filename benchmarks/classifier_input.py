"""Train/serve skew of the classifier: validation AUC with the pixels it trained on
(libjpeg's 1/4-size decode, what prediction now uses) against an area resize of the
1/2-size decode (what prediction used before), on the models of a default run.

    python benchmarks/classifier_input.py     # after `make run`
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from common import cpu_name, write_results

from steelflow.config import load
from steelflow.dataset import read_gray, split_ids
from steelflow.masks import MaskCache
from steelflow.metrics import roc_auc
from steelflow.predict import Predictor

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    config = load(ROOT / "config.yaml")
    models = [ROOT / "models/classifier_f0.pt"], [ROOT / "models/unet_f0.pt"]
    predictor = Predictor(*models, config["train"])
    scale = predictor.classifier_cfg["scale"]
    _, val_ids = split_ids(ROOT / "results/split.csv", config["train"]["folds"][0])
    labels = MaskCache(ROOT / "results/masks").classes().loc[val_ids].max(axis=1).to_numpy()
    images = ROOT / "resources/raw/train_images"
    size = (round(1600 * scale), round(256 * scale))
    paths = {
        "trained on (reduced decode)": lambda p: read_gray(p, scale),
        "area resize of the 1/2 decode": lambda p: cv2.resize(
            read_gray(p, 0.5), size, interpolation=cv2.INTER_AREA
        ),
    }
    results = {"cpu": cpu_name(), "images": len(val_ids)}
    pixels = {}
    for name, read in paths.items():
        grays = [read(images / i) for i in val_ids]
        pixels[name] = np.stack(grays).astype(int)
        with torch.no_grad():
            scores = np.concatenate(
                [
                    predictor.class_prob([{scale: g} for g in grays[i : i + 32]]).max(axis=1)
                    for i in range(0, len(grays), 32)
                ]
            )
        results[name] = roc_auc(scores, labels)
    a, b = pixels.values()
    results["mean_abs_pixel_difference"] = float(np.abs(a - b).mean())
    results["pixels_that_differ"] = float((a != b).mean())
    lines = [
        f"Classifier validation AUC by input path ({results['images']} validation images, "
        f"{results['cpu']}):",
        "",
        "| input path | AUC |",
        "|---|---|",
        *[f"| {name} | {results[name]:.4f} |" for name in paths],
        "",
        f"The two paths differ on {results['pixels_that_differ']:.0%} of pixels, by "
        f"{results['mean_abs_pixel_difference']:.2f} gray levels on average.",
    ]
    write_results("classifier_input", results, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
