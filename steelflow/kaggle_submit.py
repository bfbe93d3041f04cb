"""Write submission.csv for the Severstal test images with this bundle, offline.

    python submit.py [--data DIR] [--out FILE] [--device auto|cpu|cuda]

Installs steelflow from the wheels beside this file (pip --no-index: no
internet needed) with --no-deps: the notebook image's own torch, OpenCV
(opencv-python or -headless) and the rest stay as they are, whatever their
versions. Then `python -m steelflow.requirements` checks that each module
steelflow imports is there and new enough (one line naming the module and
the version needed if not, exit 1), and `steelflow submit` runs with the
bundled models of every fold, thresholds and config. The defaults are a
Kaggle notebook's paths: the competition data under /kaggle/input (where
today's notebooks mount it, or where those of 2019 did), the submission in
the working directory (/kaggle/working). This file is copied
into every bundle as submit.py; it imports nothing of steelflow, and runs
steelflow with `python -P` (never a steelflow folder in the working directory).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMPETITION = "severstal-steel-defect-detection"
DEVICES = ("auto", "cpu", "cuda", "mps")  # train.device's, refused at once if mistyped
# where a notebook mounts the competition's data: today's, then the 2019 notebooks' folder
KAGGLE_DATA = (Path("/kaggle/input/competitions", COMPETITION), Path("/kaggle/input", COMPETITION))


def fail(message: str) -> int:
    """Tell ``message`` in one line; the exit status of a failure."""
    print(f"submit.py: error: {message}", file=sys.stderr)
    return 1


def mounted(folders: tuple[Path, ...]) -> Path | None:
    """The first of ``folders`` that is there, or None."""
    return next((folder for folder in folders if folder.is_dir()), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = " or ".join(map(str, KAGGLE_DATA))
    parser.add_argument("--data", type=Path, help=f"the competition's folder ({where})")
    parser.add_argument("--out", type=Path, default=Path("submission.csv"), help="(submission.csv)")
    parser.add_argument(
        "--device", default="auto", choices=DEVICES, help="auto: CUDA when there is a GPU (auto)"
    )
    args = parser.parse_args(argv)
    args.data = args.data or mounted(KAGGLE_DATA)
    if args.data is None:
        return fail(
            f"the competition's data is in neither {' nor '.join(map(str, KAGGLE_DATA))}: "
            "add it to the notebook (Add data), or pass --data with its folder"
        )
    for needed in (args.data / "test_images", args.data / "sample_submission.csv"):
        if not needed.exists():
            return fail(
                f"{needed} not found: --data must be the competition's folder "
                "(test_images/ and sample_submission.csv)"
            )
    # --no-deps: the image's packages are used as they are (pip would otherwise insist on
    # pyproject's distributions, opencv-python-headless say, and fail offline);
    # --force-reinstall: this bundle's steelflow, even where another of the same version is in
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    options = ["--no-index", "--no-deps", "--force-reinstall", "--find-links", str(HERE / "wheels")]
    quiet = {**os.environ, "PIP_ROOT_USER_ACTION": "ignore"}  # a notebook runs as root
    if subprocess.run([*pip, *options, "steelflow"], env=quiet).returncode != 0:
        return fail(f"pip could not install steelflow from {HERE / 'wheels'} (see above)")
    # -P: the installed steelflow, never a steelflow folder in the working directory
    check = [sys.executable, "-P", "-m", "steelflow.requirements", "--prog", "submit.py"]
    if subprocess.run(check).returncode != 0:
        return 1  # it told which module, in one line
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
    return subprocess.run([sys.executable, "-P", "-m", "steelflow", *submit]).returncode


if __name__ == "__main__":
    sys.exit(main())
