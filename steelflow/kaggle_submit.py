"""Write submission.csv for the Severstal test images with this bundle, offline.

    python submit.py [--data DIR] [--out FILE] [--device auto|cpu|cuda]

Installs steelflow from the wheels beside this file (pip --no-index: no
internet needed), then runs `steelflow submit` with the bundled models of
every fold, thresholds and config. The defaults are a Kaggle notebook's
paths: the competition data under /kaggle/input, the submission in the
working directory (/kaggle/working). This file is copied into every bundle
as submit.py; it imports nothing of steelflow before installing it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
KAGGLE_DATA = Path("/kaggle/input/severstal-steel-defect-detection")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=KAGGLE_DATA, help=f"({KAGGLE_DATA})")
    parser.add_argument("--out", type=Path, default=Path("submission.csv"), help="(submission.csv)")
    parser.add_argument("--device", default="auto", help="auto: CUDA when there is a GPU (auto)")
    args = parser.parse_args(argv)
    for needed in (args.data / "test_images", args.data / "sample_submission.csv"):
        if not needed.exists():
            print(
                f"submit.py: error: {needed} not found: --data must be the competition's folder "
                "(test_images/ and sample_submission.csv)",
                file=sys.stderr,
            )
            return 1
    wheels = HERE / "wheels"
    install = ["pip", "install", "--quiet", "--no-index", "--find-links", str(wheels), "steelflow"]
    subprocess.run([sys.executable, "-m", *install], check=True)
    models = {
        network: str(HERE / "models" / f"{network}_f{{fold}}.pt")
        for network in ("classifier", "unet")
    }
    submit = [
        "submit",
        "--config",
        str(HERE / "config.yaml"),
        "--set",
        f"train.device={args.device}",
        "--raw",
        str(args.data),
        "--classifier",
        models["classifier"],
        "--unet",
        models["unet"],
        "--thresholds",
        str(HERE / "thresholds.json"),
        "--out",
        str(args.out),
    ]
    # -P: the installed steelflow, never a steelflow folder in the working directory
    return subprocess.run([sys.executable, "-P", "-m", "steelflow", *submit]).returncode


if __name__ == "__main__":
    sys.exit(main())
