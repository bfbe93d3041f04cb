"""Training losses beyond plain BCE: BCE plus a batch-pooled soft Dice."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per class over the whole batch, averaged over classes.

    Pooling the batch gives a rare class a real gradient whenever one sample
    has it, instead of averaging it away among samples where it is absent.
    """
    prob = torch.sigmoid(logits)
    dims = (0, *range(2, logits.dim()))
    inter = (prob * target).sum(dim=dims)
    total = prob.sum(dim=dims) + target.sum(dim=dims)
    return (1 - (2 * inter + eps) / (total + eps)).mean()


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, bce_weight: float) -> torch.Tensor:
    """``bce_weight`` BCE + (1 - ``bce_weight``) soft Dice, in fp32."""
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    return bce_weight * bce + (1 - bce_weight) * soft_dice_loss(logits, target)
