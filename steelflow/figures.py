"""Drawing helpers shared by the figures: class colours and mask outlines on images."""

from __future__ import annotations

import cv2
import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

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
