"""Frame -> VLM input, the same in dataset writing, training, evaluation and the Describer."""

from __future__ import annotations

import cv2
import numpy as np


def scope_region(height: int, width: int) -> tuple[int, int, int, int]:
    """(y, x, h, w) of the picture the VLM looks at.

    A wide (16:9) frame is a whole video frame: take the EndoVis crop around the endoscope's
    field of view (rows 28..1052, cols 320..1600 of 1080p, scaled; the segment stage crops
    the same). A narrower frame (e.g. 256x320, 5:4) is taken to be that crop already.
    """
    if width >= 1.5 * height:
        return (round(28 * height / 1080), round(320 * width / 1920),
                round(1024 * height / 1080), round(1280 * width / 1920))
    return 0, 0, height, width


def prepare_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H0, W0, 3) uint8 RGB, any size -> (H, W, 3) uint8 at the model's `size` (H, W).

    INTER_AREA averages all the pixels a target pixel covers: at the 8x reduction from 1080p
    bilinear would skip most of them and alias thin edges (jaws, the Prograsp's window).
    """
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8, (
        f"expects an (H, W, 3) uint8 RGB frame, got {image.dtype} {image.shape}")
    y, x, h, w = scope_region(*image.shape[:2])
    crop = image[y:y + h, x:x + w]
    if crop.shape[:2] == tuple(size):
        return np.ascontiguousarray(crop)
    return cv2.resize(crop, (size[1], size[0]), interpolation=cv2.INTER_AREA)
