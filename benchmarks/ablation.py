"""Ablations of the default networks: what each change does to every class, and its cost.

Each variant is the default config with a few settings changed; it trains one
network (the classifier when it changes classifier settings, else the U-Net)
on the data, masks and split of a default run (`make run` first) and records,
per epoch, the validation metrics (U-Net: Dice on the defect pairs of each
class at threshold 0.5; classifier: AUC and F1) and the training time. Results are appended to
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


DEFAULT_DATA = "default run"


def data_paths(folder: Path | None) -> dict[str, Path]:
    """Train images, mask cache and split: of the default run, or of ``folder``
    (raw/, masks/ and split.csv, as `steelflow fetch`, `masks` and `split` write them)."""
    if folder is None:
        return {
            "images": ROOT / "resources/raw/train_images",
            "masks": ROOT / "results/masks",
            "split": ROOT / "results/split.csv",
        }
    return {
        "images": folder / "raw/train_images",
        "masks": folder / "masks",
        "split": folder / "split.csv",
    }


EARLIER = {"unet.head_prior": 0.5, "unet.sampler": "uniform"}  # the default before these runs
LIGHT = {  # a cheaper U-Net: RegNetY-400MF encoder, narrow decoder to full input resolution
    "unet.sampler": "balanced",
    "unet.arch": "regnet_y_400mf",
    "unet.decoder_width": 16,
    "unet.output_stride": 1,
    "unet.head_prior": 0.5,
}
BEFORE_POS_WEIGHT = {"unet.pos_weight": [1, 1, 1, 1]}  # every U-Net variant until then
OLDER = {
    "baseline": EARLIER,
    "balanced": {**EARLIER, "unet.sampler": "balanced"},
    "stride1": {**EARLIER, "unet.output_stride": 1},
    "focal": {**EARLIER, "unet.focal_gamma": 2},
    "ema": {**EARLIER, "unet.ema_decay": 0.99},
    "light12": {**LIGHT, "unet.epochs": 12},
    "light12_weights": {**LIGHT, "unet.epochs": 12, "unet.class_weights": [5, 5, 1, 1]},
    "only12": {**EARLIER, "unet.sampler": "balanced", "unet.class_weights": [1, 1, 0, 0]},
    "only12_prior": {
        "unet.sampler": "balanced",
        "unet.class_weights": [1, 1, 0, 0],
        "unet.head_prior": 0.01,
    },
    "prior": {"unet.head_prior": 0.01, "unet.sampler": "uniform"},
    "prior_balanced": {"unet.head_prior": 0.01, "unet.sampler": "balanced"},
    "regnet_fpn": {"unet.arch": "regnet_y_400mf", "unet.decoder": "fpn"},
    "clf_regnet": {"classifier.arch": "regnet_y_400mf"},
    "prior_weights": {"unet.class_weights": [3, 2, 1, 1]},
    "regnet_fpn_weights": {
        "unet.arch": "regnet_y_400mf",
        "unet.decoder": "fpn",
        "unet.class_weights": [3, 2, 1, 1],
    },
    "regnet_w16_weights": {
        "unet.arch": "regnet_y_400mf",
        "unet.decoder_width": 16,
        "unet.class_weights": [3, 2, 1, 1],
    },
    "regnet_w16_weights_fp32": {
        "unet.arch": "regnet_y_400mf",
        "unet.decoder_width": 16,
        "unet.class_weights": [3, 2, 1, 1],
        "train.precision": "fp32",
    },
    "seed1_default": {"seed": 1},  # with --data: the seed-1 run's data (class 1 not learned)
    "seed1_weights5": {"seed": 1, "unet.class_weights": [5, 2, 1, 1]},
    "seed1_epochs9": {"seed": 1, "unet.epochs": 9},
    "regnet_fpn_weights10": {
        "unet.arch": "regnet_y_400mf",
        "unet.decoder": "fpn",
        "unet.class_weights": [3, 2, 1, 1],
        "unet.epochs": 10,
    },
}


def network_of(overrides: dict) -> str:
    """The network a variant trains: the classifier when it changes classifier settings."""
    return "classifier" if any(k.startswith("classifier.") for k in overrides) else "unet"


VARIANTS = {
    **{
        name: {**BEFORE_POS_WEIGHT, **changes} if network_of(changes) == "unet" else changes
        for name, changes in OLDER.items()
    },
    "clf_regnet_multilabel_fp32": {
        "classifier.arch": "regnet_y_400mf",
        "classifier.head": "multilabel",
        "train.precision": "fp32",
    },
    "clf_resnet18_multilabel_fp32": {"classifier.head": "multilabel", "train.precision": "fp32"},
    "clf_regnet_fp32": {"classifier.arch": "regnet_y_400mf", "train.precision": "fp32"},
    "seed1_pos_weight": {"seed": 1, "unet.pos_weight": [10, 10, 1, 1]},
    "seed1_focal": {"seed": 1, "unet.focal_gamma": 2},
    "width16_fp32": {"unet.decoder_width": 16, "train.precision": "fp32"},
}


METRICS = {
    "unet": [f"{m}_{c}" for m in ("dice_defect", "pooled_dice") for c in (1, 2, 3, 4)],
    "classifier": ["auc", "f1"],
}


def run_variant(name: str, overrides: dict, epochs: int | None, data: dict) -> dict:
    network = network_of(overrides)
    extra = {f"{network}.epochs": epochs} if epochs else {}
    config = load(ROOT / "config.yaml", {**overrides, **extra})
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        began = time.perf_counter()
        train.run(
            network,
            config["train"]["folds"][0],
            config,
            data["images"],
            data["masks"],
            data["split"],
            {"out": out / "m.pt", "history": out / "m.csv", "curves": out / "m.png"},
        )
        seconds = time.perf_counter() - began
        history = pd.read_csv(out / "m.csv")
    metrics = METRICS[network]
    last = history.iloc[-1]
    return {
        "variant": name,
        "network": network,
        "overrides": overrides,
        "epochs": int(last.epoch),
        "seconds": seconds,
        "train_images_per_s": float(history.train_images_per_s.median()),
        "last": {k: float(last[k]) for k in ["score", *metrics]},
        "best_of_epochs": {k: float(history[k].max()) for k in metrics},
        "history": {k: history[k].round(4).tolist() for k in ["score", *metrics]},
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        f"Ablations ({cpu_name()}, torch {torch.__version__}), one run "
        "each: the last epoch's validation metrics (best epoch in brackets) and the "
        "training time including validation. U-Net, at threshold 0.5: Dice on the defect pairs "
        "of each class, and its pooled Dice, which also counts false positives (- where a "
        "run did not record it). Classifier: AUC and F1 of 'any defect'.",
    ]
    for network, title in (("unet", "U-Net"), ("classifier", "Classifier")):
        chosen = [r for r in rows if r.get("network", "unet") == network]
        if not chosen:
            continue
        names = METRICS[network]
        lines += [
            "",
            f"**{title}**",
            "",
            "| variant | data | changes | epochs | seconds | img/s | " + " | ".join(names) + " |",
            "|---|---|---|---|---|---|" + "---|" * len(names),
        ]
        for r in chosen:
            changes = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "default"
            cells = [
                f"{r['last'][k]:.3f} ({r['best_of_epochs'][k]:.3f})" if k in r["last"] else "-"
                for k in names
            ]
            lines.append(
                f"| {r['variant']} | {r.get('data', DEFAULT_DATA)} | {changes} | {r['epochs']} | "
                f"{r['seconds']:.0f} | "
                f"{r['train_images_per_s']:.1f} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", choices=sorted(VARIANTS))
    parser.add_argument("--epochs", type=int, help="override unet.epochs for every variant")
    parser.add_argument(
        "--data",
        type=Path,
        help="a folder with raw/, masks/ and split.csv (default: the default run's data)",
    )
    args = parser.parse_args()
    data = data_paths(args.data)
    if not data["split"].is_file():
        raise SystemExit(f"no {data['split']}: run `make run` first, or pass --data")
    saved = RESULTS / "ablation.json"
    rows = json.loads(saved.read_text())["rows"] if saved.is_file() else []
    for name in args.variants:
        row = run_variant(name, VARIANTS[name], args.epochs, data)
        row["data"] = str(args.data) if args.data else DEFAULT_DATA
        same = (name, row["data"])
        rows = [r for r in rows if (r["variant"], r.get("data", DEFAULT_DATA)) != same] + [row]
        write_results("ablation", {"cpu": cpu_name(), "rows": rows}, markdown(rows))


if __name__ == "__main__":
    main()
