"""Post-processing tuned out of fold, from one pass of both networks per fold.

Each trained fold's models predict that fold's validation images, so every
image is predicted by models that never trained on it. The pass records, per
image, the classifier's probability of each class and, per non-overlap option,
class, pixel threshold and minimum component area, the predicted area and its
overlap with the truth. Every combination of those, minimum area and classifier
gate is then scored from these numbers alone, never by running the networks again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm import tqdm

from steelflow.dataset import split_ids
from steelflow.io import CLASSES
from steelflow.masks import MaskCache
from steelflow.metrics import dice
from steelflow.predict import Predictor, components, exclusive
from steelflow.report import class_colour, save


@dataclass
class Evidence:
    """One inference pass over validation images: N images, O non-overlap options,
    T pixel thresholds, K minimum component areas."""

    image_ids: np.ndarray  # (N,)
    class_prob: np.ndarray  # (N, C) the classifier's
    area: np.ndarray  # (N, O, C, T, K) predicted pixels above each threshold
    overlap: np.ndarray  # (N, O, C, T, K) of those, pixels in the true mask
    truth: np.ndarray  # (N, C) true mask areas

    @classmethod
    def concat(cls, parts: list[Evidence]) -> Evidence:
        """The evidence of several passes (one per fold) as one."""
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__annotations__))


def gather(
    predictor: Predictor, images_dir: Path, cache: MaskCache, image_ids: list[str], cfg: dict
) -> Evidence:
    """Run both networks once over ``image_ids`` and keep what the search (``cfg``, the
    tune section) needs."""
    grid = torch.tensor(cfg["pixel_thresholds"], dtype=torch.float32)
    minimums = np.asarray(cfg["min_component_areas"])
    probs, areas, overlaps, truths = [], [], [], []
    batches = predictor.batches(
        image_ids, lambda i: predictor.read(images_dir / i), cfg["batch_size"]
    )
    total = -(-len(image_ids) // cfg["batch_size"])
    for ids, views in tqdm(batches, total=total, desc="validation pass", unit="batch"):
        probs.append(predictor.class_prob(views))
        truth = torch.from_numpy(np.stack([cache[i] for i in ids])).bool()  # (n, C, H, W)
        prob = predictor.mask_prob(views).cpu()
        counted = [
            areas_above(exclusive(prob) if rule else prob, truth, grid, minimums)
            for rule in cfg["non_overlap"]
        ]
        areas.append(np.stack([area for area, _ in counted], axis=1))
        overlaps.append(np.stack([overlap for _, overlap in counted], axis=1))
        truths.append(truth.sum(dim=(-2, -1)).numpy())
    return Evidence(
        np.asarray(image_ids),
        np.concatenate(probs),
        np.concatenate(areas),
        np.concatenate(overlaps),
        np.concatenate(truths),
    )


def out_of_fold(
    predictors: Callable[[int], Predictor],
    folds: list[int],
    split: Path,
    images_dir: Path,
    cache: MaskCache,
    cfg: dict,
) -> Evidence:
    """The evidence of every image of ``folds``, each predicted by its own fold's
    models (``predictors(fold)``): the validation folds of the trained models."""
    return Evidence.concat(
        [
            gather(predictors(fold), images_dir, cache, split_ids(split, fold, cache)[1], cfg)
            for fold in folds
        ]
    )


def areas_above(prob: torch.Tensor, truth: torch.Tensor, grid: torch.Tensor, minimums):
    """Pixels above each threshold of ``grid``, and how many of them are true, counting
    only components of at least each of ``minimums`` pixels.

    Shapes: prob, truth (n, C, H, W); returns two (n, C, T, K) arrays. Without
    components to drop, one pass gives every threshold: each pixel is binned by
    how many thresholds it exceeds, and the counts per bin, summed from the top,
    give the area above each. Components are counted where a mask is not empty,
    inside the box that holds the mask at the lowest threshold.
    """
    n, classes, bins = prob.shape[0], prob.shape[1], len(grid) + 1
    ascending, order = torch.sort(grid)
    exceeded = torch.bucketize(prob.contiguous(), ascending)  # thresholds strictly below
    index = exceeded + bins * torch.arange(n * classes).view(n, classes, 1, 1)

    def above(selected: torch.Tensor) -> np.ndarray:
        counts = torch.bincount(selected, minlength=n * classes * bins).view(n, classes, bins)
        ranked = counts.flip(-1).cumsum(-1).flip(-1)[..., 1:]  # above threshold j: bins > j
        return ranked[..., torch.argsort(order)].numpy()  # back to the grid's order

    whole = above(index.flatten()), above(index[truth])
    area, overlap = (np.repeat(w[..., None], len(minimums), axis=-1) for w in whole)
    if not np.any(minimums):
        return area, overlap
    for i, k in zip(*np.nonzero(whole[0].any(axis=-1)), strict=True):
        box = bounding_box((prob[i, k] > ascending[0]).numpy())
        inside, true = prob[i, k][box], truth[i, k][box].numpy()
        for t in np.flatnonzero(whole[0][i, k]):
            labels, sizes = components((inside > grid[t]).numpy().view(np.uint8))
            kept = sizes[None, 1:] >= minimums[:, None]  # (K, components)
            area[i, k, t] = kept @ sizes[1:]
            if whole[1][i, k, t]:  # some predicted pixels are true: which components hold them
                overlap[i, k, t] = kept @ np.bincount(labels[true], minlength=len(sizes))[1:]
    return area, overlap


def bounding_box(mask: np.ndarray) -> tuple[slice, slice]:
    """The smallest (rows, columns) slices that hold every true pixel of a non-empty mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def class_dice(ev: Evidence, o: int, k: int, gates, min_areas) -> np.ndarray:
    """Mean Dice of class index ``k`` with non-overlap option ``o``, for every (gate,
    pixel threshold, min area, min component area): (G, T, A, K)."""
    area, overlap = ev.area[:, o, k], ev.overlap[:, o, k]  # (N, T, K)
    truth = ev.truth[:, k][:, None, None]  # (N, 1, 1)
    kept = dice(overlap, area, truth)[:, None, :, None, :]  # (N, 1, T, 1, K)
    dropped = dice(0, 0, truth)[:, None, :, None]  # (N, 1, 1, 1, 1): the mask emptied
    gate = np.asarray(gates)[None, :, None, None, None]
    on = ev.class_prob[:, k, None, None, None, None] >= gate  # (N, G, 1, 1, 1)
    big = area[:, None, :, None, :] >= np.asarray(min_areas)[None, None, None, :, None]
    return np.where(on & big, kept, dropped).mean(axis=0)


def area_bounds(cache: MaskCache, quantile: float | None) -> np.ndarray:
    """(C,) the largest minimum area the search may give each class: the ``quantile``
    of the class's true mask areas over every image of ``cache`` (inf where the class
    has no mask, or ``quantile`` is None)."""
    if quantile is None:
        return np.full(len(CLASSES), np.inf)
    areas = cache.areas().T  # (C, images)
    return np.array([np.quantile(a[a > 0], quantile) if a.any() else np.inf for a in areas])


def search(ev: Evidence, cfg: dict, bounds: np.ndarray | None = None) -> dict:
    """Choose the non-overlap rule and, per class, gate, threshold, minimum area (at
    most the class's entry of ``bounds``, see ``area_bounds``) and minimum component
    area; switch weak classes off.

    A class stays on only with at least ``min_support`` validation images that
    have it and a gain of at least ``min_gain`` Dice over predicting it empty.
    Among settings within ``tie_tolerance`` of the best, the simplest wins: the
    non-overlap option listed first, then per class the lowest gate, the smallest
    minimum area, the smallest minimum component area, the threshold nearest 0.5.
    """
    gates, pixels = cfg["gates"], cfg["pixel_thresholds"]
    areas, pieces = cfg["min_areas"], cfg["min_component_areas"]
    bounds = np.full(len(CLASSES), np.inf) if bounds is None else bounds
    n = len(ev.class_prob)
    empty = (ev.truth == 0).mean(axis=0)  # (C,) Dice of predicting the class empty
    support = (ev.truth > 0).sum(axis=0)
    rank = np.arange(len(gates) * len(areas) * len(pieces)).reshape(len(gates), 1, len(areas), -1)
    simplicity = np.abs(np.asarray(pixels) - 0.5)[:, None, None] * 1e-3 + rank  # (G, T, A, K)

    def best_setting(table: np.ndarray) -> tuple[tuple[int, int, int, int], float]:
        near = table >= table.max() - cfg["tie_tolerance"]
        best = np.unravel_index(np.where(near, simplicity, np.inf).argmin(), table.shape)
        return tuple(int(i) for i in best), float(table[best])

    plans = []
    for o in range(len(cfg["non_overlap"])):
        chosen = []
        for k in range(len(CLASSES)):
            table = class_dice(ev, o, k, gates, areas)
            table[:, :, np.asarray(areas) > max(bounds[k], min(areas))] = -np.inf
            setting, dice = best_setting(table)
            on = bool(support[k] >= cfg["min_support"] and dice - empty[k] >= cfg["min_gain"])
            chosen.append((setting, dice if on else float(empty[k]), on))
        plans.append((float(np.mean([c[1] for c in chosen])), o, chosen))
    top = max(p[0] for p in plans)
    score, o, chosen = next(p for p in plans if p[0] >= top - cfg["tie_tolerance"])
    return {
        "non_overlap": bool(cfg["non_overlap"][o]),
        "val_images": n,
        "val_dice": score,
        "val_dice_empty": float(empty.mean()),
        "classes": {
            str(k + 1): {
                "enabled": on,
                "gate": float(gates[g]),
                "threshold": float(pixels[t]),
                "min_area": int(areas[a]),
                "min_area_bound": None if np.isinf(bounds[k]) else float(bounds[k]),
                "min_component_area": int(pieces[c]),
                "val_dice": dice,
                "val_dice_empty": float(empty[k]),
                "support": int(support[k]),
            }
            for k, ((g, t, a, c), dice, on) in enumerate(chosen)
        },
    }


def plot_search(ev: Evidence, cfg: dict, result: dict, path: Path) -> None:
    """Per class: validation Dice against pixel threshold, one line per minimum area
    (at the chosen non-overlap rule, and the class's chosen gate and minimum component
    area; a class switched off without a gate, so its curves show what the U-Net alone
    would score)."""
    o = cfg["non_overlap"].index(result["non_overlap"])
    fig, axes = plt.subplots(1, len(CLASSES), figsize=(17, 3.8), sharey=False)
    shown = sorted({0, *cfg["min_areas"][:: max(1, len(cfg["min_areas"]) // 4)]})
    for ax, cls in zip(axes, CLASSES, strict=True):
        k, chosen = cls - 1, result["classes"][str(cls)]
        c = cfg["min_component_areas"].index(chosen["min_component_area"])
        gate = chosen["gate"] if chosen["enabled"] else 0.0
        table = class_dice(ev, o, k, [gate], cfg["min_areas"])[0, :, :, c]  # (T, A)
        for a, area in enumerate(cfg["min_areas"]):
            if area in shown or area == chosen["min_area"]:
                style = "-" if area == chosen["min_area"] else ":"
                ax.plot(cfg["pixel_thresholds"], table[:, a], style, label=f"min area {area}")
        ax.axhline(chosen["val_dice_empty"], color="gray", linestyle="--", label="always empty")
        if chosen["enabled"]:
            ax.plot(chosen["threshold"], chosen["val_dice"], "o", color="black")
        state = f"on, gate {gate:.2f}" if chosen["enabled"] else "off (curves without a gate)"
        ax.set_title(
            f"class {cls}: {state}, {chosen['support']} val images",
            color=class_colour(cls),
            fontsize=10,
        )
        ax.set_xlabel("pixel threshold")
        ax.legend(fontsize=7)
    rule = ", non-overlap" if result["non_overlap"] else ""
    axes[0].set_ylabel(f"out-of-fold Dice{rule}")
    save(fig, path)
