"""K folds stratified on each image's combination of defect classes."""

from __future__ import annotations

import numpy as np
import pandas as pd


def assign_folds(flags: pd.DataFrame, folds: int, seed: int) -> pd.DataFrame:
    """Assign each image (row of 0/1 class ``flags``, indexed by ImageId) to a fold.

    Images with the same class combination are shuffled (by ``seed``) and dealt
    round-robin, continuing from group to group, so every fold gets its share of
    each combination and fold sizes differ by at most one. Returns ImageId,
    classes (e.g. "1+3", "" for clean) and fold, sorted by ImageId.
    """
    rng = np.random.default_rng(seed)
    combos = flags.apply(lambda row: "+".join(str(c) for c, f in row.items() if f), axis=1)
    parts, dealt = [], 0
    for combo, members in sorted(combos.groupby(combos), key=lambda item: item[0]):
        images = rng.permutation(sorted(members.index))
        fold = (dealt + np.arange(len(images))) % folds
        parts.append(pd.DataFrame({"ImageId": images, "classes": combo, "fold": fold}))
        dealt += len(images)
    return pd.concat(parts).sort_values("ImageId").reset_index(drop=True)
