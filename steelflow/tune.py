"""Post-processing tuned out of fold, from one pass of both networks per fold.

Each trained fold's models predict that fold's validation images, so every
image is predicted by models that never trained on it. The pass counts, per
image, non-overlap option, class, pixel threshold and minimum component area,
the predicted area and its overlap with the truth (``Evidence``, a batch at a
time), and adds the image's Dice under every gate and minimum area to running
sums (``Tally``): what the search scores, never by running the networks again,
in memory that does not grow with the images.

The counts are exact and cheap: only the classes whose probability can pass the
lowest threshold are upsampled, and one union-find pass over their pixels, from
the most probable down, gives the connected components at every threshold at
once (numba, an image per core).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from numba import njit
from tqdm import tqdm

from steelflow.dataset import split_ids
from steelflow.io import CLASSES
from steelflow.masks import MaskCache
from steelflow.predict import CORES, PEAK_MARGIN, Predictor, upsample
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


@dataclass
class Tally:
    """What the search needs of any number of images, summed image by image: for
    each (non-overlap option, class, gate, pixel threshold, minimum area, minimum
    component area), the sum of the images' Dice. Its size does not depend on the
    images but for their ids and classifier probabilities (an id and C numbers each),
    kept to say which images were tuned on.

    The sums add the images in order, as the mean over an (images, ...) array
    does, so a table (``class_dice``) is the mean of the per-image Dice to the last
    bit. ``gates`` holds 0.0 besides the searched gates: the figure's curves of a
    class switched off are without a gate.
    """

    gates: np.ndarray  # (G,) float64
    min_areas: np.ndarray  # (A,) float64
    sums: np.ndarray  # (O, C, G, T, A, K) float64
    clean: np.ndarray = field(default_factory=lambda: np.zeros(len(CLASSES), np.int64))  # (C,)
    ids: list[np.ndarray] = field(default_factory=list)  # per added batch
    probs: list[np.ndarray] = field(default_factory=list)

    @classmethod
    def empty(cls, options: int, thresholds: int, components: int, gates, min_areas) -> Tally:
        """No images yet, for ``options`` non-overlap options, ``thresholds`` pixel
        thresholds, ``components`` minimum component areas, and the given gates and
        minimum areas."""
        gates = np.asarray(gates, np.float64)
        gates = gates if (gates == 0).any() else np.append(gates, 0.0)
        shape = (options, len(CLASSES), len(gates), thresholds, len(min_areas), components)
        return cls(gates, np.asarray(min_areas, np.float64), np.zeros(shape))

    @classmethod
    def of(cls, ev: Evidence, gates, min_areas) -> Tally:
        """The tally of evidence kept image by image."""
        _, options, _, thresholds, components = ev.area.shape
        return cls.empty(options, thresholds, components, gates, min_areas).add(ev)

    def add(self, ev: Evidence) -> Tally:
        """Add the images of ``ev`` (in its order) and return self."""
        options, classes, _, thresholds, _, components = self.sums.shape
        if ev.area.shape[1:] != (options, classes, thresholds, components):
            raise ValueError(
                f"evidence of shape {ev.area.shape[1:]} (options, classes, thresholds, "
                f"component minimums) added to a tally of {self.sums.shape}"
            )
        truth = np.asarray(ev.truth, np.int64)
        _accumulate(
            self.sums,
            np.asarray(ev.class_prob, np.float64),  # exactly: compared with a gate as before
            np.asarray(ev.area, np.int64),
            np.asarray(ev.overlap, np.int64),
            truth,
            self.gates,
            self.min_areas,
        )
        self.clean += (truth == 0).sum(axis=0)
        self.ids.append(np.asarray(ev.image_ids))
        self.probs.append(np.asarray(ev.class_prob))
        return self

    @property
    def image_ids(self) -> np.ndarray:
        return np.concatenate(self.ids) if self.ids else np.array([], str)

    @property
    def class_prob(self) -> np.ndarray:
        return np.concatenate(self.probs) if self.probs else np.zeros((0, len(CLASSES)))

    @property
    def images(self) -> int:
        return sum(len(i) for i in self.ids)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays it holds."""
        fixed = self.gates.nbytes + self.min_areas.nbytes + self.sums.nbytes + self.clean.nbytes
        return fixed + sum(a.nbytes for a in self.ids + self.probs)

    def table(self, o: int, k: int, gates, min_areas) -> np.ndarray:
        """Mean Dice of class index ``k`` with option ``o``: (G, T, A, K) for ``gates``
        and ``min_areas``, each one the tally has."""
        g, a = self._find(self.gates, gates, "gate"), self._find(self.min_areas, min_areas, "area")
        return self.sums[o, k][g][:, :, a] / self.images

    @staticmethod
    def _find(have: np.ndarray, wanted, what: str) -> np.ndarray:
        wanted = np.asarray(wanted, np.float64)
        hits = wanted[:, None] == have[None, :]
        if not hits.any(axis=1).all():
            missing = wanted[~hits.any(axis=1)].tolist()
            raise ValueError(
                f"the tally has no {what} {missing}: it sums {have.tolist()}; gather the "
                "evidence with the tune settings that the search uses"
            )
        return hits.argmax(axis=1)


@njit(cache=True, nogil=True)
def _accumulate(sums, class_prob, area, overlap, truth, gates, min_areas):  # pragma: no cover
    """Add each image's Dice under every (gate, threshold, minimum area, component
    minimum) to ``sums`` (O, C, G, T, A, K), one image after the other. A mask is kept
    when the classifier's probability reaches the gate and its area the minimum area,
    else emptied; Dice as ``metrics.dice``, in the same float64 operations."""
    n, options, classes, thresholds, components = area.shape
    kept = np.empty((thresholds, components))
    for i in range(n):
        for o in range(options):
            for k in range(classes):
                true = np.float64(truth[i, k])
                dropped = 1.0 if true == 0 else 0.0
                for t in range(thresholds):
                    for c in range(components):
                        total = np.float64(area[i, o, k, t, c]) + true
                        hit = 2 * np.float64(overlap[i, o, k, t, c])
                        kept[t, c] = 1.0 if total == 0 else hit / max(total, 1.0)
                for g in range(len(gates)):
                    on = class_prob[i, k] >= gates[g]
                    for t in range(thresholds):
                        for a in range(len(min_areas)):
                            for c in range(components):
                                big = area[i, o, k, t, c] >= min_areas[a]
                                sums[o, k, g, t, a, c] += kept[t, c] if on and big else dropped


def gather(
    predictor: Predictor, images_dir: Path, cache: MaskCache, image_ids: list[str], cfg: dict
) -> Iterator[Evidence]:
    """Run both networks once over ``image_ids`` and yield, a batch at a time, what the
    search (``cfg``, the tune section) needs of them."""
    grid = torch.tensor(cfg["pixel_thresholds"], dtype=torch.float32)
    minimums = np.asarray(cfg["min_component_areas"])
    batches = predictor.batches(image_ids, predictor.reader(images_dir), cfg["batch_size"])
    total = -(-len(image_ids) // cfg["batch_size"])
    with ThreadPoolExecutor(CORES) as pool:
        for ids, views in tqdm(batches, total=total, desc="validation pass", unit="batch"):
            class_prob = predictor.class_prob(views)
            truth = list(pool.map(cache.__getitem__, ids))  # (C, H, W) uint8 each
            prob = predictor.mask_prob(views, full_size=False)
            with one_torch_thread():
                area, overlap = count(prob, truth, grid, minimums, cfg["non_overlap"], pool)
            areas = np.array([[np.count_nonzero(mask) for mask in masks] for masks in truth])
            yield Evidence(np.asarray(ids), class_prob, area, overlap, areas.astype(np.int64))


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch's CPU ops on one thread, for counting's small ops: between them torch's
    other threads spin on the cores the counting threads need (on a busy 2-core CPU,
    1.5x the CPU time per image)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def out_of_fold(
    predictors: Callable[[int], Predictor],
    folds: list[int],
    split: Path,
    images_dir: Path,
    cache: MaskCache,
    cfg: dict,
) -> Tally:
    """The tally of every image of ``folds``, each predicted by its own fold's models
    (``predictors(fold)``): the validation folds of the trained models."""
    tally = Tally.empty(
        len(cfg["non_overlap"]),
        len(cfg["pixel_thresholds"]),
        len(cfg["min_component_areas"]),
        cfg["gates"],
        cfg["min_areas"],
    )
    for fold in folds:
        images = split_ids(split, fold, cache)[1]
        for part in gather(predictors(fold), images_dir, cache, images, cfg):
            tally.add(part)
    return tally


def count(
    prob: torch.Tensor,
    truth,
    grid: torch.Tensor,
    minimums,
    non_overlap,
    pool: ThreadPoolExecutor | None = None,
    full_size: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``areas_above`` for each of the ``non_overlap`` options, from (n, C, h, w)
    probabilities (with ``full_size``, upsampled to full size as ``Predictor.mask_prob``
    does; else counted at their size) and the n images' (C, H, W) truth, of the size
    counted: two (n, O, C, T, K) int64 arrays.

    A class whose peak is below the lowest threshold (less ``PEAK_MARGIN``: bilinear
    upsampling adds nothing above the peak but rounding) has nothing above any
    threshold and is neither upsampled nor counted. Nor can it be the most probable
    class where another passes a threshold, so the non-overlap rule needs only the
    classes that are counted. Upsampling a class alone or with others gives the same
    bits (``predict.upsample``).
    """
    n, classes = prob.shape[:2]
    ascending, order = torch.sort(grid.to(torch.float32))
    shape = (n, len(non_overlap), classes, len(grid), len(minimums))
    area, overlap = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    peak = prob.amax(dim=(-2, -1)).cpu()
    image, cls = (peak > ascending[0] - PEAK_MARGIN).nonzero().numpy().T
    if not len(image):
        return area, overlap
    at = torch.from_numpy(image).to(prob.device), torch.from_numpy(cls).to(prob.device)
    planes = prob[at][:, None]  # (pairs, 1, h, w): one upsampling for all
    planes = upsample(planes) if full_size else planes
    planes = planes[:, 0].to(torch.float32).cpu().numpy()
    thresholds = ascending.numpy()
    rank = order.numpy()  # the grid's index of each ascending threshold
    options = np.asarray(non_overlap, np.bool_)
    mins = np.asarray(minimums, np.int64)

    def one(i: int) -> None:
        first, end = np.searchsorted(image, [i, i + 1])  # the pairs are in image order
        if end > first:
            true = np.ascontiguousarray(truth[i], dtype=np.uint8)
            _count_image(
                planes[first:end], cls[first:end], true, thresholds, rank, mins, options,
                area[i], overlap[i], _scratch(true[0].size),
            )  # fmt: skip

    if pool is None:
        for i in range(n):
            one(i)
    else:
        list(pool.map(one, range(n)))
    return area, overlap


_buffers = threading.local()


def _scratch(pixels: int) -> tuple[np.ndarray, ...]:
    """This thread's working arrays for ``_count_image`` on images of ``pixels``, made
    once: fresh ones would cost more (their pages faulted in) than the counting."""
    kept = getattr(_buffers, "arrays", None)
    if kept is None or len(kept[0]) < pixels:
        kept = _buffers.arrays = (
            np.full(pixels, -1, np.int32),  # union-find parent (-1: not in); left all -1
            *(np.empty(pixels, np.int32) for _ in range(7)),
            np.empty(pixels, np.bool_),
        )
    return kept


def areas_above(prob: torch.Tensor, truth: torch.Tensor, grid: torch.Tensor, minimums):
    """Pixels above each threshold of ``grid``, and how many of them are true, counting
    only components (8-connected) of at least each of ``minimums`` pixels.

    Shapes: prob, truth (n, C, H, W) (prob at full size, as counted); returns two
    (n, C, T, K) int64 arrays."""
    area, overlap = count(prob, truth.numpy(), grid, minimums, [False], full_size=False)
    return area[:, 0], overlap[:, 0]


@njit(cache=True, nogil=True, inline="always")
def _root(parent, x):  # pragma: no cover
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


@njit(cache=True, nogil=True)
def _count_image(
    planes, classes, truth, thresholds, rank, minimums, options, area, overlap, scratch
):  # pragma: no cover
    """One image's counts, into ``area`` and ``overlap`` (O, C, T, K): ``planes``
    (m, H, W) are the probabilities of its classes ``classes`` that can pass
    ``thresholds`` (ascending; ``rank``: the grid's index of each); ``truth`` (C, H, W);
    ``scratch``: ``_scratch``'s arrays.

    A pixel's level is how many thresholds it is above. With the non-overlap rule a
    pixel where another class is more probable is dropped (its probability zeroed);
    where no pixel above a threshold is, the counts are those without the rule."""
    m, height, width = planes.shape
    true_flat = truth.reshape(truth.shape[0], height * width)
    found, found_row, level, beaten = scratch[3], scratch[6], scratch[4], scratch[8]
    lowest, any_rule = thresholds[0], False
    for o in range(len(options)):
        any_rule |= options[o]
    for j in range(m):
        k, n, n_beaten = classes[j], 0, 0
        for r in range(height):
            row = planes[j, r]
            hits = 0
            for c in range(width):  # most rows have nothing above: a vectorised look first
                hits += row[c] > lowest
            if hits == 0:
                continue
            for c in range(width):
                v = row[c]
                if not v > lowest:
                    continue
                lev = 1
                while lev < len(thresholds) and v > thresholds[lev]:
                    lev += 1
                found[n], found_row[n], level[n], beaten[n] = r * width + c, r, lev, False
                if any_rule:
                    for q in range(m):
                        if planes[q, r, c] > v:  # another class more probable: zeroed
                            beaten[n] = True
                            n_beaten += 1
                            break
                n += 1
        if n == 0:
            continue
        plain, ruled = -1, -1  # the option that has the counts without / with the rule
        for o in range(len(options)):
            rule = options[o] and n_beaten > 0
            done = ruled if rule else plain
            if done >= 0:
                for t in range(area.shape[2]):  # a loop: numba compiles a slice copy slowly
                    for c in range(area.shape[3]):
                        area[o, k, t, c] = area[done, k, t, c]
                        overlap[o, k, t, c] = overlap[done, k, t, c]
                continue
            _count_levels(
                n, rule, true_flat[k], width, height, len(thresholds), rank, minimums,
                scratch, area[o, k], overlap[o, k],
            )  # fmt: skip
            if rule:
                ruled = o
            else:
                plain = o


@njit(cache=True, nogil=True)
def _count_levels(
    n, rule, truth, width, height, levels, rank, minimums, scratch, area, overlap
):  # pragma: no cover
    """Counts of one class into ``area`` and ``overlap`` (T, K) from its ``n`` pixels
    above the lowest threshold (``scratch``'s found, their rows and levels), less the
    beaten ones under the ``rule``.

    Without component minimums, the area above threshold t counts the pixels above
    level t. With them, pixels join a union-find level by level from the top, a run at
    a time (neighbours in a row, of one level), each run merged with the components of
    its 8-neighbours already in; for each minimum the sum of the sizes (and true
    pixels) of the components at least that large is kept up to date at each merge,
    and read after each level."""
    parent, size, true, found, level, ordered, found_row, ordered_row, beaten = scratch
    hist = np.zeros(levels + 1, np.int64)
    hist_true = np.zeros(levels + 1, np.int64)
    for i in range(n):
        if not (rule and beaten[i]):
            hist[level[i]] += 1
            hist_true[level[i]] += 1 if truth[found[i]] else 0
    components = False
    for c in range(len(minimums)):
        components |= minimums[c] > 0
    if not components:
        above, above_true = 0, 0
        for t in range(levels - 1, -1, -1):
            above += hist[t + 1]
            above_true += hist_true[t + 1]
            area[rank[t]] = above
            overlap[rank[t]] = above_true
        return
    start = np.zeros(levels + 1, np.int64)  # the pixels ordered by level, highest first
    at = 0
    for lev in range(levels, 0, -1):
        start[lev] = at
        at += hist[lev]
    for i in range(n):
        if not (rule and beaten[i]):
            ordered[start[level[i]]] = found[i]
            ordered_row[start[level[i]]] = found_row[i]
            start[level[i]] += 1
    sums = np.zeros(len(minimums), np.int64)
    sums_true = np.zeros(len(minimums), np.int64)
    at = 0
    for t in range(levels - 1, -1, -1):  # add the pixels of level t + 1, a run at a time
        end = at + hist[t + 1]
        while at < end:
            p, row = ordered[at], ordered_row[at]
            last = at + 1  # the run: pixels next to each other in one row
            while (
                last < end and ordered[last] == ordered[last - 1] + 1 and ordered_row[last] == row
            ):
                last += 1
            length = last - at
            run_true = 0
            for i in range(at, last):
                parent[ordered[i]] = p
                run_true += 1 if truth[ordered[i]] else 0
            at = last
            size[p], true[p] = length, run_true
            for c in range(len(minimums)):
                if length >= minimums[c]:
                    sums[c] += length
                    sums_true[c] += run_true
            root, seen = p, -1
            col = p - row * width
            lo, hi = max(col - 1, 0), min(col + length + 1, width)
            for r in range(max(row - 1, 0), min(row + 2, height)):
                for q in range(r * width + lo, r * width + hi):
                    up = parent[q]
                    if up < 0 or up == seen or (r == row and up == p):
                        continue
                    other = _root(parent, q)
                    root = _root(parent, root)
                    seen = other
                    if other == root:
                        continue
                    sa, sb, ta, tb = size[root], size[other], true[root], true[other]
                    for c in range(len(minimums)):
                        if sa >= minimums[c]:
                            sums[c] -= sa
                            sums_true[c] -= ta
                        if sb >= minimums[c]:
                            sums[c] -= sb
                            sums_true[c] -= tb
                        if sa + sb >= minimums[c]:
                            sums[c] += sa + sb
                            sums_true[c] += ta + tb
                    if sa < sb:
                        root, other = other, root
                    parent[other] = root
                    size[root], true[root] = sa + sb, ta + tb
                    seen = root
        for c in range(len(minimums)):
            area[rank[t], c] = sums[c]
            overlap[rank[t], c] = sums_true[c]
    for i in range(at):
        parent[ordered[i]] = -1


def class_dice(ev: Evidence | Tally, o: int, k: int, gates, min_areas) -> np.ndarray:
    """Mean Dice of class index ``k`` with non-overlap option ``o``, for every (gate,
    pixel threshold, min area, min component area): (G, T, A, K)."""
    tally = ev if isinstance(ev, Tally) else Tally.of(ev, gates, min_areas)
    return tally.table(o, k, gates, min_areas)


def area_bounds(cache: MaskCache, quantile: float | None) -> np.ndarray:
    """(C,) the largest minimum area the search may give each class: the ``quantile``
    of the class's true mask areas over every image of ``cache`` (inf where the class
    has no mask, or ``quantile`` is None)."""
    if quantile is None:
        return np.full(len(CLASSES), np.inf)
    areas = cache.areas().T  # (C, images)
    return np.array([np.quantile(a[a > 0], quantile) if a.any() else np.inf for a in areas])


def search(ev: Evidence | Tally, cfg: dict, bounds: np.ndarray | None = None) -> dict:
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
    tally = ev if isinstance(ev, Tally) else Tally.of(ev, gates, areas)
    options, _, _, thresholds, _, components = tally.sums.shape
    if (options, thresholds, components) != (len(cfg["non_overlap"]), len(pixels), len(pieces)):
        raise ValueError(
            f"a tally of {options} non-overlap options, {thresholds} pixel thresholds and "
            f"{components} component minimums, searched with {len(cfg['non_overlap'])}, "
            f"{len(pixels)} and {len(pieces)}: gather the evidence with the tune settings "
            "that the search uses"
        )
    bounds = np.full(len(CLASSES), np.inf) if bounds is None else bounds
    n = tally.images
    empty = tally.clean / n  # (C,) Dice of predicting the class empty
    support = n - tally.clean
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
            table = class_dice(tally, o, k, gates, areas)
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


def plot_search(ev: Evidence | Tally, cfg: dict, result: dict, path: Path) -> None:
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
