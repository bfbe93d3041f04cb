"""The training data pipeline: JPEGs decoded at every sample, against once per training.

Per network, at the default config and at configs/kaggle.yaml's input sizes:
images/s of one loader process (workers 0, on this process's cores) reading the
train set's samples (crops, flips, jitter, masks, batches), when every sample
decodes its JPEG (a stand-in for the pipeline before ``DecodedImages``, which
decoded straight at 1/2 or 1/4 size: a little faster) and when the images were
decoded once; and the time of that one decoding pass over the fold's images. Writes
benchmarks/results/loader.json and loader.md.

    python benchmarks/loader.py [--images 1000] [--batches 100]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import cpu_name, write_results
from torch.utils.data import DataLoader, RandomSampler
from train import endless, images_per_s, make_data

from steelflow.config import load
from steelflow.dataset import EpochSampler, SteelDataset, at_scale
from steelflow.images import read_gray
from steelflow.masks import MaskCache
from steelflow.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "default": [ROOT / "config.yaml"],
    "kaggle": [ROOT / "config.yaml", ROOT / "configs/kaggle.yaml"],
}


class EachSample:
    """Images decoded from their JPEG at every access, then resized (``at_scale``)."""

    def __init__(self, images_dir: Path, scale: float):
        self.images_dir, self.scale = images_dir, scale

    def __getitem__(self, image_id: str):
        return at_scale(read_gray(self.images_dir / image_id), self.scale)


def loader_speed(dataset: SteelDataset, batch_size: int, batches: int) -> float:
    """Images/s of one loader process reading ``dataset``'s batches."""
    order = EpochSampler(RandomSampler(dataset))
    stream = endless(DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=0))
    return images_per_s(lambda: next(stream), batches, batch_size)


def measure(name: str, config: dict, data: Path, batches: int) -> dict:
    task = TASKS[name](config, 0)
    start = time.perf_counter()
    train, _ = task.datasets(
        data / "raw/train_images", MaskCache(data / "masks"), data / "split.csv", data
    )
    decode_seconds = time.perf_counter() - start
    each = SteelDataset(
        EachSample(data / "raw/train_images", task.cfg["scale"]),
        train.cache,
        train.image_ids,
        augment=config["augment"],
        seed=task.seed,
        **task.train_crop(),
    )
    size = task.cfg["batch_size"]
    sample = train[0, 0][0]
    speeds = {"each_sample": [], "decoded_once": []}
    for _ in range(3):  # alternated, the best of each: the machine's noise hits both
        speeds["each_sample"].append(loader_speed(each, size, batches))
        speeds["decoded_once"].append(loader_speed(train, size, batches))
    return {
        "input": "x".join(map(str, sample.shape[-2:])),
        "batch_size": size,
        **{mode: max(values) for mode, values in speeds.items()},
        "decode_pass_images": len(train.decoded.rows),
        "decode_pass_seconds": decode_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="synthetic train images")
    parser.add_argument("--batches", type=int, default=100)
    args = parser.parse_args()
    results = {"machine": cpu_name(), "batches": args.batches, "rows": {}}
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder)
        make_data(data, seed=0, n_train=args.images)
        for label, files in CONFIGS.items():
            config = load(files, {"classifier.pretrained": "none", "unet.pretrained": "none"})
            for name in TASKS:
                results["rows"][f"{label} {name}"] = measure(name, config, data, args.batches)
    write_results("loader", results, markdown(results))


def markdown(results: dict) -> str:
    lines = [
        f"Training data pipeline, images/s of one loader process ({results['machine']}), "
        f"best of three alternated runs of {results['batches']} batches:",
        "",
        "| config, network | sample | batch | JPEG decoded at every sample | decoded once "
        "| speed-up | the one decoding pass |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in results["rows"].items():
        lines.append(
            f"| {label} | {r['input']} | {r['batch_size']} | {r['each_sample']:.0f} | "
            f"{r['decoded_once']:.0f} | {r['decoded_once'] / r['each_sample']:.1f}x | "
            f"{r['decode_pass_seconds']:.2f} s for {r['decode_pass_images']} images |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
