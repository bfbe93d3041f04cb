"""Data sources for `steelflow fetch`: synthetic, Kaggle or local, each giving the Kaggle layout.

The layout of the output folder: train.csv (``ImageId,ClassId,EncodedPixels``),
train_images/*.jpg, test_images/*.jpg, sample_submission.csv (any layout the
competition has used), and test_truth.csv when the truth is known (synthetic source).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import zipfile
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from steelflow import rle, synthetic
from steelflow.atomic import atomic_dir, atomic_path
from steelflow.errors import SteelflowError
from steelflow.io import read_masks, read_sample_ids

COMPETITION = "severstal-steel-defect-detection"
RULES_URL = f"https://www.kaggle.com/competitions/{COMPETITION}/rules"


class SourceError(SteelflowError):
    """A data source that cannot give the Kaggle layout; the message says what to do."""


def fetch(data: dict, seed: int, out: Path, workers: int = 0) -> None:
    """Produce the Kaggle layout in ``out`` from the source ``data["source"]``, atomically;
    synthetic images are drawn by ``workers`` processes (0: one per CPU core)."""
    with atomic_dir(out) as tmp:
        if data["source"] == "synthetic":
            cfg = data["synthetic"]
            synthetic.generate(
                tmp,
                cfg["n_train"],
                cfg["n_test"],
                seed=seed,
                preset=cfg["preset"],
                jpeg_quality=cfg["jpeg_quality"],
                workers=workers or os.cpu_count() or 1,
            )
        elif data["source"] == "kaggle":
            download_kaggle(tmp)
        else:
            if not data.get("local_path"):
                raise SourceError("data.source is 'local' but data.local_path is not set")
            copy_local(Path(data["local_path"]), tmp)
        check_layout(tmp, label=str(data.get("local_path") or out))


def download_kaggle(out: Path) -> None:
    """Download and extract the competition files with the official kaggle package."""
    quiet = io.StringIO()  # the package prints pages of help; our one line says it
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            from kaggle.api.kaggle_api_extended import KaggleApi  # noqa: I001 (its import authenticates)

            api = KaggleApi()
            api.authenticate()
    except (SystemExit, OSError, ValueError):
        raise SourceError(
            "no Kaggle credentials: run `kaggle auth login`, or set KAGGLE_API_TOKEN, or save "
            "a token to ~/.kaggle/access_token (legacy: ~/.kaggle/kaggle.json); "
            f"then accept the rules at {RULES_URL}"
        ) from None
    download = out / ".download"
    download.mkdir()
    try:
        api.competition_download_files(COMPETITION, path=str(download), quiet=False)
    except Exception as e:
        status = getattr(e, "status", None) or getattr(
            getattr(e, "response", None), "status_code", None
        )
        if status in (401, 403) or "403" in str(e):
            raise SourceError(
                f"Kaggle refused the download (HTTP {status or 403}): accept the competition "
                f"rules at {RULES_URL}, then run again"
            ) from None
        raise SourceError(f"could not download {COMPETITION} from Kaggle: {e}") from None
    archives = sorted(download.glob("*.zip"))
    if not archives:
        raise SourceError(f"the Kaggle download holds no zip archive: {os.listdir(download)}")
    for archive in archives:
        extract_zip(archive, out)
    shutil.rmtree(download)


def copy_local(source: Path, out: Path) -> None:
    """Copy a local Kaggle zip or extracted folder into ``out``."""
    if not source.exists():
        raise SourceError(f"data.local_path {source} does not exist")
    if source.is_file():
        extract_zip(source, out)
        return

    for item in source.iterdir():  # copies, not links: outputs must not alias the user's files
        if item.is_dir():
            shutil.copytree(item, out / item.name)
        else:
            shutil.copy2(item, out / item.name)
    for inner in sorted(out.glob("*.zip")):  # e.g. train_images.zip beside train.csv
        extract_zip(inner, out)
        inner.unlink()


def extract_zip(archive: Path, out: Path) -> None:
    """Extract ``archive`` into ``out``, refusing any entry that would land outside it.

    Zips inside (Kaggle ships train_images.zip and the like) are extracted too.
    """
    root = out.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            for entry in zf.infolist():
                target = (root / entry.filename).resolve()
                if target != root and root not in target.parents:
                    raise SourceError(
                        f"{archive}: entry {entry.filename!r} would be extracted outside {out}"
                    )
                if (entry.external_attr >> 16) & 0o170000 == 0o120000:
                    raise SourceError(f"{archive}: entry {entry.filename!r} is a symbolic link")
            zf.extractall(root)
            inner = [root / e.filename for e in zf.infolist() if e.filename.endswith(".zip")]
    except zipfile.BadZipFile as e:
        raise SourceError(f"{archive}: not a valid zip archive ({e})") from None
    for nested in inner:
        extract_zip(nested, nested.parent)
        nested.unlink()


def _check_image(path: Path, name: str) -> None:
    try:
        with Image.open(path) as im:
            if im.size != (rle.SHAPE[1], rle.SHAPE[0]):
                raise SourceError(
                    f"{name}: image is {im.size[0]}x{im.size[1]}, expected "
                    f"{rle.SHAPE[1]}x{rle.SHAPE[0]} (width x height)"
                )
            im.draft("L", (im.size[0] // 8, im.size[1] // 8))  # decode at 1/8 scale: fast
            im.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise SourceError(f"{name}: not a readable JPEG ({e})") from None


def check_layout(root: Path, label: str) -> None:
    """Check the Kaggle layout in ``root`` and rewrite train.csv as defect rows only.

    Every file the later stages read is read here, so a layout they cannot use
    fails before training: every train.csv row needs its image, every image of
    sample_submission.csv its test image; every image must decode and be 1600x256.
    Errors name the file as it is in ``label``, the source the user gave.
    """
    for name in ("train.csv", "sample_submission.csv"):
        if not (root / name).is_file():
            raise SourceError(f"{label}: {name} is missing")
    for name in ("train_images", "test_images"):
        if not (root / name).is_dir():
            raise SourceError(f"{label}: folder {name}/ is missing")
    try:
        train = read_masks(root / "train.csv")
        test_ids = read_sample_ids(root / "sample_submission.csv")
    except SteelflowError as e:
        raise SourceError(str(e).replace(str(root), label)) from None
    for line, image in train.ImageId.items():
        if not (root / "train_images" / image).is_file():
            raise SourceError(
                f"{label}/train.csv, line {line}: image train_images/{image} is missing"
            )
    for image in test_ids:
        if not (root / "test_images" / image).is_file():
            raise SourceError(
                f"{label}/sample_submission.csv: image test_images/{image} is missing"
            )
    images = sorted(root.glob("train_images/*.jpg")) + sorted(root.glob("test_images/*.jpg"))
    for path in tqdm(images, desc="checking images", unit="img", mininterval=2):
        _check_image(path, f"{label}/{path.relative_to(root)}")
    with atomic_path(root / "train.csv") as tmp:  # a new file: never write through a link
        train[train.EncodedPixels != ""].to_csv(tmp, index=False)
