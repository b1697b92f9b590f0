"""Joint image/mask augmentation for segmentation, on uint8 numpy arrays with OpenCV.

Geometry (flip, rotation, scale, crop) is one affine warp: bilinear for the image, nearest for
the mask so that class ids stay exact. Colour changes touch the image only, and hue is left
alone on purpose: the instrument types differ by colour, so shifting hue would teach the model
to confuse them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    hflip: float = 0.5  # probability
    vflip: float = 0.5  # endoscopes roll freely, so upside-down scenes are real
    rotate_deg: float = 25.0
    scale: tuple[float, float] = (0.8, 1.25)
    brightness: float = 0.25  # +- fraction
    contrast: float = 0.25
    saturation: float = 0.2
    blur: float = 0.2  # probability of a Gaussian blur (defocus, motion)


def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
            cfg: AugmentConfig, out_size: tuple[int, int] | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Random joint transform; returns (image, mask) of `out_size` (H, W), default unchanged."""
    h, w = mask.shape
    oh, ow = out_size or (h, w)
    angle = math.radians(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg))
    scale = math.exp(rng.uniform(math.log(cfg.scale[0]), math.log(cfg.scale[1])))
    fx = -1.0 if rng.random() < cfg.hflip else 1.0
    fy = -1.0 if rng.random() < cfg.vflip else 1.0
    # Map an output pixel around a random centre of the source: out = A @ (src - c) + o.
    cx = rng.uniform(ow / 2, max(ow / 2, w - ow / 2)) if ow < w else w / 2
    cy = rng.uniform(oh / 2, max(oh / 2, h - oh / 2)) if oh < h else h / 2
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    a = np.array([[c * fx, -s * fx], [s * fy, c * fy]])
    offset = np.array([ow / 2, oh / 2]) - a @ np.array([cx, cy])
    m = np.hstack([a, offset[:, None]]).astype(np.float64)
    image = cv2.warpAffine(image, m, (ow, oh), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    mask = cv2.warpAffine(mask, m, (ow, oh), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    alpha = 1.0 + rng.uniform(-cfg.contrast, cfg.contrast)
    beta = 255.0 * rng.uniform(-cfg.brightness, cfg.brightness) * 0.5
    image = cv2.convertScaleAbs(image, alpha=alpha, beta=beta)
    if cfg.saturation > 0:
        grey = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        k = 1.0 + rng.uniform(-cfg.saturation, cfg.saturation)
        image = cv2.addWeighted(image, k, grey, 1.0 - k, 0.0)
    if rng.random() < cfg.blur:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 1.5))
    return image, mask
