"""The U-Net's shape, apart from the network itself: reading a checkpoint's metadata (to find
its cached engine, say) then needs no torch import, which costs seconds at start-up."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UNetConfig:
    num_classes: int = 2  # binary: background + instrument
    in_channels: int = 3
    width: int = 8  # channels of the first level; each level doubles them
    depth: int = 5  # downsamplings: inputs must divide by 2**depth = 32
    attention: bool = False  # attention gates on the skips (Attention U-Net)

    @property
    def multiple(self) -> int:
        return 2**self.depth
