"""Prediction speed: end to end against the networks' forward passes alone.

End to end: JPEG decode, classifier, U-Net on the images past the gate,
upsampling, thresholds and areas, RLE encoding. Forward alone: the same
classifier and U-Net calls on tensors already in memory (the same images past
the gate). End to end overlaps two parts, each also timed alone: the device's
(``Predictor.thresholded`` on images already decoded: the networks, upsampling,
thresholds, masks back to the CPU, on a GPU RLE encoding) and the reader's and
the CPU's (decoding, on a GPU on the device; components, RLE; with the device's
outputs replayed). Both in fp32 and bf16, on the test images
and models of a default run (`make run` first). Writes
benchmarks/results/predict.json and predict.md.

    python benchmarks/predict.py [--images 96]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import cpu_name, write_results

from steelflow.config import load
from steelflow.predict import Predictor, Thresholded, Thresholds, batched, predict_images

ROOT = Path(__file__).resolve().parents[1]


class Replay:
    """A predictor whose device answers at once: ``outputs`` (``thresholded``'s, one per
    batch, in order) replayed as copies; what is left to time is the CPU's part."""

    def __init__(self, predictor: Predictor, outputs: list[Thresholded]):
        self.predictor, self.outputs = predictor, iter(outputs)

    def batches(self, *args):
        return self.predictor.batches(*args)

    def thresholded(self, views, thresholds) -> Thresholded:
        texts, masks = next(self.outputs)
        return [list(t) for t in texts], masks  # _finish fills in the texts


def measure(
    predictor: Predictor,
    thresholds: Thresholds,
    paths: list[Path],
    batch: int,
    repeats: int = 3,
    parts: bool = True,
) -> dict:
    """Images/s end to end, of the forward passes alone and, with ``parts``, of the
    device's and the CPU's parts of prediction alone (the device's masks of every image
    kept for the replay: 1.6 MB each); best of ``repeats`` each."""
    folder = paths[0].parent

    def end_to_end(names: list[str], runner=predictor) -> int:
        """The prediction loop of submit and predict: files in, RLE out."""
        found = predict_images(runner, thresholds, names, predictor.reader(folder), batch)
        return sum(bool(text) for _, texts in found for text in texts)

    read = predictor.reader(folder)
    views = [read([p.name for p in group]) for group in batched(paths, batch)]
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
    def forward_only(inputs: list) -> None:
        for x_classifier, x_unet in inputs:
            predictor.average(predictor.classifiers, x_classifier, dense=False)
            if x_unet is not None:
                predictor.average(predictor.unets, x_unet, dense=True)
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()

    def device_part(views: list) -> list:
        outputs = [predictor.thresholded(group, thresholds) for group in views]
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()
        return outputs

    names = [p.name for p in paths]
    forward_only(inputs[:4]), end_to_end(names[: 4 * batch])  # warm-up
    times = {}

    def timed(name: str, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        times.setdefault(name, []).append(time.perf_counter() - start)
        return result

    for _ in range(repeats):
        timed("forward", forward_only, inputs)
        found = timed("end_to_end", end_to_end, names)
        if parts:
            outputs = timed("device_part", device_part, views)
            timed("cpu_part", end_to_end, names, Replay(predictor, outputs))
            del outputs
    row = {name: len(paths) / min(t) for name, t in times.items()}
    return {
        "images_per_s_forward": row["forward"],
        "images_per_s_device_part": row.get("device_part"),
        "images_per_s_cpu_part": row.get("cpu_part"),
        "images_per_s_end_to_end": row["end_to_end"],
        "ratio": row["end_to_end"] / row["forward"],
        "seconds_end_to_end": min(times["end_to_end"]),
        "masks_found": found,
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
    thresholds = Thresholds.load(ROOT / "results/thresholds.json")
    for precision in ("fp32", "bf16"):
        predictor = Predictor(
            [ROOT / "models/classifier_f0.pt"],
            [ROOT / "models/unet_f0.pt"],
            {**config["train"], "precision": precision},
        )
        results["runs"][precision] = measure(
            predictor, thresholds, paths, config["predict"]["batch_size"]
        )
    write_results("predict", results, markdown(results))


def markdown(results: dict) -> str:
    lines = [
        f"Prediction speed on {results['images']} test images ({results['device']}, batch "
        f"{results['batch']}), images/s, best of three alternated runs:",
        "",
        "| precision | forward passes alone | device's part alone | CPU's part alone | "
        "end to end | end to end / forward | images past the gate |",
        "|---|---|---|---|---|---|---|",
    ]
    for precision, r in results["runs"].items():
        lines.append(
            f"| {precision} | {r['images_per_s_forward']:.1f} | "
            f"{r['images_per_s_device_part']:.1f} | {r['images_per_s_cpu_part']:.1f} | "
            f"{r['images_per_s_end_to_end']:.1f} | {r['ratio']:.2f} | {r['past_gate']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
