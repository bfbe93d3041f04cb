"""Post-processing tuned on the validation fold, from one pass of both networks.

The pass records, per validation image, the classifier's defect probability
and, per class and pixel threshold, the predicted area and its overlap with
the truth. Every combination of threshold, minimum area and classifier gate is
then scored from those numbers alone, never by running the networks again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm import tqdm

from steelflow.io import CLASSES
from steelflow.masks import MaskCache
from steelflow.metrics import dice
from steelflow.predict import Predictor
from steelflow.report import class_colour, save


@dataclass
class Evidence:
    """One inference pass over the validation images (N images, T pixel thresholds)."""

    defect_prob: np.ndarray  # (N,)
    area: np.ndarray  # (N, C, T) predicted pixels above each threshold
    overlap: np.ndarray  # (N, C, T) of those, pixels in the true mask
    truth: np.ndarray  # (N, C) true mask areas


def gather(
    predictor: Predictor,
    images_dir: Path,
    cache: MaskCache,
    image_ids: list[str],
    pixel_grid: list[float],
    batch_size: int,
) -> Evidence:
    """Run both networks once over ``image_ids`` and keep what the search needs."""
    grid, order = torch.sort(torch.tensor(pixel_grid, dtype=torch.float32))
    probs, areas, overlaps, truths = [], [], [], []
    for start in tqdm(range(0, len(image_ids), batch_size), desc="validation pass", unit="batch"):
        ids = image_ids[start : start + batch_size]
        views = [predictor.read(images_dir / i) for i in ids]
        probs.append(predictor.defect_prob(views))
        truth = torch.from_numpy(np.stack([cache[i] for i in ids])).bool()  # (n, C, H, W)
        area, overlap = areas_above(predictor.mask_prob(views), truth, grid)
        areas.append(area[..., torch.argsort(order)].numpy())  # back to the config's order
        overlaps.append(overlap[..., torch.argsort(order)].numpy())
        truths.append(truth.sum(dim=(-2, -1)).numpy())
    return Evidence(
        np.concatenate(probs),
        np.concatenate(areas),
        np.concatenate(overlaps),
        np.concatenate(truths),
    )


def areas_above(prob: torch.Tensor, truth: torch.Tensor, grid: torch.Tensor):
    """Pixels above each threshold of the ascending ``grid``, and how many of them are true.

    One pass: each pixel is binned by how many thresholds it exceeds, and the
    counts per bin, summed from the top, give every threshold at once.
    Shapes: prob, truth (n, C, H, W); returns two (n, C, T) tensors.
    """
    n, classes, bins = prob.shape[0], prob.shape[1], len(grid) + 1
    exceeded = torch.bucketize(prob.contiguous(), grid)  # thresholds strictly below each pixel
    index = exceeded + bins * torch.arange(n * classes).view(n, classes, 1, 1)

    def above(selected: torch.Tensor) -> torch.Tensor:
        counts = torch.bincount(selected, minlength=n * classes * bins).view(n, classes, bins)
        return counts.flip(-1).cumsum(-1).flip(-1)[..., 1:]  # above threshold j: bins > j

    return above(index.flatten()), above(index[truth])


def class_dice(ev: Evidence, k: int, gates, min_areas) -> np.ndarray:
    """Mean Dice of class index ``k`` for every (gate, pixel threshold, min area): (G, T, A)."""
    area, overlap = ev.area[:, k], ev.overlap[:, k]  # (N, T)
    truth = ev.truth[:, k][:, None]  # (N, 1)
    kept = dice(overlap, area, truth)  # (N, T)
    dropped = dice(0, 0, truth)  # (N, 1): the mask emptied
    on = ev.defect_prob[:, None, None, None] >= np.asarray(gates)[None, :, None, None]  # (N,G,1,1)
    big = area[:, None, :, None] >= np.asarray(min_areas)[None, None, None, :]  # (N, 1, T, A)
    keep = on & big
    return np.where(keep, kept[:, None, :, None], dropped[:, None, :, None]).mean(axis=0)


def search(ev: Evidence, cfg: dict) -> dict:
    """Choose the gate and, per class, threshold and minimum area; switch weak classes off.

    A class stays on only with at least ``min_support`` validation images that
    have it and a gain of at least ``min_gain`` Dice over predicting it empty.
    Among settings within ``tie_tolerance`` of the best, the simplest wins:
    the lowest gate, then the smallest minimum area, then the threshold nearest 0.5.
    """
    gates, pixels, areas = cfg["gates"], cfg["pixel_thresholds"], cfg["min_areas"]
    n = len(ev.defect_prob)
    empty = (ev.truth == 0).mean(axis=0)  # (C,) Dice of predicting the class empty
    support = (ev.truth > 0).sum(axis=0)
    tables = [class_dice(ev, k, gates, areas) for k in range(len(CLASSES))]  # (G, T, A) each
    simplicity = np.abs(np.asarray(pixels) - 0.5)[:, None] * 1e-3 + np.arange(len(areas))[None, :]

    def best_setting(table: np.ndarray) -> tuple[int, int, float]:
        near = table >= table.max() - cfg["tie_tolerance"]
        t, a = np.unravel_index(np.where(near, simplicity, np.inf).argmin(), table.shape)
        return int(t), int(a), float(table[t, a])

    plans = []
    for g in range(len(gates)):
        chosen = []
        for k in range(len(CLASSES)):
            t, a, dice = best_setting(tables[k][g])
            on = bool(support[k] >= cfg["min_support"] and dice - empty[k] >= cfg["min_gain"])
            chosen.append((t, a, dice if on else float(empty[k]), on))
        plans.append((float(np.mean([c[2] for c in chosen])), g, chosen))
    top = max(p[0] for p in plans)
    score, g, chosen = next(p for p in plans if p[0] >= top - cfg["tie_tolerance"])
    return {
        "classifier_gate": float(gates[g]),
        "val_images": n,
        "val_dice": score,
        "val_dice_empty": float(empty.mean()),
        "classes": {
            str(k + 1): {
                "enabled": on,
                "threshold": float(pixels[t]),
                "min_area": int(areas[a]),
                "val_dice": dice,
                "val_dice_empty": float(empty[k]),
                "support": int(support[k]),
            }
            for k, (t, a, dice, on) in enumerate(chosen)
        },
    }


def plot_search(ev: Evidence, cfg: dict, result: dict, path: Path) -> None:
    """Per class: validation Dice against pixel threshold, one line per minimum area."""
    gate = [result["classifier_gate"]]
    fig, axes = plt.subplots(1, len(CLASSES), figsize=(17, 3.8), sharey=False)
    shown = sorted({0, *cfg["min_areas"][:: max(1, len(cfg["min_areas"]) // 4)]})
    for ax, cls in zip(axes, CLASSES, strict=True):
        k, chosen = cls - 1, result["classes"][str(cls)]
        table = class_dice(ev, k, gate, cfg["min_areas"])[0]  # (T, A)
        for a, area in enumerate(cfg["min_areas"]):
            if area in shown or area == chosen["min_area"]:
                style = "-" if area == chosen["min_area"] else ":"
                ax.plot(cfg["pixel_thresholds"], table[:, a], style, label=f"min area {area}")
        ax.axhline(chosen["val_dice_empty"], color="gray", linestyle="--", label="always empty")
        if chosen["enabled"]:
            ax.plot(chosen["threshold"], chosen["val_dice"], "o", color="black")
        state = "on" if chosen["enabled"] else "off"
        ax.set_title(
            f"class {cls}: {state}, {chosen['support']} val images with it",
            color=class_colour(cls),
            fontsize=10,
        )
        ax.set_xlabel("pixel threshold")
        ax.legend(fontsize=7)
    axes[0].set_ylabel(f"validation Dice (gate {gate[0]:.2f})")
    save(fig, path)
