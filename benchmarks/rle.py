"""Median microseconds per mask for RLE decode and encode at ~1%, 10% and 40% coverage.

Compares steelflow's numba codec with the common Kaggle numpy snippet, pycocotools
(if installed) and a memset bound (np.zeros + fill of one image), all in one run.
Writes benchmarks/results/rle.json and rle.md.

    python benchmarks/rle.py
"""

from __future__ import annotations

import time

import cv2
import numpy as np
from common import cpu_name, write_results

from steelflow import rle

H, W = rle.SHAPE


def kaggle_decode(text: str, shape=(H, W)) -> np.ndarray:
    """The snippet most Severstal kernels used (plus the C-contiguous copy)."""
    s = text.split()
    starts, lengths = (np.asarray(x, dtype=int) for x in (s[0::2], s[1::2]))
    starts -= 1
    ends = starts + lengths
    img = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    for lo, hi in zip(starts, ends, strict=True):
        img[lo:hi] = 1
    return np.ascontiguousarray(img.reshape(shape, order="F"))


def kaggle_encode(img: np.ndarray) -> str:
    pixels = img.T.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def memset_bound() -> None:
    np.zeros(H * W, np.uint8).fill(1)


def defect_masks(coverage: float, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Masks shaped like Severstal's: one to three loose convex polygons covering
    ``coverage`` +-15% of the image (real masks at 10% have about 480 runs)."""
    masks = []
    while len(masks) < count:
        mask = np.zeros((H, W), np.uint8)
        area = coverage * H * W / rng.integers(1, 4)
        while mask.mean() < 0.9 * coverage:
            height = rng.uniform(0.3, 1.0) * min(H, 4 * np.sqrt(area))
            width = min(W, area / (0.65 * height))  # a hull fills about 0.65 of its box
            centre = rng.uniform((width / 2, height / 2), (W - width / 2, H - height / 2))
            pts = rng.uniform(-0.5, 0.5, (12, 2)) * (width, height) + centre
            cv2.fillPoly(mask, [cv2.convexHull(pts.astype(np.int32))], 1)
        if mask.mean() < 1.15 * coverage:
            masks.append(mask)
    return masks


def median_us(cases: dict, repeats: int, warm: bool) -> dict:
    """Median microseconds per call of each case {name: (fn, inputs)}.

    Cases are interleaved round by round, so machine noise hits them alike.
    ``warm``: each timed call follows an untimed call on the same input, so the
    mask is in cache, as right after a model's output is thresholded. Cold: each
    call meets a mask last touched 20 masks (8 MB) ago.
    """
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, (fn, inputs) in cases.items():
            for x in inputs:
                if warm:
                    fn(x)
                t = time.perf_counter()
                fn(x)
                times[name].append(time.perf_counter() - t)
    return {name: float(np.median(t) * 1e6) for name, t in times.items()}


def main() -> None:
    rng = np.random.default_rng(0)
    try:
        from pycocotools import mask as coco
    except ImportError:
        coco = None
    rle.decode(rle.encode(np.ones((H, W), np.uint8)))  # compile (or load the cache)
    results = {"machine": cpu_name(), "warm": {}, "cold": {}}
    for coverage in (0.01, 0.10, 0.40):
        masks = defect_masks(coverage, 20, rng)
        texts = [rle.encode(m) for m in masks]
        assert all(kaggle_encode(m) == t for m, t in zip(masks, texts, strict=True))
        cases = {
            "memset": (lambda _: memset_bound(), texts),
            "decode steelflow": (rle.decode, texts),
            "decode kaggle_numpy": (kaggle_decode, texts),
            "encode steelflow": (rle.encode, masks),
            "encode kaggle_numpy": (kaggle_encode, masks),
        }
        if coco is not None:
            cocos = [coco.encode(np.asfortranarray(m)) for m in masks]
            cases["decode pycocotools"] = (lambda c: np.ascontiguousarray(coco.decode(c)), cocos)
            cases["encode pycocotools"] = (lambda m: coco.encode(np.asfortranarray(m)), masks)
        for cache in ("warm", "cold"):
            times = median_us(cases, 10, warm=cache == "warm")
            row = {
                "actual_coverage": float(np.mean([m.mean() for m in masks])),
                "mean_rle_chars": float(np.mean([len(t) for t in texts])),
                "memset_us": times.pop("memset"),
            }
            for name, us in times.items():
                op, codec = name.split()
                row.setdefault(f"{op}_us", {})[codec] = us
            results[cache][f"{coverage:.0%}"] = row
    write_results("rle", results, markdown(results))


def markdown(results: dict) -> str:
    lines = [
        f"RLE codec, median us per 256x1600 mask ({results['machine']}, one run, cases "
        "interleaved). memset = np.zeros + fill of one image. warm: the mask is in cache "
        "(as after thresholding); cold: each call meets a mask not touched for 8 MB.",
        "",
        "| cache | coverage | op | steelflow | kaggle numpy | pycocotools | memset | "
        "speed-up vs numpy | x memset |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cache in ("warm", "cold"):
        for cov, row in results[cache].items():
            memset = row["memset_us"]
            for op in ("decode", "encode"):
                t = row[f"{op}_us"]
                coco = f"{t['pycocotools']:.1f}" if "pycocotools" in t else "n/a"
                lines.append(
                    f"| {cache} | {cov} | {op} | {t['steelflow']:.1f} | {t['kaggle_numpy']:.1f} | "
                    f"{coco} | {memset:.1f} | {t['kaggle_numpy'] / t['steelflow']:.1f}x | "
                    f"{t['steelflow'] / memset:.1f} |"
                )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
