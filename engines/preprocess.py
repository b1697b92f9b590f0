"""Turning uint8 frames into model input, identically in training, evaluation and the pipeline."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H0, W0, 3) uint8 -> (H, W, 3) uint8, bilinear: the same filter the live path uses."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Label maps resize with nearest neighbour: class ids must never blend."""
    h, w = size
    if labels.shape[:2] == (h, w):
        return labels
    return cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)


def normalize(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 normalised, channels_last in memory.

    Channels-last is the layout the uint8 frames already have, and the one the CPU
    convolutions run fastest in, so the permute below costs no copy.
    """
    assert batch.dtype == torch.uint8 and batch.shape[-1] == 3, "expects (N, H, W, 3) uint8"
    x = batch.permute(0, 3, 1, 2).float()  # (N, H, W, 3) -> (N, 3, H, W), stays NHWC in memory
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    return ((x - m) / s).contiguous(memory_format=torch.channels_last)
