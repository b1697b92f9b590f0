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
    m = torch.tensor(mean, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1) * 255.0
    return ((x - m) / s).contiguous(memory_format=torch.channels_last)


class CudaFramePrep:
    """Host frame -> model input on the GPU, for the segment stage on CUDA.

    The full frame is copied into a pinned staging buffer (so the upload is a DMA that does
    not block the CPU), uploaded non-blocking on the stage's own CUDA stream, and cropped and
    resized there with the same bilinear filter (half-pixel centres, no antialiasing) that
    cv2.INTER_LINEAR applies on the CPU path. The result stays on the GPU as uint8 NHWC, the
    deployable graph's input (engines/deploy.py), which normalises inside the engine.
    """

    def __init__(self, size: tuple[int, int], device: str = "cuda") -> None:
        self.size = tuple(size)
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device)
        self._pinned: dict[tuple[int, ...], torch.Tensor] = {}

    def __call__(self, image: np.ndarray, region: tuple[int, int, int, int]) -> torch.Tensor:
        """(H0, W0, 3) uint8 host frame, crop (y, x, h, w) -> (1, H, W, 3) uint8 on the GPU,
        enqueued on `self.stream` (work that uses it must run on that stream too)."""
        staging = self._pinned.get(image.shape)
        if staging is None:
            staging = torch.empty(image.shape, dtype=torch.uint8).pin_memory()
            self._pinned[image.shape] = staging
        # The previous upload from this buffer must be done before it is overwritten.
        self.stream.synchronize()
        staging.numpy()[...] = image
        y, x, h, w = region
        with torch.cuda.stream(self.stream):
            frame = staging.to(self.device, non_blocking=True)
            crop = frame[y:y + h, x:x + w].permute(2, 0, 1)[None].float()
            small = torch.nn.functional.interpolate(crop, size=self.size, mode="bilinear",
                                                    align_corners=False, antialias=False)
            return small.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
