"""Captions and question/answer pairs made from the synthetic generator's ground truth.

Four kinds of question, each with several phrasings, and each phrasing with its own answer
template ("is there smoke?" -> "yes"; "can you see any smoke?" -> "no, there is no smoke").
The answer is fixed by the question's wording and the scene, so exact-match scoring is fair,
while the model has to read the question: neither one string per question kind nor one
answer form can be memorised.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from orstream.engines.vlm.model import CAPTION_PROMPT
from orstream.training.synth.captions import ACTIONS, TYPE_PHRASES, InstrumentState, caption

QUESTION_TYPES: tuple[str, ...] = ("which", "where", "smoke", "count")
TYPE_IDS: tuple[int, ...] = tuple(sorted(TYPE_PHRASES))
REGIONS = ("upper left", "top", "upper right", "left", "center", "right", "lower left",
           "bottom", "lower right")
SIDES = ("left", "right", "top", "bottom")
# Other ways to ask for the caption; all answer with the generator's caption.
CAPTION_PROMPTS: tuple[str, ...] = (CAPTION_PROMPT, "what is happening?", "caption this frame.")


def bare_name(type_id: int) -> str:
    """'a large needle driver' -> 'large needle driver'; 'another instrument' -> 'other
    instrument' (for 'where is the ...?')."""
    phrase = TYPE_PHRASES[type_id]
    if phrase.startswith("another "):
        return "other " + phrase[len("another "):]
    return phrase.split(" ", 1)[1] if phrase.startswith(("a ", "an ")) else phrase


# What a caption calls each type, without article: what the mention metric looks for.
MENTION_NAMES: dict[int, str] = {t: TYPE_PHRASES[t].removeprefix("a ") for t in TYPE_IDS}


@dataclass(frozen=True)
class Tool:
    type_id: int
    region: str  # of the tool tip: "upper left", "center", ...
    side: str  # the rim it comes from
    action: str  # entering, withdrawing, grasping, open, moving, retracting, touching


@dataclass(frozen=True)
class Scene:
    """What the ground truth says about one frame: visible tools (caption order), smoke."""

    tools: tuple[Tool, ...]
    smoke: bool
    caption: str

    @classmethod
    def from_record(cls, record: dict) -> Scene:
        tools = tuple(Tool(int(s["type_id"]), s["region"], s["side"], s["action"])
                      for s in record["instruments"] if s.get("visible", True))
        return cls(tools, bool(record["smoke_visible"]), record["caption"])

    def type_counts(self) -> Counter:
        return Counter(t.type_id for t in self.tools)


@dataclass(frozen=True)
class QA:
    kind: str  # "caption" or one of QUESTION_TYPES
    question: str
    answer: str


# ---- answers --------------------------------------------------------------------------------

_NUMBERS = ("no", "one", "two", "three", "four", "five", "six")


def _listing(scene: Scene) -> str:
    """Distinct visible types in type-id order: 'bipolar forceps, a vessel sealer and
    another instrument'. A fixed order, not the caption's, so the answer is unique."""
    names = [TYPE_PHRASES[t] for t in sorted(scene.type_counts())]
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def _location(tool: Tool) -> str:
    """Where the tool tip is. Always the region, also while the tool enters or withdraws:
    one frame cannot tell an instrument coming in from one going out (insertion depth is
    symmetric in time), so an answer that depended on it could only be guessed."""
    return "in the center" if tool.region == "center" else f"in the {tool.region}"


def _instruments(n: int) -> str:
    return f"{_NUMBERS[n]} instrument" + ("" if n == 1 else "s")


# (question, answer(scene) -> str); "where" answers take the tool asked about (None: absent)
_WHICH: tuple[tuple[str, Callable[[Scene], str]], ...] = (
    ("which instruments are visible?", lambda s: _listing(s) or "none"),
    ("what instruments can you see?",
     lambda s: f"i can see {_listing(s)}" if s.tools else "i can see no instruments"),
    ("which tools are in view?",
     lambda s: f"the tools in view are {_listing(s)}" if s.tools else "no tools are in view"),
    ("name the instruments in the scene.", lambda s: _listing(s) or "there are none"),
    ("what surgical instruments are present?",
     lambda s: f"present are {_listing(s)}" if s.tools else "no instruments are present"),
)
_WHERE: tuple[tuple[str, Callable[[str, Tool | None], str]], ...] = (
    ("where is the {name}?", lambda n, t: _location(t) if t else "it is not visible"),
    ("where can you see the {name}?",
     lambda n, t: f"the {n} is {_location(t)}" if t else f"the {n} is not in view"),
    ("locate the {name}.", lambda n, t: _location(t) if t else "not visible"),
    ("in which part of the view is the {name}?",
     lambda n, t: f"it is {_location(t)}" if t else f"there is no {n} in view"),
)
_SMOKE: tuple[tuple[str, Callable[[bool], str]], ...] = (
    ("is there smoke?", lambda y: "yes" if y else "no"),
    ("is the view obscured by smoke?",
     lambda y: "yes, smoke obscures the view" if y else "no, the view is clear"),
    ("can you see any smoke?", lambda y: "yes, there is smoke" if y else "no, there is no smoke"),
    ("is the camera view hazy?",
     lambda y: "yes, it is hazy with smoke" if y else "no, it is clear"),
)
_COUNT: tuple[tuple[str, Callable[[int], str]], ...] = (
    ("how many instruments?", lambda n: _NUMBERS[n] if n else "none"),
    ("how many instruments are visible?",
     lambda n: f"{_instruments(n)} {'is' if n == 1 else 'are'} visible"),
    ("how many tools can you see?",
     lambda n: f"i can see {_NUMBERS[n]} tool" + ("" if n == 1 else "s")),
    ("count the instruments in view.", lambda n: str(n)),
)
PHRASINGS: dict[str, int] = {"which": len(_WHICH), "where": len(_WHERE), "smoke": len(_SMOKE),
                             "count": len(_COUNT)}


def _where_target(scene: Scene, rng: np.random.Generator, p_present: float) -> int:
    """A type to ask about: mostly one in view (only one of its kind, or the answer would be
    ambiguous), otherwise one that is not."""
    counts = scene.type_counts()
    single = [t for t, c in sorted(counts.items()) if c == 1]
    absent = [t for t in TYPE_IDS if t not in counts]
    if single and (not absent or rng.random() < p_present):
        return int(rng.choice(single))
    return int(rng.choice(absent))


def ask(scene: Scene, kind: str, phrasing: int, rng: np.random.Generator,
        p_present: float = 0.65) -> QA:
    """One question of `kind` in wording number `phrasing`, with its answer for `scene`."""
    if kind == "which":
        q, a = _WHICH[phrasing]
        return QA(kind, q, a(scene))
    if kind == "where":
        q, a = _WHERE[phrasing]
        type_id = _where_target(scene, rng, p_present)
        tool = next((t for t in scene.tools if t.type_id == type_id), None)
        name = bare_name(type_id)
        return QA(kind, q.format(name=name), a(name, tool))
    if kind == "smoke":
        q, a = _SMOKE[phrasing]
        return QA(kind, q, a(scene.smoke))
    if kind == "count":
        q, a = _COUNT[phrasing]
        return QA(kind, q, a(len(scene.tools)))
    raise ValueError(f"unknown question kind {kind!r}: expected one of {QUESTION_TYPES}")


def sample_tasks(scene: Scene, rng: np.random.Generator, questions: int) -> list[QA]:
    """A caption and `questions` questions of distinct kinds, in random wordings (training)."""
    prompt = CAPTION_PROMPTS[int(rng.integers(len(CAPTION_PROMPTS)))]
    out = [QA("caption", prompt, scene.caption)]
    kinds = rng.permutation(len(QUESTION_TYPES))[:questions]
    for k in kinds:
        kind = QUESTION_TYPES[int(k)]
        out.append(ask(scene, kind, int(rng.integers(PHRASINGS[kind])), rng))
    return out


def eval_questions(scene: Scene, seed: int, frame: int) -> list[QA]:
    """One question of each kind per frame, wording drawn from (seed, frame): a fixed set."""
    rng = np.random.default_rng([seed, frame])
    return [ask(scene, kind, int(rng.integers(PHRASINGS[kind])), rng)
            for kind in QUESTION_TYPES]


def vocabulary_texts() -> Iterator[str]:
    """Every word the captions and the question/answer templates can produce, so the
    tokenizer never meets an unknown word on held-out frames."""
    yield from CAPTION_PROMPTS
    yield "no instruments are visible; the tissue is in view; smoke obscures the view"
    for type_id in TYPE_IDS:
        for action in ACTIONS:
            for region in REGIONS:
                for side in SIDES:
                    state = InstrumentState(type_id, "", region, side, action, (0.0, 0.0), True)
                    yield caption([state], False)
                    tool = Tool(type_id, region, side, action)
                    name = bare_name(type_id)
                    for q, a in _WHERE:
                        yield q.format(name=name)
                        yield a(name, tool)
                        yield a(name, None)
    every = Scene(tuple(Tool(t, "center", "left", "moving") for t in TYPE_IDS), False, "")
    for q, a in _WHICH:
        yield q
        yield a(every)
        yield a(Scene((), False, ""))
    for q, a in _SMOKE:
        yield q
        yield a(True)
        yield a(False)
    for q, a in _COUNT:
        yield q
        for n in range(4):
            yield a(n)
