"""The U-Net's loss: per class, BCE (or focal BCE) plus a batch-pooled soft Dice, weighted."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of each class over the whole batch: shape (C,).

    Pooling the batch gives a rare class a real gradient whenever one sample
    has it, instead of averaging it away among samples where it is absent.
    """
    prob = torch.sigmoid(logits)
    dims = (0, *range(2, logits.dim()))
    inter = (prob * target).sum(dim=dims)
    total = prob.sum(dim=dims) + target.sum(dim=dims)
    return 1 - (2 * inter + eps) / (total + eps)


def pixel_loss(
    logits: torch.Tensor, target: torch.Tensor, focal_gamma: float, pos_weight: list[float]
) -> torch.Tensor:
    """Mean BCE of each class, shape (C,), its defect pixels weighted by ``pos_weight``
    (one per class); with ``focal_gamma`` > 0 the focal loss (each pixel's BCE times
    (1 - p_true) ** gamma, so easy background counts little)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if focal_gamma:
        p = torch.sigmoid(logits)
        p_true = p * target + (1 - p) * (1 - target)  # of the label, soft targets too
        bce = bce * (1 - p_true) ** focal_gamma
    weight = torch.tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    bce = bce * (1 + (weight.view(-1, *[1] * (logits.dim() - 2)) - 1) * target)
    return bce.mean(dim=(0, *range(2, logits.dim())))


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, cfg: dict) -> torch.Tensor:
    """Per class ``bce_weight`` * pixel loss + (1 - ``bce_weight``) * soft Dice (``loss:
    bce_dice``; ``bce`` keeps the pixel loss alone), averaged with ``class_weights``; fp32."""
    logits = logits.float()
    per_class = pixel_loss(logits, target, cfg["focal_gamma"], cfg["pos_weight"])
    if cfg["loss"] == "bce_dice":
        dice = soft_dice_loss(logits, target)
        per_class = cfg["bce_weight"] * per_class + (1 - cfg["bce_weight"]) * dice
    weights = torch.tensor(cfg["class_weights"], dtype=per_class.dtype, device=per_class.device)
    return (weights * per_class).sum() / weights.sum()
