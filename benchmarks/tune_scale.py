"""Tune at Kaggle scale: its work besides the networks' forward passes, by size.

Tune's out-of-fold pass (``tune.out_of_fold``: each image's JPEG decoded and
resized for both networks, its masks read from the cache, the U-Net's
probabilities upsampled, areas and components counted, the running tally) and its
search and figure, on 1/12, 1/4 and all of Kaggle's 12,568 train images in five
folds, with configs/scale.yaml's tune settings. The networks answer at once with
synthetic outputs of the default networks' shapes (U-Net: 4x128x800 probabilities;
classifier: 4 probabilities): a pool of images, each with truth drawn with Kaggle's
class shares and the U-Net's map drawn from it (its defects blurred and shifted a
little, false-positive blobs, specks), cycled over the images; every image decodes
the same 1600x256 JPEG. So what is timed is all tune does but the forward passes.

Two kinds of maps: ``sparse``, about one class per image whose probability passes
the lowest threshold, and ``noisy``, two such classes per image, with more
false-positive blobs and specks. On both the old code takes longer per image (about
0.25 s) than the 0.1 s measured for its component search on the
default run's models, so both are, if anything, harder than that run's outputs.

Each size runs in a process of its own; its peak RSS is the process's VmHWM. The
old code (the reference copy in tests/test_tune_scale.py) is timed on a sample of
images: its pass is linear in the images (per-image time x images); its search, and
the peak RSS of holding every image's evidence and searching it, are measured at
each size on the sample's evidence repeated to that many images.

    python benchmarks/tune_scale.py [--sizes 12 4 1] [--kinds sparse noisy] [--old-sample 48]
    python benchmarks/tune_scale.py --render     # tune_scale.md again from tune_scale.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch
from common import RESULTS, commit, cpu_name, write_results

from steelflow.config import load
from steelflow.dataset import at_scale
from steelflow.images import read_gray
from steelflow.predict import CORES, Predictor, upsample
from steelflow.tune import Evidence, area_bounds, gather, out_of_fold, plot_search, search

ROOT = Path(__file__).resolve().parents[1]

KAGGLE = 12568
H, W = 256, 1600
SHARE = np.array([897, 247, 5150, 801]) / KAGGLE  # train images with each class
POOL = 64  # distinct images, cycled
KINDS = {"sparse": {"fp": 0.1, "specks": 0.05}, "noisy": {"fp": 0.35, "specks": 0.3}}
FOLDS = [0, 1, 2, 3, 4]


def settings() -> dict:
    """The tune section and networks' scales of config.yaml with configs/scale.yaml."""
    return load([ROOT / "config.yaml", ROOT / "configs/scale.yaml"])


def draw(kind: str, scale: float = 0.5, seed: int = 0):
    """The pool: packed truth bits (P, C, H*W/8), which classes each image has, the
    U-Net's probabilities at ``scale`` (P, C, h, w) and the classifier's (P, C)."""
    fp, specks = KINDS[kind]["fp"], KINDS[kind]["specks"]
    rng = np.random.default_rng(seed)
    h, w = int(H * scale), int(W * scale)
    packed = np.zeros((POOL, 4, H * W // 8), np.uint8)
    present = np.zeros((POOL, 4), bool)
    probs = np.zeros((POOL, 4, h, w), np.float32)
    class_prob = np.zeros((POOL, 4), np.float32)
    for i in range(POOL):
        taken = np.zeros((H, W), bool)  # masks of different classes never overlap
        for k in range(4):
            mask = np.zeros((H, W), np.uint8)
            if rng.random() < SHARE[k]:
                big = k in (2, 3)
                for _ in range(rng.integers(1, 4)):
                    axes = (
                        int(rng.integers(40, 400) if big else rng.integers(10, 60)),
                        int(rng.integers(20, 120) if big else rng.integers(8, 40)),
                    )
                    centre = int(rng.integers(0, W)), int(rng.integers(0, H))
                    cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, -1)
                mask[taken] = 0
                taken |= mask.astype(bool)
            present[i, k] = mask.any()
            packed[i, k] = np.packbits(mask.ravel())
            low = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
            low = np.roll(low, rng.integers(-3, 4, 2), axis=(0, 1))
            logit = -4.6 + 0.4 * rng.standard_normal((h, w)).astype(np.float32)
            logit += 9.0 * cv2.GaussianBlur(low, (0, 0), 2.0) * rng.uniform(0.6, 1.2)
            if rng.random() < fp:  # a false-positive blob
                blob = np.zeros((h, w), np.float32)
                centre = int(rng.integers(0, w)), int(rng.integers(0, h))
                axes = int(rng.integers(3, 60)), int(rng.integers(3, 30))
                cv2.ellipse(blob, centre, axes, 0, 0, 360, 1.0, -1)
                logit += rng.uniform(3.5, 7.0) * cv2.GaussianBlur(blob, (0, 0), 2.0)
            if rng.random() < specks:  # many small components
                for _ in range(rng.integers(5, 40)):
                    y, x = rng.integers(1, h - 1), rng.integers(1, w - 1)
                    logit[y - 1 : y + 2, x - 1 : x + 2] += rng.uniform(2.5, 5.0)
            probs[i, k] = 1 / (1 + np.exp(-logit))
            p = (0.75 if present[i, k] else 0.15) + 0.2 * rng.standard_normal()
            class_prob[i, k] = np.clip(p, 0.01, 0.99)
    return packed, present, probs, class_prob


def jpeg(path: Path, seed: int = 0) -> Path:
    """A textured 1600x256 gray JPEG (quality 95): what every image decodes."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((H // 8, W // 8)).astype(np.float32)
    gray = cv2.resize(noise, (W, H), interpolation=cv2.INTER_CUBIC) * 30 + 110
    gray += rng.standard_normal((H, W)).astype(np.float32) * 6
    image = np.clip(gray, 0, 255).astype(np.uint8)
    cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return path


def pool_index(image_id: str) -> int:
    return int(image_id.split(".")[0]) % POOL


class Cache:
    """A mask cache of ``images`` images cycling through the pool, unpacked per read
    as MaskCache does."""

    def __init__(self, packed: np.ndarray, present: np.ndarray, images: int):
        self.packed, self.present = packed, present
        self.image_ids = [f"{i:06d}.jpg" for i in range(images)]
        self.folder = Path("synthetic")

    def __getitem__(self, image_id: str) -> np.ndarray:
        p = pool_index(image_id)
        out = np.zeros((4, H, W), np.uint8)
        for k in np.flatnonzero(self.present[p]):
            out[k] = np.unpackbits(self.packed[p, k], count=H * W).reshape(H, W)
        return out

    def areas(self) -> np.ndarray:
        counts = np.bitwise_count(self.packed).sum(axis=-1, dtype=np.int64)
        return counts[np.arange(len(self.image_ids)) % POOL]


class Replay:
    """A predictor whose networks answer at once with the pool's outputs; reading an
    image decodes the JPEG and resizes it for both networks, an image per core, as
    ``Predictor.reader`` on the CPU."""

    batches = Predictor.batches

    def __init__(self, probs: np.ndarray, class_prob: np.ndarray, image: Path, scales):
        self.probs, self.image, self.scales = probs, image, scales
        self.probs_of_classes = class_prob
        self.pool = ThreadPoolExecutor(CORES)

    def reader(self, folder: Path):
        def read(name: str):
            gray = read_gray(self.image)
            return pool_index(name), {scale: at_scale(gray, scale) for scale in self.scales}

        return lambda names: list(self.pool.map(read, names))

    def class_prob(self, views) -> np.ndarray:
        return self.probs_of_classes[[v[0] for v in views]]

    def mask_prob(self, views, full_size: bool = True) -> torch.Tensor:
        prob = torch.from_numpy(self.probs[[v[0] for v in views]])
        return upsample(prob) if full_size else prob


def peak_rss_mb() -> float:
    return memory("VmHWM")


def memory(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def setup(kind: str, images: int, folder: Path):
    config = settings()
    cfg = config["tune"]
    packed, present, probs, class_prob = draw(kind, config["unet"]["scale"])
    scales = {config["classifier"]["scale"], config["unet"]["scale"]}
    predictor = Replay(probs, class_prob, jpeg(folder / "image.jpg"), scales)
    cache = Cache(packed, present, images)
    split = folder / "split.csv"
    folds = "\n".join(f"{i},{n % len(FOLDS)}" for n, i in enumerate(cache.image_ids))
    split.write_text("ImageId,fold\n" + folds + "\n")
    return cfg, predictor, cache, split


def run_new(kind: str, images: int) -> dict:
    """The new code on ``images`` images: the pass, the search and the figure."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cfg, predictor, cache, split = setup(kind, images, folder)
        list(gather(predictor, folder, cache, cache.image_ids[:8], cfg))  # numba's cache
        setup_rss = memory("VmRSS")
        start, cpu = time.perf_counter(), time.process_time()
        tally = out_of_fold(lambda fold: predictor, FOLDS, split, folder, cache, cfg)
        passed, cpu = time.perf_counter(), time.process_time() - cpu
        result = search(tally, cfg, area_bounds(cache, cfg["max_area_quantile"]))
        searched = time.perf_counter()
        plot_search(tally, cfg, result, folder / "search.png")
        plotted = time.perf_counter()
    return {
        "pass_s": passed - start,
        "pass_cpu_s": cpu,  # of every thread
        "search_s": searched - passed,
        "figure_s": plotted - searched,
        "setup_rss_mb": setup_rss,
        "peak_rss_mb": peak_rss_mb(),
        "tally_mb": tally.nbytes / 2**20,
        "val_images": result["val_images"],
        "result": result,
    }


def reference():
    """The old code: tests/test_tune_scale.py's reference copy."""
    sys.path.insert(0, str(ROOT))
    import tests.test_tune_scale

    return tests.test_tune_scale


def run_old_pass(kind: str, sample: int) -> dict:
    """The old pass on ``sample`` images of one fold; its evidence equals the new's."""
    old_gather = reference().old_gather

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cfg, predictor, cache, _ = setup(kind, sample, folder)
        ids = cache.image_ids
        list(gather(predictor, folder, cache, ids[:8], cfg))
        start = time.perf_counter()
        old = old_gather(predictor, folder, cache, ids, cfg)
        seconds = time.perf_counter() - start
        new = Evidence.concat(list(gather(predictor, folder, cache, ids, cfg)))
    same = all(np.array_equal(getattr(old, f), getattr(new, f)) for f in Evidence.__annotations__)
    return {"pass_ms_per_image": 1000 * seconds / sample, "same_evidence": same}


def run_old_search(kind: str, images: int) -> dict:
    """The old search on ``images`` images' evidence (the pool's, repeated), which the
    old pass kept in memory; and the new search on the same, for the same result."""
    old_search = reference().old_search

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cfg, predictor, cache, _ = setup(kind, images, folder)
        ids = cache.image_ids
        pool = Evidence.concat(list(gather(predictor, folder, cache, ids[:POOL], cfg)))
        take = np.arange(images) % POOL
        kept = ("class_prob", "area", "overlap", "truth")
        ev = Evidence(np.asarray(ids), *(getattr(pool, f)[take] for f in kept))
        bounds = area_bounds(cache, cfg["max_area_quantile"])
        start = time.perf_counter()
        old = old_search(ev, cfg, bounds)
        seconds = time.perf_counter() - start
        evidence_mb = sum(getattr(ev, f).nbytes for f in Evidence.__annotations__) / 2**20
    return {
        "search_s": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "evidence_mb": evidence_mb,
        "same_result": old == search(ev, cfg, bounds),
    }


def child(*args: str) -> dict:
    """One measurement in a fresh process: its JSON answer."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(data: dict) -> str:
    lines = [
        "Tune at Kaggle scale (`python benchmarks/tune_scale.py`): all that tune does "
        "but the networks' forward passes, i.e. the out-of-fold pass (each image's JPEG "
        "decoded and resized for both networks, its masks read, the U-Net's probabilities "
        "upsampled, areas and components counted, the tally), the search and the figure, "
        "with configs/scale.yaml's tune settings and five folds. The networks answer at "
        f"once with synthetic outputs of their shapes: a pool of {POOL} images, truth drawn "
        "with Kaggle's class shares and the U-Net's 4x128x800 probabilities drawn from it "
        "(defects blurred and shifted, false-positive blobs, specks), cycled over the "
        "images; every image decodes the same 1600x256 JPEG. "
        f"CPU: {data['cpu']}; torch {data['torch']} ({data['threads']} threads); "
        f"commit {data['commit']}; {data['date']}.",
        "",
        "Other jobs shared this 2-core machine (load average "
        f"{data['load_average_at_start']:.1f} at the start, {data['load_average_at_end']:.1f} "
        "at the end), so every time is an upper bound (CPU s: of all the pass's threads; "
        "wall s near CPU s means it had about one core); compare "
        "sizes by the ratios, measured in the same run. Old: the previous code "
        "(tests/test_tune_scale.py's reference copy): its pass timed on "
        f"{data['old_sample']} images (it is linear in the images), its search and peak RSS "
        "(every image's evidence held, then searched) measured at each size. Peak RSS: the "
        "process's VmHWM; setup: its RSS before tune started (torch, the maps' pool). A real "
        "run also maps the mask cache (about 0.36 GB of bits at Kaggle size, read once "
        "for the area bounds and once image by image), not counted here.",
        "",
        "The targets at full size: at most 120 s, at most 6 GB peak RSS, time per "
        "image within 1.25x of 1/12's: "
        + "; ".join(
            f"{kind} {rows[-1]['total_s']:.0f} s, {rows[-1]['peak_rss_mb'] / 1024:.2f} GB, "
            f"{rows[-1]['ms_per_image'] / rows[0]['ms_per_image']:.2f}x"
            for kind, rows in data["kinds"].items()
        )
        + ".",
    ]
    for kind, rows in data["kinds"].items():
        old_pass = data["old_pass"][kind]
        lines += [
            "",
            f"**{kind}** maps: {data['candidates'][kind]:.1f} classes per image can pass the "
            f"lowest threshold. Old pass: {old_pass['pass_ms_per_image']:.0f} ms/image; its "
            f"evidence is the new pass's, bit for bit: {old_pass['same_evidence']}.",
            "",
            "| size | images | pass s (CPU s) | search s | figure s | total s | ms/image | "
            "vs 1/12 | peak RSS MB (setup) | old total s | old search s | old peak RSS MB | "
            "old / new |",
            "|" + "---|" * 13,
        ]
        base = rows[0]["ms_per_image"]
        for row in rows:
            old = row.get("old")
            new_part = (
                f"| {row['size']} | {row['images']:,} | {row['pass_s']:.1f} "
                f"({row['pass_cpu_s']:.1f}) | {row['search_s']:.2f} | {row['figure_s']:.1f} | "
                f"{row['total_s']:.1f} | {row['ms_per_image']:.2f} | "
                f"{row['ms_per_image'] / base:.2f} | "
                f"{row['peak_rss_mb']:.0f} ({row['setup_rss_mb']:.0f}) |"
            )
            if old:
                total = old_pass["pass_ms_per_image"] * row["images"] / 1000 + old["search_s"]
                new_part += (
                    f" {total:.0f} | {old['search_s']:.1f} | {old['peak_rss_mb']:.0f} | "
                    f"{total / row['total_s']:.0f}x |"
                )
            else:
                new_part += " - | - | - | - |"
            lines.append(new_part)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[12, 4, 1], help="1/N of Kaggle")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--old-sample", type=int, default=48)
    parser.add_argument("--no-old-search", action="store_true", help="skip the old search")
    parser.add_argument(
        "--render", action="store_true", help="rewrite tune_scale.md from tune_scale.json"
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.render:
        data = json.loads((RESULTS / "tune_scale.json").read_text())
        write_results("tune_scale", data, markdown(data))
        return
    if args.child:
        part, kind, images = args.child
        run = {"new": run_new, "old-pass": run_old_pass, "old-search": run_old_search}[part]
        print(json.dumps(run(kind, int(images))))
        return
    data = {
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "commit": commit(),
        "date": datetime.date.today().isoformat(),
        "old_sample": args.old_sample,
        "load_average_at_start": os.getloadavg()[0],
        "candidates": {},
        "old_pass": {},
        "kinds": {},
    }
    tune_cfg = settings()["tune"]
    for kind in args.kinds:
        probs = draw(kind)[2]
        peak = probs.reshape(POOL, 4, -1).max(axis=-1)
        data["candidates"][kind] = float((peak > min(tune_cfg["pixel_thresholds"])).sum() / POOL)
        data["old_pass"][kind] = child("old-pass", kind, str(args.old_sample))
        rows = []
        for size in args.sizes:
            images = -(-KAGGLE // size)
            row = {"size": "full" if size == 1 else f"1/{size}", "images": images}
            row |= child("new", kind, str(images))
            row["total_s"] = row["pass_s"] + row["search_s"] + row["figure_s"]
            row["ms_per_image"] = 1000 * row["total_s"] / images
            if not args.no_old_search:
                row["old"] = child("old-search", kind, str(images))
            print(json.dumps({k: v for k, v in row.items() if k != "result"}), flush=True)
            rows.append(row)
        data["kinds"][kind] = rows
    data["load_average_at_end"] = os.getloadavg()[0]
    write_results("tune_scale", data, markdown(data))


if __name__ == "__main__":
    main()
