"""Read and write the competition's CSV files in both of their layouts.

train.csv comes as ``ImageId,ClassId,EncodedPixels`` (new, defect rows only)
or ``ImageId_ClassId,EncodedPixels`` (old, four rows per image); submissions
use the old layout. Both read into one table: ImageId, ClassId, EncodedPixels,
indexed by the line of the file each row came from.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pandas as pd

from steelflow.atomic import atomic_path

CLASSES = (1, 2, 3, 4)
COLUMNS = ["ImageId", "ClassId", "EncodedPixels"]
NEW_HEADER = ["ImageId", "ClassId", "EncodedPixels"]
OLD_HEADER = ["ImageId_ClassId", "EncodedPixels"]
_OLD_KEY = re.compile(r"^(?P<image>.+)_(?P<cls>[1-4])$")


class FormatError(ValueError):
    """A CSV row or header that fits neither layout; the message names file and line."""


def _parse_row(row: list[str], layout: list[str]) -> tuple[str, int, str]:
    if len(row) != len(layout):
        raise FormatError(f"expected {len(layout)} fields ({','.join(layout)}), got {len(row)}")
    if layout is OLD_HEADER:
        match = _OLD_KEY.match(row[0])
        if not match:
            raise FormatError(f"ImageId_ClassId {row[0]!r} is not IMAGE_CLASS with class 1-4")
        image, cls, rle = match["image"], match["cls"], row[1]
    else:
        image, cls, rle = row
        if cls.strip() not in ("1", "2", "3", "4"):
            raise FormatError(f"ClassId {cls!r} is not one of 1, 2, 3, 4")
    if not image.strip():
        raise FormatError("ImageId is empty")
    return image.strip(), int(cls), rle.strip()


def _read_rows(path: Path) -> tuple[list[tuple[str, int, str]], list[int]]:
    """The (ImageId, ClassId, EncodedPixels) rows of a mask CSV and their line numbers."""
    rows, lines, seen = [], [], {}
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if header not in (NEW_HEADER, OLD_HEADER):
            raise FormatError(
                f"{path}, line 1: header {','.join(header)!r} fits neither layout; expected "
                f"{','.join(NEW_HEADER)!r} or {','.join(OLD_HEADER)!r}"
            )
        layout = OLD_HEADER if header == OLD_HEADER else NEW_HEADER
        for row in reader:
            line = reader.line_num
            if not row:
                continue
            try:
                image, cls, rle = _parse_row(row, layout)
            except FormatError as e:
                raise FormatError(f"{path}, line {line}: {e}") from None
            if (image, cls) in seen:
                raise FormatError(
                    f"{path}, line {line}: duplicate row for image {image} class {cls} "
                    f"(first at line {seen[image, cls]})"
                )
            seen[image, cls] = line
            rows.append((image, cls, rle))
            lines.append(line)
    return rows, lines


def read_masks(path: str | Path) -> pd.DataFrame:
    """Read a train.csv, test truth or submission in either layout.

    Returns columns ImageId, ClassId (int), EncodedPixels ("" for no defect),
    indexed by line number. Raises FormatError naming the file and line of a row
    that fits neither layout or repeats an (ImageId, ClassId) pair.
    """
    path = Path(path)
    try:
        rows, lines = _read_rows(path)
    except (UnicodeDecodeError, csv.Error) as e:
        raise FormatError(f"{path}: not a CSV text file ({e})") from None
    table = pd.DataFrame(rows, columns=COLUMNS, index=pd.Index(lines, name="line"))
    return table.astype({"ClassId": "int64"})


def read_image_ids(path: str | Path) -> list[str]:
    """Read a list of ImageIds, one per line (blank lines ignored)."""
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def write_submission(path: str | Path, masks: pd.DataFrame, order: pd.DataFrame) -> None:
    """Write ``masks`` (ImageId, ClassId, EncodedPixels) in the old layout, atomically.

    Rows follow ``order`` (e.g. ``read_masks(sample_submission.csv)``); a pair of
    ``order`` missing from ``masks`` is written empty, and a pair of ``masks``
    outside ``order`` is an error.
    """
    keys = pd.MultiIndex.from_frame(order[["ImageId", "ClassId"]])
    given = masks.set_index(["ImageId", "ClassId"])["EncodedPixels"]
    extra = given.index.difference(keys)
    if len(extra):
        image, cls = extra[0]
        raise FormatError(f"{path}: mask for image {image} class {cls} is not in the sample order")
    rles = given.reindex(keys, fill_value="")
    table = pd.DataFrame(
        {
            "ImageId_ClassId": [f"{image}_{cls}" for image, cls in keys],
            "EncodedPixels": rles.to_numpy(),
        }
    )
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
