"""Tune at Kaggle scale: the counting and the search give what the loop they
replaced gave, to the last bit, in memory that does not grow with the images.

The reference is that loop, kept here as it was (``old_*``): a Python loop over
(image, class, threshold) labelling components with OpenCV, per-image evidence kept
for every image, and the search's mean over an (images, gates, thresholds, areas,
component minimums) array. benchmarks/tune_scale.py times it against the new code.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from steelflow.config import load
from steelflow.dataset import split_ids
from steelflow.io import CLASSES
from steelflow.masks import MaskCache
from steelflow.metrics import dice
from steelflow.predict import Predictor, components, exclusive, upsample
from steelflow.tune import (
    Evidence,
    Tally,
    area_bounds,
    class_dice,
    count,
    gather,
    out_of_fold,
    search,
)
from tests.conftest import TEST_CONFIG

TUNE = load(TEST_CONFIG)["tune"]
H, W = 256, 1600

# --- the reference: tune before it scaled -----------------------------------------------------


def old_gather(predictor, images_dir, cache, image_ids, cfg) -> Evidence:
    grid = torch.tensor(cfg["pixel_thresholds"], dtype=torch.float32)
    minimums = np.asarray(cfg["min_component_areas"])
    probs, areas, overlaps, truths = [], [], [], []
    batches = predictor.batches(image_ids, predictor.reader(images_dir), cfg["batch_size"])
    for ids, views in batches:
        probs.append(predictor.class_prob(views))
        truth = torch.from_numpy(np.stack([cache[i] for i in ids])).bool()
        prob = predictor.mask_prob(views).cpu()
        counted = [
            old_areas_above(exclusive(prob) if rule else prob, truth, grid, minimums)
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


def old_areas_above(prob, truth, grid, minimums):
    n, classes, bins = prob.shape[0], prob.shape[1], len(grid) + 1
    ascending, order = torch.sort(grid)
    exceeded = torch.bucketize(prob.contiguous(), ascending)
    index = exceeded + bins * torch.arange(n * classes).view(n, classes, 1, 1)

    def above(selected):
        counts = torch.bincount(selected, minlength=n * classes * bins).view(n, classes, bins)
        ranked = counts.flip(-1).cumsum(-1).flip(-1)[..., 1:]
        return ranked[..., torch.argsort(order)].numpy()

    whole = above(index.flatten()), above(index[truth])
    area, overlap = (np.repeat(w[..., None], len(minimums), axis=-1) for w in whole)
    if not np.any(minimums):
        return area, overlap
    for i, k in zip(*np.nonzero(whole[0].any(axis=-1)), strict=True):
        mask = (prob[i, k] > ascending[0]).numpy()
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        box = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
        inside, true = prob[i, k][box], truth[i, k][box].numpy()
        for t in np.flatnonzero(whole[0][i, k]):
            labels, sizes = components((inside > grid[t]).numpy().view(np.uint8))
            kept = sizes[None, 1:] >= minimums[:, None]
            area[i, k, t] = kept @ sizes[1:]
            if whole[1][i, k, t]:
                overlap[i, k, t] = kept @ np.bincount(labels[true], minlength=len(sizes))[1:]
    return area, overlap


def old_class_dice(ev, o, k, gates, min_areas):
    area, overlap = ev.area[:, o, k], ev.overlap[:, o, k]
    truth = ev.truth[:, k][:, None, None]
    kept = dice(overlap, area, truth)[:, None, :, None, :]
    dropped = dice(0, 0, truth)[:, None, :, None]
    gate = np.asarray(gates)[None, :, None, None, None]
    on = ev.class_prob[:, k, None, None, None, None] >= gate
    big = area[:, None, :, None, :] >= np.asarray(min_areas)[None, None, None, :, None]
    return np.where(on & big, kept, dropped).mean(axis=0)


def old_search(ev, cfg, bounds=None):
    gates, pixels = cfg["gates"], cfg["pixel_thresholds"]
    areas, pieces = cfg["min_areas"], cfg["min_component_areas"]
    bounds = np.full(len(CLASSES), np.inf) if bounds is None else bounds
    n = len(ev.class_prob)
    empty = (ev.truth == 0).mean(axis=0)
    support = (ev.truth > 0).sum(axis=0)
    rank = np.arange(len(gates) * len(areas) * len(pieces)).reshape(len(gates), 1, len(areas), -1)
    simplicity = np.abs(np.asarray(pixels) - 0.5)[:, None, None] * 1e-3 + rank

    def best_setting(table):
        near = table >= table.max() - cfg["tie_tolerance"]
        best = np.unravel_index(np.where(near, simplicity, np.inf).argmin(), table.shape)
        return tuple(int(i) for i in best), float(table[best])

    plans = []
    for o in range(len(cfg["non_overlap"])):
        chosen = []
        for k in range(len(CLASSES)):
            table = old_class_dice(ev, o, k, gates, areas)
            table[:, :, np.asarray(areas) > max(bounds[k], min(areas))] = -np.inf
            setting, best = best_setting(table)
            on = bool(support[k] >= cfg["min_support"] and best - empty[k] >= cfg["min_gain"])
            chosen.append((setting, best if on else float(empty[k]), on))
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
                "val_dice": best,
                "val_dice_empty": float(empty[k]),
                "support": int(support[k]),
            }
            for k, ((g, t, a, c), best, on) in enumerate(chosen)
        },
    }


# --- random maps, a predictor that answers with them, a mask cache of them -------------------


def random_maps(n: int, size=(64, 400), seed=0):
    """(n, C, h, w) float32 probabilities with blobs at random levels, many of them on
    the same levels (ties between classes, values on thresholds), (n, C, H, W) uint8
    truth overlapping them in part, and (n, C) classifier probabilities."""
    rng = np.random.default_rng(seed)
    h, w = size
    prob = np.full((n, len(CLASSES), h, w), 0.01, np.float32)
    truth = np.zeros((n, len(CLASSES), H, W), np.uint8)
    for i, k in np.ndindex(n, len(CLASSES)):
        for _ in range(rng.integers(0, 4)):
            r, c = rng.integers(0, h - 2), rng.integers(0, w - 2)
            dr, dc = rng.integers(1, h // 3), rng.integers(1, w // 4)
            level = rng.choice([0.2, 0.25, 0.5, 0.55, rng.uniform(0.1, 1.0)])
            prob[i, k, r : r + dr, c : c + dc] = level
            if rng.random() < 0.3:  # specks
                spots = rng.integers(0, h * w, 30)
                prob[i, k].flat[spots] = rng.uniform(0.15, 0.9, 30).astype(np.float32)
        if rng.random() < 0.5:
            r, c = rng.integers(0, H - 20), rng.integers(0, W - 20)
            truth[i, k, r : r + rng.integers(5, 120), c : c + rng.integers(5, 600)] = 1
    return prob, truth, rng.uniform(0, 1, (n, len(CLASSES))).astype(np.float32)


class Maps:
    """A predictor whose networks answer with ``low`` (the U-Net's, at its size) and
    ``class_prob``: image ``i`` is named ``{i}.jpg``."""

    batches = Predictor.batches

    def __init__(self, low: np.ndarray, class_prob: np.ndarray):
        self.low, self.probs = low, class_prob

    def reader(self, folder: Path):
        return lambda names: [int(Path(name).stem) for name in names]

    def class_prob(self, views: list[int]) -> np.ndarray:
        return self.probs[views]

    def mask_prob(self, views: list[int], full_size: bool = True) -> torch.Tensor:
        prob = torch.from_numpy(self.low[views])
        return upsample(prob) if full_size else prob


class Truths(dict):
    """A mask cache of ``truth`` arrays: ``cache[f"{i}.jpg"]`` is image i's."""

    def __init__(self, truth: np.ndarray):
        super().__init__({f"{i}.jpg": t for i, t in enumerate(truth)})
        self.image_ids = list(self)

    def areas(self) -> np.ndarray:
        return np.stack([t.reshape(len(CLASSES), -1).sum(axis=1) for t in self.values()])


def permissive(cfg: dict) -> dict:
    """``cfg`` with every class allowed on: settings are chosen, not only scored."""
    return {**cfg, "min_support": 1, "min_gain": 0.0}


# --- the tests -------------------------------------------------------------------------------


@pytest.mark.parametrize("minimums", [[0, 3, 50, 1, 2], [0], [7]])
def test_counts_are_the_old_loops_on_random_maps(minimums):
    """Any grid order, thresholds hit exactly, ties between classes; with and without
    the non-overlap rule, with and without component minimums."""
    low, truth, _ = random_maps(3, size=(40, 60), seed=len(minimums))
    prob, truth = torch.from_numpy(low), torch.from_numpy(truth[..., :40, :60])
    grid, minimums = torch.tensor([0.55, 0.2, 0.9, 0.25, 0.5, 0.3]), np.array(minimums)
    area, overlap = count(prob, truth.numpy(), grid, minimums, [False, True], full_size=False)
    for o, probs in enumerate([prob, exclusive(prob)]):
        old_area, old_overlap = old_areas_above(probs, truth.bool(), grid, minimums)
        assert np.array_equal(area[:, o], old_area)
        assert np.array_equal(overlap[:, o], old_overlap)


def test_gather_and_search_are_the_old_loops_through_upsampling():
    """The U-Net's maps at its size, upsampled only where a class can pass a threshold,
    give the evidence of upsampling every class, and the search the same result."""
    low, truth, class_prob = random_maps(5)
    predictor, cache = Maps(low, class_prob), Truths(truth)
    ids = cache.image_ids
    cfg = {**TUNE, "batch_size": 3, "pixel_thresholds": [0.5, 0.2, 0.25, 0.55, 0.8, 0.3]}
    old = old_gather(predictor, Path("images"), cache, ids, cfg)
    new = Evidence.concat(list(gather(predictor, Path("images"), cache, ids, cfg)))
    for name in ("image_ids", "class_prob", "area", "overlap", "truth"):
        assert np.array_equal(getattr(old, name), getattr(new, name)), name
    tally = Tally.of(new, cfg["gates"], cfg["min_areas"])
    bounds = area_bounds(cache, 0.5)
    for settings in (cfg, permissive(cfg)):
        assert search(tally, settings, bounds) == old_search(old, settings, bounds)
    for o, k in np.ndindex(len(cfg["non_overlap"]), len(CLASSES)):
        table = class_dice(tally, o, k, [0.0, 0.5], cfg["min_areas"])
        assert np.array_equal(table, old_class_dice(old, o, k, [0.0, 0.5], cfg["min_areas"]))


def test_tune_on_the_tiny_project_is_the_old_loops(project):
    """The trained tiny models' out-of-fold evidence: the tally's tables are the old
    means to the last bit, and the search chooses what the old search chose, which is
    what `steelflow tune` wrote."""
    train = load(TEST_CONFIG, {"train.folds": [0, 1]})["train"]
    models = {f: ([project / f"classifier_f{f}.pt"], [project / f"unet_f{f}.pt"]) for f in (0, 1)}
    predictors = {f: Predictor(*models[f], train) for f in (0, 1)}
    images, cache = project / "raw/train_images", MaskCache(project / "masks")
    split = project / "split.csv"
    old = Evidence.concat(
        [
            old_gather(predictors[f], images, cache, split_ids(split, f, cache)[1], TUNE)
            for f in (0, 1)
        ]
    )
    tally = out_of_fold(predictors.get, [0, 1], split, images, cache, TUNE)
    assert list(tally.image_ids) == list(old.image_ids)
    per_image = tally.image_ids.itemsize + tally.class_prob[0].nbytes  # an id, C probabilities
    assert tally.nbytes <= tally.sums.nbytes + 1024 + tally.images * per_image  # nothing else
    bounds = area_bounds(cache, TUNE["max_area_quantile"])
    for settings in (TUNE, permissive(TUNE)):
        assert search(tally, settings, bounds) == old_search(old, settings, bounds)
    written = json.loads((project / "thresholds.json").read_text())
    chosen = old_search(old, TUNE, bounds)
    assert {key: written[key] for key in chosen} == chosen
    for o, k in np.ndindex(len(TUNE["non_overlap"]), len(CLASSES)):
        table = class_dice(tally, o, k, TUNE["gates"], TUNE["min_areas"])
        assert np.array_equal(table, old_class_dice(old, o, k, TUNE["gates"], TUNE["min_areas"]))


def random_evidence(n: int, seed=0) -> Evidence:
    """Evidence of ``n`` images, every setting's counts random, of TUNE's shape."""
    rng = np.random.default_rng(seed)
    shape = (n, len(TUNE["non_overlap"]), len(CLASSES), len(TUNE["pixel_thresholds"]), 4)
    area = rng.integers(0, 20000, shape)
    truth = rng.integers(0, 20000, (n, len(CLASSES))) * (rng.random((n, len(CLASSES))) < 0.4)
    overlap = np.minimum(area, truth[:, None, :, None, None]) * (rng.random(shape) < 0.7)
    ids = np.array([f"{i:06d}.jpg" for i in range(n)])
    return Evidence(ids, rng.random((n, len(CLASSES)), np.float32), area, overlap, truth)


def peak_bytes(fn) -> int:
    """Peak bytes that ``fn()`` allocates (numpy's arrays included)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_images():
    """The tally is the same size for 40 images as for 200, but for each image's id and
    classifier probabilities; the search's peak memory is the same for both, where the
    old search's grows with the images."""
    small, large = random_evidence(40), random_evidence(200, seed=1)
    tallies = [Tally.of(ev, TUNE["gates"], TUNE["min_areas"]) for ev in (small, large)]
    assert tallies[0].sums.nbytes == tallies[1].sums.nbytes
    per_image = large.image_ids.itemsize + large.class_prob[0].nbytes
    assert tallies[1].nbytes - tallies[0].nbytes == (200 - 40) * per_image
    assert per_image <= 64  # an id and four probabilities
    new = [peak_bytes(lambda t=t: search(t, TUNE)) for t in tallies]
    assert new[1] <= 1.05 * new[0] + 16384
    old = [peak_bytes(lambda ev=ev: old_search(ev, TUNE)) for ev in (small, large)]
    assert old[1] > 4 * old[0]  # what this test would catch
    assert search(tallies[1], TUNE) == old_search(large, TUNE)


def test_a_tally_answers_only_the_settings_it_summed():
    tally = Tally.of(random_evidence(5), TUNE["gates"], TUNE["min_areas"])
    with pytest.raises(ValueError, match=r"no gate \[0.55\]"):
        search(tally, {**TUNE, "gates": [0.0, 0.55]})
    with pytest.raises(ValueError, match="15 pixel thresholds .* searched with 2, 3 and 4"):
        search(tally, {**TUNE, "pixel_thresholds": [0.3, 0.5, 0.7]})
