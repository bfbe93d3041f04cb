"""The ``steelflow`` command: one subcommand per pipeline stage."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from steelflow.atomic import write_json
from steelflow.config import load, parse_override


def _score(args: argparse.Namespace) -> None:
    from steelflow.io import read_image_ids, read_masks
    from steelflow.metrics import score

    pred = read_masks(args.submission)
    truth = read_masks(args.truth)
    image_ids = read_image_ids(args.images) if args.images else list(dict.fromkeys(pred.ImageId))
    result = score(truth, pred, image_ids)
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result, indent=2))


def _fetch(args: argparse.Namespace) -> None:
    from steelflow.sources import fetch

    config = load(args.config, dict(args.overrides))
    fetch(config["data"], config["seed"], Path(args.out))


def _masks(args: argparse.Namespace) -> None:
    from steelflow.masks import build

    raw = Path(args.raw)
    build(raw / "train.csv", raw / "train_images", Path(args.out))


def _eda(args: argparse.Namespace) -> None:
    from steelflow.eda import run_eda

    config = load(args.config, dict(args.overrides))
    stats = run_eda(
        Path(args.masks),
        Path(args.raw) / "train_images",
        Path(args.out),
        config["eda"]["examples_per_class"],
        config["seed"],
    )
    print(json.dumps(stats, indent=2))


def _split(args: argparse.Namespace) -> None:
    from steelflow.atomic import atomic_path
    from steelflow.masks import MaskCache
    from steelflow.split import assign_folds

    config = load(args.config, dict(args.overrides))
    folds = assign_folds(MaskCache(args.masks).classes(), config["split"]["folds"], config["seed"])
    with atomic_path(args.out) as tmp:
        folds.to_csv(tmp, index=False)
    print(folds.groupby("fold").size().to_string())


def _train(args: argparse.Namespace) -> None:
    from steelflow.train import run

    config = load(args.config, dict(args.overrides))
    best = run(
        args.network,
        config,
        Path(args.raw) / "train_images",
        Path(args.masks),
        Path(args.split),
        Path(args.out),
        Path(args.history),
        resume=args.resume,
    )
    print(json.dumps({"best": best}, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steelflow", description=__doc__)
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    configured = argparse.ArgumentParser(add_help=False)
    configured.add_argument("--config", default="config.yaml", help="config file (config.yaml)")
    configured.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=parse_override,
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set data.synthetic.n_train=50 (repeatable)",
    )

    p = stages.add_parser("fetch", parents=[configured], help="raw data in the Kaggle layout")
    p.add_argument("--out", default="resources/raw", help="output folder (resources/raw)")
    p.set_defaults(run=_fetch)

    p = stages.add_parser("masks", help="decode train.csv into the mask cache")
    p.add_argument("--raw", default="resources/raw", help="Kaggle layout folder (resources/raw)")
    p.add_argument("--out", default="results/masks", help="cache folder (results/masks)")
    p.set_defaults(run=_masks)

    p = stages.add_parser("eda", parents=[configured], help="statistics and figures of the data")
    p.add_argument("--raw", default="resources/raw", help="Kaggle layout folder (resources/raw)")
    p.add_argument("--masks", default="results/masks", help="mask cache (results/masks)")
    p.add_argument("--out", default="results/eda", help="output folder (results/eda)")
    p.set_defaults(run=_eda)

    p = stages.add_parser("split", parents=[configured], help="stratified folds of the train set")
    p.add_argument("--masks", default="results/masks", help="mask cache (results/masks)")
    p.add_argument("--out", default="results/split.csv", help="output CSV (results/split.csv)")
    p.set_defaults(run=_split)

    p = stages.add_parser("train", parents=[configured], help="train the classifier or the U-Net")
    p.add_argument("network", choices=["classifier", "unet"])
    p.add_argument("--raw", default="resources/raw", help="Kaggle layout folder (resources/raw)")
    p.add_argument("--masks", default="results/masks", help="mask cache (results/masks)")
    p.add_argument("--split", default="results/split.csv", help="folds (results/split.csv)")
    p.add_argument("--out", required=True, help="best checkpoint, e.g. models/unet.pt")
    p.add_argument("--history", required=True, help="per-epoch CSV, e.g. results/train/unet.csv")
    p.add_argument("--resume", action="store_true", help="go on from the last checkpoint if any")
    p.set_defaults(run=_train)

    p = stages.add_parser("score", help="competition Dice of a submission against the truth")
    p.add_argument("--submission", required=True, help="predicted masks, either CSV layout")
    p.add_argument("--truth", required=True, help="true masks, either CSV layout")
    p.add_argument("--images", help="ImageIds to score, one per line (default: the submission's)")
    p.add_argument("--out", help="also write the result to this JSON file")
    p.set_defaults(run=_score)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError) as e:
        print(f"steelflow {args.stage}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
