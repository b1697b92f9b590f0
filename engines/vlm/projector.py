"""From image-encoder tokens to the decoder's visual tokens.

The class token summarises the image; "where is the needle driver?" needs to know where
things are, which the class token alone carries poorly. So the visual tokens are the class
token plus the patch tokens average-pooled over `pool` x `pool` neighbourhoods (8x10 patches
-> 4x5 tokens at pool 2), all mapped to the decoder's width by a two-layer MLP (as LLaVA-1.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ProjectorConfig:
    in_dim: int = 128  # the encoder's width
    out_dim: int = 128  # the decoder's width
    grid: tuple[int, int] = (8, 10)  # the encoder's patch grid (rows, cols)
    pool: int = 2  # 1 keeps every patch token; more pools them into fewer, cheaper tokens

    @property
    def tokens(self) -> int:
        gh, gw = self.grid
        return 1 + (gh // self.pool) * (gw // self.pool)

    def __post_init__(self) -> None:
        gh, gw = self.grid
        assert gh % self.pool == 0 and gw % self.pool == 0, (
            f"patch grid {gh}x{gw} must divide by the projector's pool {self.pool}")


class Projector(nn.Module):
    """forward: (B, 1 + gh*gw, in_dim) -> (B, tokens, out_dim), class token first, always."""

    def __init__(self, cfg: ProjectorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.fc = nn.Linear(cfg.in_dim, cfg.out_dim)
        self.proj = nn.Linear(cfg.out_dim, cfg.out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        gh, gw = self.cfg.grid
        assert n == 1 + gh * gw, f"projector expects 1 + {gh}x{gw} tokens, got {n}"
        cls, patches = x[:, :1], x[:, 1:]
        if self.cfg.pool > 1:
            grid = patches.transpose(1, 2).reshape(b, d, gh, gw)  # (B, N, D) -> (B, D, gh, gw)
            grid = F.avg_pool2d(grid, self.cfg.pool)  # -> (B, D, gh/p, gw/p)
            patches = grid.flatten(2).transpose(1, 2)  # -> (B, N/p^2, D)
        x = torch.cat([cls, patches], dim=1)
        return self.proj(F.gelu(self.fc(x)))
