"""Prediction speed: end to end against the networks' forward passes alone.

End to end: JPEG decode, classifier, U-Net on the images past the gate,
upsampling, thresholds and areas, RLE encoding. Forward alone: the same
classifier and U-Net calls on tensors already in memory (the same images past
the gate). Both in fp32 and bf16, on the test images and models of a default
run (`make run` first). Writes benchmarks/results/predict.json and predict.md.

    python benchmarks/predict.py [--images 96]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import cpu_name, write_results

from steelflow import rle
from steelflow.config import load
from steelflow.predict import Predictor, Thresholds, predict_images

ROOT = Path(__file__).resolve().parents[1]


def measure(precision: str, paths: list[Path], config: dict, batch: int) -> dict:
    train_cfg = {**config["train"], "precision": precision}
    predictor = Predictor(
        [ROOT / "models/classifier_f0.pt"], [ROOT / "models/unet_f0.pt"], train_cfg
    )
    thresholds = Thresholds.load(ROOT / "results/thresholds.json")

    def end_to_end() -> int:
        """The prediction loop of submit and predict: files in, RLE out."""
        images = ((p.name, predictor.read(p)) for p in paths)
        found = predict_images(predictor, thresholds, images, batch, len(paths))
        return sum(bool(text) for _, masks in found for text in rle.encode_many(masks))

    views = [[predictor.read(p) for p in paths[i : i + batch]] for i in range(0, len(paths), batch)]
    passed = [
        [
            v
            for v, kept in zip(group, thresholds.gated(predictor.class_prob(group)), strict=True)
            if kept.any()
        ]
        for group in views
    ]
    scales = predictor.classifier_cfg["scale"], predictor.unet_cfg["scale"]
    inputs = [
        (
            predictor.prepare([v[scales[0]] for v in group]),
            predictor.prepare([v[scales[1]] for v in kept]) if kept else None,
        )
        for group, kept in zip(views, passed, strict=True)
    ]

    @torch.no_grad()
    def forward_only() -> None:
        for x_classifier, x_unet in inputs:
            predictor.average(predictor.classifiers, x_classifier, dense=False)
            if x_unet is not None:
                predictor.average(predictor.unets, x_unet, dense=True)

    forward_only(), end_to_end()  # warm-up
    times = {}
    for name, fn in (("forward", forward_only), ("end_to_end", end_to_end)) * 2:
        start = time.perf_counter()
        fn()
        times.setdefault(name, []).append(time.perf_counter() - start)
    n = len(paths)
    row = {name: n / min(t) for name, t in times.items()}
    return {
        "images_per_s_forward": row["forward"],
        "images_per_s_end_to_end": row["end_to_end"],
        "ratio": row["end_to_end"] / row["forward"],
        "past_gate": sum(map(len, passed)),
        "dtype": str(predictor.dtype or "float32"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    args = parser.parse_args()
    config = load(ROOT / "config.yaml")
    paths = sorted((ROOT / "resources/raw/test_images").glob("*.jpg"))[: args.images]
    if not paths or not (ROOT / "results/thresholds.json").is_file():
        raise SystemExit("run `make run` first: this measures its models on its test images")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else cpu_name()
    results = {
        "device": f"{name}, {torch.get_num_threads()} threads",
        "images": len(paths),
        "batch": config["predict"]["batch_size"],
        "runs": {},
    }
    for precision in ("fp32", "bf16"):
        results["runs"][precision] = measure(
            precision, paths, config, config["predict"]["batch_size"]
        )
    write_results("predict", results, markdown(results))


def markdown(results: dict) -> str:
    lines = [
        f"Prediction speed on {results['images']} test images ({results['device']}, batch "
        f"{results['batch']}), images/s, one run:",
        "",
        "| precision | forward passes alone | end to end | end to end / forward | "
        "images past the gate |",
        "|---|---|---|---|---|",
    ]
    for precision, r in results["runs"].items():
        lines.append(
            f"| {precision} | {r['images_per_s_forward']:.1f} | "
            f"{r['images_per_s_end_to_end']:.1f} | {r['ratio']:.2f} | {r['past_gate']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
