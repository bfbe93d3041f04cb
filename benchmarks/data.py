"""Data stage at Kaggle scale: synthetic generation speed, mask cache build, size and reads.

Generates 12,568 synthetic train images (the real train set's size) with every
core, builds the mask cache from their train.csv, and times random reads of one
image's four masks. Writes benchmarks/results/data.json and data.md.

    python benchmarks/data.py [--images 12568] [--workdir /tmp/steelflow-bench]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np
from common import write_results

from steelflow import synthetic
from steelflow.io import read_masks
from steelflow.masks import MaskCache, build


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12_568)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/steelflow-bench"))
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    raw = args.workdir / "raw"
    raw.mkdir(parents=True)
    workers = os.cpu_count() or 1

    start = time.perf_counter()
    synthetic.generate(
        raw, args.images, 1, seed=0, preset="clear", jpeg_quality=95, workers=workers
    )
    generate_s = time.perf_counter() - start
    table = read_masks(raw / "train.csv")

    start = time.perf_counter()
    build(raw / "train.csv", raw / "train_images", args.workdir / "masks")
    build_s = time.perf_counter() - start

    cache = MaskCache(args.workdir / "masks")
    rng = np.random.default_rng(0)
    with_defect = sorted(set(table.ImageId))
    reads = {}
    for name, pool in (("any image", cache.image_ids), ("image with a defect", with_defect)):
        times = []
        for image in rng.choice(pool, size=2000):
            t = time.perf_counter()
            cache[image]
            times.append(time.perf_counter() - t)
        reads[name] = {
            "median_ms": float(np.median(times) * 1e3),
            "p99_ms": float(np.percentile(times, 99) * 1e3),
        }

    results = {
        "cores": workers,
        "images": args.images,
        "masks": len(table),
        "generate_s": generate_s,
        "generate_images_per_s": args.images / generate_s,
        "raw_bytes": folder_bytes(raw),
        "cache_build_s": build_s,
        "cache_bytes": folder_bytes(args.workdir / "masks"),
        "read_four_masks": reads,
    }
    write_results("data", results, markdown(results))
    shutil.rmtree(args.workdir)


def markdown(r: dict) -> str:
    reads = r["read_four_masks"]
    return (
        "\n".join(
            [
                f"Data stage at Kaggle scale ({r['images']:,} train images, {r['masks']:,} masks, "
                f"{r['cores']} cores), one run:",
                "",
                "| what | measured | target |",
                "|---|---|---|",
                f"| synthetic generation | {r['generate_s']:.0f} s "
                f"({r['generate_images_per_s']:.0f} images/s), "
                f"{r['raw_bytes'] / 1e9:.2f} GB of JPEG | <= 300 s |",
                f"| mask cache build | {r['cache_build_s']:.1f} s | <= 60 s |",
                f"| mask cache on disk | {r['cache_bytes'] / 1e6:.0f} MB | <= 1 GB |",
                *(
                    f"| read one image's four masks ({k}) | median {v['median_ms']:.3f} ms, "
                    f"p99 {v['p99_ms']:.3f} ms | <= 1 ms |"
                    for k, v in reads.items()
                ),
            ]
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
