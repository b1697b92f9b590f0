"""Templated captions that name the instruments in view, where they are and what they do."""

from __future__ import annotations

import math
from dataclasses import dataclass

from orstream.common.classes import TYPE_CLASSES

# How a caption names each type: plural nouns ("forceps", "scissors") take no article.
TYPE_PHRASES: dict[int, str] = {
    1: "bipolar forceps",
    2: "prograsp forceps",
    3: "a large needle driver",
    4: "a vessel sealer",
    5: "a grasping retractor",
    6: "monopolar curved scissors",
    7: "another instrument",
}
assert set(TYPE_PHRASES) == set(range(1, len(TYPE_CLASSES)))


@dataclass(frozen=True)
class InstrumentState:
    """What the ground truth knows about one instrument in one frame (for captions and VQA)."""

    type_id: int
    type_name: str
    region: str  # where the tool tip is: "upper left", "center", ...
    side: str  # the rim it comes from: "left", "right", "top", "bottom"
    action: str  # one of ACTIONS
    tip_xy: tuple[float, float]  # pixels
    visible: bool  # at least part of it is inside the field of view


def region_name(x: float, y: float, cx: float, cy: float, radius: float) -> str:
    """One of nine regions of the field of view, by thirds of its diameter."""
    col = 0 if x < cx - radius / 3 else (2 if x > cx + radius / 3 else 1)
    row = 0 if y < cy - radius / 3 else (2 if y > cy + radius / 3 else 1)
    names = (("upper left", "top", "upper right"),
             ("left", "center", "right"),
             ("lower left", "bottom", "lower right"))
    return names[row][col]


def side_name(angle: float) -> str:
    """The rim an instrument enters from, given its trocar angle (0 = right, pi/2 = bottom)."""
    a = math.degrees(angle) % 360
    if a < 45 or a >= 315:
        return "right"
    if a < 135:
        return "bottom"
    if a < 225:
        return "left"
    return "top"


# Verb phrases per action: (singular, plural). Entering/withdrawing name the rim instead of
# the region, because that is what a surgeon watching the screen would say.
_ACTIONS: dict[str, tuple[str, str]] = {
    "entering": ("enters from the {side}", "enter from the {side}"),
    "withdrawing": ("withdraws to the {side}", "withdraw to the {side}"),
    "grasping": ("{where} grasps tissue", "{where} grasp tissue"),
    "open": ("{where} opens its jaws", "{where} open their jaws"),
    "moving": ("{where} moves", "{where} move"),
    "retracting": ("{where} retracts tissue", "{where} retract tissue"),
    "touching": ("{where} touches tissue", "{where} touch tissue"),
}
ACTIONS: tuple[str, ...] = tuple(_ACTIONS)


def _clause(state: InstrumentState) -> str:
    name = TYPE_PHRASES[state.type_id]
    plural = not name.startswith(("a ", "an ", "another"))
    where = "in the center" if state.region == "center" else f"in the {state.region}"
    verb = _ACTIONS[state.action][1 if plural else 0]
    return f"{name} " + verb.format(side=state.side, where=where)


def caption(states: list[InstrumentState], smoke: bool) -> str:
    """e.g. 'a large needle driver in the upper left grasps tissue; bipolar forceps enter from
    the right'."""
    visible = [s for s in states if s.visible]
    if not visible:
        text = "no instruments are visible; the tissue is in view"
    else:
        text = "; ".join(_clause(s) for s in visible)
    if smoke:
        text += "; smoke obscures the view"
    return text
