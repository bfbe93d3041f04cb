"""Every layout of train.csv, sample_submission.csv and submissions; rows that fit none."""

from __future__ import annotations

import pandas as pd
import pytest

from steelflow.io import FormatError, read_masks, read_sample_ids, write_submission


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


HEADERS = r"expected 'ImageId,ClassId,EncodedPixels' or 'ImageId,EncodedPixels,ClassId' or 'ImageId_ClassId,EncodedPixels'"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Image,Class\n", rf"line 1: header 'Image,Class' fits no layout; {HEADERS}"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,5,1 1\n", r"line 2: ClassId '5' is not one of"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,0,1 1\n", r"line 2: ClassId '0' is not one of"),
        ("ImageId,EncodedPixels,ClassId\na.jpg,1 1,x\n", r"line 2: ClassId 'x' is not one of"),
        ("ImageId,ClassId,EncodedPixels\na.jpg,1\n", r"line 2: expected 3 fields"),
        (
            "ImageId_ClassId,EncodedPixels\na.jpg_1,\na.jpg,1 1\n",
            r"line 3: ImageId_ClassId 'a.jpg'",
        ),
        ("ImageId_ClassId,EncodedPixels\na.jpg_7,\n", r"line 2: ClassId '7' is not one of"),
        (
            "ImageId,ClassId,EncodedPixels\na.jpg,1,1 1\nb.jpg,1,\na.jpg,1,3 1\n",
            r"line 4: duplicate row for image a.jpg class 1 \(first at line 2\)",
        ),
    ],
)
def test_rows_that_fit_no_layout_name_file_and_line(tmp_path, text, message):
    path = write(tmp_path / "bad.csv", text)
    with pytest.raises(FormatError, match=rf"bad\.csv, {message}"):
        read_masks(path)


def test_a_file_saved_with_a_byte_order_mark_reads_as_without(tmp_path):
    text = "ImageId,ClassId,EncodedPixels\na.jpg,3,1 2\n"
    with_bom = read_masks(write(tmp_path / "bom.csv", "\ufeff" + text))
    pd.testing.assert_frame_equal(with_bom, read_masks(write(tmp_path / "plain.csv", text)))


def test_todays_sample_gives_its_image_ids_in_file_order(tmp_path):
    sample = write(
        tmp_path / "sample.csv",
        "ImageId,EncodedPixels,ClassId\nb.jpg,1 409600,0\na.jpg,1 409600,0\nc.jpg,1 409600,0\n",
    )
    assert read_sample_ids(sample) == ["b.jpg", "a.jpg", "c.jpg"]
    launch = write(
        tmp_path / "launch.csv",
        "ImageId_ClassId,EncodedPixels\n"
        + "".join(f"{i}.jpg_{c},1 1\n" for i in "ba" for c in range(1, 5)),
    )
    assert read_sample_ids(launch) == ["b.jpg", "a.jpg"]
    empty = write(tmp_path / "empty.csv", "ImageId,EncodedPixels,ClassId\n")
    with pytest.raises(FormatError, match=r"empty\.csv: no image rows"):
        read_sample_ids(empty)
    bad = write(tmp_path / "bad.csv", "ImageId,EncodedPixels,ClassId\nb.jpg,1 409600,0\na.jpg,,5\n")
    with pytest.raises(
        FormatError, match=r"bad\.csv, line 3: ClassId '5' is not one of 0, 1, 2, 3, 4"
    ):
        read_sample_ids(bad)


MASKS = pd.DataFrame(
    {"ImageId": ["a.jpg", "b.jpg"], "ClassId": [2, 4], "EncodedPixels": ["3 4", "9 1"]}
)


def test_a_submission_in_todays_layout_has_four_rows_per_image_in_sample_order(tmp_path):
    out = tmp_path / "submission.csv"
    write_submission(out, MASKS, ["b.jpg", "a.jpg"])
    assert out.read_text().splitlines() == [
        "ImageId,EncodedPixels,ClassId",
        "b.jpg,,1",
        "b.jpg,,2",
        "b.jpg,,3",
        "b.jpg,9 1,4",
        "a.jpg,,1",
        "a.jpg,3 4,2",
        "a.jpg,,3",
        "a.jpg,,4",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]


def test_a_submission_in_the_launch_layout_follows_the_sample_order(tmp_path):
    out = tmp_path / "submission.csv"
    write_submission(out, MASKS, ["b.jpg", "a.jpg"], layout="launch")
    assert out.read_text().splitlines() == [
        "ImageId_ClassId,EncodedPixels",
        "b.jpg_1,",
        "b.jpg_2,",
        "b.jpg_3,",
        "b.jpg_4,9 1",
        "a.jpg_1,",
        "a.jpg_2,3 4",
        "a.jpg_3,",
        "a.jpg_4,",
    ]


@pytest.mark.parametrize("layout", ["current", "launch"])
def test_both_submission_layouts_read_back_to_the_same_table(tmp_path, layout):
    out = tmp_path / f"{layout}.csv"
    write_submission(out, MASKS, ["b.jpg", "a.jpg"], layout)
    table = read_masks(out).reset_index(drop=True)
    assert len(table) == 8 and table.EncodedPixels.tolist().count("") == 6
    found = table[table.EncodedPixels != ""].sort_values("ImageId").reset_index(drop=True)
    pd.testing.assert_frame_equal(found, MASKS)


def test_submission_refuses_pairs_outside_the_sample(tmp_path):
    masks = pd.DataFrame({"ImageId": ["z.jpg"], "ClassId": [1], "EncodedPixels": ["1 1"]})
    with pytest.raises(FormatError, match="submission.csv: mask for image z.jpg class 1 is not"):
        write_submission(tmp_path / "submission.csv", masks, ["a.jpg"])
    assert not list(tmp_path.iterdir())


def test_real_submission_layout_round_trips(real_data, tmp_path):
    source = real_data / "predicted_submission_a.csv"
    table = read_masks(source)
    assert len(table) == 7204
    ids = (real_data / "test_image_ids.txt").read_text().split()
    assert read_sample_ids(source) == ids
    out = tmp_path / "submission.csv"
    write_submission(out, table, ids, layout="launch")
    assert out.read_text() == source.read_text()
    current = tmp_path / "current.csv"
    write_submission(current, table, ids)
    pd.testing.assert_frame_equal(
        read_masks(current).reset_index(drop=True), table.reset_index(drop=True)
    )
