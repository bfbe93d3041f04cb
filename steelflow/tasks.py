"""What differs between the two networks: model, data, targets, loss and metrics."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Sampler

from steelflow import checkpoint
from steelflow.dataset import BalancedSampler, DecodedImages, SteelDataset, split_ids
from steelflow.errors import SteelflowError
from steelflow.io import CLASSES
from steelflow.losses import segmentation_loss
from steelflow.masks import MaskCache
from steelflow.metrics import dice, f1_score, roc_auc
from steelflow.models import build_classifier, build_unet, copy_encoder, image_logits


def _digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class Task:
    """A network's config section and its train and validation sets: fold ``fold``
    validates, the other folds train. ``start``: the checkpoint whose encoder the
    network starts from, when its ``pretrained`` says so."""

    name: str

    def __init__(self, config: dict, fold: int, start: Path | None = None):
        self.config, self.fold, self.start = config, fold, start
        self.cfg = config[self.name]

    @property
    def seed(self) -> int:
        """The seed of training: ``train.seed``, or the top-level seed when it is null."""
        seed = self.config["train"]["seed"]
        return self.config["seed"] if seed is None else seed

    def recipe(self, train: SteelDataset, val: SteelDataset) -> dict:
        """Everything that shapes the weights: a run resumes only from the same recipe.
        (Which other folds are trained does not shape this one.)"""
        sections = ("seed", "split", "augment", self.name)
        train_cfg = {k: v for k, v in self.config["train"].items() if k != "folds"}
        return {
            **{key: self.config[key] for key in sections},
            "train": train_cfg,
            "fold": self.fold,
            "train_ids": list(train.image_ids),
            "val_ids": list(val.image_ids),
            "start": _digest(self.start) if self.start else None,
        }

    def train_crop(self) -> dict:
        """Crop settings of the training set (none: full images)."""
        return {}

    def train_sampler(self, train: SteelDataset, rank: int, world: int) -> Sampler | None:
        """The order of training images; None: a plain shuffle (or torchrun's sampler)."""
        return None

    def validation_ids(self, image_ids: list[str], cache: MaskCache) -> list[str]:
        """The images of the validation fold that the metrics need: all of them."""
        return image_ids

    def datasets(
        self, images: Path, cache: MaskCache, split: Path, scratch: Path
    ) -> tuple[SteelDataset, SteelDataset]:
        """Train and validation sets of the fold, the images of ``images`` decoded into
        the folder ``scratch`` (which must outlive the sets)."""
        train_ids, val_ids = split_ids(split, self.fold, cache)
        val_ids = self.validation_ids(val_ids, cache)
        decoded = DecodedImages(images, train_ids + val_ids, self.cfg["scale"], scratch)
        train = SteelDataset(
            decoded,
            cache,
            train_ids,
            augment=self.config["augment"],
            seed=self.seed,
            **self.train_crop(),
        )
        return train, SteelDataset(decoded, cache, val_ids, seed=self.seed)


class ClassifierTask(Task):
    """Stage 1: defect or not (binary head), or each class (multilabel), per image."""

    name = "classifier"

    def model(self) -> torch.nn.Module:
        """The classifier; with ``pretrained: unet`` its encoder starts as the U-Net's in
        ``start``: that encoder already tells defect pixels from steel, and 2 epochs
        reach the AUC that 4 from random weights did not."""
        net = build_classifier(self.cfg)
        if self.cfg["pretrained"] == "unet":
            if self.start is None:
                raise SteelflowError(
                    f"classifier.pretrained: unet: expected the U-Net checkpoint of fold "
                    f"{self.fold} to start from (steelflow train classifier --start PATH)"
                )
            unet = checkpoint.load(self.start, "unet")
            if unet["arch"] != self.cfg["arch"]:
                raise SteelflowError(
                    f"{self.start}: a {unet['arch']} U-Net, expected classifier.arch "
                    f"{self.cfg['arch']} to start the classifier from its encoder"
                )
            copy_encoder(unet["model"], net)
        return net

    def target(self, masks: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
        """Where a defect lies, 0/1 however little of a pixel it covers (the masks hold
        each pixel's defect share): per class, or any class for the binary head."""
        found = (masks > 0).float()
        return found if self.cfg["head"] == "multilabel" else found.amax(dim=1, keepdim=True)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """BCE of the image's logit against 'has a defect', plus BCE of each cell of the
        map against 'a defect pixel lies in it' (the masks, max-pooled to the cells):
        told one bit per image, the network from random weights needed 6 epochs, not 4."""
        cells = F.adaptive_max_pool2d(target, logits.shape[-2:])
        logits = logits.float()
        has_defect = cells.amax(dim=(-2, -1))
        image = F.binary_cross_entropy_with_logits(image_logits(logits), has_defect)
        return image + F.binary_cross_entropy_with_logits(logits, cells)

    def evidence(self, logits, target, flags) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image: the highest defect probability, and whether it has a defect."""
        return torch.sigmoid(image_logits(logits.float())).amax(dim=1), flags.amax(dim=1)

    def metrics(self, scores: np.ndarray, labels: np.ndarray) -> dict:
        """AUC and F1 at 0.5 of 'any defect'; ``score`` (the AUC) picks the best checkpoint."""
        labels = labels.astype(bool)
        auc = roc_auc(scores, labels)
        return {"score": auc, "auc": auc, "f1": f1_score(scores > 0.5, labels)}


SAMPLER_POWER = {"balanced": 0.0, "sqrt": 0.5}  # uniform: a plain shuffle


class UNetTask(Task):
    """Stage 2: a mask per class."""

    name = "unet"

    def model(self) -> torch.nn.Module:
        return build_unet(self.cfg)

    def train_crop(self) -> dict:
        crop = self.cfg["crop_width"]
        return {
            "crop_width": int(crop * self.cfg["scale"]) if crop else None,
            "defect_crop_prob": self.cfg["defect_crop_prob"],
        }

    def train_sampler(self, train: SteelDataset, rank: int, world: int) -> Sampler | None:
        power = SAMPLER_POWER.get(self.cfg["sampler"])
        if power is None:
            return None
        return BalancedSampler(train.flags, self.seed, rank, world, power)

    def validation_ids(self, image_ids: list[str], cache: MaskCache) -> list[str]:
        """The images with a defect (all, if none has one): the score sees each class's
        defect pairs and its false positives on the other classes' images; the clean
        half of the fold would double the validation time. False positives on clean
        images are tune's to weigh."""
        defective = cache.classes().loc[image_ids].any(axis=1)
        return [i for i in image_ids if defective[i]] or image_ids

    def target(self, masks: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
        return masks

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return segmentation_loss(logits, target, self.cfg)

    def evidence(self, logits, target, flags) -> tuple[torch.Tensor, torch.Tensor]:
        """Per (image, class): overlap, predicted and true areas at threshold 0.5, (N, 3, C)."""
        pred, truth = logits > 0, target > 0.5
        counts = [(pred & truth), pred, truth]
        return torch.stack([c.sum(dim=(-2, -1)) for c in counts], dim=1), flags

    def metrics(self, counts: np.ndarray, flags: np.ndarray) -> dict:
        """Per class, the mean Dice of its defect pairs (``dice_defect_k``, as the test
        score reports it) and its pooled Dice (``pooled_dice_k``: twice the overlap over
        the predicted plus the true area, each summed over the validated images).

        Only the pooled Dice sees false positives: a class predicted on images of
        other classes keeps its defect-pair Dice but loses pooled Dice, in proportion
        to the area, so one stray pixel on an empty pair does not swing it. ``score``
        (which picks the best checkpoint) is its mean over the classes; ``pair_dice``
        the mean Dice of all pairs of the validated images."""
        overlap, predicted, true = counts[:, 0], counts[:, 1], counts[:, 2]  # (N, C) each
        pair = dice(overlap, predicted, true)
        present = flags.astype(bool)
        per_class, pooled = {}, {}
        for k, cls in enumerate(CLASSES):
            rows = present[:, k]
            seen = rows.any()
            per_class[f"dice_defect_{cls}"] = float(pair[rows, k].mean()) if seen else np.nan
            totals = (overlap[:, k].sum(), predicted[:, k].sum(), true[:, k].sum())
            pooled[f"pooled_dice_{cls}"] = float(dice(*totals)) if seen else np.nan
        score = float(np.nanmean(list(pooled.values()))) if present.any() else 0.0
        return {"score": score, "pair_dice": float(pair.mean()), **per_class, **pooled}


TASKS = {task.name: task for task in (ClassifierTask, UNetTask)}
