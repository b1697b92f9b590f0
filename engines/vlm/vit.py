"""The VLM's image encoder: a plain ViT (Dosovitskiy et al. 2021), leaves first.

Pre-norm blocks (x + attn(norm(x))), attention scaled by the head size, a class token and one
token per patch. `forward` returns every token, class token first, so the projector can use
more than the class token (the reference SeeMore code kept only that one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ViTConfig:
    image_size: tuple[int, int] = (128, 160)  # (H, W): the EndoVis 1024x1280 crop / 8
    patch: int = 16  # 8x10 patches at 128x160; a shaft is about one patch wide there
    in_channels: int = 3
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0  # synthetic data is plentiful: regularise with data, not dropout
    # "patch": one strided conv per patch (the original ViT). "conv": a stack of 3x3 stride-2
    # convs down to the same patch grid (Xiao et al. 2021, "Early convolutions help
    # transformers see better"); each token still covers one patch, but edges and colours
    # are found by convolutions, which a ViT trained from scratch on two cores learns much
    # faster than from raw 16x16 patches.
    stem: str = "patch"

    @property
    def grid(self) -> tuple[int, int]:
        return self.image_size[0] // self.patch, self.image_size[1] // self.patch

    def __post_init__(self) -> None:
        h, w = self.image_size
        assert h % self.patch == 0 and w % self.patch == 0, (
            f"ViT input {h}x{w} must divide by the patch size {self.patch}")
        assert self.dim % self.heads == 0, f"ViT dim {self.dim} must divide by heads {self.heads}"
        assert self.stem in ("patch", "conv"), f"ViT stem {self.stem!r}: 'patch' or 'conv'"
        assert self.stem == "patch" or self.patch & (self.patch - 1) == 0, (
            f"a conv stem halves the size per conv: patch {self.patch} must be a power of 2")


class PatchEmbed(nn.Module):
    """One token per patch: a patch-sized strided conv, or 3x3 stride-2 convs (conv stem)
    widening to `dim` while they halve the size down to the patch grid."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        if cfg.stem == "patch":
            self.proj = nn.Conv2d(cfg.in_channels, cfg.dim, cfg.patch, stride=cfg.patch)
            return
        layers: list[nn.Module] = []
        c_in, halvings = cfg.in_channels, cfg.patch.bit_length() - 1
        for i in range(halvings):
            c_out = cfg.dim // 2 ** (halvings - 1 - i)  # e.g. 16, 32, 64, 128 for dim 128
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        layers.append(nn.Conv2d(c_in, cfg.dim, 1))  # as ViTc: a 1x1 conv ends the stem
        self.proj = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, C, H, W) -> (B, D, H/p, W/p)
        return x.flatten(2).transpose(1, 2)  # -> (B, N, D), row-major patches


class Attention(nn.Module):
    """Multi-head self-attention over all tokens (no mask: every patch sees every patch)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        # Scores are dot products of head_dim-long vectors: scaling by the head size keeps
        # their variance at one whatever the number of heads (SeeMore divided by the width).
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, N, 3, H, hd) -> 3 x (B, H, N, hd)
        y = F.scaled_dot_product_attention(q, k, v, scale=self.scale,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))  # (B, H, N, hd) -> (B, N, D)


class MLP(nn.Module):
    def __init__(self, dim: int, ratio: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, ratio * dim)
        self.proj = nn.Linear(ratio * dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: the residual stream itself is never normalised."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.attn = Attention(cfg.dim, cfg.heads, cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.mlp = MLP(cfg.dim, cfg.mlp_ratio, cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """forward: (B, 3, H, W) normalised float -> (B, 1 + N, D), class token first, always."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        gh, gw = cfg.grid
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + gh * gw, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        assert (h, w) == tuple(self.cfg.image_size), (
            f"ViT input {h}x{w} is not the {self.cfg.image_size} it was built for")
        x = self.patch_embed(x)  # (B, 3, H, W) -> (B, N, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed  # -> (B, 1 + N, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
