"""Dice + cross-entropy: CE for per-pixel calibration, soft Dice for thin, small instruments."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0
                 ) -> torch.Tensor:
    """logits (B, K, H, W) float, target (B, H, W) int64 -> scalar.

    Soft Dice is averaged over the foreground classes present in the batch (in target or
    prediction), so a class absent from a batch neither helps nor hurts it.
    """
    logits = logits.float()
    ce = F.cross_entropy(logits, target)
    k = logits.shape[1]
    probs = logits.softmax(dim=1)[:, 1:]  # (B, K-1, H, W), background left out
    onehot = F.one_hot(target, k).permute(0, 3, 1, 2)[:, 1:].float()  # (B, K-1, H, W)
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    denom = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    present = onehot.sum(dim=(0, 2, 3)) > 0
    dice = (2 * inter + 1.0) / (denom + 1.0)
    dice_loss = (1 - dice[present]).mean() if bool(present.any()) else probs.sum() * 0.0
    return ce + dice_weight * dice_loss
