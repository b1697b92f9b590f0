"""Instrument vocabularies: the names a prompt reader cannot infer from word embeddings.

A vocabulary file (YAML) lists, per class of a TP-SIS checkpoint, other names for it
(`names`: brands such as "ligasure", catalogue names such as "hot shears"), and the
instruments the model does not segment (`not_segmented`). engines/tpsis_reading.py reads a
prompt as the class of the nearest name. The shipped file is configs/vocabulary/
instruments.yaml; `segment.vocabulary: FILE` adds a site's own names to it. Nothing here is
trained on.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from orstream.common.errors import UsageError
from orstream.engines.text_encoder import normalize_prompt

SHIPPED_VOCABULARY = Path(__file__).resolve().parent.parent / "configs" / "vocabulary" / \
    "instruments.yaml"
KEYS = ("names", "not_segmented")


class VocabularyError(UsageError):
    """A vocabulary file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Vocabulary:
    """Other names per class, and names of what the model does not segment (normalised)."""

    names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    not_segmented: tuple[str, ...] = ()
    source: str = "(none)"  # the file(s) it came from, for messages

    def __add__(self, other: Vocabulary) -> Vocabulary:
        names = {c: tuple(dict.fromkeys((*self.names.get(c, ()), *other.names.get(c, ()))))
                 for c in (*self.names, *other.names)}
        merged = Vocabulary(names, tuple(dict.fromkeys((*self.not_segmented,
                                                        *other.not_segmented))),
                            f"{self.source} + {other.source}")
        merged._check_disjoint()
        return merged

    def for_classes(self, classes: Iterable[str], strict: bool) -> Vocabulary:
        """The names of `classes` only. strict: a class the checkpoint lacks is an error (a
        site's file with a typo would otherwise be ignored without a word); the shipped file
        is not strict, since a checkpoint trained on other classes takes none of its names."""
        classes = list(classes)
        unknown = [c for c in self.names if c not in classes]
        if strict and unknown:
            near = difflib.get_close_matches(unknown[0], classes, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise VocabularyError(f"vocabulary {self.source}: names.{unknown[0]} is not a "
                                  f"class of the TP-SIS checkpoint{hint}; its classes are "
                                  f"{', '.join(classes)}")
        return Vocabulary({c: v for c, v in self.names.items() if c in classes},
                          self.not_segmented, self.source)

    def _check_disjoint(self) -> None:
        classes_of: dict[str, str] = {}
        for cls, names in self.names.items():
            for name in names:
                other = classes_of.setdefault(name, cls)
                if other != cls:
                    raise VocabularyError(f"vocabulary {self.source}: {name!r} is a name of both "
                                          f"{other!r} and {cls!r}; keep it under one")
        both = [n for n in self.not_segmented if n in classes_of]
        if both:
            raise VocabularyError(f"vocabulary {self.source}: {both[0]!r} is both a name of "
                                  f"{classes_of[both[0]]!r} and in not_segmented; keep one")


def _strings(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip()
                                               for v in value):
        raise VocabularyError(f"{where}: expected a list of non-empty names")
    return tuple(dict.fromkeys(normalize_prompt(v) for v in value))


def load_vocabulary(path: Path) -> Vocabulary:
    """A vocabulary file, or VocabularyError naming the file and the key to fix."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise VocabularyError(f"vocabulary {path}: cannot read it ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise VocabularyError(f"vocabulary {path}{line}: not valid YAML") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise VocabularyError(f"vocabulary {path}: expected keys {' and '.join(KEYS)}")
    extra = [k for k in data if k not in KEYS]
    if extra:
        raise VocabularyError(f"vocabulary {path}: unknown key {extra[0]!r} (the keys are "
                              f"{' and '.join(KEYS)})")
    names = data.get("names") or {}
    if not isinstance(names, dict):
        raise VocabularyError(f"vocabulary {path}: names: expected class name -> list of "
                              f"names")
    vocabulary = Vocabulary({str(c): _strings(v, f"vocabulary {path}: names.{c}")
                             for c, v in names.items()},
                            _strings(data.get("not_segmented") or [],
                                     f"vocabulary {path}: not_segmented"),
                            str(path))
    vocabulary._check_disjoint()
    return vocabulary


def vocabulary_for(classes: Iterable[str], extra: Path | None = None) -> Vocabulary:
    """The shipped vocabulary, plus `extra` (segment.vocabulary) when given, for a checkpoint
    of `classes`."""
    classes = list(classes)
    vocabulary = load_vocabulary(SHIPPED_VOCABULARY).for_classes(classes, strict=False)
    if extra is not None:
        vocabulary = vocabulary + load_vocabulary(extra).for_classes(classes, strict=True)
    return vocabulary


__all__ = ["SHIPPED_VOCABULARY", "Vocabulary", "VocabularyError", "load_vocabulary",
           "vocabulary_for"]
