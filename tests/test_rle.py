"""The numba RLE codec against a plain numpy reference, the real masks and bad input."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from steelflow import rle


def reference_decode(text: str, shape: tuple[int, int]) -> np.ndarray:
    """The plain definition: column-major, 1-indexed runs."""
    flat = np.zeros(shape[0] * shape[1], np.uint8)
    numbers = [int(x) for x in text.split()]
    for start, length in zip(numbers[0::2], numbers[1::2], strict=True):
        flat[start - 1 : start - 1 + length] = 1
    return flat.reshape(shape, order="F")


def reference_encode(mask: np.ndarray) -> str:
    pixels = np.concatenate([[0], (mask != 0).flatten(order="F").astype(np.int8), [0]])
    changes = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
    changes[1::2] -= changes[0::2]
    return " ".join(map(str, changes))


def test_decode_is_column_major_and_one_indexed():
    mask = rle.decode("1 3 258 2", shape=(256, 4))
    assert mask.shape == (256, 4) and mask.dtype == np.uint8 and mask.flags.c_contiguous
    assert mask[:3, 0].tolist() == [1, 1, 1] and mask[3, 0] == 0
    assert mask[1:3, 1].tolist() == [1, 1] and mask[0, 1] == 0
    assert mask.sum() == 5


def test_run_across_a_column_boundary():
    mask = rle.decode("255 4", shape=(256, 2))
    assert mask[254:, 0].tolist() == [1, 1] and mask[:2, 1].tolist() == [1, 1]


def test_empty_and_whitespace():
    assert rle.decode("").sum() == 0
    assert rle.decode("  \t\n").sum() == 0
    assert rle.decode("  1   2\t 5\n1 ", shape=(4, 2)).sum() == 3
    assert rle.encode(np.zeros((256, 1600), np.uint8)) == ""


def test_encode_merges_touching_runs_into_canonical_form():
    mask = rle.decode("1 2 3 2 9 1", shape=(4, 4))
    assert rle.encode(mask) == "1 4 9 1"


def test_encode_accepts_bool_and_other_dtypes():
    mask = np.zeros((8, 5), bool)
    mask[2:5, 1] = True
    mask[7, 4] = True
    expected = reference_encode(mask)
    assert rle.encode(mask) == expected
    assert rle.encode(mask.astype(np.float32) * 0.5) == expected
    assert rle.encode(mask.astype(np.uint8) * 255) == expected


def test_full_mask():
    mask = np.ones((256, 1600), np.uint8)
    assert rle.encode(mask) == "1 409600"
    assert rle.decode("1 409600").all()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 2 3", "odd count of numbers"),
        ("1 x", "token 'x' is not a non-negative integer"),
        ("1 -2", "token '-2' is not a non-negative integer"),
        ("1.5 2", "token '1.5' is not a non-negative integer"),
        ("1 2,", "token '2,' is not a non-negative integer"),
        ("1 é", "token 'é' is not a non-negative integer"),
        ("0 3", "starts below 1"),
        ("5 0", "has length 0"),
        ("409600 2", "past the last pixel 409600"),
        ("10 5 3 2", "unsorted or overlaps"),
        ("10 5 12 2", "unsorted or overlaps"),
        ("1 99999999999999999999999", "is too large"),
    ],
)
def test_malformed_rle_says_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        rle.decode(text)


def test_decode_rejects_bad_shape_and_type():
    with pytest.raises(ValueError, match="shape"):
        rle.decode("1 1", shape=(0, 5))
    with pytest.raises(TypeError, match="str"):
        rle.decode(float("nan"))
    with pytest.raises(ValueError, match="2-D"):
        rle.encode(np.zeros((2, 2, 2)))


def test_batch_forms_match_single_calls():
    texts = ["1 3 10 5", "", "100 300 1000 44"]
    masks = rle.decode_many(texts)
    assert masks.shape == (3, 256, 1600)
    for text, mask in zip(texts, masks, strict=True):
        np.testing.assert_array_equal(mask, rle.decode(text))
    assert rle.encode_many(masks) == texts


def test_batch_error_names_the_string():
    with pytest.raises(ValueError, match=r"RLE #1: .*odd count"):
        rle.decode_many(["1 1", "1 2 3"])


masks_2d = st.tuples(st.integers(1, 40), st.integers(1, 40)).flatmap(
    lambda shape: arrays(np.uint8, shape, elements=st.integers(0, 1))
)


@settings(max_examples=300, deadline=None)
@given(masks_2d)
def test_property_encode_and_decode_match_numpy(mask):
    text = rle.encode(mask)
    assert text == reference_encode(mask)
    decoded = rle.decode(text, mask.shape)
    np.testing.assert_array_equal(decoded, mask)
    np.testing.assert_array_equal(decoded, reference_decode(text, mask.shape))


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 300),
    st.integers(1, 50),
    st.lists(st.tuples(st.integers(0, 40), st.integers(1, 40)), max_size=30),
)
def test_property_decode_any_valid_runs(height, width, gaps_and_lengths):
    """Runs built from gaps (touching allowed) decode like the reference, or raise past the end."""
    pos, parts = 1, []
    for gap, length in gaps_and_lengths:
        pos += gap
        parts += [str(pos), str(length)]
        pos += length
    text = " ".join(parts)
    if pos - 1 > height * width:
        with pytest.raises(ValueError, match="past the last pixel"):
            rle.decode(text, (height, width))
        return
    expected = reference_decode(text, (height, width))
    np.testing.assert_array_equal(rle.decode(text, (height, width)), expected)
    assert rle.encode(expected) == reference_encode(expected)


def real_rles(folder) -> list[str]:
    texts = []
    for name in (
        "train_subset_oldformat.csv",
        "train_subset_newformat.csv",
        "predicted_submission_a.csv",
    ):
        with (folder / name).open(newline="") as f:
            texts += [row["EncodedPixels"] for row in csv.DictReader(f) if row["EncodedPixels"]]
    return texts


def test_real_masks_round_trip_exactly(real_data):
    texts = real_rles(real_data)
    assert len(set(texts)) == 558 and max(map(len, texts)) > 15_000  # 7 train + 551 predicted
    for text in texts:
        mask = rle.decode(text)
        assert rle.encode(mask) == text
        np.testing.assert_array_equal(mask, reference_decode(text, rle.SHAPE))
