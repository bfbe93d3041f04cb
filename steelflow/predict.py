"""Inference with both networks and the post-processing that turns it into masks.

Gray images go in at full size (256x1600), or already reduced to a scale both
networks can take; each network sees them at its own training scale, and the
U-Net's probabilities come back at full size. The
tuned post-processing then keeps, per class, the pixels above the class's
threshold, drops a mask smaller than the class's minimum area, and empties
every class of an image the classifier calls clean.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from steelflow import rle
from steelflow.dataset import MEAN, STD
from steelflow.models import build_classifier, build_unet
from steelflow.train import pick_device, pick_precision

H, W = rle.SHAPE


def load_network(path: Path, device: torch.device):
    """A trained network and its config section, from a checkpoint of the engine."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    build = build_unet if state["task"] == "unet" else build_classifier
    cfg = {**state["config"], "pretrained": "none"}  # the weights come from the checkpoint
    model = build(cfg)
    model.load_state_dict(state["model"])
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
        data = json.loads(Path(path).read_text())
        classes = [data["classes"][str(c)] for c in (1, 2, 3, 4)]
        return cls(
            data["classifier_gate"],
            [c["enabled"] for c in classes],
            [c["threshold"] for c in classes],
            [c["min_area"] for c in classes],
        )


def postprocess(prob: torch.Tensor, th: Thresholds) -> np.ndarray:
    """(N, 4, H, W) probabilities of images past the gate to (N, 4, H, W) uint8 masks.

    Per class: pixels above its threshold, kept if the class is on and the mask
    has at least its minimum area.
    """
    above = prob > torch.tensor(th.pixel, dtype=prob.dtype).view(1, 4, 1, 1)
    area = above.view(torch.uint8).flatten(2).sum(-1, dtype=torch.int32)  # 2x a bool sum
    keep = torch.tensor(th.enabled) & (area >= torch.tensor(th.min_area))
    return (above & keep[:, :, None, None]).to(torch.uint8).numpy()


class Predictor:
    """Both networks on a device, in the precision of the training config."""

    def __init__(self, classifier: Path, unet: Path, train_cfg: dict, hflip: bool = False):
        self.device = pick_device(train_cfg["device"])
        self.dtype = pick_precision(train_cfg["precision"], self.device)
        self.memory = torch.channels_last if train_cfg["channels_last"] else torch.contiguous_format
        self.classifier, self.classifier_cfg = load_network(classifier, self.device)
        self.unet, self.unet_cfg = load_network(unet, self.device)
        self.classifier.to(memory_format=self.memory)
        self.unet.to(memory_format=self.memory)
        self.hflip = hflip

    @property
    def read_scale(self) -> float:
        """The smallest scale images can be read at and still feed both networks."""
        return max(self.classifier_cfg["scale"], self.unet_cfg["scale"])

    def prepare(self, grays: list[np.ndarray], scale: float) -> torch.Tensor:
        """A normalised (N, 1, h, w) batch of ``grays`` at ``scale`` on the device."""
        size = (round(W * scale), round(H * scale))
        batch = np.stack(
            [
                g if g.shape[::-1] == size else cv2.resize(g, size, interpolation=cv2.INTER_AREA)
                for g in grays
            ]
        )
        x = (torch.from_numpy(batch).float()[:, None] / 255 - MEAN) / STD
        return x.to(self.device).contiguous(memory_format=self.memory)

    def forward(self, model, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``model`` in fp32, computed in the predictor's precision."""
        with torch.autocast(
            self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None
        ):
            return model(x).float()

    @torch.no_grad()
    def defect_prob(self, grays: list[np.ndarray]) -> np.ndarray:
        """Classifier probability that each image has any defect, shape (N,)."""
        logits = self.forward(self.classifier, self.prepare(grays, self.classifier_cfg["scale"]))
        return torch.sigmoid(logits).amax(dim=1).cpu().numpy()

    @torch.no_grad()
    def mask_prob(self, grays: list[np.ndarray]) -> torch.Tensor:
        """U-Net probabilities at full size, (N, 4, H, W) on the CPU; hflip-averaged if asked."""
        x = self.prepare(grays, self.unet_cfg["scale"])
        prob = torch.sigmoid(self.forward(self.unet, x))
        if self.hflip:
            prob = (prob + torch.sigmoid(self.forward(self.unet, x.flip(-1))).flip(-1)) / 2
        if prob.shape[-2:] != (H, W):
            prob = F.interpolate(prob, size=(H, W), mode="bilinear", align_corners=False)
        return prob.cpu()


def predict_masks(
    predictor: Predictor, grays: list[np.ndarray], th: Thresholds
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Defect probabilities and post-processed (4, H, W) masks of gray images, given at
    full size or at a scale the networks take (``predictor.read_scale``).

    The U-Net runs only on the images the classifier lets through.
    """
    defect = predictor.defect_prob(grays)
    passed = [i for i, p in enumerate(defect) if p >= th.gate]
    masks = [np.zeros((4, H, W), np.uint8) for _ in grays]
    if passed:
        found = postprocess(predictor.mask_prob([grays[i] for i in passed]), th)
        for i, mask in zip(passed, found, strict=True):
            masks[i] = mask
    return defect, masks


def check_submission(table, image_ids: list[str]) -> None:
    """Every image has classes 1-4 once, and every RLE is canonical; else ValueError."""
    expected = {(i, c) for i in image_ids for c in (1, 2, 3, 4)}
    got = list(zip(table.ImageId, table.ClassId, strict=True))
    if len(got) != len(expected) or set(got) != expected:
        raise ValueError(
            f"submission has {len(got)} rows, expected one per image and class: {len(expected)}"
        )
    for image, cls, text in zip(table.ImageId, table.ClassId, table.EncodedPixels, strict=True):
        if text and rle.encode(rle.decode(text)) != text:
            raise ValueError(f"submission: the RLE of {image} class {cls} is not canonical")


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def read_user_images(folder: Path) -> list[tuple[str, np.ndarray]]:
    """Every image of ``folder`` as (file name, gray array); a clear error for anything else."""
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ValueError(f"{folder} holds no images: expected JPEG or PNG files")
    images = []
    for path in files:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"{path}: not a JPEG or PNG image (expected .jpg, .jpeg or .png)")
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if gray is None:
            raise ValueError(
                f"{path}: cannot be read as an image (corrupt or not really {path.suffix})"
            )
        images.append((path.name, gray))
    return images


def predict_folder(predictor: Predictor, th: Thresholds, folder: Path, out: Path, batch_size: int):
    """Masks for every image of ``folder``: ``out``/predictions.csv and one overlay PNG each.

    Images of another size are resized to 1600x256 for the networks, and their
    masks resized back (nearest neighbour), so the RLE refers to the image's own
    size. Returns the predictions table (ImageId_ClassId, EncodedPixels).
    """
    import pandas as pd

    from steelflow.atomic import atomic_dir
    from steelflow.report import outline

    images = read_user_images(folder)
    rows = []
    with atomic_dir(out) as tmp:
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            grays = [
                g if g.shape == (H, W) else cv2.resize(g, (W, H), interpolation=cv2.INTER_AREA)
                for _, g in batch
            ]
            _, masks = predict_masks(predictor, grays, th)
            for (name, gray), mask in zip(batch, masks, strict=True):
                if gray.shape != (H, W):
                    size = (gray.shape[1], gray.shape[0])
                    mask = np.stack(
                        [cv2.resize(m, size, interpolation=cv2.INTER_NEAREST) for m in mask]
                    )
                rows += [(f"{name}_{c}", text) for c, text in enumerate(rle.encode_many(mask), 1)]
                overlay = outline(gray, mask)
                cv2.imwrite(
                    str(tmp / f"{Path(name).stem}.png"), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR)
                )
        table = pd.DataFrame(rows, columns=["ImageId_ClassId", "EncodedPixels"])
        table.to_csv(tmp / "predictions.csv", index=False)
    return table
