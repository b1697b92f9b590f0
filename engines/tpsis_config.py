"""TP-SIS's shape, apart from the network (no torch import), like engines/unet_config.py."""

from __future__ import annotations

from dataclasses import dataclass, field

from orstream.engines.unet_config import UNetConfig


@dataclass(frozen=True)
class TPSISConfig:
    # The visual encoder is a U-Net (its encoder and decoder, without the head), the same
    # shape as the shipped types U-Net so that its weights can start TP-SIS's training.
    unet: UNetConfig = field(default_factory=lambda: UNetConfig(num_classes=8))
    text_dim: int = 256  # WordLlama l2_supercat (engines/text_encoder.py)
    dim: int = 64  # width of attention prompting (image tokens, word keys and values)
    heads: int = 4
    layers: int = 2  # cross-attention + MLP blocks of the prompt decoder
    # Which decoder level the image tokens come from: after `attn_level` up blocks, i.e.
    # stride 2**(depth - attn_level). 1 -> stride 16: 16x20 = 320 tokens at 256x320, each of
    # which already sees the whole frame through the U-Net, at 128 channels.
    attn_level: int = 1
    mlp_ratio: int = 2
    kernel: int = 3  # dynamic (convolution-prompting) kernel over the full-resolution features

    @property
    def multiple(self) -> int:
        return self.unet.multiple

    @property
    def token_stride(self) -> int:
        return 2 ** (self.unet.depth - self.attn_level)

    @property
    def token_channels(self) -> int:
        return self.unet.width * 2 ** (self.unet.depth - self.attn_level)

    @classmethod
    def from_dict(cls, raw: dict) -> TPSISConfig:
        return cls(**{**raw, "unet": UNetConfig(**raw["unet"])})
