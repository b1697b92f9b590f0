"""The seven EndoVis 2017 instrument types: their look, and how one is drawn with its labels.

An instrument is a tapered cylindrical shaft coming from a trocar outside the field of view,
an articulated wrist, and a tool tip (two jaws, a paddle, or a probe). Each type has its own
colours, proportions and tip geometry so that the types can be told apart, as on real robots.
Image and label maps are drawn from the same polygons, so the ground truth is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SHAFT, WRIST, CLASPER, PROBE = 1, 2, 3, 4  # parts ids, see common/classes.py

_SUBPIXEL = 4  # cv2 fixed-point shift: polygons move smoothly between frames
# Styles give sizes for a scope held far from the tissue; the working distance of laparoscopy
# makes instruments about half as large again on screen.
_WORKING_DISTANCE_GAIN = 1.5


@dataclass(frozen=True)
class InstrumentStyle:
    """Look and geometry of one type. Lengths are fractions of the field-of-view radius."""

    type_id: int
    shaft_rgb: tuple[int, int, int]
    shaft_width: float
    wrist_rgb: tuple[int, int, int]
    wrist_length: float
    tip_rgb: tuple[int, int, int]
    tip_length: float
    tip_width: float
    tip_shape: str  # forceps | fenestrated | needle | sealer | paddle | scissors | probe
    max_open: float  # radians between the jaws when fully open
    band_rgb: tuple[int, int, int] | None = None  # coloured ring near the wrist


# Shaft colours differ by type on purpose: a shaft often fills a whole training crop without
# its tip, and three black shafts (as on many real robots) would make the type unknowable
# from most of its pixels.
STYLES: dict[int, InstrumentStyle] = {
    s.type_id: s
    for s in (
        InstrumentStyle(1, (35, 60, 135), 0.10, (120, 125, 135), 0.09, (130, 150, 210), 0.20,
                        0.055, "forceps", 0.55, band_rgb=(70, 110, 200)),
        InstrumentStyle(2, (92, 92, 96), 0.11, (150, 150, 150), 0.10, (205, 205, 195), 0.19,
                        0.085, "fenestrated", 0.6),
        InstrumentStyle(3, (28, 28, 30), 0.10, (170, 170, 172), 0.08, (185, 185, 190), 0.12,
                        0.08, "needle", 0.45),
        InstrumentStyle(4, (225, 222, 210), 0.13, (95, 95, 100), 0.09, (75, 75, 80), 0.24,
                        0.09, "sealer", 0.3),
        InstrumentStyle(5, (125, 112, 60), 0.12, (160, 150, 110), 0.07, (195, 175, 100), 0.17,
                        0.17, "paddle", 0.0),
        InstrumentStyle(6, (20, 85, 72), 0.10, (120, 120, 125), 0.08, (215, 185, 70), 0.17,
                        0.06, "scissors", 0.5, band_rgb=(230, 140, 40)),
        InstrumentStyle(7, (150, 165, 180), 0.085, (150, 165, 180), 0.0, (235, 235, 240), 0.16,
                        0.07, "probe", 0.0),
    )
}


@dataclass(frozen=True)
class InstrumentPose:
    """Where an instrument is in one frame, in pixels and radians."""

    pivot: tuple[float, float]  # trocar point, outside the field of view
    tip: tuple[float, float]  # wrist joint: where the shaft ends and the tool begins
    wrist_angle: float  # articulation of the tool relative to the shaft
    opening: float  # 0 closed .. 1 fully open


def _to_fixed(points: np.ndarray) -> np.ndarray:
    return np.round(points * (1 << _SUBPIXEL)).astype(np.int32)


def _fill(image: np.ndarray, polygon: np.ndarray, rgb: tuple[float, float, float]) -> None:
    cv2.fillConvexPoly(image, _to_fixed(polygon), rgb, cv2.LINE_8, _SUBPIXEL)


def _label(maps: tuple[np.ndarray, np.ndarray] | None, polygon: np.ndarray, part: int,
           type_id: int, convex: bool = True) -> None:
    if maps is None:  # image only (the live feed): no ground truth to draw
        return
    parts, types = maps
    fixed = _to_fixed(polygon)
    if convex:
        cv2.fillConvexPoly(parts, fixed, part, cv2.LINE_8, _SUBPIXEL)
        cv2.fillConvexPoly(types, fixed, type_id, cv2.LINE_8, _SUBPIXEL)
    else:
        cv2.fillPoly(parts, [fixed], part, cv2.LINE_8, shift=_SUBPIXEL)
        cv2.fillPoly(types, [fixed], type_id, cv2.LINE_8, shift=_SUBPIXEL)


# Brightness across a cylinder lit from the scope: dark rims, bright middle, one specular line.
_CYLINDER_PROFILE = ((0.0, 0.5), (0.15, 0.8), (0.35, 1.05), (0.55, 0.95), (0.8, 0.7), (1.0, 0.45))


def _shaded_quad(image: np.ndarray, a0: np.ndarray, a1: np.ndarray, b0: np.ndarray,
                 b1: np.ndarray, rgb: tuple[int, int, int], highlight: bool = True) -> None:
    """Fill quad (a0 a1 b1 b0) in strips across the a->b direction to look cylindrical.

    a0/a1 are the two corners on one long side, b0/b1 on the other.
    """
    base = np.asarray(rgb, np.float32)
    for (f0, g0), (f1, g1) in zip(_CYLINDER_PROFILE[:-1], _CYLINDER_PROFILE[1:], strict=True):
        p = np.stack([a0 + (b0 - a0) * f0, a1 + (b1 - a1) * f0,
                      a1 + (b1 - a1) * f1, a0 + (b0 - a0) * f1])
        _fill(image, p, tuple(np.clip(base * (g0 + g1) / 2, 0, 255).tolist()))
    if highlight:
        f0, f1 = 0.3, 0.38
        p = np.stack([a0 + (b0 - a0) * f0, a1 + (b1 - a1) * f0,
                      a1 + (b1 - a1) * f1, a0 + (b0 - a0) * f1])
        _fill(image, p, tuple(np.clip(base * 0.4 + 170, 0, 255).tolist()))


def _jaw_outline(style: InstrumentStyle, length: float, width: float) -> np.ndarray:
    """One jaw in local coordinates (u along the tool, v across), lying on the +v side."""
    w, L = width, length
    shape = style.tip_shape
    if shape == "forceps":
        return np.array([[0, 0], [0, w * 0.5], [L * 0.6, w * 0.35], [L, w * 0.12], [L, 0]])
    if shape == "fenestrated":
        return np.array([[0, 0], [0, w * 0.5], [L * 0.85, w * 0.45], [L, w * 0.2], [L, 0]])
    if shape == "needle":
        return np.array([[0, 0], [0, w * 0.5], [L * 0.7, w * 0.5], [L, w * 0.3], [L, 0]])
    if shape == "sealer":
        return np.array([[0, 0], [0, w * 0.5], [L, w * 0.45], [L, 0]])
    if shape == "scissors":
        # A blade curving to one side: the polygon follows an arc.
        s = np.linspace(0, 1, 8)
        bend = 0.35 * L * s**2
        top = np.stack([L * s, w * 0.5 * (1 - 0.7 * s) + bend], 1)
        bottom = np.stack([L * s[::-1], bend[::-1]], 1)
        return np.concatenate([top, bottom])
    raise ValueError(f"{shape} has no jaws")


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]], np.float64)


def draw_instrument(image: np.ndarray, parts: np.ndarray | None, types: np.ndarray | None,
                    style: InstrumentStyle, pose: InstrumentPose, radius: float) -> None:
    """Draw one instrument onto `image` (RGB uint8) and its labels onto `parts` and `types`
    (both None: the image alone)."""
    maps = None if parts is None or types is None else (parts, types)
    radius *= _WORKING_DISTANCE_GAIN
    pivot = np.asarray(pose.pivot, np.float64)
    joint = np.asarray(pose.tip, np.float64)
    axis = joint - pivot
    length = float(np.linalg.norm(axis))
    if length < 1e-3:
        return
    axis /= length
    normal = np.array([-axis[1], axis[0]])
    half = 0.5 * style.shaft_width * radius

    # Shaft: tapered, wider towards the trocar because it is nearer the lens there.
    far_half = half * 1.6
    wrist_len = style.wrist_length * radius
    shaft_end = joint - axis * wrist_len
    a0, a1 = pivot + normal * far_half, shaft_end + normal * half
    b0, b1 = pivot - normal * far_half, shaft_end - normal * half
    _shaded_quad(image, a0, a1, b0, b1, style.shaft_rgb)
    _label(maps, np.stack([a0, a1, b1, b0]), SHAFT, style.type_id)
    if style.band_rgb is not None:
        band_len = 0.05 * radius
        c0 = shaft_end - axis * (band_len + 0.03 * radius)
        c1 = c0 + axis * band_len
        _shaded_quad(image, c0 + normal * half * 1.01, c1 + normal * half,
                     c0 - normal * half * 1.01, c1 - normal * half, style.band_rgb, False)

    # Wrist: a short, slightly narrower metal segment, bent by the articulation.
    tool_axis = _rotate(axis[None], pose.wrist_angle)[0]
    tool_normal = np.array([-tool_axis[1], tool_axis[0]])
    if wrist_len > 0:
        w_half = half * 0.9
        w0 = shaft_end + normal * w_half
        w1 = joint + tool_normal * w_half
        v0 = shaft_end - normal * w_half
        v1 = joint - tool_normal * w_half
        _shaded_quad(image, w0, w1, v0, v1, style.wrist_rgb)
        _label(maps, np.stack([w0, w1, v1, v0]), WRIST, style.type_id)
        # The joint pin: a dark line across the wrist.
        mid0, mid1 = (w0 + w1) / 2, (v0 + v1) / 2
        cv2.line(image, tuple(_to_fixed(mid0)), tuple(_to_fixed(mid1)), (30, 30, 30),
                 max(1, int(0.008 * radius)), cv2.LINE_8, _SUBPIXEL)

    tip_len = style.tip_length * radius
    tip_w = style.tip_width * radius
    basis = np.stack([tool_axis, tool_normal])  # local (u, v) -> image (x, y)
    if style.tip_shape == "probe":
        # A rounded cylinder: the probe part.
        p_half = half * 0.8
        end = joint + tool_axis * tip_len
        q = np.stack([joint + tool_normal * p_half, end + tool_normal * p_half,
                      end - tool_normal * p_half, joint - tool_normal * p_half])
        _shaded_quad(image, q[0], q[1], q[3], q[2], style.tip_rgb)
        cv2.circle(image, tuple(_to_fixed(end)), int(p_half * (1 << _SUBPIXEL)),
                   tuple(float(c) * 0.9 for c in style.tip_rgb), -1, cv2.LINE_8, _SUBPIXEL)
        _label(maps, q, PROBE, style.type_id)
        for m, value in ((parts, PROBE), (types, style.type_id)):
            cv2.circle(m, tuple(_to_fixed(end)), int(p_half * (1 << _SUBPIXEL)), value, -1,
                       cv2.LINE_8, _SUBPIXEL)
        return
    if style.tip_shape == "paddle":
        # A fan-shaped retractor blade that does not open.
        s = np.linspace(-1, 1, 9)
        arc = np.stack([tip_len * (0.8 + 0.2 * np.cos(s * 1.2)), tip_w * 0.5 * s], 1)
        local = np.concatenate([[[0, -half * 0.8], [0, half * 0.8]], arc[::-1]])
        poly = joint + local @ basis
        _fill(image, poly, style.tip_rgb)
        inner = joint + (local * [0.75, 0.55]) @ basis
        _fill(image, inner, tuple(min(255, c + 35) for c in style.tip_rgb))
        _label(maps, poly, CLASPER, style.type_id)
        return

    # Two jaws mirrored about the tool axis, each rotated by half the opening.
    jaw = _jaw_outline(style, tip_len, tip_w)
    half_open = 0.5 * style.max_open * float(np.clip(pose.opening, 0.0, 1.0))
    for side in (1.0, -1.0):
        local = jaw * [1.0, side]
        local = _rotate(local, -side * half_open)
        poly = joint + local @ basis
        shade = 1.0 if side > 0 else 0.8
        _fill_any(image, poly, tuple(c * shade for c in style.tip_rgb))
        _label(maps, poly, CLASPER, style.type_id, convex=style.tip_shape != "scissors")
        if style.tip_shape == "fenestrated":
            # The window in a Prograsp jaw shows tissue: a dark slot stands in for it.
            slot = joint + (np.array([[0.3, 0.12], [0.75, 0.12], [0.75, 0.3], [0.3, 0.3]])
                            * [tip_len, tip_w * side]) @ basis
            _fill(image, slot, (70, 25, 30))


def _fill_any(image: np.ndarray, polygon: np.ndarray, rgb: tuple[float, ...]) -> None:
    cv2.fillPoly(image, [_to_fixed(polygon)], rgb, cv2.LINE_8, shift=_SUBPIXEL)
