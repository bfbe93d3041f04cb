"""The mask cache: every train.csv mask decoded once, bit-packed for random access.

Layout of the cache folder:
  bits.npy   (n_masks, H * W / 8) uint8: each mask's (H, W) pixels, packed 8 to a byte
  index.csv  ImageId and, per class 1-4, the row of its mask in bits.npy (-1 = none);
             every train image is listed, clean ones with -1 four times
  shape.json the (height, width) of the masks
A Kaggle-sized set (7,095 masks) takes about 360 MB; one image's masks unpack in
well under a millisecond.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from steelflow import rle
from steelflow.atomic import atomic_dir
from steelflow.errors import SteelflowError
from steelflow.images import list_images
from steelflow.io import CLASSES, read_masks

SLOTS = [f"mask_{c}" for c in CLASSES]


class MaskError(SteelflowError):
    """A train.csv mask that cannot go into the cache; the message names file and line."""


def build(train_csv: Path, images_dir: Path, out: Path) -> None:
    """Decode every mask of ``train_csv`` into the cache folder ``out``, atomically;
    every image of ``images_dir`` (``list_images``) is listed.

    Malformed RLE and masks of two classes that overlap are errors naming the lines.
    """
    table = read_masks(train_csv)
    table = table[table.EncodedPixels != ""]
    images = [path.name for path in list_images(images_dir)]
    unknown = sorted(set(table.ImageId) - set(images))
    if unknown:
        raise MaskError(f"{train_csv}: image {unknown[0]} has masks but is not in {images_dir}")
    height, width = rle.SHAPE
    index = pd.DataFrame(-1, index=pd.Index(images, name="ImageId"), columns=SLOTS)
    with atomic_dir(out, "masks") as tmp:
        bits = np.lib.format.open_memmap(
            tmp / "bits.npy", mode="w+", dtype=np.uint8, shape=(len(table), height * width // 8)
        )
        masks = tqdm(
            decoded(table, train_csv), "decoding masks", len(table), unit="mask", mininterval=2
        )
        for row, (image, cls, mask) in enumerate(masks):
            bits[row] = np.packbits(mask)
            index.loc[image, f"mask_{cls}"] = row
        bits.flush()
        del bits
        index.to_csv(tmp / "index.csv")
        (tmp / "shape.json").write_text(json.dumps([height, width]) + "\n")


def decoded(table: pd.DataFrame, train_csv: str | Path) -> Iterator[tuple[str, int, np.ndarray]]:
    """(ImageId, ClassId, mask) of each defect row of ``table`` (indexed by line), image by
    image: a malformed RLE, or two classes' masks of an image that overlap, is a MaskError
    naming ``train_csv`` and the lines."""
    for image, masks in table.groupby("ImageId", sort=True):
        taken = np.zeros(rle.SHAPE, np.uint8)  # class of each pixel so far
        for line, cls, text in zip(masks.index, masks.ClassId, masks.EncodedPixels, strict=True):
            try:
                mask = rle.decode(text)
            except ValueError as e:
                raise MaskError(f"{train_csv}, line {line}: {e}") from None
            clash = taken[mask.astype(bool)]
            if clash.any():
                other = masks.index[masks.ClassId == clash.max()][0]
                raise MaskError(
                    f"{train_csv}, line {line}: the class {cls} mask of {image} overlaps "
                    f"its class {clash.max()} mask (line {other}); classes never overlap"
                )
            taken[mask.astype(bool)] = cls
            yield image, cls, mask


class MaskCache:
    """Read access to a mask cache: ``cache[image_id]`` is a (4, H, W) uint8 0/1 array."""

    def __init__(self, folder: str | Path):
        self.folder = folder = Path(folder)
        try:
            self.index = pd.read_csv(folder / "index.csv", index_col="ImageId")
            self.shape = tuple(json.loads((folder / "shape.json").read_text()))
            self.bits = np.load(folder / "bits.npy", mmap_mode="r")
            self.index[SLOTS]  # noqa: B018 (checks the columns)
        except (ValueError, KeyError, UnicodeDecodeError, OSError) as e:
            raise MaskError(
                f"{folder}: not a mask cache made by steelflow masks ({type(e).__name__}: {e})"
            ) from None
        self._rows = dict(zip(self.index.index, self.index[SLOTS].to_numpy(), strict=True))

    def __getstate__(self) -> dict:
        """Pickled (to a loader worker started by spawn or forkserver) without the bits:
        the worker maps the file again rather than holding a copy of every mask."""
        return {k: v for k, v in self.__dict__.items() if k != "bits"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__ = state | {"bits": np.load(state["folder"] / "bits.npy", mmap_mode="r")}

    @property
    def image_ids(self) -> list[str]:
        return self.index.index.tolist()

    def classes(self) -> pd.DataFrame:
        """0/1 flags per image (rows) and class 1-4 (columns)."""
        flags = (self.index[SLOTS] >= 0).astype(int)
        flags.columns = list(CLASSES)
        return flags

    def areas(self) -> np.ndarray:
        """(images, C) true mask areas in pixels, in ``image_ids`` order; 0: no mask."""
        counts = np.bitwise_count(self.bits).sum(axis=1, dtype=np.int64)
        rows = self.index[SLOTS].to_numpy()
        areas = np.zeros(rows.shape, np.int64)
        areas[rows >= 0] = counts[rows[rows >= 0]]
        return areas

    def __getitem__(self, image_id: str) -> np.ndarray:
        try:
            rows = self._rows[image_id]
        except KeyError:
            raise KeyError(f"image {image_id} is not in the mask cache") from None
        height, width = self.shape
        out = np.zeros((len(CLASSES), height, width), np.uint8)
        for k, row in enumerate(rows):
            if row >= 0:
                out[k] = np.unpackbits(self.bits[row], count=height * width).reshape(height, width)
        return out
