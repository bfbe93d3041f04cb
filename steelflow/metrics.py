"""Metrics: the competition's Dice (one function, from pixel counts), ROC AUC and F1.

The competition scores the mean Dice over every (image, class) pair; a pair
whose masks are both empty scores 1, so predicting nothing scores the share of
empty pairs, reported as the all-empty baseline.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from steelflow import rle
from steelflow.errors import SteelflowError
from steelflow.io import CLASSES


def dice(overlap, predicted, true) -> np.ndarray:
    """Dice from pixel counts, 2|X∩Y| / (|X| + |Y|), 1 where both masks are empty.

    ``overlap`` = |X∩Y|, ``predicted`` = |X|, ``true`` = |Y|: numbers or arrays
    that broadcast together; returns a float array of their broadcast shape.
    """
    overlap = np.asarray(overlap, dtype=np.float64)
    total = np.asarray(predicted, dtype=np.float64) + np.asarray(true, dtype=np.float64)
    return np.where(total == 0, 1.0, 2 * overlap / np.maximum(total, 1))


def mask_dice(truth: np.ndarray, pred: np.ndarray) -> float:
    """Dice of two binary masks of the same shape."""
    truth, pred = truth.astype(bool), pred.astype(bool)
    return float(dice(np.count_nonzero(truth & pred), np.count_nonzero(pred), truth.sum()))


def dice_table(
    truth: pd.DataFrame,
    pred: pd.DataFrame,
    image_ids: Sequence[str],
    shape: Sequence[int] = rle.SHAPE,
) -> pd.DataFrame:
    """Dice of every (image, class) pair of ``image_ids`` x the classes.

    ``truth`` and ``pred`` are mask tables (ImageId, ClassId, EncodedPixels);
    a pair missing from a table is empty. Returns ImageId, ClassId, truth_empty, dice.
    """
    pairs = pd.MultiIndex.from_product([list(image_ids), CLASSES], names=["ImageId", "ClassId"])

    def aligned(table: pd.DataFrame) -> np.ndarray:
        series = table.set_index(["ImageId", "ClassId"])["EncodedPixels"]
        return series.reindex(pairs, fill_value="").fillna("").to_numpy()

    scores = np.empty(len(pairs))
    for i, (t, p) in enumerate(zip(aligned(truth), aligned(pred), strict=True)):
        if not t or not p:
            scores[i] = float(not t and not p)
            continue
        try:
            scores[i] = mask_dice(rle.decode(t, shape), rle.decode(p, shape))
        except ValueError as e:
            image, cls = pairs[i]
            raise SteelflowError(f"image {image} class {cls}: {e}") from None
    table = pairs.to_frame(index=False)
    table["truth_empty"] = aligned(truth) == ""
    table["dice"] = scores
    return table


def score(
    truth: pd.DataFrame,
    pred: pd.DataFrame,
    image_ids: Sequence[str],
    shape: Sequence[int] = rle.SHAPE,
) -> dict:
    """Competition Dice, per class, on defect pairs only, and the all-empty baseline."""
    pairs = dice_table(truth, pred, image_ids, shape)
    by_class = pairs.groupby("ClassId")
    defects = pairs[~pairs.truth_empty].groupby("ClassId")["dice"].mean()
    return {
        "dice": float(pairs.dice.mean()),
        "dice_per_class": {str(c): float(d) for c, d in by_class["dice"].mean().items()},
        "dice_on_defects_per_class": {
            str(c): (float(defects[c]) if c in defects.index else None) for c in CLASSES
        },
        "empty_baseline": float(pairs.truth_empty.mean()),
        "images": len(image_ids),
        "pairs": len(pairs),
    }


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); NaN with one class."""
    labels = labels.astype(bool)
    positives, negatives = labels.sum(), (~labels).sum()
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = pd.Series(scores).rank().to_numpy()
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def f1_score(predicted: np.ndarray, labels: np.ndarray) -> float:
    """F1 of binary predictions; 1 when there is nothing to find and nothing was found."""
    tp = int((predicted & labels).sum())
    denominator = int(predicted.sum() + labels.sum())
    return 1.0 if denominator == 0 else 2 * tp / denominator
