"""Prediction's decoding, downscaling and RLE encoding in torch (``on_device``), run on
the CPU: exactly the CPU path's output from the same bytes and masks."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from steelflow import dataset, images, on_device, rle
from steelflow.errors import SteelflowError


def blobs(rng: np.random.Generator, shape=(256, 1600), sigma=9.0) -> np.ndarray:
    """A mask of smooth blobs: long runs, as defects give."""
    return (cv2.GaussianBlur(rng.random(shape), (0, 0), sigma) > 0.5).astype(np.uint8)


def test_rle_encoding_gives_the_numba_codec_s_text():
    rng = np.random.default_rng(0)
    masks = np.zeros((7, 256, 1600), np.uint8)
    masks[0] = rng.random((256, 1600)) < 0.5  # a run every few pixels
    masks[2] = 1  # one run over the whole image
    masks[3, :, -1] = 1  # a run ending at the last pixel
    masks[4, 0, 0] = 1  # the first pixel alone
    masks[5] = blobs(rng)
    masks[6] = blobs(rng) * 7  # nonzero, not 1, is set
    texts = on_device.rle_encode(torch.from_numpy(masks))
    assert texts == rle.encode_many(masks)
    assert texts[1] == "" and texts[2] == f"1 {256 * 1600}" and texts[4] == "1 1"
    assert on_device.rle_encode(torch.zeros((0, 256, 1600), dtype=torch.uint8)) == []


@pytest.mark.parametrize(
    ("shape", "scale"),
    [
        ((256, 1600), 0.5),  # 2x2 blocks: OpenCV rounds halves up
        ((256, 1600), 0.25),  # 4x4 blocks: halves to even
        ((256, 1600), 0.125),
        ((512, 3200), 0.5),  # an image twice the size: 4x4 blocks
        ((256, 3200), 0.5),  # 2x4 blocks
        ((256, 1600), 1.0),  # as it is
        ((256, 1600), 0.26),  # no whole factor: the CPU's resize
        ((300, 1000), 0.5),
    ],
)
def test_downscaling_gives_opencv_s_area_resize(shape, scale):
    gray = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    got = on_device.at_scale(torch.from_numpy(gray), scale)
    assert got.dtype == torch.uint8
    assert np.array_equal(got.numpy(), dataset.at_scale(gray, scale))


def encoded(gray: np.ndarray, suffix: str) -> np.ndarray:
    ok, data = cv2.imencode(suffix, gray)
    assert ok
    return data.reshape(-1)


def test_decoding_gives_opencv_s_pixels_for_jpegs_and_pngs():
    rng = np.random.default_rng(2)
    gray = cv2.GaussianBlur(rng.integers(0, 256, (256, 1600), dtype=np.uint8), (0, 0), 2)
    color = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    color[..., 0] //= 2  # not gray: converted by the decoder
    files = [encoded(gray, ".jpg"), encoded(gray, ".png"), encoded(color, ".jpg")]
    names = ["a.jpg", "b.png", "c.jpg"]
    decoded = on_device.decode_gray(files, names, "cpu")
    for data, name, got in zip(files, names, decoded, strict=True):
        assert np.array_equal(got.numpy(), images.decode_gray(data, name)), name


def test_a_jpeg_s_exif_orientation_is_not_applied_on_either_path(tmp_path):
    """The pixels as stored, on the CPU path and the device path alike: a rotated copy
    would get masks of another shape than its RLE's."""
    from PIL import Image

    gray = cv2.GaussianBlur(
        np.random.default_rng(3).integers(0, 256, (256, 1600), np.uint8), (5, 5), 0
    )
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees to display
    Image.fromarray(gray).save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    data = np.fromfile(tmp_path / "rotated.jpg", np.uint8)
    cpu = images.decode_gray(data, "rotated.jpg")
    [device] = on_device.decode_gray([data], ["rotated.jpg"], "cpu")
    assert cpu.shape == (256, 1600) and np.array_equal(device.numpy(), cpu)
    assert np.abs(cpu.astype(int) - gray).mean() < 2  # the image itself, as JPEG keeps it


def test_decoding_gives_opencv_s_pixels_for_real_competition_jpegs(real_data):
    paths = sorted((real_data / "train_images").glob("*.jpg"))
    files = [images.read_bytes(path) for path in paths]
    decoded = on_device.decode_gray(files, paths, "cpu")
    for path, data, got in zip(paths, files, decoded, strict=True):
        assert np.array_equal(got.numpy(), images.decode_gray(data, path)), path.name


WITHOUT_DECODER = """
import sys, warnings
import cv2, numpy as np, torchvision.io
del torchvision.io.decode_jpeg  # as in a torchvision whose image decoders are gone
from steelflow import images, on_device
gray = np.random.default_rng(4).integers(0, 256, (256, 1600), dtype=np.uint8)
data = cv2.imencode(".jpg", gray)[1].reshape(-1)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    got = on_device.decode_gray([data], ["a.jpg"], "cpu")[0].numpy()
assert np.array_equal(got, images.decode_gray(data, "a.jpg"))
print(on_device.decode_jpeg, *[w.message for w in caught], sep="\\n")
"""


def test_a_torchvision_without_its_jpeg_decoder_decodes_on_the_cpu_and_says_so():
    """torchvision 0.29 deprecates its image decoders: where they are gone, prediction
    still imports and gives OpenCV's pixels, with a warning."""
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_DECODER], capture_output=True, text=True, check=True
    )
    assert result.stdout.splitlines() == [
        "None",
        "this torchvision has no decode_jpeg: JPEGs are decoded on the CPU",
    ]


def test_a_file_that_is_not_a_whole_image_is_refused_by_name():
    data = encoded(np.zeros((256, 1600), np.uint8), ".jpg")
    with pytest.raises(SteelflowError, match=r"^cut\.jpg: cannot be read as an image \(truncated"):
        on_device.decode_gray([data, data[: len(data) // 2]], ["whole.jpg", "cut.jpg"], "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")
def test_on_a_gpu_nvjpeg_is_within_rounding_of_libjpeg_and_the_rest_exact():
    """nvJPEG's inverse DCT may round otherwise than libjpeg's; downscaling and RLE
    encoding, integer work, give exactly the CPU's output."""
    rng = np.random.default_rng(3)
    grays = [cv2.GaussianBlur(rng.integers(0, 256, (256, 1600), dtype=np.uint8), (0, 0), 2)]
    files = [encoded(gray, ".jpg") for gray in grays * 8]
    decoded = on_device.decode_gray(files, [f"{i}.jpg" for i in range(8)], "cuda")
    cpu = images.decode_gray(files[0], "0.jpg")
    for got in decoded:  # torchvision's own test of nvJPEG allows a mean difference below 2
        assert np.abs(got.cpu().numpy().astype(int) - cpu).mean() < 2
    assert np.array_equal(
        on_device.at_scale(decoded[0], 0.5).cpu().numpy(),
        dataset.at_scale(decoded[0].cpu().numpy(), 0.5),
    )
    masks = np.stack([blobs(rng) for _ in range(4)])
    assert on_device.rle_encode(torch.from_numpy(masks).cuda()) == rle.encode_many(masks)
