"""Synthetic steel images in the Kaggle layout, for runs without the competition data.

Each image is gray steel with vertical streak texture, uneven brightness, grain
and specks, sometimes a black region where the strip ends. Defects are drawn
with the look of their class, and the mask is a loose polygon around what was
drawn, as annotators drew them. Class combinations per image follow the real
train set, mask sizes follow the real masks; ``preset`` sets how visible the
defects are. Every image depends only on (seed, split, index), so the output is
byte-identical for the same settings, however many workers draw it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial
from multiprocessing import Pool
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from steelflow import rle
from steelflow.errors import SteelflowError
from steelflow.io import CLASSES, COLUMNS

H, W = rle.SHAPE

# Image-level class combinations of the real train set (train_image_classes.csv):
# flags for classes 1-4 -> number of images, 12,568 in all.
REAL_COMBINATIONS = {
    (0, 0, 0, 0): 5902,
    (0, 0, 1, 0): 4759,
    (1, 0, 0, 0): 769,
    (0, 0, 0, 1): 516,
    (0, 0, 1, 1): 284,
    (0, 1, 0, 0): 195,
    (1, 0, 1, 0): 91,
    (1, 1, 0, 0): 35,
    (0, 1, 1, 0): 14,
    (1, 1, 1, 0): 2,
    (0, 1, 0, 1): 1,
}

# How strongly defects stand out from the steel (intensity contrast, gray levels).
PRESETS = {"clear": 1.0, "realistic": 0.4}
WHOLE = f"1 {rle.SHAPE[0] * rle.SHAPE[1]}"  # the RLE of the whole image, today's sample rows


@dataclass(frozen=True)
class Drawn:
    """One image: 8-bit gray pixels and one 0/1 mask per class (index 0 = class 1)."""

    image: np.ndarray
    masks: np.ndarray


def image_id(seed: int, split: str, index: int) -> str:
    """A Kaggle-like ImageId (9 hex digits + .jpg), fixed by (seed, split, index)."""
    digest = hashlib.blake2b(f"{seed}/{split}/{index}".encode(), digest_size=8).hexdigest()
    return f"{digest[:9]}.jpg"


def _smooth_noise(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Gaussian noise on a coarse (rows, cols) grid, upsampled to the image size."""
    coarse = rng.standard_normal((rows, cols), dtype=np.float32)
    return cv2.resize(coarse, (W, H), interpolation=cv2.INTER_CUBIC)


def _steel(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Clean steel: returns (float32 image, bool map of where defects may go)."""
    img = np.full((H, W), rng.uniform(55, 115), np.float32)
    img += _smooth_noise(rng, 2, 5) * rng.uniform(8, 20)  # uneven illumination
    img += _smooth_noise(rng, 3, 40) * rng.uniform(5, 12)  # broad vertical bands
    img += _smooth_noise(rng, 24, 150) * rng.uniform(1.5, 4)  # mottled surface
    img += _smooth_noise(rng, 6, 400) * rng.uniform(4, 9)  # streaks along the strip
    columns = rng.standard_normal(W).astype(np.float32) * rng.uniform(2.5, 6)
    img += columns[None, :]  # fine streaks, constant down each column
    img += rng.standard_normal((H, W), dtype=np.float32) * np.float32(rng.uniform(8, 14))
    marks = np.zeros((H, W), np.float32)  # flakes, specks and streaks that are not defects
    for _ in range(rng.integers(0, 8)):
        x, y0 = int(rng.integers(0, W)), int(rng.integers(-100, H))
        length = int(rng.integers(30, 256))
        cv2.line(
            marks,
            (x, y0),
            (x + int(rng.normal(0, 2)), y0 + length),
            float(rng.choice([-1, 1]) * rng.uniform(8, 25)),
            int(rng.integers(1, 3)),
        )
    n = int(rng.choice([rng.integers(20, 120), rng.integers(300, 1500)]))
    ys, xs = rng.integers(0, H, n), rng.integers(0, W, n)
    if rng.random() < 0.5:  # flakes concentrate on one part of the sheet
        xs = np.clip(rng.normal(rng.uniform(0, W), rng.uniform(50, 400), n), 0, W - 1).astype(int)
    for x, y, r, d in zip(xs, ys, rng.integers(1, 3, n), rng.normal(-22, 18, n), strict=True):
        cv2.circle(marks, (int(x), int(y)), int(r), float(d), -1)
    img += marks
    allowed = np.ones((H, W), bool)
    if rng.random() < 0.12:  # the end of the strip: a black region at one side
        edge = rng.uniform(250, 1350) + np.cumsum(rng.normal(0, 0.6, H))
        dark = rng.uniform(0, 6)
        left = rng.random() < 0.5
        for y, x in enumerate(np.clip(edge, 1, W - 1).astype(int)):
            if left:
                img[y, :x] = dark
                allowed[y, : x + 40] = False
            else:
                img[y, x:] = dark
                allowed[y, max(x - 40, 0) :] = False
    return img, allowed


def _loose_polygon(
    rng: np.random.Generator, x0: float, y0: float, x1: float, y1: float, pad: float
) -> np.ndarray:
    """A convex polygon around the box (x0, y0)-(x1, y1), padded and jittered."""
    xs = np.array([x0, x1, x1, x0, (x0 + x1) / 2, (x0 + x1) / 2, x0, x1])
    ys = np.array([y0, y0, y1, y1, y0, y1, (y0 + y1) / 2, (y0 + y1) / 2])
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    xs = xs + np.sign(xs - cx) * pad * rng.uniform(0.6, 1.4, 8)
    ys = ys + np.sign(ys - cy) * pad * rng.uniform(0.6, 1.4, 8)
    pts = np.stack([np.clip(xs, 0, W - 1), np.clip(ys, 0, H - 1)], axis=1)
    return cv2.convexHull(np.round(pts).astype(np.int32))


def _pits(rng, img, v):
    """Class 1: a small faint pit or spot, dark or bright, with a loose box around it.

    Each defect adds its intensity change to ``img`` and returns its mask polygon.
    """
    w, h = rng.uniform(2, 7), rng.uniform(4, 16)
    cx, cy = rng.uniform(w + 20, W - w - 20), rng.uniform(h, H - h)
    spot = np.zeros((H, W), np.uint8)
    cv2.ellipse(spot, (int(cx), int(cy)), (int(w), int(h)), rng.uniform(-20, 20), 0, 360, 1, -1)
    for _ in range(rng.integers(2, 8)):  # pitting around the spot
        px, py = int(cx + rng.normal(0, w)), int(cy + rng.normal(0, h))
        cv2.circle(spot, (px, py), int(rng.integers(1, 3)), 1, -1)
    sign = rng.choice([-1, 1], p=[0.7, 0.3])
    img += spot * np.float32(sign * rng.uniform(25, 45) * v)
    return _loose_polygon(rng, cx - w, cy - h, cx + w, cy + h, rng.uniform(4, 9))


def _scratch(rng, img, v):
    """Class 2: a thin vertical scratch."""
    length, width = rng.uniform(50, 160), rng.integers(2, 4)
    x, y0 = rng.uniform(20, W - 20), rng.uniform(-40, H - 40)
    y0, y1 = max(y0, 0), min(y0 + length, H - 1)
    dx = rng.uniform(-4, 4)
    line = np.zeros((H, W), np.uint8)
    cv2.line(line, (int(x), int(y0)), (int(x + dx), int(y1)), 1, int(width))
    img += line * np.float32(rng.choice([-1, 1]) * rng.uniform(35, 55) * v)
    xa, xb = min(x, x + dx), max(x, x + dx)
    return _loose_polygon(rng, xa, y0, xb, y1, rng.uniform(3, 6))


def _scrape(rng, img, v):
    """Class 3: an elongated vertical streak or scrape, rough inside."""
    width = float(np.exp(rng.uniform(np.log(5), np.log(80))))
    height = H if rng.random() < 0.4 else rng.uniform(50, H)
    x, y0 = rng.uniform(10, W - width - 10), rng.uniform(0, H - height)
    band = np.zeros((H, W), np.float32)
    x0, x1, y1 = int(x), int(x + width), int(y0 + height)
    for _ in range(max(2, int(width / 6))):  # parallel streaks make up the scrape
        sx = rng.uniform(x0, x1)
        sw = int(rng.integers(1, 4))
        sy0, sy1 = rng.uniform(y0, y0 + height / 3), rng.uniform(y0 + 2 * height / 3, y1)
        cv2.line(
            band,
            (int(sx), int(sy0)),
            (int(sx + rng.normal(0, 2)), int(sy1)),
            float(rng.uniform(0.5, 1.0)),
            sw,
        )
    taper = np.sqrt(np.sin(np.linspace(0.05, np.pi - 0.05, x1 - x0, dtype=np.float32)))
    rough = rng.standard_normal((y1 - int(y0), x1 - x0), dtype=np.float32) * 0.35 + 0.25
    band[int(y0) : y1, x0:x1] += rough * taper
    sign = rng.choice([-1, 1], p=[0.35, 0.65])
    img += band * np.float32(sign * rng.uniform(35, 55) * v)
    return _loose_polygon(rng, x0, y0, x1, y1, rng.uniform(2, 5))


def _blotch(rng, img, v):
    """Class 4: a large dark, rough blotch with a ragged outline."""
    w = float(np.exp(rng.uniform(np.log(25), np.log(170))))
    h = min(w * rng.uniform(0.4, 1.0), 110)
    cx, cy = rng.uniform(w, W - w), rng.uniform(h * 0.5, H - h * 0.5)
    x0, x1 = int(max(cx - 1.6 * w, 0)), int(min(cx + 1.6 * w, W))
    y0, y1 = int(max(cy - 1.6 * h, 0)), int(min(cy + 1.6 * h, H))
    size = (x1 - x0, y1 - y0)
    blob = np.zeros(size[::-1], np.float32)
    for _ in range(rng.integers(3, 7)):
        ex, ey = cx - x0 + rng.normal(0, w / 3), cy - y0 + rng.normal(0, h / 3)
        axes = (int(rng.uniform(0.3, 0.7) * w), int(rng.uniform(0.3, 0.7) * h))
        cv2.ellipse(blob, (int(ex), int(ey)), axes, rng.uniform(0, 180), 0, 360, 1.0, -1)
    blob = cv2.GaussianBlur(blob, (0, 0), 6)

    def noise() -> np.ndarray:
        coarse = rng.standard_normal((max(size[1] // 6, 2), max(size[0] // 6, 2)), np.float32)
        return cv2.resize(coarse, size, interpolation=cv2.INTER_CUBIC)

    inside = (blob + noise() * 0.2 * (blob > 0.05)) > 0.5  # a ragged outline
    rough = noise() * 0.5 + 1.0
    rough[rng.random(rough.shape) < 0.02] = -0.6  # bright specks in the blotch
    img[y0:y1, x0:x1] -= inside * rough * np.float32(rng.uniform(35, 55) * v)
    ys, xs = np.nonzero(inside)
    if ys.size == 0:
        return _loose_polygon(rng, cx, cy, cx, cy, 1)
    return _loose_polygon(
        rng, x0 + xs.min(), y0 + ys.min(), x0 + xs.max(), y0 + ys.max(), rng.uniform(4, 10)
    )


DRAW = {1: _pits, 2: _scratch, 3: _scrape, 4: _blotch}
COUNT = {1: (1, 4), 2: (1, 1), 3: (1, 2), 4: (1, 1)}  # defects per image, min and max


def draw_image(rng: np.random.Generator, classes: tuple[int, ...], visibility: float) -> Drawn:
    """Draw one image with defects of ``classes``; masks never overlap."""
    img, allowed = _steel(rng)
    label = np.zeros((H, W), np.uint8)  # class of each masked pixel, 0 = none
    for cls in classes:
        wanted = rng.integers(COUNT[cls][0], COUNT[cls][1] + 1)
        placed = 0
        for _ in range(40):  # retries for a spot free of other masks and of the black region
            if placed == wanted:
                break
            signal = np.zeros((H, W), np.float32)
            polygon = DRAW[cls](rng, signal, visibility)
            region = np.zeros((H, W), np.uint8)
            cv2.fillConvexPoly(region, polygon, 1)
            inside = region.astype(bool)
            if (label[inside] != 0).any() or not allowed[inside].all():
                continue
            img += signal * region  # what is drawn is what is labelled
            label[inside] = cls
            placed += 1
    masks = np.stack([(label == c).astype(np.uint8) for c in CLASSES])
    gray = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return Drawn(gray, masks)


SPLITS = ("train", "test")


def _draw_file(
    index: int, *, seed: int, split: str, folder: Path, visibility: float, quality: int
) -> tuple[str, list[str]]:
    """Draw image ``index`` of ``split`` into ``folder`` as JPEG; return (ImageId, RLEs)."""
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    combos = list(REAL_COMBINATIONS)
    weights = np.array(list(REAL_COMBINATIONS.values()), float)
    flags = combos[rng.choice(len(combos), p=weights / weights.sum())]
    classes = tuple(c for c, flag in zip(CLASSES, flags, strict=True) if flag)
    drawn = draw_image(rng, classes, visibility)
    name = image_id(seed, split, index)
    rgb = cv2.merge([drawn.image] * 3)  # Severstal JPEGs have three identical channels
    if not cv2.imwrite(str(folder / name), rgb, [cv2.IMWRITE_JPEG_QUALITY, quality]):
        raise SteelflowError(f"could not write {folder / name}")
    return name, rle.encode_many(drawn.masks)


def _mask_table(rows: list[tuple[str, list[str]]], clean: bool) -> pd.DataFrame:
    """New-layout table (ImageId, ClassId, EncodedPixels) of the masks: the defects,
    and with ``clean`` an empty row for each clean class too (a truth that names
    every image it covers)."""
    table = [
        (name, cls, text)
        for name, texts in rows
        for cls, text in enumerate(texts, 1)
        if text or clean
    ]
    return pd.DataFrame(table, columns=COLUMNS).sort_values(["ImageId", "ClassId"])


def generate(
    out: Path,
    n_train: int,
    n_test: int,
    *,
    seed: int,
    preset: str,
    jpeg_quality: int,
    workers: int,
) -> None:
    """Write a synthetic data set in the Kaggle layout into the empty folder ``out``.

    train.csv (defects only) and test_truth.csv (every image and class, empty where
    clean), both ``ImageId,ClassId,EncodedPixels``,
    sample_submission.csv as Kaggle serves it today (one ``IMAGE,1 409600,0`` row
    per test image), train_images/ and test_images/.
    """
    with Pool(workers) as pool:
        for split, count in (("train", n_train), ("test", n_test)):
            folder = out / f"{split}_images"
            folder.mkdir()
            draw = partial(
                _draw_file,
                seed=seed,
                split=split,
                folder=folder,
                visibility=PRESETS[preset],
                quality=jpeg_quality,
            )
            rows = list(
                tqdm(
                    pool.imap(draw, range(count), chunksize=8),
                    total=count,
                    desc=f"synthetic {split} images",
                    unit="img",
                )
            )
            table = _mask_table(rows, clean=split == "test")
            table.to_csv(out / ("train.csv" if split == "train" else "test_truth.csv"), index=False)
            if split == "test":
                names = sorted(name for name, _ in rows)
                sample = pd.DataFrame({"ImageId": names, "EncodedPixels": WHOLE, "ClassId": 0})
                sample.to_csv(out / "sample_submission.csv", index=False)
