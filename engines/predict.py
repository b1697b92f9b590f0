"""Batch inference on uint8 frames already at the model's input size (eager torch)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from orstream.engines.preprocess import normalize


@torch.inference_mode()
def predict_labels(model: torch.nn.Module, images: np.ndarray, mean: Sequence[float],
                   std: Sequence[float], batch: int = 8) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, H, W) uint8 class ids (argmax of the logits)."""
    model.eval()
    out = np.empty(images.shape[:3], np.uint8)
    for i in range(0, len(images), batch):
        x = normalize(torch.from_numpy(images[i:i + batch]), mean, std)
        out[i:i + batch] = model(x).argmax(dim=1).to(torch.uint8).numpy()
    return out
