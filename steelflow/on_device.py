"""Prediction's per-image CPU work, done on the device the networks run on: JPEG
decoding (nvJPEG on a GPU), area downscaling by whole factors, and run-length encoding.

From the same bytes or masks each gives exactly what the CPU path gives
(``images.decode_gray``, ``dataset.at_scale``, ``rle.encode``): the tests run both on
the CPU. On a GPU only the decoder differs, nvJPEG's inverse DCT from libjpeg's, by
rounding. What has no exact device form stays on the CPU: PNG files, downscaling by a
factor that is not whole (which ``configs/kaggle.yaml`` does not use), and every JPEG
where torchvision has no ``decode_jpeg`` (deprecated in 0.29).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from steelflow import dataset, images, rle
from steelflow.dataset import shape_at

try:  # deprecated in torchvision 0.29 for TorchCodec's decoders, to be removed later
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # a torchvision without them: JPEGs are decoded by OpenCV
    decode_jpeg = None

log = logging.getLogger(__name__)


def decode_gray(files: list[np.ndarray], names: list[str | Path], device) -> list[torch.Tensor]:
    """Image files' bytes as (H, W) uint8 gray on ``device``: the JPEGs decoded there in
    one batch, PNGs by OpenCV; a file that is not a whole JPEG or PNG is refused with
    the error ``images.decode_gray`` gives."""
    gray: list[torch.Tensor | None] = [None] * len(files)
    jpegs = []
    for i, (data, name) in enumerate(zip(files, names, strict=True)):
        images.check_image_bytes(data, name)
        if bytes(data[:2]) == images.JPEG_START:
            jpegs.append(i)
        else:
            gray[i] = torch.from_numpy(images.decode_gray(data, name)).to(device)
    if jpegs:
        decoded = _decode_jpegs([files[i] for i in jpegs], device)
        if decoded is None:  # OpenCV names a corrupt file
            decoded = [torch.from_numpy(images.decode_gray(files[i], names[i])) for i in jpegs]
            decoded = [g[None].to(device) for g in decoded]
        for i, image in zip(jpegs, decoded, strict=True):
            gray[i] = image[0]
    return gray


def _decode_jpegs(files: list[np.ndarray], device) -> list[torch.Tensor] | None:
    """torchvision's decoding of JPEG bytes on ``device`` as (1, H, W) tensors; None,
    for OpenCV to decode them on the CPU, where this torchvision has no JPEG decoder or
    the device cannot decode one of them (a corrupt file; nvJPEG lacks some encodings)."""
    if decode_jpeg is None:
        warnings.warn(
            "this torchvision has no decode_jpeg: JPEGs are decoded on the CPU", stacklevel=3
        )
        return None
    if torch.device(device).type == "cuda":
        # nvJPEG may write its output before the caller's stream is done with that
        # memory (pytorch/vision#9606): let that stream finish first
        torch.cuda.current_stream(device).synchronize()
    try:
        return decode_jpeg(
            [torch.from_numpy(data) for data in files], mode=ImageReadMode.GRAY, device=device
        )
    except RuntimeError as e:
        log.warning("decoding on %s failed (%s): decoding on the CPU", device, e)
        return None


def at_scale(gray: torch.Tensor, scale: float) -> torch.Tensor:
    """``dataset.at_scale`` of a (H, W) uint8 tensor, on its device where the size
    shrinks by whole factors: OpenCV's area resize then averages blocks of fy x fx
    pixels, rounding halves up for 2x2 blocks and to even otherwise."""
    height, width = shape_at(scale)
    h, w = gray.shape
    if (h, w) == (height, width):
        return gray
    fy, fx = h // height, w // width
    if not fy or not fx or (fy * height, fx * width) != (h, w):
        return torch.from_numpy(dataset.at_scale(gray.cpu().numpy(), scale)).to(gray.device)
    total = gray.view(height, fy, width, fx).sum((1, 3), dtype=torch.int32)
    if (fy, fx) == (2, 2):
        return total.add_(2).div_(4, rounding_mode="floor").to(torch.uint8)
    return total.float().mul_(np.float32(1 / (fy * fx))).round_().to(torch.uint8)


def rle_encode(masks: torch.Tensor) -> list[str]:
    """``rle.encode`` of each of (M, H, W) masks (nonzero = set), on their device: only
    the runs' starts and ends leave it."""
    if not len(masks):
        return []
    flat = masks.ne(0).transpose(1, 2).reshape(len(masks), -1)  # pixels column-major
    padded = F.pad(flat.view(torch.uint8), (1, 1))
    mask, edge = (padded[:, 1:] != padded[:, :-1]).nonzero(as_tuple=True)
    mask, edge = mask.cpu().numpy(), edge.cpu().numpy()  # by mask, then by pixel
    ends = np.cumsum(np.bincount(mask, minlength=len(masks)))
    return [rle.runs_text(bounds) for bounds in np.split(edge, ends[:-1])]
