"""The deployable graph: uint8 frames in, uint8 label maps out.

Exported engines (ONNX Runtime, OpenVINO, AOTInductor, TensorRT) all compile this one module,
so normalisation and the argmax run inside the engine, fused with the convolutions, and the
host hands over the resized uint8 frame as it is: no float blob is built on the host and
only one byte per pixel comes back. The eager torch backend computes the same thing op for op
(engines/preprocess.py + argmax), which is what the parity tests compare against.
"""

from __future__ import annotations

import torch
from torch import nn

from orstream.engines.checkpoint import Checkpoint


class Normalize(nn.Module):
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) normalised as training did, in `dtype`: the
    first layer of every exported graph, so engines take the live path's uint8 frames."""

    def __init__(self, mean: tuple[float, float, float], std: tuple[float, float, float],
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.dtype = dtype
        # Buffers, not constants: they move with .to(device) and export as initialisers.
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0,
                             persistent=False)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(std).view(1, 3, 1, 1) * 255.0),
                             persistent=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 3, 1, 2).float()
        return ((x - self.mean) * self.inv_std).to(self.dtype)


class LabelNet(nn.Module):
    """(N, H, W, 3) uint8 RGB -> (N, H, W) uint8 class ids."""

    def __init__(self, checkpoint: Checkpoint, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.unet = checkpoint.build().to(dtype)
        self.dtype = dtype
        self.normalize = Normalize(checkpoint.mean, checkpoint.std, dtype)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.unet(self.normalize(frames)).argmax(dim=1).to(torch.uint8)


def example_input(size: tuple[int, int], batch: int = 1, device: str = "cpu") -> torch.Tensor:
    h, w = size
    return torch.zeros((batch, h, w, 3), dtype=torch.uint8, device=device)
