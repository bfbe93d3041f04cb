"""The ``steelflow`` command: one subcommand per pipeline stage."""

from __future__ import annotations

import argparse
import json
import sys

from steelflow.atomic import write_json


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steelflow", description=__doc__)
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    p = stages.add_parser("score", help="competition Dice of a submission against the truth")
    p.add_argument("--submission", required=True, help="predicted masks, either CSV layout")
    p.add_argument("--truth", required=True, help="true masks, either CSV layout")
    p.add_argument("--images", help="ImageIds to score, one per line (default: the submission's)")
    p.add_argument("--out", help="also write the result to this JSON file")
    p.set_defaults(run=_score)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError) as e:
        print(f"steelflow {args.stage}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
