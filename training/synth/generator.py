"""The synthetic endoscope: procedural frames with exact ground truth, fast enough to be live.

Per frame the work is a crop of a precomputed tissue texture (the camera pans over it), a few
filled polygons per instrument (image and labels from the same polygons), an occasional smoke
blend or motion blur, and one multiply for the lens vignette and the circular field of view.
At 1920x1080 that is a few milliseconds on one core (benchmarks/synth.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from orstream.common.classes import TYPE_CLASSES, Task
from orstream.training.synth.background_cache import BackgroundCache, Backgrounds
from orstream.training.synth.captions import InstrumentState, caption, region_name, side_name
from orstream.training.synth.instruments import STYLES, draw_instrument
from orstream.training.synth.motion import Schedule, Visit
from orstream.training.synth.tissue import FieldOfView, smoke_texture, tissue_texture, vignette

ALL_TYPES: tuple[int, ...] = tuple(range(1, len(TYPE_CLASSES)))


@dataclass(frozen=True)
class SynthConfig:
    width: int = 1920  # 1080p, the resolution of EndoVis and of most OR video recorders
    height: int = 1080
    fps: float = 30.0
    seed: int = 0
    max_instruments: int = 3  # EndoVis 2017 frames show 0-3 instruments
    instrument_types: tuple[int, ...] = ALL_TYPES
    smoke: bool = True
    motion_blur: bool = True

    def __post_init__(self) -> None:
        if self.width < 64 or self.height < 64:
            raise ValueError(f"synthetic frame size must be at least 64x64, got "
                             f"{self.width}x{self.height}")
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        bad = [t for t in self.instrument_types if t not in ALL_TYPES]
        if bad:
            raise ValueError(f"instrument_types {bad} unknown: expected ids in 1..7")


@dataclass
class SynthFrame:
    index: int
    time_s: float
    image: np.ndarray  # (H, W, 3) uint8 RGB
    parts: np.ndarray  # (H, W) uint8: 0 bg, 1 shaft, 2 wrist, 3 clasper, 4 probe
    types: np.ndarray  # (H, W) uint8: 0 bg, 1..7 EndoVis 2017 types
    caption: str
    instruments: list[InstrumentState] = field(default_factory=list)
    smoke: float = 0.0  # haze density 0..1
    blur: int = 0  # motion blur kernel length in pixels, 0 for none

    @property
    def binary(self) -> np.ndarray:
        return (self.parts > 0).astype(np.uint8)

    def label(self, task: Task) -> np.ndarray:
        return {"binary": self.binary, "parts": self.parts, "types": self.types}[task]


class SyntheticEndoscope:
    """Renders frame `i` of the video defined by a config; deterministic for a seed."""

    def __init__(self, config: SynthConfig | None = None,
                 cache: BackgroundCache | None = None) -> None:
        """`cache`: keep the precomputed backgrounds on disk (the live source's fast start);
        the frames are the same with or without it."""
        self.config = config = config or SynthConfig()
        w, h = config.width, config.height
        rng = np.random.default_rng(config.seed)
        self.fov = FieldOfView.for_frame(w, h)
        # The camera pans over a texture a little larger than the frame.
        self._margin = max(8, int(0.06 * h))
        m = self._margin

        def build() -> Backgrounds:
            return Backgrounds(
                tissue=tissue_texture(rng, h + 2 * m, w + 2 * m),
                smoke=smoke_texture(rng, h + 2 * m, w + 2 * m) if config.smoke else None,
                vignette=vignette(self.fov, w, h),
                rng_state=rng.bit_generator.state)

        found = (build() if cache is None else
                 cache.load_or_build(cache.key(w, h, config.seed, config.smoke, m), build))
        rng.bit_generator.state = found.rng_state  # from the cache: where building leaves it
        self._tissue, self._smoke, self._vignette = found.tissue, found.smoke, found.vignette
        self._fov_mask = self.fov.mask(w, h)
        self._schedule = Schedule(config.seed, config.max_instruments, config.instrument_types)
        # Slow camera drift and the timing of smoke and jolts, per seed.
        self._cam_phase = rng.uniform(0, 2 * math.pi, 4)
        self._smoke_phase = float(rng.uniform(0, 2 * math.pi))
        self._jolt_phase = float(rng.uniform(0, 2 * math.pi))

    def _camera_offset(self, t: float) -> tuple[int, int]:
        m = self._margin
        p = self._cam_phase
        ox = m + 0.9 * m * (0.7 * math.sin(0.21 * t + p[0]) + 0.3 * math.sin(0.57 * t + p[1]))
        oy = m + 0.9 * m * (0.7 * math.sin(0.17 * t + p[2]) + 0.3 * math.sin(0.49 * t + p[3]))
        return int(ox), int(oy)

    def smoke_density(self, t: float) -> float:
        """Smoke puffs (as after cautery): about a fifth of the time, up to 0.55 density."""
        if self._smoke is None:
            return 0.0
        s = math.sin(2 * math.pi * t / 23.0 + self._smoke_phase)
        return 0.55 * max(0.0, (s - 0.6) / 0.4) ** 1.5

    def blur_length(self, t: float) -> int:
        """Motion blur during short camera jolts, a few per minute."""
        if not self.config.motion_blur:
            return 0
        s = math.sin(2 * math.pi * t / 13.0 + self._jolt_phase)
        strength = max(0.0, (s - 0.9) / 0.1)
        return int(strength * 0.02 * self.config.height) | 1 if strength > 0.15 else 0

    def render(self, index: int) -> SynthFrame:
        """Frame `index` with its ground truth (parts, types), caption and instruments."""
        h, w = self.config.height, self.config.width
        parts = np.zeros((h, w), np.uint8)
        types = np.zeros((h, w), np.uint8)
        t, image, visits, smoke, blur = self._draw(index, parts, types)
        cv2.bitwise_and(parts, self._fov_mask, dst=parts)
        cv2.bitwise_and(types, self._fov_mask, dst=types)
        states = self._states(visits, t, types)
        return SynthFrame(index, t, image, parts, types, caption(states, smoke > 0.2), states,
                          smoke, blur)

    def render_image(self, index: int) -> np.ndarray:
        """Frame `index`'s pixels alone, identical to `render(index).image`: the live feed
        needs no ground truth, and skipping it saves about a fifth of the frame's time
        (`python -m orstream.benchmarks.synth`: 0.77-0.92 of the full render at p50)."""
        return self._draw(index, None, None)[1]

    def _draw(self, index: int, parts: np.ndarray | None, types: np.ndarray | None
              ) -> tuple[float, np.ndarray, list[Visit], float, int]:
        cfg = self.config
        w, h = cfg.width, cfg.height
        t = index / cfg.fps
        ox, oy = self._camera_offset(t)
        image = np.ascontiguousarray(self._tissue[oy:oy + h, ox:ox + w])  # (H, W, 3) copy
        fov = self.fov

        visits = self._schedule.active(t)
        for visit in visits:
            pose = visit.pose(t, fov.cx, fov.cy, fov.radius)
            draw_instrument(image, parts, types, STYLES[visit.type_id], pose, fov.radius)

        smoke = self.smoke_density(t)
        if smoke > 0.02 and self._smoke is not None:
            # Smoke drifts against the camera pan, so it does not look painted on the tissue.
            sx, sy = 2 * self._margin - ox, 2 * self._margin - oy
            haze = self._smoke[sy:sy + h, sx:sx + w]
            cv2.addWeighted(image, 1.0 - 0.6 * smoke, haze, smoke, 0.0, dst=image)
        blur = self.blur_length(t)
        if blur >= 3:
            horizontal = int(t) % 2 == 0
            cv2.blur(image, (blur, 1) if horizontal else (1, blur), dst=image)
        cv2.multiply(image, self._vignette, dst=image, scale=1.0 / 255.0)
        return t, image, visits, smoke, blur if blur >= 3 else 0

    def _states(self, visits: list[Visit], t: float, types: np.ndarray) -> list[InstrumentState]:
        # Visible means the ground truth holds the type: a caption never names an instrument
        # that the label map does not show (a sliver under 0.1% of the frame does not count).
        coarse = types[::4, ::4]
        counts = np.bincount(coarse.ravel(), minlength=len(TYPE_CLASSES))
        min_pixels = 0.001 * coarse.size
        fov = self.fov
        states = []
        for v in visits:
            pose = v.pose(t, fov.cx, fov.cy, fov.radius)
            style = STYLES[v.type_id]
            phase = v.phase_name(t)
            if phase != "working":
                action = phase
            elif style.tip_shape == "paddle":
                action = "retracting"
            elif style.tip_shape == "probe":
                action = "touching"
            elif pose.opening < 0.3:
                action = "grasping"
            elif pose.opening > 0.75:
                action = "open"
            else:
                action = "moving"
            states.append(InstrumentState(
                type_id=v.type_id,
                type_name=TYPE_CLASSES[v.type_id],
                region=region_name(*pose.tip, fov.cx, fov.cy, fov.radius),
                side=side_name(v.entry_angle),
                action=action,
                tip_xy=pose.tip,
                visible=bool(counts[v.type_id] >= min_pixels),
            ))
        return states

    def frames(self, count: int, start: int = 0):
        """Yield `count` consecutive frames from `start`."""
        for i in range(start, start + count):
            yield self.render(i)
