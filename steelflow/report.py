"""Figures for the report: class colours, mask outlines on images, training curves."""

from __future__ import annotations

from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from steelflow.atomic import atomic_path  # noqa: E402
from steelflow.images import read_gray  # noqa: E402

# One colour per class (RGB), used by every figure that shows masks.
CLASS_COLORS = {1: (230, 60, 200), 2: (60, 200, 60), 3: (0, 200, 255), 4: (255, 200, 0)}


def class_colour(cls: int) -> tuple[float, float, float]:
    """A class's colour as matplotlib wants it (RGB in 0-1)."""
    return tuple(v / 255 for v in CLASS_COLORS[cls])


def outline(gray: np.ndarray, masks: np.ndarray, thickness: int = 2) -> np.ndarray:
    """An RGB copy of ``gray`` (H, W) with each class mask of ``masks`` (4, H, W) outlined."""
    rgb = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    for k, mask in enumerate(masks):
        contours, _ = cv2.findContours(
            mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(rgb, contours, -1, CLASS_COLORS[k + 1], thickness)
    return rgb


def save_overlay(path, gray: np.ndarray, masks: np.ndarray) -> None:
    """Write ``gray`` with ``masks`` outlined (``outline``) as a PNG file."""
    cv2.imwrite(str(path), cv2.cvtColor(outline(gray, masks), cv2.COLOR_RGB2BGR))


def save(fig: plt.Figure, path) -> None:
    """Save ``fig`` as PNG atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


OVERALL_COLORS = {"score": "black", "auc": "black", "pair_dice": "0.55", "f1": "0.55"}


def plot_history(history: pd.DataFrame, name: str, path) -> None:
    """Training curves: losses, and the validation metrics, per epoch; a class's
    metrics in its colour, its pooled Dice dashed with open squares, the metrics of all
    classes in black and gray."""
    metrics = [
        c for c in history.columns if c.startswith(("auc", "f1", "dice", "pooled", "pair", "score"))
    ]
    if "auc" in metrics:  # the classifier's score is its AUC: draw it once
        metrics.remove("score")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for column in ("train_loss", "val_loss"):
        left.plot(history.epoch, history[column], marker="o", label=column)
    left.set_xlabel("epoch")
    left.set_title(f"{name}: loss")
    left.legend()
    for column in metrics:
        pooled = column.startswith("pooled")
        style = {"linestyle": "--", "marker": "s", "markerfacecolor": "none"} if pooled else {}
        prefix, _, cls = column.rpartition("_")
        if prefix and cls.isdigit():  # dice_defect_3, pooled_dice_3: class 3's colour
            style["color"] = class_colour(int(cls))
        elif column in OVERALL_COLORS:
            style["color"] = OVERALL_COLORS[column]
        right.plot(history.epoch, history[column], **{"marker": "o", **style}, label=column)
    right.set_xlabel("epoch")
    right.set_ylim(0, 1)
    right.set_title(f"{name}: validation")
    right.legend(fontsize=8, handlelength=3, loc="center left", bbox_to_anchor=(1.01, 0.5))
    save(fig, path)


def _masks_of(table: pd.DataFrame, image: str) -> np.ndarray:
    from steelflow import rle

    masks = np.zeros((4, *rle.SHAPE), np.uint8)
    rows = table[table.ImageId == image]
    for cls, text in zip(rows.ClassId, rows.EncodedPixels, strict=True):
        if text:
            masks[cls - 1] = rle.decode(text)
    return masks


def plot_predictions(
    images_dir, truth: pd.DataFrame | None, pred: pd.DataFrame, path, count: int = 6
):
    """A few test images: the true masks above the predicted ones, outlined in class colours.

    Images are chosen to show each class the truth has, then clean ones; without
    truth, the first images with predictions.
    """
    source = truth if truth is not None else pred
    having = source[source.EncodedPixels != ""]
    chosen = []
    for cls in (3, 4, 1, 2):
        chosen += [
            i for i in sorted(set(having.ImageId[having.ClassId == cls])) if i not in chosen
        ][:2]
    clean = sorted(set(pred.ImageId) - set(having.ImageId))
    chosen = (chosen + clean)[:count]
    panels = (
        [("truth", truth), ("prediction", pred)] if truth is not None else [("prediction", pred)]
    )
    n = len(chosen) * len(panels)
    fig, axes = plt.subplots(n, 1, figsize=(16, 1.9 * n), squeeze=False)
    axes = iter(axes[:, 0])
    for image in chosen:
        gray = read_gray(Path(images_dir) / image)
        for label, table in panels:
            ax = next(axes)
            ax.imshow(outline(gray, _masks_of(table, image), thickness=2))
            ax.set_title(f"{image}: {label}", fontsize=10)
            ax.axis("off")
    save(fig, path)
