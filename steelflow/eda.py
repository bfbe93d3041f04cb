"""Exploration of the train set: counts, mask areas and example images, as JSON and PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from steelflow import rle
from steelflow.atomic import write_json
from steelflow.images import read_gray
from steelflow.io import CLASSES
from steelflow.masks import SLOTS, MaskCache
from steelflow.report import class_colour, outline, save

H, W = rle.SHAPE

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def mask_areas(cache: MaskCache) -> pd.DataFrame:
    """Pixel area of every mask: columns ImageId, ClassId, area."""
    rows = []
    for image, slots in cache.index[SLOTS].iterrows():
        for cls, row in zip(CLASSES, slots, strict=True):
            if row >= 0:
                rows.append((image, cls, int(np.bitwise_count(cache.bits[row]).sum())))
    return pd.DataFrame(rows, columns=["ImageId", "ClassId", "area"])


def statistics(cache: MaskCache, areas: pd.DataFrame) -> dict:
    """Images, clean vs with defect, images per class, classes per image, area quantiles."""
    flags = cache.classes()
    per_image = flags.sum(axis=1)
    return {
        "images": len(flags),
        "clean": int((per_image == 0).sum()),
        "with_defect": int((per_image > 0).sum()),
        "masks": len(areas),
        "images_per_class": {str(c): int(flags[c].sum()) for c in CLASSES},
        "classes_per_image": {
            str(k): int(v) for k, v in per_image.value_counts().sort_index().items()
        },
        "area_quantiles_per_class": {
            str(c): {
                f"q{round(q * 100):02d}": float(areas.area[areas.ClassId == c].quantile(q))
                for q in QUANTILES
            }
            if (areas.ClassId == c).any()
            else None
            for c in CLASSES
        },
    }


def plot_class_balance(stats: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = ["clean"] + [f"class {c}" for c in CLASSES]
    counts = [stats["clean"]] + [stats["images_per_class"][str(c)] for c in CLASSES]
    bars = ax.bar(labels, counts, color=[(0.6, 0.6, 0.6)] + [class_colour(c) for c in CLASSES])
    ax.bar_label(bars)
    ax.margins(y=0.15)
    ax.set_ylabel("images")
    ax.set_title(f"Images per class ({stats['images']} train images)")
    save(fig, path)


def plot_defects_per_image(stats: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    counts = stats["classes_per_image"]
    bars = ax.bar(list(counts), list(counts.values()), color="steelblue")
    ax.bar_label(bars)
    ax.margins(y=0.15)
    ax.set_xlabel("defect classes in the image")
    ax.set_ylabel("images")
    ax.set_title("Defect classes per image")
    save(fig, path)


def plot_mask_areas(areas: pd.DataFrame, path: Path) -> None:
    fig, axes = plt.subplots(1, len(CLASSES), figsize=(14, 3.2), sharey=False)
    bins = np.logspace(1, np.log10(H * W), 40)
    for ax, cls in zip(axes, CLASSES, strict=True):
        values = areas.area[areas.ClassId == cls]
        ax.hist(values, bins=bins, color=class_colour(cls))
        ax.set_xscale("log")
        ax.set_title(f"class {cls}: {len(values)} masks")
        ax.set_xlabel("mask area (pixels)")
    axes[0].set_ylabel("masks")
    save(fig, path)


def plot_examples(
    cache: MaskCache, images_dir: Path, path: Path, per_class: int, seed: int
) -> None:
    """A grid of example images per class with every mask outlined in its class colour."""
    rng = np.random.default_rng(seed)
    flags = cache.classes()
    fig, axes = plt.subplots(
        len(CLASSES), per_class, figsize=(8 * per_class, 1.6 * len(CLASSES)), squeeze=False
    )
    for ax_row, cls in zip(axes, CLASSES, strict=True):
        having = sorted(flags.index[flags[cls] == 1])
        chosen = (
            rng.choice(having, size=min(per_class, len(having)), replace=False) if having else []
        )
        for ax in ax_row:
            ax.axis("off")
        for ax, image in zip(ax_row, chosen, strict=False):
            gray = read_gray(images_dir / image)
            ax.imshow(outline(gray, cache[image], thickness=3))
            ax.set_title(f"class {cls}: {image}", fontsize=9, color=class_colour(cls))
    save(fig, path)


def run_eda(
    masks_dir: Path, images_dir: Path, outputs: dict[str, Path], per_class: int, seed: int
) -> dict:
    """Write ``outputs``: stats (JSON) and the figures class_balance, defects_per_image,
    mask_areas and examples (PNG); return the statistics."""
    cache = MaskCache(masks_dir)
    areas = mask_areas(cache)
    stats = statistics(cache, areas)
    write_json(outputs["stats"], stats)
    plot_class_balance(stats, outputs["class_balance"])
    plot_defects_per_image(stats, outputs["defects_per_image"])
    plot_mask_areas(areas, outputs["mask_areas"])
    plot_examples(cache, images_dir, outputs["examples"], per_class, seed)
    return stats
