"""When instruments appear and how they move: closed-form in time, deterministic for a seed.

Each of up to three slots holds a sequence of visits (an instrument enters from the border,
works, and withdraws). Positions are sums of slow sinusoids, so any frame can be rendered
without rendering the ones before it, and a seed always gives the same video.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from orstream.training.synth.instruments import InstrumentPose

ENTRY_SECONDS = 1.2  # insertion and withdrawal take about a second on real footage


def smoothstep(x: float) -> float:
    x = min(1.0, max(0.0, x))
    return x * x * (3 - 2 * x)


@dataclass(frozen=True)
class Visit:
    """One instrument's stay in view."""

    slot: int
    type_id: int
    start: float  # seconds
    end: float
    entry_angle: float  # where on the rim the trocar lies, radians (0 = right, pi/2 = bottom)
    target: tuple[float, float]  # mean wrist position, as a fraction of the radius from centre
    amp: tuple[float, float, float, float]  # sinusoid amplitudes (x1, y1, x2, y2), fraction of R
    freq: tuple[float, float, float, float]  # Hz
    phase: tuple[float, float, float, float]
    wrist_amp: float
    jaw_freq: float
    jaw_phase: float

    def active(self, t: float) -> bool:
        return self.start <= t < self.end

    def insertion(self, t: float) -> float:
        """0 outside the field of view .. 1 fully inserted."""
        return min(smoothstep((t - self.start) / ENTRY_SECONDS),
                   smoothstep((self.end - t) / ENTRY_SECONDS))

    def phase_name(self, t: float) -> str:
        if t - self.start < ENTRY_SECONDS:
            return "entering"
        if self.end - t < ENTRY_SECONDS:
            return "withdrawing"
        return "working"

    def pose(self, t: float, cx: float, cy: float, radius: float) -> InstrumentPose:
        ax, ay, bx, by = self.amp
        fx, fy, gx, gy = self.freq
        px, py, qx, qy = self.phase
        tau = 2 * math.pi * t
        wx = self.target[0] + ax * math.sin(tau * fx + px) + bx * math.sin(tau * gx + qx)
        wy = self.target[1] + ay * math.sin(tau * fy + py) + by * math.sin(tau * gy + qy)
        pivot = np.array([cx + 1.7 * radius * math.cos(self.entry_angle),
                          cy + 1.7 * radius * math.sin(self.entry_angle)])
        goal = np.array([cx + wx * radius, cy + wy * radius])
        # Withdrawn, the wrist sits behind the rim on the line to the trocar.
        depth = self.insertion(t)
        outside = pivot + (goal - pivot) * 0.25
        tip = outside + (goal - outside) * depth
        wrist = self.wrist_amp * math.sin(tau * 0.15 + px)
        opening = 0.5 + 0.5 * math.sin(tau * self.jaw_freq + self.jaw_phase)
        return InstrumentPose((float(pivot[0]), float(pivot[1])), (float(tip[0]), float(tip[1])),
                              wrist, opening)


class Schedule:
    """The visits of every slot, generated lazily as time advances."""

    # Each slot works from its own side, so instruments rarely cross the whole view.
    _SLOT_SECTORS = (math.pi, 0.0, -math.pi / 2)

    def __init__(self, seed: int, max_instruments: int, type_ids: tuple[int, ...]) -> None:
        if not 0 <= max_instruments <= 3:
            raise ValueError(f"max_instruments must be 0..3, got {max_instruments}")
        if not type_ids:
            raise ValueError("instrument_types must name at least one type")
        self.type_ids = type_ids
        self._rngs = [np.random.default_rng([seed, 1000 + s]) for s in range(max_instruments)]
        self._visits: list[list[Visit]] = [[] for _ in range(max_instruments)]
        for slot in range(max_instruments):
            # Slot 0 starts at once so a video opens on an instrument; the others join later.
            first = 0.0 if slot == 0 else float(self._rngs[slot].uniform(0.5, 6.0))
            self._visits[slot].append(self._new_visit(slot, first))

    def _new_visit(self, slot: int, start: float) -> Visit:
        rng = self._rngs[slot]
        sector = self._SLOT_SECTORS[slot]
        angle = sector + rng.uniform(-0.7, 0.7)
        # The wrist works on its own side of the view, at most half a radius from centre.
        target_r = rng.uniform(0.0, 0.45)
        target = (target_r * math.cos(angle), target_r * math.sin(angle))
        return Visit(
            slot=slot,
            type_id=int(rng.choice(self.type_ids)),
            start=start,
            end=start + float(rng.uniform(4.0, 12.0)),
            entry_angle=float(angle),
            target=(float(target[0]), float(target[1])),
            amp=tuple(float(a) for a in rng.uniform(0.03, 0.16, 4)),
            freq=tuple(float(f) for f in rng.uniform(0.04, 0.3, 4)),
            phase=tuple(float(p) for p in rng.uniform(0, 2 * math.pi, 4)),
            wrist_amp=float(rng.uniform(0.0, 0.5)),
            jaw_freq=float(rng.uniform(0.1, 0.6)),
            jaw_phase=float(rng.uniform(0, 2 * math.pi)),
        )

    def active(self, t: float) -> list[Visit]:
        """Visits in view at time t, in drawing order (slot order)."""
        out = []
        for slot, visits in enumerate(self._visits):
            while visits[-1].end <= t:
                gap = float(self._rngs[slot].uniform(0.3, 4.0))
                visits.append(self._new_visit(slot, visits[-1].end + gap))
            # Visits of a slot never overlap and end in order: only the newest can be in view,
            # unless t lies before it (random access to an earlier frame).
            for v in reversed(visits):
                if v.active(t):
                    out.append(v)
                    break
                if v.end <= t:
                    break
        return out
