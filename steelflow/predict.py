"""Inference with both networks, and the post-processing that turns it into masks.

Each network sees an image exactly as it saw images in training: decoded by
libjpeg straight at the network's scale (``dataset.decode_gray``). The U-Net's
probabilities come back at full size (256x1600); the tuned post-processing then
keeps, per class, the pixels above the class's threshold, drops a mask smaller
than the class's minimum area, and empties every class of an image the
classifier calls clean. ``predict_images`` is the one batch loop of ``submit``,
``predict`` and the benchmarks.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from steelflow import checkpoint, rle
from steelflow.dataset import decode_gray, normalise
from steelflow.device import autocast, memory_format, pick_device, pick_precision
from steelflow.io import CLASSES
from steelflow.models import build_classifier, build_unet

H, W = rle.SHAPE
C = len(CLASSES)


def load_network(path: Path, task: str, device: torch.device):
    """A trained network and its config section, from a checkpoint of the engine."""
    state = checkpoint.load(path, task)
    build = build_unet if task == "unet" else build_classifier
    cfg = {**state["config"], "pretrained": "none"}  # the weights come from the checkpoint
    try:
        model = build(cfg)
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise checkpoint.CheckpointError(
            f"{path}: its weights do not fit the network its config describes (a checkpoint "
            f"of another steelflow version?): {str(e).splitlines()[0]}"
        ) from None
    return model.to(device).eval(), state["config"]


@dataclass
class Thresholds:
    """Post-processing per class (index 0 = class 1) and the clean/defect gate."""

    gate: float
    enabled: list[bool]
    pixel: list[float]
    min_area: list[int]

    @classmethod
    def load(cls, path: Path) -> Thresholds:
        """Read ``steelflow tune``'s JSON; ValueError naming the file if it is not that."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: thresholds not found (made by steelflow tune)")
        try:
            data = json.loads(path.read_text())
            classes = [data["classes"][str(c)] for c in CLASSES]
            return cls(
                float(data["classifier_gate"]),
                [bool(c["enabled"]) for c in classes],
                [float(c["threshold"]) for c in classes],
                [int(c["min_area"]) for c in classes],
            )
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"{path}: not thresholds from steelflow tune (expected JSON with "
                f"classifier_gate and classes 1-{C}, each with enabled, threshold, min_area; "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            ) from None


def postprocess(prob: torch.Tensor, th: Thresholds) -> np.ndarray:
    """(N, C, H, W) probabilities of images past the gate to (N, C, H, W) uint8 masks.

    Per class: pixels above its threshold, kept if the class is on and the mask
    has at least its minimum area.
    """
    above = prob > torch.tensor(th.pixel, dtype=prob.dtype).view(1, C, 1, 1)
    area = above.view(torch.uint8).flatten(2).sum(-1, dtype=torch.int32)  # 2x a bool sum
    keep = torch.tensor(th.enabled) & (area >= torch.tensor(th.min_area))
    return (above & keep[:, :, None, None]).to(torch.uint8).numpy()


Views = dict[float, np.ndarray]  # an image at each scale the networks take


class Predictor:
    """Both networks on a device, in the precision of the training config."""

    def __init__(self, classifier: Path, unet: Path, train_cfg: dict, hflip: bool = False):
        self.device = pick_device(train_cfg["device"])
        self.dtype = pick_precision(train_cfg["precision"], self.device)
        self.memory = memory_format(train_cfg["channels_last"])
        self.classifier, self.classifier_cfg = load_network(classifier, "classifier", self.device)
        self.unet, self.unet_cfg = load_network(unet, "unet", self.device)
        self.classifier.to(memory_format=self.memory)
        self.unet.to(memory_format=self.memory)
        self.hflip = hflip

    @property
    def scales(self) -> set[float]:
        return {self.classifier_cfg["scale"], self.unet_cfg["scale"]}

    def read(self, path: Path) -> Views:
        """The image file at each network's scale, decoded as the training set decodes it."""
        data = np.fromfile(path, np.uint8)
        return {scale: decode_gray(data, scale, path) for scale in self.scales}

    def views_of(self, gray: np.ndarray) -> Views:
        """An image already decoded (any size) at each network's scale, by area resizing."""
        return {
            s: cv2.resize(gray, (round(W * s), round(H * s)), interpolation=cv2.INTER_AREA)
            for s in self.scales
        }

    def prepare(self, grays: list[np.ndarray]) -> torch.Tensor:
        """A normalised (N, 1, h, w) batch on the device."""
        x = normalise(torch.from_numpy(np.stack(grays)))[:, None]
        return x.to(self.device).contiguous(memory_format=self.memory)

    def forward(self, model, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``model`` in fp32, computed in the predictor's precision."""
        with autocast(self.device, self.dtype):
            return model(x).float()

    @torch.no_grad()
    def defect_prob(self, views: list[Views]) -> np.ndarray:
        """Classifier probability that each image has any defect, shape (N,)."""
        x = self.prepare([v[self.classifier_cfg["scale"]] for v in views])
        return torch.sigmoid(self.forward(self.classifier, x)).amax(dim=1).cpu().numpy()

    @torch.no_grad()
    def mask_prob(self, views: list[Views]) -> torch.Tensor:
        """U-Net probabilities at full size, (N, C, H, W) on the CPU; hflip-averaged if asked."""
        x = self.prepare([v[self.unet_cfg["scale"]] for v in views])
        prob = torch.sigmoid(self.forward(self.unet, x))
        if self.hflip:
            prob = (prob + torch.sigmoid(self.forward(self.unet, x.flip(-1))).flip(-1)) / 2
        if prob.shape[-2:] != (H, W):
            prob = F.interpolate(prob, size=(H, W), mode="bilinear", align_corners=False)
        return prob.cpu()

    def masks(self, views: list[Views], th: Thresholds) -> list[np.ndarray]:
        """Post-processed (C, H, W) masks; the U-Net runs only on images past the gate."""
        defect = self.defect_prob(views)
        passed = [i for i, p in enumerate(defect) if p >= th.gate]
        masks = [np.zeros((C, H, W), np.uint8) for _ in views]
        if passed:
            found = postprocess(self.mask_prob([views[i] for i in passed]), th)
            for i, mask in zip(passed, found, strict=True):
                masks[i] = mask
        return masks


def predict_images(
    predictor: Predictor,
    th: Thresholds,
    images: Iterable[tuple[str, Views]],
    batch_size: int,
    total: int | None = None,
) -> Iterator[tuple[str, np.ndarray]]:
    """(name, (C, H, W) masks) of each (name, views), batch by batch, with a progress bar.

    ``images`` is consumed lazily: only one batch of images is in memory at a time.
    """
    images = iter(images)
    with tqdm(total=total, desc="prediction", unit="img", mininterval=1) as bar:
        while batch := list(islice(images, batch_size)):
            names, views = zip(*batch, strict=True)
            yield from zip(names, predictor.masks(list(views), th), strict=True)
            bar.update(len(batch))


def check_submission(table, image_ids: list[str]) -> None:
    """Every image has each class once, and every RLE is canonical; else ValueError."""
    expected = {(i, c) for i in image_ids for c in CLASSES}
    got = list(zip(table.ImageId, table.ClassId, strict=True))
    if len(got) != len(expected) or set(got) != expected:
        raise ValueError(
            f"submission has {len(got)} rows, expected one per image and class: {len(expected)}"
        )
    for image, cls, text in zip(table.ImageId, table.ClassId, table.EncodedPixels, strict=True):
        if text and rle.encode(rle.decode(text)) != text:
            raise ValueError(f"submission: the RLE of {image} class {cls} is not canonical")


def submission_rows(
    predictor: Predictor, th: Thresholds, folder: Path, image_ids: list[str], batch_size: int
) -> list[tuple[str, int, str]]:
    """(ImageId, ClassId, EncodedPixels) of every image of ``folder`` named in ``image_ids``."""
    images = ((i, predictor.read(folder / i)) for i in image_ids)
    return [
        (name, cls, text)
        for name, masks in predict_images(predictor, th, images, batch_size, len(image_ids))
        for cls, text in zip(CLASSES, rle.encode_many(masks), strict=True)
    ]


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def list_user_images(folder: Path) -> list[Path]:
    """The image files of ``folder``; a clear error for a missing folder or another file."""
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ValueError(f"{folder} holds no images: expected JPEG or PNG files")
    for path in files:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"{path}: not a JPEG or PNG image (expected .jpg, .jpeg or .png)")
    return files


def read_user_image(path: Path) -> np.ndarray:
    gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise ValueError(
            f"{path}: cannot be read as an image (corrupt or not really {path.suffix})"
        )
    return gray


def predict_folder(predictor: Predictor, th: Thresholds, folder: Path, out: Path, batch_size: int):
    """Masks for every image of ``folder``: ``out``/predictions.csv and one overlay PNG each.

    Images are streamed, a batch at a time. An image of 1600x256 is decoded as
    in training; one of another size is area-resized for the networks and its
    masks resized back (nearest neighbour), so the RLE refers to the image's own
    size. Returns the predictions table (ImageId_ClassId, EncodedPixels).
    """
    import pandas as pd

    from steelflow.atomic import atomic_dir
    from steelflow.report import save_overlay

    files = list_user_images(folder)
    pending = {}  # full-size images of the batch in flight, for overlays and resizing back

    def images():
        for path in files:
            gray = pending[path.name] = read_user_image(path)
            standard = gray.shape == (H, W)
            yield path.name, predictor.read(path) if standard else predictor.views_of(gray)

    rows = []
    with atomic_dir(out) as tmp:
        for name, mask in predict_images(predictor, th, images(), batch_size, len(files)):
            gray = pending.pop(name)
            if gray.shape != (H, W):
                size = (gray.shape[1], gray.shape[0])
                mask = np.stack(
                    [cv2.resize(m, size, interpolation=cv2.INTER_NEAREST) for m in mask]
                )
            texts = rle.encode_many(mask)
            rows += [(f"{name}_{c}", text) for c, text in zip(CLASSES, texts, strict=True)]
            save_overlay(tmp / f"{Path(name).stem}.png", gray, mask)
        table = pd.DataFrame(rows, columns=["ImageId_ClassId", "EncodedPixels"])
        table.to_csv(tmp / "predictions.csv", index=False)
    return table
