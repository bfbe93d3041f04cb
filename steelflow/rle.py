"""Run-length encoding of masks, compiled with numba.

Kaggle's RLE: space-separated ``start length`` pairs, 1-indexed, pixels numbered
column-major (top to bottom, then left to right), so pixel = col * H + row + 1.
The kernels work on the column-major flat buffer; ``cv2.transpose`` moves it to
and from the (H, W) row-major image, which is about 10x faster than numpy's copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import cv2
import numpy as np
from numba import njit

SHAPE = (256, 1600)  # (height, width) of a Severstal image

_OK, _ODD, _TOKEN, _TOO_LARGE, _START, _LENGTH, _PAST_END, _ORDER = range(8)
_MAX_DIGITS = 15  # far beyond any image, far below int64 overflow


@njit(cache=True, nogil=True, inline="always")
def _close_span(flat, spans, k, prev_end, height):
    """Zero the rest of the column the last run ended in and record the span's stop."""
    stop = (prev_end - 1) // height + 1
    flat[prev_end : stop * height] = 0
    spans[k] = stop
    return k + 1


@njit(cache=True, nogil=True)
def _decode_into(text, flat, height):
    """Parse ``text`` (ASCII bytes) into the uninitialised column-major ``flat``, writing
    only the columns the runs touch. Returns (code, token offset, start, length, spans):
    code 0 is success, ``spans`` the written column ranges [first0, stop0, first1, ...]."""
    n, limit = text.size, flat.size
    spans = np.empty(2 * (n // 4 + 1), np.int64)
    k, i = 0, 0  # k is odd while a span is open
    have_start, start, start_at = False, 0, 0
    prev_end = 0  # one past the last pixel of the previous run (0-indexed)
    while True:
        while i < n and (text[i] == 32 or 9 <= text[i] <= 13):
            i += 1
        if i == n:
            break
        token_at, value = i, 0
        while i < n:
            digit = np.int64(text[i]) - 48
            if 0 <= digit <= 9:
                value = value * 10 + digit
                i += 1
            elif text[i] == 32 or 9 <= text[i] <= 13:
                break
            else:
                return _TOKEN, token_at, 0, 0, spans[:0]
        if i - token_at > _MAX_DIGITS:
            return _TOO_LARGE, token_at, 0, 0, spans[:0]
        if not have_start:
            start = value
            start_at = token_at
            have_start = True
            continue
        have_start = False
        length = value
        if start < 1:
            return _START, start_at, start, length, spans[:0]
        if length < 1:
            return _LENGTH, start_at, start, length, spans[:0]
        if start - 1 + length > limit:
            return _PAST_END, start_at, start, length, spans[:0]
        if start - 1 < prev_end:
            return _ORDER, start_at, start, length, spans[:0]
        column = (start - 1) // height
        if k == 0 or column > (prev_end - 1) // height + 1:  # an empty column between: new span
            if k:
                k = _close_span(flat, spans, k, prev_end, height)
            spans[k] = column
            k += 1
            prev_end = column * height
        flat[prev_end : start - 1] = 0
        flat[start - 1 : start - 1 + length] = 1
        prev_end = start - 1 + length
    if have_start:
        return _ODD, start_at, start, 0, spans[:0]
    if k:
        k = _close_span(flat, spans, k, prev_end, height)
    return _OK, 0, 0, 0, spans[:k]


_LOW_BITS = np.uint64(0x0101010101010101)
_HIGH_BITS = np.uint64(0x8080808080808080)
_GATHER_BITS = np.uint64(0x0102040810204080)  # moves bit 0 of each byte into the top byte
_LOWEST_BIT = np.array([0] + [(i & -i).bit_length() - 1 for i in range(1, 256)], np.int64)


@njit(cache=True, nogil=True, inline="always")
def _zero_words(words):
    """Count the leading words that are all zero bytes."""
    n = words.size
    w = 0
    while w + 4 <= n and (words[w] | words[w + 1] | words[w + 2] | words[w + 3]) == 0:
        w += 4
    while w < n and words[w] == 0:
        w += 1
    return w


@njit(cache=True, nogil=True, inline="always")
def _full_words(words):
    """Count the leading words that have no zero byte."""
    n = words.size
    w = 0
    while w < n and (words[w] - _LOW_BITS) & ~words[w] & _HIGH_BITS == 0:
        w += 1
    return w


@njit(cache=True, nogil=True, inline="always")
def _append(bounds, k, value):
    """Store ``value`` at ``bounds[k]``, growing ``bounds`` when full; return it."""
    if k == bounds.size:
        grown = np.empty(2 * k, np.int64)
        grown[:k] = bounds
        bounds = grown
    bounds[k] = value
    return bounds


@njit(cache=True, nogil=True)
def _find_runs(flat):
    """Return the nonzero runs of ``flat`` as [start0, end0, start1, end1, ...].

    Pixels are 0-indexed, ends exclusive. Works on 8-byte words: words that are
    all zero (outside a run) or all nonzero (inside one) are skipped, and a
    mixed word gives its transitions through an 8-bit pattern of nonzero bytes.
    """
    n = flat.size
    n_words = n // 8
    words = flat[: n_words * 8].view(np.uint64)
    bounds = np.empty(512, np.int64)  # grown on demand: a big allocation costs more than a scan
    k = 0
    inside = 0
    w = 0
    while True:
        w += _full_words(words[w:]) if inside else _zero_words(words[w:])
        if w == n_words:
            break
        t = words[w]
        t |= t >> np.uint64(4)
        t |= t >> np.uint64(2)
        t |= t >> np.uint64(1)
        pattern = np.int64(((t & _LOW_BITS) * _GATHER_BITS) >> np.uint64(56))
        changes = (pattern ^ ((pattern << 1) | inside)) & 255
        while changes:
            bounds = _append(bounds, k, w * 8 + _LOWEST_BIT[changes])
            k += 1
            changes &= changes - 1
        inside = pattern >> 7
        w += 1
    for i in range(n_words * 8, n):
        if (flat[i] != 0) != inside:
            bounds = _append(bounds, k, i)
            k += 1
            inside ^= 1
    if inside:
        bounds = _append(bounds, k, n)
        k += 1
    return bounds[:k]


@njit(cache=True, nogil=True)
def _write_int(buf, at, value):
    """Write ``value`` (>= 0) in decimal into ``buf`` at ``at``; return the new end."""
    digits = 1
    v = value
    while v >= 10:
        v //= 10
        digits += 1
    end = at + digits
    for j in range(end - 1, at - 1, -1):
        buf[j] = 48 + value % 10
        value //= 10
    return end


@njit(cache=True, nogil=True)
def _format_runs(bounds):
    """Format runs [start0, end0, ...] (0-indexed) as Kaggle RLE text (ASCII bytes)."""
    k = bounds.size
    if k == 0:
        return np.empty(0, np.uint8)
    digits = len(str(bounds[k - 1] + 1))
    buf = np.empty(k * (digits + 1), np.uint8)
    at = 0
    for r in range(0, k, 2):
        if r:
            buf[at] = 32
            at += 1
        at = _write_int(buf, at, bounds[r] + 1)
        buf[at] = 32
        at = _write_int(buf, at + 1, bounds[r + 1] - bounds[r])
    return buf[:at]


def _check_shape(shape: Sequence[int]) -> tuple[int, int]:
    if len(shape) != 2 or any(int(s) != s or s < 1 for s in shape):
        raise ValueError(f"shape must be two positive integers (height, width), got {shape!r}")
    return int(shape[0]), int(shape[1])


def _error(rle: str, code: int, at: int, start: int, length: int, shape) -> ValueError:
    token = rle.encode("ascii", "replace")[at:].split(maxsplit=1)[0].decode() if rle else ""
    n_pixels = shape[0] * shape[1]
    reasons = {
        _ODD: f"odd count of numbers: start {start} has no length",
        _TOKEN: f"token {token!r} is not a non-negative integer",
        _TOO_LARGE: f"number {token[:24]}{'...' if len(token) > 24 else ''} is too large",
        _START: f"run '{start} {length}' starts below 1 (pixels are 1-indexed)",
        _LENGTH: f"run '{start} {length}' has length 0 (lengths must be > 0)",
        _PAST_END: (
            f"run '{start} {length}' ends at pixel {start + length - 1}, "
            f"past the last pixel {n_pixels} of a {shape[0]}x{shape[1]} image"
        ),
        _ORDER: (
            f"run '{start} {length}' is unsorted or overlaps the previous run "
            "(runs must be sorted and disjoint)"
        ),
    }
    return ValueError(f"malformed RLE at character {at}: {reasons[code]}")


def _decode_to(rle: str, shape: tuple[int, int], flat: np.ndarray, out: np.ndarray) -> None:
    """Decode ``rle`` into ``out`` (H, W, zeros) using ``flat`` (H * W) as scratch."""
    if not isinstance(rle, str):
        raise TypeError(f"RLE must be a str, got {type(rle).__name__}")
    try:
        text = np.frombuffer(rle.encode("ascii"), np.uint8)
    except UnicodeEncodeError as e:
        bad = rle[e.start : e.end]
        raise ValueError(
            f"malformed RLE at character {e.start}: token {bad!r} is not a non-negative integer"
        ) from None
    height = shape[0]
    code, at, start, length, spans = _decode_into(text, flat, height)
    if code != _OK:
        raise _error(rle, code, at, start, length, shape)
    spans = spans.tolist()
    for first, stop in zip(spans[0::2], spans[1::2], strict=True):
        columns = flat[first * height : stop * height].reshape(stop - first, height)
        cv2.transpose(columns, dst=out[:, first:stop])


def decode(rle: str, shape: Sequence[int] = SHAPE) -> np.ndarray:
    """Decode one RLE string to a C-contiguous uint8 0/1 mask of ``shape`` (H, W).

    Raises ValueError saying what is wrong with a malformed string.
    """
    height, width = shape if shape is SHAPE else _check_shape(shape)
    out = np.zeros((height, width), np.uint8)
    _decode_to(rle, (height, width), np.empty(height * width, np.uint8), out)
    return out


def decode_many(rles: Sequence[str], shape: Sequence[int] = SHAPE) -> np.ndarray:
    """Decode several RLE strings into one (N, H, W) uint8 array.

    An error names the index of the string at fault.
    """
    height, width = _check_shape(shape)
    out = np.zeros((len(rles), height, width), np.uint8)
    flat = np.empty(height * width, np.uint8)
    for i, rle in enumerate(rles):
        try:
            _decode_to(rle, (height, width), flat, out[i])
        except (ValueError, TypeError) as e:
            raise type(e)(f"RLE #{i}: {e}") from None
    return out


def _as_uint8(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    if mask.dtype == np.bool_:
        return mask.view(np.uint8)
    if mask.dtype == np.uint8:
        return mask
    return (mask != 0).view(np.uint8)


def encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (nonzero = set) as canonical RLE; an empty mask gives ""."""
    mask = _as_uint8(mask)
    flat = cv2.transpose(np.ascontiguousarray(mask)).reshape(-1)
    return runs_text(_find_runs(flat))


def runs_text(bounds: np.ndarray) -> str:
    """The RLE text of runs given as their column-major pixel bounds, 0-indexed and
    ends exclusive: [start0, end0, start1, end1, ...]."""
    return _format_runs(bounds.astype(np.int64, copy=False)).tobytes().decode("ascii")


def encode_many(masks: Iterable[np.ndarray]) -> list[str]:
    """Encode each mask of an (N, H, W) array or an iterable of 2-D masks."""
    return [encode(mask) for mask in masks]
