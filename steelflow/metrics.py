"""The competition metric: mean Dice over every (image, class) pair.

A pair whose masks are both empty scores 1, so predicting nothing scores the
share of empty pairs; that share is reported as the all-empty baseline.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from steelflow import rle
from steelflow.io import CLASSES


def dice(truth: np.ndarray, pred: np.ndarray) -> float:
    """Dice of two binary masks, 2|X∩Y| / (|X| + |Y|); 1 when both are empty."""
    truth, pred = truth.astype(bool), pred.astype(bool)
    total = int(truth.sum()) + int(pred.sum())
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(truth & pred)) / total


def pair_dice(
    truth: pd.DataFrame,
    pred: pd.DataFrame,
    image_ids: Sequence[str],
    shape: Sequence[int] = rle.SHAPE,
) -> pd.DataFrame:
    """Dice of every (image, class) pair of ``image_ids`` x classes 1-4.

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
            scores[i] = dice(rle.decode(t, shape), rle.decode(p, shape))
        except ValueError as e:
            image, cls = pairs[i]
            raise ValueError(f"image {image} class {cls}: {e}") from None
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
    pairs = pair_dice(truth, pred, image_ids, shape)
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
