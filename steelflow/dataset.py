"""Datasets for training: train images, cached masks and folds, with augmentation.

Images are decoded gray at full size and area-resized to the network's ``scale``,
once per training (``DecodedImages``); prediction reads them the same way. Random
choices depend only on (seed, epoch, index), and ``EpochSampler`` hands the epoch
with each index, so an epoch is the same with any number of loader workers,
persistent or not, and after a resume.
"""

from __future__ import annotations

import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

from steelflow.device import usable_cores
from steelflow.distributed import from_main, is_main
from steelflow.errors import SteelflowError
from steelflow.images import read_gray
from steelflow.masks import MaskCache
from steelflow.rle import SHAPE

log = logging.getLogger(__name__)

MEAN, STD = 0.4, 0.2  # gray levels / 255 of steel, roughly; inputs are (x - MEAN) / STD


def shape_at(scale: float) -> tuple[int, int]:
    """(height, width) of a network's input at ``scale`` of 256x1600."""
    return round(SHAPE[0] * scale), round(SHAPE[1] * scale)


def at_scale(gray: np.ndarray, scale: float) -> np.ndarray:
    """A gray image (any size) as a network of ``scale`` takes it: area-resized to
    ``shape_at(scale)``. Training and prediction both go through here, so a network
    sees the same pixels in both, and one decode serves every scale."""
    height, width = shape_at(scale)
    if gray.shape == (height, width):
        return gray
    return cv2.resize(gray, (width, height), interpolation=cv2.INTER_AREA)


def masks_at_scale(masks: np.ndarray, scale: float, present: np.ndarray) -> np.ndarray:
    """(4, H, W) 0/1 masks as a network of ``scale`` takes them, resized as its image
    is (``at_scale``), so each mask pixel lies under the image pixel it labels: it holds
    the share of its area that is defect, 0-255. Only the ``present`` classes are
    resized; the others are empty."""
    out = np.zeros((len(masks), *shape_at(scale)), np.uint8)
    for k in np.flatnonzero(present):
        out[k] = at_scale(masks[k] * np.uint8(255), scale)
    return out


def normalise(gray: torch.Tensor) -> torch.Tensor:
    """uint8 gray levels to the networks' float input, (x / 255 - MEAN) / STD."""
    return (gray.float() / 255 - MEAN) / STD


def split_ids(split_csv: Path, val_fold: int, cache: MaskCache) -> tuple[list[str], list[str]]:
    """(train ImageIds, validation ImageIds) of ``split.csv``, which must hold the images
    of the mask ``cache`` it was made from, and ``val_fold``."""
    try:
        folds = pd.read_csv(split_csv, keep_default_na=False, dtype={"ImageId": str})
        ids, val = folds["ImageId"], folds["fold"] == val_fold
    except (ValueError, KeyError, UnicodeDecodeError, OSError) as e:
        raise SteelflowError(
            f"{split_csv}: not a split made by steelflow split (expected columns ImageId, fold; "
            f"{type(e).__name__}: {e})"
        ) from None
    if set(ids) != set(cache.image_ids):
        stale = sorted(set(ids) ^ set(cache.image_ids))
        raise SteelflowError(
            f"{split_csv}: made from another mask cache than {cache.folder} "
            f"({len(stale)} images in one but not the other, e.g. {stale[0]}); "
            "run steelflow split again"
        )
    if not val.any():
        raise SteelflowError(
            f"{split_csv}: fold {val_fold} has no images; its folds are "
            f"{', '.join(map(str, sorted(set(folds['fold']))))}"
        )
    return ids[~val].tolist(), ids[val].tolist()


class DecodedImages:
    """Images decoded once at full size and stored at ``scale`` (``at_scale``) in a
    uint8 array file of its own in ``folder``: the epochs then read pixels instead of
    decoding JPEGs, which is most of a sample's time. The main process decodes; the
    other processes of a torchrun job and every loader worker map the same file
    (pickled, this is its path, not its pixels).
    """

    def __init__(self, images_dir: Path, image_ids: list[str], scale: float, folder: Path):
        self.scale = scale
        self.rows = {image_id: row for row, image_id in enumerate(image_ids)}
        # the others wait for the path; should decoding fail, torchrun stops them
        path = self._decode(images_dir, image_ids, folder) if is_main() else None
        self.path = from_main(path)
        self.pixels = np.load(self.path, mmap_mode="r")

    def _decode(self, images_dir: Path, image_ids: list[str], folder: Path) -> Path:
        """A new array file in ``folder`` of ``image_ids`` at ``scale``, a thread per core."""
        handle, name = tempfile.mkstemp(prefix=f"images_{self.scale}_", suffix=".npy", dir=folder)
        os.close(handle)
        shape = (len(image_ids), *shape_at(self.scale))
        log.info("decoding %d images into %s (%.2f GB)", len(image_ids), name, np.prod(shape) / 1e9)
        pixels = np.lib.format.open_memmap(name, mode="w+", dtype=np.uint8, shape=shape)

        def decode(row: int) -> None:
            path = Path(images_dir) / image_ids[row]
            gray = read_gray(path)
            if gray.shape != SHAPE:
                raise SteelflowError(
                    f"{path}: {gray.shape[1]}x{gray.shape[0]} pixels, "
                    f"expected {SHAPE[1]}x{SHAPE[0]} (the train images' size)"
                )
            pixels[row] = at_scale(gray, self.scale)

        bar = tqdm(desc="decoding images", total=len(image_ids), unit="img")
        with bar, ThreadPoolExecutor(usable_cores()) as pool:  # libjpeg frees the GIL
            try:
                for _ in pool.map(decode, range(len(image_ids))):
                    bar.update()
            except BaseException:
                pool.shutdown(cancel_futures=True)  # the first error stops the decoding
                raise
        pixels.flush()
        return Path(name)

    def __getitem__(self, image_id: str) -> np.ndarray:
        """A copy of the image's (h, w) uint8 pixels at ``scale``."""
        return np.array(self.pixels[self.rows[image_id]])

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "pixels"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__ = state | {"pixels": np.load(state["path"], mmap_mode="r")}


class SteelDataset(Dataset):
    """Train or validation samples of ``image_ids``, their pixels from ``decoded`` (at
    its scale), indexed by (index, epoch) as ``EpochSampler`` draws them:
    (image (1, h, w), masks (4, h, w), flags (4,)); image and masks stay uint8,
    a quarter of float's bytes through the loader's workers, pinned memory and the copy
    to the device (``train.on_device`` makes them floats there). A mask pixel holds the
    share of its area that is defect (``masks_at_scale``), 0-255.

    ``crop_width`` (pixels at ``scale``) takes a random crop of that width in
    training, centred on a defect pixel with probability ``defect_crop_prob``;
    None keeps the full width. ``augment`` holds hflip, vflip (bools) and
    brightness, contrast (jitter ranges); None turns augmentation off.
    """

    def __init__(
        self,
        decoded: DecodedImages,
        cache: MaskCache,
        image_ids: list[str],
        *,
        crop_width: int | None = None,
        defect_crop_prob: float = 0.0,
        augment: dict | None = None,
        seed: int = 0,
    ):
        self.decoded = decoded
        self.cache = cache
        self.image_ids = image_ids
        self.scale = decoded.scale
        self.crop_width = crop_width
        self.defect_crop_prob = defect_crop_prob
        self.augment = augment
        self.seed = seed
        flags = cache.classes().loc[image_ids]
        self.flags = torch.tensor(flags.to_numpy(), dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, key: tuple[int, int]):
        i, epoch = key
        rng = np.random.default_rng([self.seed, epoch, i])
        image_id = self.image_ids[i]
        gray = self.decoded[image_id]
        masks = masks_at_scale(self.cache[image_id], self.scale, self.flags[i].numpy())
        if self.crop_width and self.crop_width < gray.shape[1]:
            x = self._crop_start(rng, masks, gray.shape[1])
            gray = gray[:, x : x + self.crop_width]
            masks = masks[:, :, x : x + self.crop_width]
        if self.augment:
            gray, masks = self._augmented(rng, gray, masks)
        return (
            torch.from_numpy(np.ascontiguousarray(gray))[None],
            torch.from_numpy(np.ascontiguousarray(masks)),
            self.flags[i],
        )

    def _crop_start(self, rng: np.random.Generator, masks: np.ndarray, width: int) -> int:
        last = width - self.crop_width
        present = np.flatnonzero(masks.any(axis=(1, 2)))
        if present.size and rng.random() < self.defect_crop_prob:
            # a class first, then one of its columns: small classes get their share
            columns = np.flatnonzero(masks[rng.choice(present)].any(axis=0))
            centre = int(rng.choice(columns))
            return int(np.clip(centre - self.crop_width // 2 + rng.integers(-8, 9), 0, last))
        return int(rng.integers(0, last + 1))

    def _augmented(self, rng, gray: np.ndarray, masks: np.ndarray):
        aug = self.augment
        if aug["hflip"] and rng.random() < 0.5:
            gray, masks = gray[:, ::-1], masks[:, :, ::-1]
        if aug["vflip"] and rng.random() < 0.5:
            gray, masks = gray[::-1], masks[:, ::-1]
        if aug["brightness"] or aug["contrast"]:
            gain = 1 + rng.uniform(-aug["contrast"], aug["contrast"])
            shift = 255 * rng.uniform(-aug["brightness"], aug["brightness"])
            gray = np.clip(gray.astype(np.float32) * gain + shift, 0, 255).astype(np.uint8)
        return gray, masks


class EpochSampler(Sampler[tuple[int, int]]):
    """The indices of ``order``, each with the epoch it is drawn for. The loader sends
    the pairs to its workers, so a sample's random choices follow the epoch in every
    worker: a persistent worker keeps its own copy of the dataset, which an epoch set
    on the main process's copy would never reach."""

    def __init__(self, order: Sampler[int]):
        self.order, self.epoch = order, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.order, "set_epoch"):  # a shuffle of its own per epoch
            self.order.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self):
        epoch = self.epoch
        return ((i, epoch) for i in self.order)


class BalancedSampler(Sampler[int]):
    """An epoch of training indices drawn by group (class 1-4, or clean): a group with
    probability proportional to its size ** ``power``, then an image of that group.

    ``power`` 0 draws each class, and clean images, equally often: rare classes
    (class 2 is in 2% of the real images) are seen as often as common ones, and
    are predicted more often than they occur. 0.5 (square root) goes part of
    the way. Draws depend only on (seed, epoch, rank); under torchrun each
    process draws its own share.
    """

    def __init__(
        self, flags: torch.Tensor, seed: int, rank: int = 0, world: int = 1, power: float = 0.0
    ):
        has = flags.bool().numpy()
        groups = [np.flatnonzero(has[:, k]) for k in range(has.shape[1])]
        groups.append(np.flatnonzero(~has.any(axis=1)))
        self.groups = [g for g in groups if g.size]
        weights = np.array([g.size for g in self.groups], dtype=float) ** power
        # None when uniform: numpy then draws as integers() did, so earlier runs reproduce
        self.weights = weights / weights.sum() if power else None
        self.seed, self.rank, self.epoch = seed, rank, 0
        self.size = -(-len(has) // world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch, self.rank])
        picks = rng.choice(len(self.groups), self.size, p=self.weights)
        return iter(int(rng.choice(self.groups[g])) for g in picks)
