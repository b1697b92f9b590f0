"""How TP-SIS reads a prompt it was not trained on: as the trained prompt it means, when the
text encoder is sure enough.

The model learned 36 prompts for seven types and learned that text far from them names
nothing. A paraphrase that shares no word with them ("needle holder", "the cutting tool")
lands where the model has seen nothing, and it marks nothing (measured: 0 % IoU for three
of the seven held-out paraphrases). WordLlama's sentence space still places most of them
next to the right trained prompt ("needle holder" -> "needle driver", cosine 0.45). So a
prompt is given to the model as its nearest trained prompt when that neighbour is

- at cosine >= READ_AS_MIN_SIMILARITY (0.25): the same boundary training draws, below which
  a random vocabulary word may be trained as naming nothing (training/tpsis_trainer.py), so
  text the model was taught to leave empty is never read as a class; and
- nearer than every trained empty-target prompt (NEGATIVES: "the liver" is read as itself,
  which the model leaves empty).

Otherwise the prompt's own features go to the model, which is what an absent instrument
("suction", 0.17 from any class) needs. The rule and its threshold come from training-side
data only; the held-out paraphrases and absent prompts only measure it (`orstream eval`
reports the model alone and the model with this reading).

Word embeddings know words, not devices: "ligasure" is nowhere near "vessel sealer", and
"veress needle" is near "needle driver" for its word "needle". So the names of an instrument
vocabulary (engines/tpsis_vocabulary.py) are neighbours too: a prompt nearest a class's
vocabulary name is read as that class's name, and one nearest a name of what the model does
not segment counts as nearest an empty-target prompt (read as itself). The vocabulary was
written before the third held-out set (engines/tpsis_prompts.py), which measures it blind.

The text shown in the legend is always what was typed; the reading is logged and returned to
whoever changed the prompts, so a surprising one ("instrument" -> "vessel sealing
instrument") is visible. A prompt's reading is computed once, when the prompts are set,
never per frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from orstream.engines.text_encoder import default_encoder, normalize_prompt
from orstream.engines.tpsis_prompts import NEGATIVES
from orstream.engines.tpsis_vocabulary import Vocabulary

READ_AS_MIN_SIMILARITY = 0.25


@dataclass(frozen=True)
class Reading:
    """What the model is given for one prompt."""

    prompt: str  # as typed (and shown in the legend)
    text: str  # what the model encodes: `prompt`, or the trained prompt it is read as
    class_name: str | None  # the trained prompt's type, or None when read as itself
    similarity: float  # cosine to the nearest trained prompt or vocabulary name of a type
    nearest: str = ""  # that prompt or name

    @property
    def reread(self) -> bool:
        return normalize_prompt(self.text) != normalize_prompt(self.prompt)

    def to_json(self) -> dict:
        return {"prompt": self.prompt, "read_as": self.text, "class": self.class_name,
                "similarity": round(self.similarity, 3), "nearest": self.nearest}


class PromptReader:
    """Reads prompts against the prompts a checkpoint was trained with."""

    def __init__(self, trained: Mapping[str, Sequence[str]],
                 negatives: Sequence[str] = NEGATIVES,
                 min_similarity: float = READ_AS_MIN_SIMILARITY,
                 vocabulary: Vocabulary | None = None) -> None:
        """`trained`: class -> its trained prompts (the first is the class's name);
        `vocabulary`: other names of those classes, and of what the model does not segment."""
        encoder = default_encoder()
        vocabulary = vocabulary or Vocabulary()
        # (class, the text it is near, the text the model is given when it is nearest)
        self._bank = [(name, text, text) for name, texts in trained.items() for text in texts]
        if not self._bank:
            raise ValueError("a prompt reader needs the prompts the model was trained with")
        self._bank += [(name, other, trained[name][0])
                       for name, others in vocabulary.names.items() if name in trained
                       for other in others]
        self._vectors = np.stack([encoder.encode(t).sentence for _, t, _ in self._bank])
        empty = [*negatives, *vocabulary.not_segmented]
        self._negatives = (np.stack([encoder.encode(t).sentence for t in empty])
                           if empty else np.zeros((0, self._vectors.shape[1]), np.float32))
        self.min_similarity = min_similarity

    def read(self, prompt: str) -> Reading:
        sentence = default_encoder().encode(prompt).sentence
        sims = self._vectors @ sentence
        best = int(sims.argmax())
        nearest = float(sims[best])
        empty = float((self._negatives @ sentence).max()) if len(self._negatives) else -1.0
        name, near, given = self._bank[best]
        if nearest >= self.min_similarity and nearest > empty:
            return Reading(prompt, given, name, nearest, near)
        return Reading(prompt, prompt, None, nearest, near)

    def read_all(self, prompts: Sequence[str]) -> list[Reading]:
        return [self.read(p) for p in prompts]
