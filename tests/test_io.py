"""Both train.csv layouts, submissions in sample order, and rows that fit neither."""

from __future__ import annotations

import pandas as pd
import pytest

from steelflow.io import FormatError, read_masks, write_submission


def write(path, text):
    path.write_text(text)
    return path


def test_both_real_layouts_read_to_the_same_table(real_data):
    old = read_masks(real_data / "train_subset_oldformat.csv")
    new = read_masks(real_data / "train_subset_newformat.csv")
    assert len(old) == 24 and len(new) == 7
    defects = old[old.EncodedPixels != ""].reset_index(drop=True)
    pd.testing.assert_frame_equal(defects, new.reset_index(drop=True))
    assert list(new.columns) == ["ImageId", "ClassId", "EncodedPixels"]
    assert new.ClassId.dtype == "int64"


def test_index_is_the_file_line(tmp_path):
    table = read_masks(
        write(tmp_path / "t.csv", "ImageId,ClassId,EncodedPixels\na.jpg,3,1 2\n\nb.jpg,1,5 5\n")
    )
    assert table.index.tolist() == [2, 4]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Image,Class\n", r"line 1: header 'Image,Class' fits neither layout"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,5,1 1\n", r"line 2: ClassId '5' is not one of"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,1\n", r"line 2: expected 3 fields"),
        (
            "ImageId_ClassId,EncodedPixels\na.jpg_1,\na.jpg,1 1\n",
            r"line 3: ImageId_ClassId 'a.jpg'",
        ),
        ("ImageId_ClassId,EncodedPixels\na.jpg_7,\n", r"line 2: ImageId_ClassId 'a.jpg_7'"),
        (
            "ImageId,ClassId,EncodedPixels\na.jpg,1,1 1\nb.jpg,1,\na.jpg,1,3 1\n",
            r"line 4: duplicate row for image a.jpg class 1 \(first at line 2\)",
        ),
    ],
)
def test_rows_that_fit_neither_layout_name_file_and_line(tmp_path, text, message):
    path = write(tmp_path / "bad.csv", text)
    with pytest.raises(FormatError, match=rf"bad\.csv, {message}"):
        read_masks(path)


def test_submission_follows_the_sample_order(tmp_path):
    sample = read_masks(
        write(
            tmp_path / "sample.csv",
            "ImageId_ClassId,EncodedPixels\n"
            + "".join(f"{i}.jpg_{c},1 1\n" for i in "ba" for c in range(1, 5)),
        )
    )
    masks = pd.DataFrame(
        {"ImageId": ["a.jpg", "b.jpg"], "ClassId": [2, 4], "EncodedPixels": ["3 4", "9 1"]}
    )
    out = tmp_path / "submission.csv"
    write_submission(out, masks, sample)
    lines = out.read_text().splitlines()
    assert lines[0] == "ImageId_ClassId,EncodedPixels"
    assert lines[1:] == [
        "b.jpg_1,",
        "b.jpg_2,",
        "b.jpg_3,",
        "b.jpg_4,9 1",
        "a.jpg_1,",
        "a.jpg_2,3 4",
        "a.jpg_3,",
        "a.jpg_4,",
    ]
    assert read_masks(out).EncodedPixels.tolist().count("") == 6
    assert [p.name for p in tmp_path.iterdir()] != [] and not list(tmp_path.glob(".*tmp"))


def test_submission_refuses_pairs_outside_the_sample(tmp_path):
    sample = read_masks(write(tmp_path / "sample.csv", "ImageId_ClassId,EncodedPixels\na.jpg_1,\n"))
    masks = pd.DataFrame({"ImageId": ["z.jpg"], "ClassId": [1], "EncodedPixels": ["1 1"]})
    with pytest.raises(FormatError, match="image z.jpg class 1 is not in the sample"):
        write_submission(tmp_path / "submission.csv", masks, sample)
    assert not list(tmp_path.glob("submission*")) and not list(tmp_path.glob(".*tmp"))


def test_real_submission_layout_round_trips(real_data, tmp_path):
    source = real_data / "predicted_submission_a.csv"
    table = read_masks(source)
    assert len(table) == 7204
    ids = (real_data / "test_image_ids.txt").read_text().split()
    assert list(dict.fromkeys(table.ImageId)) == ids
    out = tmp_path / "submission.csv"
    write_submission(out, table, table)
    assert out.read_text() == source.read_text()
