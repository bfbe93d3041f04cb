"""Figures for the report: class colours, mask outlines on images, training curves."""

from __future__ import annotations

import cv2
import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from steelflow.atomic import atomic_path  # noqa: E402

# One colour per class (RGB), used by every figure that shows masks.
CLASS_COLORS = {1: (230, 60, 200), 2: (60, 200, 60), 3: (0, 200, 255), 4: (255, 200, 0)}


def outline(gray: np.ndarray, masks: np.ndarray, thickness: int = 2) -> np.ndarray:
    """An RGB copy of ``gray`` (H, W) with each class mask of ``masks`` (4, H, W) outlined."""
    rgb = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    for k, mask in enumerate(masks):
        contours, _ = cv2.findContours(
            mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(rgb, contours, -1, CLASS_COLORS[k + 1], thickness)
    return rgb


def save(fig: plt.Figure, path) -> None:
    """Save ``fig`` as PNG atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_history(history: pd.DataFrame, name: str, path) -> None:
    """Training curves: losses, and the validation metrics, per epoch."""
    metrics = [c for c in history.columns if c.startswith(("auc", "f1", "dice", "score"))]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    for column in ("train_loss", "val_loss"):
        left.plot(history.epoch, history[column], marker="o", label=column)
    left.set_xlabel("epoch")
    left.set_title(f"{name}: loss")
    left.legend()
    for column in metrics:
        right.plot(history.epoch, history[column], marker="o", label=column)
    right.set_xlabel("epoch")
    right.set_ylim(0, 1)
    right.set_title(f"{name}: validation")
    right.legend(fontsize=8)
    save(fig, path)
