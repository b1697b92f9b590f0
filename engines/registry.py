"""Named model variants, so configs say `unet_xs` instead of a dict of widths."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from orstream.engines.tpsis_config import TPSISConfig
from orstream.engines.unet_config import UNetConfig

if TYPE_CHECKING:
    from orstream.engines.tpsis import TPSIS
    from orstream.engines.unet import UNet

# Widths chosen for the CPU: unet_xs (width 8) is the real-time default on two cores,
# unet_s and unet_m trade 4x and 16x the FLOPs for accuracy on GPUs.
VARIANTS: dict[str, UNetConfig] = {
    "unet_xs": UNetConfig(width=8),
    "unet_s": UNetConfig(width=16),
    "unet_m": UNetConfig(width=32),
    "attunet_xs": UNetConfig(width=8, attention=True),
    "attunet_s": UNetConfig(width=16, attention=True),
}


def model_config(name: str, num_classes: int) -> UNetConfig:
    if name not in VARIANTS:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(VARIANTS)}")
    return replace(VARIANTS[name], num_classes=num_classes)


def build_model(name: str, num_classes: int) -> UNet:
    from orstream.engines.unet import UNet

    return UNet(model_config(name, num_classes))


# Text-promptable segmentation (engines/tpsis.py). tpsis_xs's visual encoder is unet_xs, so it
# starts from the shipped types U-Net and adds ~0.2 M parameters of prompting.
TPSIS_VARIANTS: dict[str, TPSISConfig] = {
    "tpsis_xs": TPSISConfig(),
    "tpsis_s": TPSISConfig(unet=UNetConfig(num_classes=8, width=16), dim=96, layers=3),
}


def tpsis_config(name: str) -> TPSISConfig:
    if name not in TPSIS_VARIANTS:
        raise ValueError(f"unknown TP-SIS model {name!r}: expected one of "
                         f"{', '.join(TPSIS_VARIANTS)}")
    return TPSIS_VARIANTS[name]


def build_tpsis(name: str) -> TPSIS:
    from orstream.engines.tpsis import TPSIS

    return TPSIS(tpsis_config(name))
