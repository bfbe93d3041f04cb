"""Read and write the competition's CSV files in every layout the competition has used.

Mask tables (train.csv, test truth, submissions) come in three headers:

- ``ImageId,ClassId,EncodedPixels``: train.csv today, defect rows only;
- ``ImageId,EncodedPixels,ClassId``: submissions today, four rows per image;
  today's sample_submission.csv has one ``IMAGE.jpg,1 409600,0`` row per image;
- ``ImageId_ClassId,EncodedPixels``: the 2019 launch layout, four rows per image.

All read into one table: ImageId, ClassId, EncodedPixels, indexed by the line
of the file each row came from. Submissions are written today's way or the launch way.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from steelflow.atomic import atomic_path
from steelflow.errors import SteelflowError

CLASSES = (1, 2, 3, 4)
COLUMNS = ["ImageId", "ClassId", "EncodedPixels"]
TRAIN_HEADER = ("ImageId", "ClassId", "EncodedPixels")
CURRENT_HEADER = ("ImageId", "EncodedPixels", "ClassId")
LAUNCH_HEADER = ("ImageId_ClassId", "EncodedPixels")
HEADERS = (TRAIN_HEADER, CURRENT_HEADER, LAUNCH_HEADER)
LAYOUTS = {"current": CURRENT_HEADER, "launch": LAUNCH_HEADER}  # of a submission
PLACEHOLDER = 0  # the ClassId of today's sample_submission.csv rows: no class, only the image
_LAUNCH_KEY = re.compile(r"^(?P<image>.+)_(?P<cls>\d+)$")


class FormatError(SteelflowError):
    """A CSV row or header that fits no layout; the message names file and line."""


def _parse_row(row: list[str], header: tuple, classes: Sequence[int]) -> tuple[str, int, str]:
    if len(row) != len(header):
        raise FormatError(f"expected {len(header)} fields ({','.join(header)}), got {len(row)}")
    if header == LAUNCH_HEADER:
        match = _LAUNCH_KEY.match(row[0])
        if not match:
            raise FormatError(f"ImageId_ClassId {row[0]!r} is not IMAGE_CLASS")
        image, cls, text = match["image"], match["cls"], row[1]
    else:
        fields = dict(zip(header, row, strict=True))
        image, cls, text = fields["ImageId"], fields["ClassId"].strip(), fields["EncodedPixels"]
    allowed = ", ".join(map(str, classes))
    if not cls.isdigit() or int(cls) not in classes:
        raise FormatError(f"ClassId {cls!r} is not one of {allowed}")
    if not image.strip():
        raise FormatError("ImageId is empty")
    return image.strip(), int(cls), text.strip()


def _read_rows(path: Path, classes: Sequence[int]) -> tuple[list[tuple[str, int, str]], list[int]]:
    """The (ImageId, ClassId, EncodedPixels) rows of a mask CSV and their line numbers."""
    rows, lines, seen = [], [], {}
    with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: as Excel saves it, too
        reader = csv.reader(f)
        header = tuple(h.strip() for h in next(reader, []))
        if header not in HEADERS:
            expected = " or ".join(repr(",".join(h)) for h in HEADERS)
            raise FormatError(
                f"{path}, line 1: header {','.join(header)!r} fits no layout; expected {expected}"
            )
        for row in reader:
            line = reader.line_num
            if not row:
                continue
            try:
                image, cls, text = _parse_row(row, header, classes)
            except FormatError as e:
                raise FormatError(f"{path}, line {line}: {e}") from None
            if (image, cls) in seen:
                raise FormatError(
                    f"{path}, line {line}: duplicate row for image {image} class {cls} "
                    f"(first at line {seen[image, cls]})"
                )
            seen[image, cls] = line
            rows.append((image, cls, text))
            lines.append(line)
    return rows, lines


def _read(path: str | Path, classes: Sequence[int]) -> pd.DataFrame:
    path = Path(path)
    try:
        rows, lines = _read_rows(path, classes)
    except (UnicodeDecodeError, csv.Error) as e:
        raise FormatError(f"{path}: not a CSV text file ({e})") from None
    except OSError as e:
        raise FormatError(f"{path}: cannot be read ({e.strerror})") from None
    table = pd.DataFrame(rows, columns=COLUMNS, index=pd.Index(lines, name="line"))
    return table.astype({"ClassId": "int64"})


def read_masks(path: str | Path) -> pd.DataFrame:
    """Read a train.csv, test truth or submission in any layout.

    Returns columns ImageId, ClassId (int, 1-4), EncodedPixels ("" for no defect),
    indexed by line number. Raises FormatError naming the file and line of a row
    that fits no layout or repeats an (ImageId, ClassId) pair.
    """
    return _read(path, CLASSES)


def read_sample_ids(path: str | Path) -> list[str]:
    """The ImageIds of a sample_submission.csv in any layout, in file order, each once
    (today's placeholder rows of ClassId 0 included; their masks are not read)."""
    ids = list(dict.fromkeys(_read(path, (PLACEHOLDER, *CLASSES)).ImageId))
    if not ids:
        raise FormatError(f"{path}: no image rows; expected one or more test images")
    return ids


def read_image_ids(path: str | Path) -> list[str]:
    """Read a list of ImageIds, one per line (blank lines ignored)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: not a text file of ImageIds ({e})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def submission_table(masks: pd.DataFrame, image_ids: Sequence[str], layout: str) -> pd.DataFrame:
    """``masks`` (ImageId, ClassId, EncodedPixels) as a submission in ``layout``
    (``current`` or ``launch``): four rows per image of ``image_ids`` in that order,
    classes 1-4, a pair missing from ``masks`` empty. A pair of ``masks`` outside
    ``image_ids`` is an error."""
    keys = pd.MultiIndex.from_product([list(image_ids), CLASSES], names=["ImageId", "ClassId"])
    given = masks.set_index(["ImageId", "ClassId"])["EncodedPixels"]
    extra = given.index.difference(keys)
    if len(extra):
        image, cls = extra[0]
        raise FormatError(f"mask for image {image} class {cls} is not one of the sample's")
    columns = {
        "ImageId": keys.get_level_values(0),
        "ClassId": keys.get_level_values(1),
        "ImageId_ClassId": [f"{i}_{c}" for i, c in keys],
        "EncodedPixels": given.reindex(keys, fill_value="").to_numpy(),
    }
    return pd.DataFrame({name: columns[name] for name in LAYOUTS[layout]})


def write_submission(
    path: str | Path, masks: pd.DataFrame, image_ids: Sequence[str], layout: str = "current"
) -> None:
    """Write ``submission_table(masks, image_ids, layout)`` to ``path``, atomically."""
    try:
        table = submission_table(masks, image_ids, layout)
    except FormatError as e:
        raise FormatError(f"{path}: {e}") from None
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
