"""Ablations of the default U-Net: what each change does to the Dice of every class.

Each variant is the default config with a few settings changed; it trains the
U-Net on the data, masks and split of a default run (`make run` first) and
records, per epoch, the validation Dice on the defect pairs of each class (at
threshold 0.5) and the training time. Results are appended to
benchmarks/results/ablation.json as each variant finishes, and the table is
rewritten to ablation.md, so an interrupted run keeps what it measured.

    python benchmarks/ablation.py baseline fp32 stride1 ...   # variant names, see VARIANTS
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from common import RESULTS, cpu_name, write_results

from steelflow import train
from steelflow.config import load

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {
    "baseline": {},
    "fp32": {"train.precision": "fp32"},
    "stride1": {"unet.output_stride": 1},
    "width16": {"unet.decoder_width": 16},
    "regnet400": {"unet.arch": "regnet_y_400mf"},
    "mobilenet": {"unet.arch": "mobilenet_v3_large"},
    "effb0": {"unet.arch": "efficientnet_b0"},
    "fpn": {"unet.decoder": "fpn"},
}


def run_variant(name: str, overrides: dict, epochs: int | None) -> dict:
    config = load(
        ROOT / "config.yaml", {**overrides, **({"unet.epochs": epochs} if epochs else {})}
    )
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        began = time.perf_counter()
        train.run(
            "unet",
            config,
            ROOT / "resources/raw/train_images",
            ROOT / "results/masks",
            ROOT / "results/split.csv",
            {"out": out / "unet.pt", "history": out / "unet.csv", "curves": out / "unet.png"},
        )
        seconds = time.perf_counter() - began
        history = pd.read_csv(out / "unet.csv")
    defect = [f"dice_defect_{c}" for c in (1, 2, 3, 4)]
    last = history.iloc[-1]
    return {
        "variant": name,
        "overrides": overrides,
        "epochs": int(last.epoch),
        "seconds": seconds,
        "train_images_per_s": float(history.train_images_per_s.median()),
        "last": {k: float(last[k]) for k in ["score", *defect]},
        "best_of_epochs": {k: float(history[k].max()) for k in defect},
        "history": {k: history[k].round(4).tolist() for k in ["score", *defect]},
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        f"U-Net ablations on the default data ({cpu_name()}, torch {torch.__version__}): "
        "validation Dice on the defect pairs of each class at threshold 0.5, last epoch "
        "(best epoch in brackets), and training time including validation.",
        "",
        "| variant | changes | epochs | seconds | img/s | class 1 | class 2 | class 3 | class 4 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        changes = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "default config"
        cells = [
            f"{r['last'][f'dice_defect_{c}']:.3f} ({r['best_of_epochs'][f'dice_defect_{c}']:.3f})"
            for c in (1, 2, 3, 4)
        ]
        lines.append(
            f"| {r['variant']} | {changes} | {r['epochs']} | {r['seconds']:.0f} | "
            f"{r['train_images_per_s']:.1f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", choices=sorted(VARIANTS))
    parser.add_argument("--epochs", type=int, help="override unet.epochs for every variant")
    args = parser.parse_args()
    if not (ROOT / "results/split.csv").is_file():
        raise SystemExit("run `make run` first: the ablations train on its data")
    saved = RESULTS / "ablation.json"
    rows = json.loads(saved.read_text())["rows"] if saved.is_file() else []
    for name in args.variants:
        row = run_variant(name, VARIANTS[name], args.epochs)
        rows = [r for r in rows if r["variant"] != name] + [row]
        write_results("ablation", {"cpu": cpu_name(), "rows": rows}, markdown(rows))


if __name__ == "__main__":
    main()
