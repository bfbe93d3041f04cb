"""Image files, wherever steelflow reads them: one naming rule (``.jpg``, ``.jpeg`` or
``.png``, any case: ``list_images``) and whole files only (``check_image_bytes``),
decoded gray at their own size (``read_gray``); where a Severstal image is expected,
its size (``check_size``) and, for a list of them, that each is there (``check_listed``)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from steelflow import rle
from steelflow.errors import SteelflowError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # in any case
JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"  # the SOI and EOI markers
PNG_START = b"\x89PNG\r\n\x1a\n"
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk: length 0, type, CRC


def list_images(folder: str | Path) -> list[Path]:
    """The image files of ``folder``, sorted: every file but hidden ones must end in
    ``.jpg``, ``.jpeg`` or ``.png`` (any case) and be named in UTF-8, as a submission's
    rows are written; subfolders are not looked into."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SteelflowError(f"{folder}: not found or not a folder; expected a folder of images")
    shown = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    files = [p for p in shown if p.is_file() or (p.is_symlink() and not p.exists())]
    for path in files:
        if not path.exists():
            raise SteelflowError(
                f"{path}: a link to {os.readlink(path)}, which is not there; expected an image"
            )
        try:
            path.name.encode()
        except UnicodeEncodeError:  # bytes Python could not decode: an old zip's, a share's
            raise SteelflowError(
                f"{folder}: file name {os.fsencode(path.name)!r} is not UTF-8; expected UTF-8 "
                "names (rename it, e.g. with convmv)"
            ) from None
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise SteelflowError(
                f"{path}: not a JPEG or PNG image (expected .jpg, .jpeg or .png, any case)"
            )
    return files


def check_listed(folder: Path, names: list[str], listed_in: Path) -> None:
    """Refuse, before any work, a list of image names (from ``listed_in``) that names a
    file ``folder`` does not have."""
    try:
        present = {p.name for p in folder.iterdir()}
    except OSError as e:
        raise SteelflowError(
            f"{folder}: cannot be read ({e.strerror}); expected a folder"
        ) from None
    missing = [name for name in names if name not in present]
    if missing:
        raise SteelflowError(
            f"{listed_in} lists {missing[0]}, which {folder} does not have "
            f"({len(missing)} of its {len(names)} images missing); expected a file for each"
        )


def check_size(shape: tuple[int, ...], name: str | Path) -> None:
    """Refuse an image whose ``shape`` (height, width, ...) is not a Severstal image's."""
    height, width = shape[:2]
    if (height, width) != rle.SHAPE:
        raise SteelflowError(
            f"{name}: image is {width}x{height}, expected {rle.SHAPE[1]}x{rle.SHAPE[0]} "
            "(width x height)"
        )


def check_image_bytes(data: bytes | memoryview, name: str | Path) -> None:
    """Refuse an image file's bytes unless they are a whole JPEG or PNG: a JPEG starts
    with the start-of-image marker and ends with the end-of-image marker, a PNG ends
    with its IEND chunk. A copy cut short or zero-filled after some point (as an
    interrupted copy leaves it) fails this, though decoders may still return pixels."""
    view = memoryview(data).cast("B")
    start, end = bytes(view[:8]), bytes(view[-12:])
    if start.startswith(JPEG_START):
        if not end.endswith(JPEG_END):
            raise SteelflowError(
                f"{name}: cannot be read as an image (truncated or corrupt JPEG: "
                "no end-of-image marker)"
            )
    elif start == PNG_START:
        if end != PNG_END:
            raise SteelflowError(
                f"{name}: cannot be read as an image (truncated or corrupt PNG: no IEND chunk "
                "at its end)"
            )
    else:
        raise SteelflowError(f"{name}: cannot be read as an image (neither a JPEG nor a PNG file)")


def decode_gray(data: np.ndarray, name: str | Path) -> np.ndarray:
    """Decode an image file's bytes as uint8 gray, at its own size; a file that is not
    a whole JPEG or PNG (``check_image_bytes``) is refused, never decoded in part."""
    check_image_bytes(memoryview(data), name)
    # the pixels as stored, as torchvision's decoders and Kaggle's RLE take them: an EXIF
    # orientation tag (a phone's photo) is not applied
    image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise SteelflowError(f"{name}: cannot be read as an image (corrupt JPEG or PNG data)")
    return image


def read_bytes(path: Path) -> np.ndarray:
    """An image file's bytes, as uint8."""
    try:
        return np.fromfile(path, np.uint8)
    except OSError as e:
        raise SteelflowError(f"{path}: cannot be read ({e.strerror})") from None


def read_gray(path: Path) -> np.ndarray:
    """Read an image file as uint8 gray, at its own size."""
    return decode_gray(read_bytes(path), path)
