"""A word-level tokenizer built from the training text, saved as plain data in checkpoints.

The captions and answers come from templates with a vocabulary of about two hundred words, so
whole words are the natural unit: every token is a word a reader recognises, sequences are
short (a caption of three instruments is ~35 tokens), and nothing is ever split oddly. BPE
would only pay off on open text. Punctuation marks are tokens of their own; decoding glues
them back to the word before, so `decode(encode(text)) == normalize(text)`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

SPECIALS = ("<pad>", "<bos>", "<sep>", "<eos>", "<unk>")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")
_GLUE = re.compile(r" ([;,.?!:])")


def split(text: str) -> list[str]:
    """Lower-cased words and punctuation marks: 'Is there smoke?' -> ['is', 'there', 'smoke',
    '?']."""
    return _WORD.findall(text.lower())


def join(words: Sequence[str]) -> str:
    return _GLUE.sub(r"\1", " ".join(words))


def normalize(text: str) -> str:
    """The form answers are compared in: lower case, single spaces, punctuation glued."""
    return join(split(text))


class Tokenizer:
    """Ids 0-4 are <pad>, <bos>, <sep>, <eos>, <unk>; words follow, most frequent first."""

    pad_id, bos_id, sep_id, eos_id, unk_id = range(len(SPECIALS))

    def __init__(self, vocab: Sequence[str]) -> None:
        if tuple(vocab[:len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}, got {list(vocab[:5])}")
        if len(set(vocab)) != len(vocab):
            raise ValueError("a vocabulary must not repeat a word")
        self.vocab: tuple[str, ...] = tuple(vocab)
        self._ids = {w: i for i, w in enumerate(self.vocab)}

    @classmethod
    def build(cls, texts: Iterable[str]) -> Tokenizer:
        counts = Counter(w for text in texts for w in split(text))
        # Frequency then alphabet: the same texts always give the same ids.
        words = sorted(counts, key=lambda w: (-counts[w], w))
        return cls([*SPECIALS, *(w for w in words if w not in SPECIALS)])

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(w, self.unk_id) for w in split(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the ids up to the first <eos>; other special tokens are left out."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i >= len(SPECIALS) or i == self.unk_id:
                words.append(self.vocab[i])
        return join(words)

    def prompt(self, text: str) -> list[int]:
        """`<bos> text <sep>`: what the decoder reads before it writes an answer."""
        return [self.bos_id, *self.encode(text), self.sep_id]

    def sequence(self, prompt: str, answer: str) -> tuple[list[int], list[int]]:
        """Ids of `<bos> prompt <sep> answer <eos>` and the loss mask: 1 where the token is
        to be learnt (the answer and its <eos>), 0 on the given prompt."""
        head = self.prompt(prompt)
        tail = [*self.encode(answer), self.eos_id]
        return head + tail, [0] * len(head) + [1] * len(tail)

    def unknown(self, text: str) -> list[str]:
        """Words of `text` the vocabulary lacks (they would encode as <unk>)."""
        return [w for w in split(text) if w not in self._ids]

    def to_dict(self) -> dict:
        """Plain data for a checkpoint: loading it needs no pickled class."""
        return {"kind": "word", "vocab": list(self.vocab)}

    @classmethod
    def from_dict(cls, data: dict) -> Tokenizer:
        if data.get("kind") != "word":
            raise ValueError(f"unknown tokenizer kind {data.get('kind')!r}: expected 'word'")
        return cls(list(data["vocab"]))
