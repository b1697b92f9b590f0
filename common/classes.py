"""Class tables for the three EndoVis segmentation tasks.

One place defines what each label id means, so that the generator, the loaders, the models'
checkpoints and the renderer agree. Ids follow TernausNet's conversion of EndoVis 2017
(parts: shaft 1, wrist 2, clasper 3; types 1-7 in the challenge's order), with the probe
(EndoVis pixel value 40) added as parts id 4.
"""

from __future__ import annotations

import re
from typing import Literal

from orstream.common.errors import UsageError

Task = Literal["binary", "parts", "types"]
TASKS: tuple[Task, ...] = ("binary", "parts", "types")

BINARY_CLASSES: tuple[str, ...] = ("background", "instrument")
PARTS_CLASSES: tuple[str, ...] = ("background", "shaft", "wrist", "clasper", "probe")
TYPE_CLASSES: tuple[str, ...] = (
    "background",
    "Bipolar Forceps",
    "Prograsp Forceps",
    "Large Needle Driver",
    "Vessel Sealer",
    "Grasping Retractor",
    "Monopolar Curved Scissors",
    "Other",
)

CLASSES: dict[Task, tuple[str, ...]] = {
    "binary": BINARY_CLASSES,
    "parts": PARTS_CLASSES,
    "types": TYPE_CLASSES,
}

# EndoVis 2017 stores each instrument's mask with one grey value per part.
ENDOVIS17_PART_VALUES: dict[int, int] = {10: 1, 20: 2, 30: 3, 40: 4}  # pixel value -> parts id
PART_PIXEL_VALUE: dict[int, int] = {v: k for k, v in ENDOVIS17_PART_VALUES.items()}

# Folder name of each type in the EndoVis 2017 layout we write ("<Name>_labels").
TYPE_FOLDER_NAMES: dict[int, str] = {
    i: name.replace(" ", "_") for i, name in enumerate(TYPE_CLASSES) if i > 0
}

# The real archives name label folders inconsistently ("Prograsp_Forceps" without "_labels",
# "Left_Bipolar_Forceps", "Right_Vessel_Sealer", "Other_labels"), so folders are matched by
# pattern on the instrument's name, ignoring side prefixes, case and the "_labels" suffix.
_TYPE_PATTERNS: tuple[tuple[int, re.Pattern[str]], ...] = tuple(
    (i, re.compile(rf"(^|_){re.escape(folder.lower())}(_labels?)?$"))
    for i, folder in TYPE_FOLDER_NAMES.items()
)


def type_id_for_folder(folder_name: str) -> int | None:
    """Type id (1-7) of an EndoVis 2017 ground-truth folder, or None if it names no instrument."""
    name = re.sub(r"[\s-]+", "_", folder_name.strip().lower())
    for type_id, pattern in _TYPE_PATTERNS:
        if pattern.search(name):
            return type_id
    return None


def num_classes(task: Task) -> int:
    return len(CLASSES[task])


def check_task(task: str) -> Task:
    if task not in TASKS:
        raise UsageError(f"unknown task {task!r}: expected one of {', '.join(TASKS)}")
    return task  # type: ignore[return-value]


# Display colours (RGB) per class id: instruments in saturated hues that stand out on red
# tissue; background is never drawn.
_PALETTES: dict[Task, tuple[tuple[int, int, int], ...]] = {
    "binary": ((0, 0, 0), (0, 230, 120)),
    "parts": ((0, 0, 0), (0, 200, 255), (255, 220, 0), (0, 255, 90), (255, 0, 220)),
    "types": ((0, 0, 0), (0, 160, 255), (0, 255, 120), (255, 230, 0), (255, 120, 0),
              (180, 90, 255), (0, 255, 255), (255, 255, 255)),
}


def palette(task: Task) -> tuple[tuple[int, int, int], ...]:
    return _PALETTES[task]


# TP-SIS (segment.model: tpsis) labels what free-text prompts name: its class table's task is
# "prompts", its names the prompt texts, label 1 + i for prompt i. One colour per prompt, in
# the order typed: the types palette's seven first, then nine more hues far from them and
# from tissue red, so the 16 prompts a pipeline takes are told apart.
PROMPTS_TASK = "prompts"
_PROMPT_COLORS: tuple[tuple[int, int, int], ...] = (
    (0, 160, 255), (0, 255, 120), (255, 230, 0), (255, 120, 0), (180, 90, 255),
    (0, 255, 255), (255, 255, 255), (255, 0, 200), (140, 255, 0), (0, 90, 255),
    (255, 170, 200), (0, 170, 140), (200, 160, 80), (120, 120, 255), (255, 255, 140),
    (90, 200, 255),
)


def prompt_table(prompts: tuple[str, ...] | list[str]) -> dict:
    """The class table of TP-SIS labels for `prompts` (at most 16), as PROTOCOL.md gives it:
    {"task": "prompts", "names": ["background", *prompts], "colors": [[r, g, b], ...]}."""
    assert len(prompts) <= len(_PROMPT_COLORS), f"at most {len(_PROMPT_COLORS)} prompts"
    return {"task": PROMPTS_TASK, "names": ["background", *prompts],
            "colors": [[0, 0, 0], *([*c] for c in _PROMPT_COLORS[:len(prompts)])]}
