"""The EndoVis field-of-view crop, in one place for training, calibration and the live path.

EndoVis 2017 frames are 1080x1920 (HxW) with the da Vinci's black border around the picture;
the challenge's standard crop keeps rows 28..1052 and cols 320..1600, the 1024x1280 that 2018
frames already have. The shipped models were trained on exactly this crop, so every path that
feeds them crops the same way.
"""

from __future__ import annotations

from typing import Literal

Region = tuple[int, int, int, int]  # (y, x, h, w) in image pixels
CropMode = Literal["endovis", "none"]

FULL_HD: tuple[int, int] = (1080, 1920)  # (H, W) the crop is defined on
STANDARD_CROP: Region = (28, 320, 1024, 1280)


def endovis_region(height: int, width: int) -> Region:
    """STANDARD_CROP scaled to a frame of `height` x `width` pixels."""
    y, x, h, w = STANDARD_CROP
    full_h, full_w = FULL_HD
    return (round(y * height / full_h), round(x * width / full_w),
            round(h * height / full_h), round(w * width / full_w))


def crop_region(mode: CropMode, height: int, width: int) -> Region:
    """What a segmentation model sees of a frame: the EndoVis crop, or the whole frame."""
    return endovis_region(height, width) if mode == "endovis" else (0, 0, height, width)
