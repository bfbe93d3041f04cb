"""The ``steelflow`` command: one subcommand per pipeline stage.

Existing outputs: a file is replaced. A folder (fetch, masks, predict, bundle) is
written whole and swapped in: into a path that does not exist, or over a folder the
same command wrote (it holds a .steelflow marker). Any other existing path is refused
before any work, unless --force names a folder to replace; never a folder that holds
the command's input or the working folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path

from steelflow import __version__
from steelflow.atomic import check_output_dir, check_output_file, write_json
from steelflow.errors import SteelflowError

EDA_OUTPUTS = {  # the eda stage's files, each named on the command line
    "stats": "json",
    "class_balance": "png",
    "defects_per_image": "png",
    "mask_areas": "png",
    "examples": "png",
}


def _load(args: argparse.Namespace) -> dict:
    """The stage's config: each --config file in order (default config.yaml), then each --set;
    torch uses ``machine.threads`` CPU threads."""
    import torch

    from steelflow.config import load

    config = load(args.config or ["config.yaml"], dict(args.overrides))
    # a stage of dvc.yaml, run by DVC in dvc.yaml's folder (not DVC_ROOT, which
    # dvc exp run --temp and --queue point at the workspace the experiment came from)
    if "DVC_STAGE" in os.environ:
        _check_dvc_folds(config["train"]["folds"], Path.cwd())
    if config["machine"]["threads"]:
        torch.set_num_threads(config["machine"]["threads"])
    return config


def _check_dvc_folds(folds: list[int], root: Path) -> None:
    """dvc.yaml has one training stage per fold of config.yaml's train.folds (DVC reads
    that list from config.yaml alone): other folds from an overlay would go untrained."""
    from steelflow.config import format_override, load

    planned = load(root / "config.yaml")["train"]["folds"]
    if folds != planned:
        setting = shlex.quote(f"config.yaml:{format_override('train.folds', folds)}")
        raise SteelflowError(
            f"train.folds {folds}: dvc.yaml trains config.yaml's folds {planned}, as DVC "
            f"reads them from config.yaml alone; set them there: dvc exp run -S {setting}"
        )


def _settings(config: dict) -> str:
    """The experiment settings of ``config`` (all but machine) as YAML."""
    import yaml

    from steelflow.config import stage_settings

    return yaml.safe_dump(stage_settings(config, "config"), sort_keys=False)


def _config(args: argparse.Namespace) -> None:
    from steelflow.atomic import atomic_path

    config = _load(args)
    text = _settings(config)
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(text)
    if args.stages:
        from steelflow.recorded import write_records

        write_records(config, Path(args.stages))
    print(text, end="")


def _uncovered(table, image_ids: list[str], path: str, what: str) -> None:
    """SteelflowError unless ``table`` (read from ``path``) has rows for every image."""
    listed = set(table.ImageId)
    missing = [i for i in image_ids if i not in listed]
    if missing:
        raise SteelflowError(
            f"{path}: no rows for {len(missing)} of the {len(image_ids)} images to score "
            f"(first: {missing[0]}); {what}"
        )


def _score(args: argparse.Namespace) -> None:
    from steelflow.io import read_image_ids, read_masks
    from steelflow.metrics import score

    if args.figure and not Path(args.test_images).is_dir():
        raise SteelflowError(
            f"--test-images {args.test_images}: not a folder (--figure draws its images)"
        )
    pred = read_masks(args.submission)
    image_ids = read_image_ids(args.images) if args.images else list(dict.fromkeys(pred.ImageId))
    _uncovered(pred, image_ids, args.submission, "a submission lists every image, clean or not")
    if Path(args.truth).is_file() or not args.allow_missing_truth:
        truth = read_masks(args.truth)
        if not args.clean_unlisted:
            _uncovered(
                truth,
                image_ids,
                args.truth,
                "a truth of defects only (as train.csv is today) needs --clean-unlisted",
            )
        result = score(truth, pred, image_ids)
    else:
        truth = None
        result = {
            "dice": None,
            "note": f"no test truth at {args.truth}: nothing to score",
            "images": len(image_ids),
        }
    if args.figure:  # before --out: a figure that fails leaves no result behind
        from steelflow.report import plot_predictions

        plot_predictions(args.test_images, truth, pred, args.figure)
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result, indent=2))


def _fetch(args: argparse.Namespace) -> None:
    from steelflow.config import local_path
    from steelflow.sources import fetch

    config = _load(args)
    data = config["data"]
    given = data["local_path"] if data["source"] == "local" else None
    check_output_dir(args.out, "fetch", args.force, (local_path(given),) if given else ())
    fetch(data, config["seed"], Path(args.out), config["machine"]["draw_workers"])


def _masks(args: argparse.Namespace) -> None:
    from steelflow.masks import build

    raw = Path(args.raw)
    check_output_dir(args.out, "masks", args.force, (raw,))
    build(raw / "train.csv", raw / "train_images", Path(args.out))


def _eda(args: argparse.Namespace) -> None:
    from steelflow.eda import run_eda

    config = _load(args)
    outputs = {name: Path(getattr(args, name)) for name in EDA_OUTPUTS}
    stats = run_eda(
        Path(args.masks),
        Path(args.raw) / "train_images",
        outputs,
        config["eda"]["examples_per_class"],
        config["seed"],
    )
    print(json.dumps(stats, indent=2))


def _split(args: argparse.Namespace) -> None:
    from steelflow.atomic import atomic_path
    from steelflow.masks import MaskCache
    from steelflow.split import assign_folds

    config = _load(args)
    folds = assign_folds(MaskCache(args.masks).classes(), config["split"]["folds"], config["seed"])
    with atomic_path(args.out) as tmp:
        folds.to_csv(tmp, index=False)
    print(folds.groupby("fold").size().to_string())


def _train(args: argparse.Namespace) -> None:
    from steelflow import distributed
    from steelflow.gpus import claimed_gpus
    from steelflow.train import run

    config = _load(args)
    if not 0 <= args.fold < config["split"]["folds"]:
        raise SteelflowError(
            f"--fold {args.fold}: expected a fold from 0 to split.folds - 1 "
            f"({config['split']['folds'] - 1})"
        )
    processes = config["train"]["nproc_per_node"]
    with claimed_gpus(config):  # this job's own GPUs, before CUDA starts; torchrun inherits them
        if processes > 1 and not distributed.launched():
            distributed.relaunch(args.argv, processes)  # becomes torchrun: one process per device
        best = run(
            args.network,
            args.fold,
            config,
            Path(args.raw) / "train_images",
            Path(args.masks),
            Path(args.split),
            {"out": Path(args.out), "history": Path(args.history), "curves": Path(args.curves)},
            resume=args.resume,
            start=Path(args.start) if args.start else None,
        )
    if best is not None:  # only the main process reports
        print(json.dumps({"best": best}, indent=2))


def _fold_models(args: argparse.Namespace, folds: list[int]) -> dict[str, dict[int, Path]]:
    """Each network's checkpoint per fold, from ``--classifier``/``--unet``: ``{fold}`` in
    a path stands for each fold; a path without it is a single fold's model."""
    if len(folds) > 1 and not all("{fold}" in p for p in (args.classifier, args.unet)):
        raise SteelflowError(
            f"--classifier {args.classifier} --unet {args.unet}: with train.folds {folds}, "
            "both need {fold} in the path, to find the models of each fold"
        )
    models = {
        network: {f: Path(getattr(args, network).replace("{fold}", str(f))) for f in folds}
        for network in ("classifier", "unet")
    }
    if "DVC_STAGE" in os.environ:
        _warn_of_strays(models, folds)
    return models


def _warn_of_strays(models: dict[str, dict[int, Path]], folds: list[int]) -> None:
    """Name each file beside the models read (of other folds, or left by a killed
    training): dvc.yaml's tune, submit and bundle depend on the whole folder, so dvc.lock
    counts it, though no stage makes it and dvc push leaves it behind."""
    given = [path for paths in models.values() for path in paths.values()]
    read = {path.resolve() for path in given}
    for folder in sorted({path.parent for path in given}):
        for path in sorted(folder.iterdir()):
            if path.resolve() not in read and not path.name.startswith("."):
                logging.getLogger(__name__).warning(
                    "%s: not a model of train.folds %s, yet dvc.lock counts it among this "
                    "stage's inputs (the whole folder); a clone without it sees the stage "
                    "changed: move it out of %s",
                    path,
                    folds,
                    path.parent,
                )


def _inputs(args: argparse.Namespace) -> tuple[Path, ...]:
    """The model and threshold files a command reads: its output may not hold them."""
    paths = (args.classifier, args.unet, args.thresholds)
    return tuple(Path(p).parent if "{fold}" in p else Path(p) for p in paths)


def _predictor(models: dict[str, dict[int, Path]], config: dict, folds: list[int]):
    """Both networks of ``folds`` (an ensemble when several), in the configured precision."""
    from steelflow.predict import Predictor

    return Predictor(
        [models["classifier"][f] for f in folds],
        [models["unet"][f] for f in folds],
        config["train"],
        config["predict"]["tta"],
    )


def _past_gate(predictor) -> str:
    """How many images the U-Nets ran on: those past the classifiers' gate."""
    return f"the U-Net ran on {predictor.past_gate}, past the classifier's gate"


def _ensemble(args: argparse.Namespace, config: dict):
    """The predictor of every fold of train.folds."""
    folds = config["train"]["folds"]
    return _predictor(_fold_models(args, folds), config, folds)


def _tune(args: argparse.Namespace) -> None:
    from steelflow.masks import MaskCache
    from steelflow.tune import area_bounds, out_of_fold, plot_search, search

    config = _load(args)
    cfg, folds = config["tune"], config["train"]["folds"]
    models = _fold_models(args, folds)
    cache = MaskCache(args.masks)
    evidence = out_of_fold(
        lambda fold: _predictor(models, config, [fold]),
        folds,
        Path(args.split),
        Path(args.raw) / "train_images",
        cache,
        cfg,
    )
    result = {"folds": folds, **search(evidence, cfg, area_bounds(cache, cfg["max_area_quantile"]))}
    write_json(args.out, result)
    plot_search(evidence, cfg, result, Path(args.figure))
    print(json.dumps(result, indent=2))


def _submit(args: argparse.Namespace) -> None:
    import pandas as pd

    from steelflow.images import check_listed
    from steelflow.io import read_sample_ids, write_submission
    from steelflow.predict import check_submission, submission_rows
    from steelflow.thresholds import Thresholds

    config = _load(args)
    thresholds = Thresholds.load(Path(args.thresholds))  # the quick check first
    predictor = _ensemble(args, config)
    raw = Path(args.raw)
    image_ids = read_sample_ids(raw / "sample_submission.csv")
    check_listed(raw / "test_images", image_ids, raw / "sample_submission.csv")
    rows = submission_rows(
        predictor, thresholds, raw / "test_images", image_ids, config["predict"]["batch_size"]
    )
    table = pd.DataFrame(rows, columns=["ImageId", "ClassId", "EncodedPixels"])
    check_submission(table, image_ids)
    write_submission(args.out, table, image_ids, config["submit"]["layout"])
    masks = (table.EncodedPixels != "").sum()
    print(f"{args.out}: {len(image_ids)} images, {masks} masks; {_past_gate(predictor)}")


def _predict(args: argparse.Namespace) -> None:
    from steelflow.predict import predict_folder
    from steelflow.thresholds import Thresholds

    config = _load(args)
    check_output_dir(args.out, "predict", args.force, (Path(args.images), *_inputs(args)))
    thresholds = Thresholds.load(Path(args.thresholds))  # the quick check first
    predictor = _ensemble(args, config)
    table = predict_folder(
        predictor,
        thresholds,
        Path(args.images),
        Path(args.out),
        config["predict"]["batch_size"],
        config["submit"]["layout"],
        args.overlays,
    )
    found = (table.EncodedPixels != "").sum()
    written = "predictions.csv and overlays" if args.overlays else "predictions.csv"
    print(
        f"{args.out}: {len(table) // 4} images, {found} masks; {_past_gate(predictor)}; {written}"
    )


def _bundle(args: argparse.Namespace) -> None:
    from steelflow.bundle import build

    config = _load(args)
    models = _fold_models(args, config["train"]["folds"])
    check_output_dir(args.out, "bundle", args.force, _inputs(args))
    files = build(Path(args.out), models, Path(args.thresholds), _settings(config), args.dataset)
    size = sum(f.stat().st_size for f in files) / 2**20
    print(f"{args.out}: {len(files)} files, {size:.1f} MiB")
    print(f"upload it: kaggle datasets create -p {args.out} --dir-mode zip")


def build_parser() -> argparse.ArgumentParser:
    from steelflow.config import parse_override

    parser = argparse.ArgumentParser(
        prog="steelflow",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    replaceable = argparse.ArgumentParser(add_help=False)
    replaceable.add_argument(
        "--force",
        action="store_true",
        help="replace --out even if it is a folder this command did not write (never one "
        "holding the input or the working folder)",
    )
    configured = argparse.ArgumentParser(add_help=False)
    configured.add_argument(
        "--config",
        action="append",
        metavar="FILE",
        help="config file; repeat to layer files in order, as Snakemake's --configfile does "
        "(default: config.yaml)",
    )
    configured.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=parse_override,
        default=[],
        metavar="KEY=VALUE",
        help="override a config value after the files, e.g. --set unet.epochs=1 (repeatable)",
    )

    p = stages.add_parser(
        "config",
        parents=[configured],
        help="the experiment settings the other stages read (all but machine), resolved",
    )
    p.add_argument("--out", help="also write it to this YAML file (e.g. results/config.yaml)")
    p.add_argument(
        "--stages",
        metavar="FOLDER",
        help="also write each stage's code fingerprint and settings to FOLDER/STAGE.yaml "
        "(e.g. results/stages): what reruns it",
    )
    p.set_defaults(run=_config, files=["out"])

    p = stages.add_parser(
        "fetch", parents=[configured, replaceable], help="raw data in the Kaggle layout"
    )
    p.add_argument("--out", default="resources/raw", help="output folder (resources/raw)")
    p.set_defaults(run=_fetch)

    p = stages.add_parser(
        "masks", parents=[replaceable], help="decode train.csv into the mask cache"
    )
    p.add_argument("--raw", default="resources/raw", help="Kaggle layout folder (resources/raw)")
    p.add_argument("--out", default="results/masks", help="cache folder (results/masks)")
    p.set_defaults(run=_masks)

    p = stages.add_parser("eda", parents=[configured], help="statistics and figures of the data")
    p.add_argument("--raw", default="resources/raw", help="Kaggle layout folder (resources/raw)")
    p.add_argument("--masks", default="results/masks", help="mask cache (results/masks)")
    for name, suffix in EDA_OUTPUTS.items():
        file = f"results/eda/{name}.{suffix}"
        p.add_argument(f"--{name.replace('_', '-')}", default=file, help=f"({file})")
    p.set_defaults(run=_eda, files=list(EDA_OUTPUTS))

    p = stages.add_parser("split", parents=[configured], help="stratified folds of the train set")
    p.add_argument("--masks", default="results/masks", help="mask cache (results/masks)")
    p.add_argument("--out", default="results/split.csv", help="output CSV (results/split.csv)")
    p.set_defaults(run=_split, files=["out"])

    p = stages.add_parser("train", parents=[configured], help="train the classifier or the U-Net")
    p.add_argument("network", choices=["classifier", "unet"])
    p.add_argument(
        "--fold", type=int, default=0, help="the fold that validates; the others train (0)"
    )
    p.add_argument("--raw", default="resources/raw", help="Kaggle layout folder (resources/raw)")
    p.add_argument("--masks", default="results/masks", help="mask cache (results/masks)")
    p.add_argument("--split", default="results/split.csv", help="folds (results/split.csv)")
    p.add_argument("--out", required=True, help="best checkpoint, e.g. models/unet_f0.pt")
    p.add_argument("--history", required=True, help="per-epoch CSV, e.g. results/train/unet_f0.csv")
    p.add_argument(
        "--curves", required=True, help="training curves, e.g. results/train/unet_f0.png"
    )
    p.add_argument("--resume", action="store_true", help="go on from the last checkpoint if any")
    p.add_argument(
        "--start",
        help="the U-Net checkpoint whose encoder the classifier starts from "
        "(classifier.pretrained: unet), e.g. models/unet_f0.pt",
    )
    p.set_defaults(run=_train, files=["out", "history", "curves"])

    models = argparse.ArgumentParser(add_help=False)
    for network, stage in (("classifier", "stage 1"), ("unet", "stage 2")):
        models.add_argument(
            f"--{network}",
            default=f"models/{network}_f{{fold}}.pt",
            help=f"{stage} checkpoints; {{fold}} stands for each of train.folds "
            f"(models/{network}_f{{fold}}.pt)",
        )
    tuned = argparse.ArgumentParser(add_help=False, parents=[models])
    tuned.add_argument(
        "--thresholds", default="results/thresholds.json", help="from steelflow tune"
    )

    p = stages.add_parser(
        "tune",
        parents=[configured, models],
        help="thresholds, minimum areas and gate, out of fold on the folds of train.folds",
    )
    p.add_argument("--raw", default="resources/raw", help="Kaggle layout folder (resources/raw)")
    p.add_argument("--masks", default="results/masks", help="mask cache (results/masks)")
    p.add_argument("--split", default="results/split.csv", help="folds (results/split.csv)")
    p.add_argument("--out", default="results/thresholds.json", help="(results/thresholds.json)")
    p.add_argument("--figure", default="results/thresholds.png", help="(results/thresholds.png)")
    p.set_defaults(run=_tune, files=["out", "figure"])

    p = stages.add_parser(
        "submit", parents=[configured, tuned], help="submission.csv for the test images"
    )
    p.add_argument("--raw", default="resources/raw", help="Kaggle layout folder (resources/raw)")
    p.add_argument("--out", default="submission.csv", help="(submission.csv)")
    p.set_defaults(run=_submit, files=["out"])

    p = stages.add_parser(
        "predict",
        parents=[configured, tuned, replaceable],
        help="masks (and overlays) for a folder of your own images",
    )
    p.add_argument("images", help="folder of JPEG or PNG steel images")
    p.add_argument(
        "--out",
        required=True,
        help="output folder, new or an earlier predict's: predictions.csv (+ overlay PNGs)",
    )
    p.add_argument(
        "--overlays", action="store_true", help="also draw one overlay PNG per image (slower)"
    )
    p.set_defaults(run=_predict)

    p = stages.add_parser(
        "bundle",
        parents=[configured, tuned, replaceable],
        help="the models, thresholds and package as a folder a Kaggle notebook installs offline",
    )
    p.add_argument("--out", default="dist/kaggle", help="bundle folder (dist/kaggle)")
    p.add_argument(
        "--dataset",
        default="your-kaggle-username/steelflow-bundle",
        help="Kaggle dataset id (owner/slug) for dataset-metadata.json",
    )
    p.set_defaults(run=_bundle)

    p = stages.add_parser("score", help="competition Dice of a submission against the truth")
    p.add_argument("--submission", required=True, help="predicted masks, either CSV layout")
    p.add_argument("--truth", required=True, help="true masks, either CSV layout")
    p.add_argument("--images", help="ImageIds to score, one per line (default: the submission's)")
    p.add_argument("--out", help="also write the result to this JSON file")
    p.add_argument(
        "--allow-missing-truth",
        action="store_true",
        help="without the truth file, write dice: null instead of failing",
    )
    p.add_argument(
        "--clean-unlisted",
        action="store_true",
        help="count images the truth has no rows for as clean (a truth of defects only, "
        "as train.csv is today); without it, every image scored needs a row in the truth",
    )
    p.add_argument("--figure", help="also draw predicted vs true masks of a few images (PNG)")
    p.add_argument(
        "--test-images",
        default="resources/raw/test_images",
        help="folder of the submission's images, for --figure",
    )
    p.set_defaults(run=_score, files=["out", "figure"])
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        for name in getattr(args, "files", []):
            if getattr(args, name):
                check_output_file(getattr(args, name), "--" + name.replace("_", "-"))
        args.run(args)
    except SteelflowError as e:  # bad input, told in one line; anything else is a bug
        print(f"steelflow {args.stage}: error: {e}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as e:  # one steelflow needs, not installed: also one line
        from steelflow.requirements import missing

        if missing(e.name) is None:
            raise
        print(f"steelflow {args.stage}: error: {missing(e.name)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
