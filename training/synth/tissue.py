"""Precomputed backgrounds of the synthetic endoscope: tissue, smoke, field of view, shading.

Everything expensive (noise octaves, vessels, highlights, blur) happens once per video here, so
that a frame only crops, draws instruments and applies one multiply (see generator.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def smooth_noise(rng: np.random.Generator, h: int, w: int, octaves: tuple[int, ...]) -> np.ndarray:
    """Sum of upscaled random grids, one per cell size in `octaves`: float32 (h, w) in [0, 1]."""
    out = np.zeros((h, w), np.float32)
    total = 0.0
    for cell in octaves:
        grid = rng.random((max(2, h // cell + 2), max(2, w // cell + 2)), dtype=np.float32)
        weight = float(cell) ** 0.7  # coarse octaves dominate, fine ones add grain
        out += weight * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        total += weight
    out /= total
    lo, hi = float(out.min()), float(out.max())
    return (out - lo) / max(hi - lo, 1e-6)


def _draw_vessels(rng: np.random.Generator, layer: np.ndarray, count: int, scale: float) -> None:
    """Branching random walks: dark red vessels whose width shrinks at each branch."""
    h, w = layer.shape[:2]
    stack = [
        (rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, 2 * np.pi), rng.uniform(3, 7) * scale)
        for _ in range(count)
    ]
    while stack:
        x, y, heading, width = stack.pop()
        steps = int(rng.integers(20, 60))
        pts = [(x, y)]
        for _ in range(steps):
            heading += rng.normal(0, 0.25)
            x += np.cos(heading) * 12 * scale
            y += np.sin(heading) * 12 * scale
            pts.append((x, y))
            if width > 1.5 * scale and rng.random() < 0.04:
                turn = rng.choice([-1, 1]) * rng.uniform(0.5, 1.2)
                stack.append((x, y, heading + turn, width * 0.6))
        poly = np.round(np.array(pts) * 16).astype(np.int32)
        thickness = max(1, int(round(width)))
        cv2.polylines(layer, [poly], False, 1.0, thickness, cv2.LINE_AA, shift=4)


def tissue_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Moist tissue: pink-red base, folds (depth shading), vessels and specular highlights.

    Returns uint8 RGB (h, w, 3). Sizes are relative to a 1080-line frame so that a small
    training frame looks like a scaled-down full one.
    """
    scale = min(h, w) / 1080.0
    cells = tuple(max(2, int(c * scale)) for c in (360, 120, 40, 12, 4))
    base = smooth_noise(rng, h, w, cells)
    folds = smooth_noise(rng, h, w, (max(2, int(500 * scale)), max(2, int(200 * scale))))
    hue_shift = smooth_noise(rng, h, w, (max(2, int(300 * scale)),))

    # Colour: blend a deep red and a pale pink by the fine noise, the hue varying slowly.
    deep = np.array([150, 40, 45], np.float32)
    pale = np.array([235, 140, 130], np.float32)
    yellowish = np.array([225, 170, 120], np.float32)  # fat
    t = (0.35 + 0.5 * base)[..., None]
    rgb = deep * (1 - t) + pale * t
    fat = np.clip((hue_shift - 0.6) * 3.0, 0, 1)[..., None]
    rgb = rgb * (1 - 0.6 * fat) + yellowish * 0.6 * fat

    vessels = np.zeros((h, w), np.float32)
    _draw_vessels(rng, vessels, count=max(2, int(6 * (h * w) / (1080 * 1920)) + 2), scale=scale)
    vessels = cv2.GaussianBlur(vessels, (0, 0), max(0.6, 1.2 * scale))
    vessel_rgb = np.array([110, 15, 30], np.float32)
    rgb = rgb * (1 - 0.75 * vessels[..., None]) + vessel_rgb * 0.75 * vessels[..., None]

    # Depth: folds darken the tissue between them, as the light falls off with distance.
    rgb *= (0.55 + 0.45 * folds)[..., None]

    # Specular highlights: small bright blobs where the tissue surface is wet and facing the light.
    spec = np.zeros((h, w), np.float32)
    n_spec = int(70 * (h * w) / (1080 * 1920)) + 5
    for _ in range(n_spec):
        cx, cy = int(rng.uniform(0, w)), int(rng.uniform(0, h))
        ax = max(1, int(rng.uniform(2, 14) * scale))
        ay = max(1, int(ax * rng.uniform(0.3, 1.0)))
        cv2.ellipse(spec, (cx, cy), (ax, ay), rng.uniform(0, 180), 0, 360, 1.0, -1, cv2.LINE_AA)
    spec = cv2.GaussianBlur(spec, (0, 0), max(0.7, 2.0 * scale)) * (folds > 0.55)
    rgb = rgb + spec[..., None] * (255 - rgb) * 0.9

    return np.clip(rgb, 0, 255).astype(np.uint8)


def smoke_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Grey-white patchy haze (uint8 RGB); its brightness is the local smoke density."""
    scale = min(h, w) / 1080.0
    density = smooth_noise(rng, h, w, tuple(max(2, int(c * scale)) for c in (400, 150, 50)))
    density = np.clip((density - 0.25) * 1.6, 0, 1)
    grey = (density * 235).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


@dataclass(frozen=True)
class FieldOfView:
    """The circular image of the endoscope's optics on the sensor."""

    cx: float
    cy: float
    radius: float

    @classmethod
    def for_frame(cls, width: int, height: int) -> FieldOfView:
        # 0.58 of the height on a 16:9 frame: the circle overflows the top and bottom of the
        # EndoVis 1280x1024 crop a little and leaves its corners black, as real scopes do.
        radius = 0.58 * height if width >= 1.2 * height else 0.48 * width
        return cls(width / 2.0, height / 2.0, radius)

    def mask(self, width: int, height: int) -> np.ndarray:
        """uint8 (h, w): 255 inside the circle, 0 outside."""
        m = np.zeros((height, width), np.uint8)
        c = (int(round(self.cx * 16)), int(round(self.cy * 16)))
        cv2.circle(m, c, int(round(self.radius * 16)), 255, -1, cv2.LINE_8, shift=4)
        return m


def vignette(fov: FieldOfView, width: int, height: int) -> np.ndarray:
    """uint8 RGB gain (255 = 1.0): light falloff towards the rim, black outside the circle."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r = np.sqrt((xx - fov.cx) ** 2 + (yy - fov.cy) ** 2) / fov.radius
    gain = np.clip(1.05 - 0.55 * r**2.2, 0.0, 1.0)
    # A soft rim (a few pixels wide) instead of a hard edge, like a real lens stop.
    rim = np.clip((1.0 - r) * fov.radius / max(2.0, 0.006 * fov.radius), 0.0, 1.0)
    g = (gain * rim * 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)
