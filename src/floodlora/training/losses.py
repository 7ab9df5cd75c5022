"""The reference loss: BCE + soft Dice on probabilities, both restricted to valid, labelled pixels.

Nodata pixels (mask 255, or `valid` False) carry no label, so they contribute neither to the BCE
mean nor to the Dice sums; a batch with no labelled pixel yields a zero loss that keeps the graph
alive (DDP needs every rank to call backward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from floodlora.data.sample import MASK_NODATA


def label_weights(mask: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(target in {0, 1} as float, weight 1 where the pixel is labelled and valid, else 0)."""
    keep = mask != MASK_NODATA
    if valid is not None:
        keep = keep & valid.bool()
    target = (mask == 1).to(torch.float32)
    return target, keep.to(torch.float32)


def soft_dice_loss(probs: Tensor, target: Tensor, weight: Tensor, eps: float = 1.0) -> Tensor:
    """1 - Dice on probabilities, micro-averaged over the batch's labelled pixels (as in the paper)."""
    inter = (probs * target * weight).sum()
    denom = (probs * weight).sum() + (target * weight).sum()
    return 1.0 - (2.0 * inter + eps) / (denom + eps)


def bce_dice_loss(
    logits: Tensor,
    mask: Tensor,
    valid: Tensor | None = None,
    bce_weight: float = 1.0,
    dice_weight: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted BCE + Dice; returns the total and its parts (for logging).

    `logits` is `[B, 1, H, W]` or `[B, H, W]`; `mask` uint8 `[B, H, W]` (0 dry, 1 flood, 255 nodata).
    """
    logits = logits.reshape(mask.shape).float()
    target, weight = label_weights(mask, valid)
    n = weight.sum()
    if n == 0:
        zero = logits.sum() * 0.0
        return zero, {"bce": zero.detach(), "dice": zero.detach()}
    bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight).sum() / n
    dice = soft_dice_loss(torch.sigmoid(logits), target, weight)
    total = bce_weight * bce + dice_weight * dice
    return total, {"bce": bce.detach(), "dice": dice.detach()}
