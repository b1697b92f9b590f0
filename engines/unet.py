"""U-Net and Attention U-Net for instrument segmentation, leaves first.

Ronneberger et al. 2015, with batch norm, and Oktay et al. 2018's additive attention gates on
the skip connections for the attention variant. Small widths are the point: a width-8 U-Net
at 256x320 runs in about 10 ms on two CPU cores in bf16, which makes a 30 fps live feed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from orstream.engines.unet_config import UNetConfig

__all__ = ["UNet", "UNetConfig"]


class DoubleConv(nn.Module):
    """(conv 3x3, BN, ReLU) x 2, the U-Net's unit of work at one resolution."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),  # BN makes the bias redundant
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class AttentionGate(nn.Module):
    """Weights a skip connection by where the coarser decoder features say to look."""

    def __init__(self, c_skip: int, c_gate: int, c_inner: int) -> None:
        super().__init__()
        self.skip = nn.Conv2d(c_skip, c_inner, 1, bias=False)
        self.gate = nn.Conv2d(c_gate, c_inner, 1, bias=True)
        self.psi = nn.Conv2d(c_inner, 1, 1, bias=True)

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        # skip (B, Cs, H, W), gate (B, Cg, H, W) already upsampled -> (B, Cs, H, W)
        alpha = torch.sigmoid(self.psi(F.relu(self.skip(skip) + self.gate(gate))))
        return skip * alpha


class Up(nn.Module):
    """Upsample x2 (transposed conv), gate the skip if asked, concatenate, DoubleConv."""

    def __init__(self, c_in: int, c_skip: int, c_out: int, attention: bool) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_in // 2, 2, stride=2)
        self.gate = AttentionGate(c_skip, c_in // 2, max(1, c_skip // 2)) if attention else None
        self.conv = DoubleConv(c_in // 2 + c_skip, c_out)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)  # (B, C, H, W) -> (B, C/2, 2H, 2W)
        if self.gate is not None:
            skip = self.gate(skip, x)
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """Encoder (features) and a 1x1 head, separable so engines can swap or fuse the head.

    forward: (B, in_channels, H, W) float -> (B, num_classes, H, W) logits, always.
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        widths = [cfg.width * 2**i for i in range(cfg.depth + 1)]
        self.stem = DoubleConv(cfg.in_channels, widths[0])
        self.down = nn.ModuleList(DoubleConv(widths[i], widths[i + 1]) for i in range(cfg.depth))
        self.up = nn.ModuleList(
            Up(widths[i + 1], widths[i], widths[i], cfg.attention)
            for i in reversed(range(cfg.depth))
        )
        self.head = nn.Conv2d(widths[0], cfg.num_classes, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        assert h % self.cfg.multiple == 0 and w % self.cfg.multiple == 0, (
            f"U-Net input {h}x{w} must divide by {self.cfg.multiple} (2**depth)"
        )
        skips = [self.stem(x)]  # (B, w0, H, W)
        for block in self.down:
            skips.append(block(F.max_pool2d(skips[-1], 2)))  # halves H, W; doubles C
        x = skips.pop()  # (B, w0 * 2**depth, H / 2**depth, W / 2**depth)
        for block in self.up:
            x = block(x, skips.pop())
        return x  # (B, w0, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
