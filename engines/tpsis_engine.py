"""TP-SIS behind the engine interface: prompts become engine inputs, frames stay uint8.

TP-SIS splits where a prompt stops mattering (engines/tpsis.py): `encode_prompts` turns a
prompt list into a PromptState once, and the per-frame part reuses it. An exported engine is
that per-frame part (engines/deploy.py `PromptLabelNet`), with the state as inputs beside the
frames, so one engine serves any prompts and changing them rebuilds nothing:

- P, the number of prompts, is a dynamic axis of every state input; every prompt is its own
  group (its own colour), so the engine takes no groups and leaves the mixing head out;
- the token axis is padded to PROMPT_TOKENS (the null token, the sentence token and up to
  MAX_WORDS word pieces), the padding masked out by a key bias of MASKED, which softmax turns
  into exact zeros: padded or not, the attention is the same.

`PromptEncoder` computes those inputs in torch, once per prompt list, off the frame path,
after reading each prompt against the trained ones (engines/tpsis_reading.py).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from orstream.common.errors import UsageError
from orstream.engines.text_encoder import MAX_WORDS, default_encoder, normalize_prompt
from orstream.engines.tpsis_reading import PromptReader, Reading

if TYPE_CHECKING:
    from pathlib import Path

    from orstream.engines.tpsis import PromptState
    from orstream.engines.tpsis_checkpoint import TPSISCheckpoint

# What `segment.model: tpsis` segments when the config names no prompts: three of the
# EndoVis 2017 types by their class names, the prompts the model was trained with.
DEFAULT_PROMPTS = ("Large Needle Driver", "Monopolar Curved Scissors", "Bipolar Forceps")
MAX_PROMPTS = 16  # a legend of 16 entries already covers a third of a 1080p frame
MAX_PROMPT_CHARS = 100  # the longest shipped prompt has 61; a paragraph is not a prompt
PROMPT_TOKENS = MAX_WORDS + 2  # null token + sentence token + word pieces: the fixed axis
# Key bias of a padded token: exp(MASKED - max) is exactly 0 in fp32 and bf16, and unlike
# -inf it cannot turn into NaN in a backend's fused softmax (-inf - -inf).
MASKED = -1.0e4
# PromptState's fields, in order (checked against engines/tpsis.py where torch is imported,
# so this module needs no torch); the engine's state inputs are all but `groups`: in the
# live path every prompt is its own group (its own colour), and the engine leaves the mixing
# head, the identity then, out (engines/deploy.py).
STATE_NAMES = ("keys", "values", "key_bias", "fine_kernel", "coarse_kernel", "bias", "groups")
ENGINE_STATE = STATE_NAMES[:-1]
FRAMES_INPUT = "frames"
# The exported graph's name in the engine cache key: changed whenever its inputs or what it
# computes change, so an engine of another graph is never loaded (/3: an OpenVINO entry also
# keeps the ONNX graph, compiled again for the prompt count in use; older entries lack it).
ENGINE_GRAPH = "tpsis-per-frame/3"


class PromptError(UsageError):
    """A prompt list that cannot be used: empty, too many, too long, unprintable."""


def check_prompts(prompts: Sequence[str]) -> tuple[str, ...]:
    """Prompts as they will be shown (whitespace collapsed), or PromptError saying what is
    wrong. Does not need the text encoder: the config, the CLI and the stage all call it."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise PromptError("prompts must be a list of texts, e.g. [\"scissors\", \"needle "
                          "holder\"]")
    if not 1 <= len(prompts) <= MAX_PROMPTS:
        raise PromptError(f"{len(prompts)} prompts: give 1 to {MAX_PROMPTS}")
    out = []
    for i, text in enumerate(prompts):
        if type(text) is not str:
            raise PromptError(f"prompt {i + 1} is a {type(text).__name__}, not a text")
        shown = " ".join(text.split())
        if not shown:
            raise PromptError(f"prompt {i + 1} is empty: name what to segment, e.g. scissors")
        if len(shown) > MAX_PROMPT_CHARS:
            raise PromptError(f"prompt {i + 1} is {len(shown)} characters long: at most "
                              f"{MAX_PROMPT_CHARS}")
        if any(unicodedata.category(c).startswith("C") for c in shown):
            raise PromptError(f"prompt {i + 1} holds control characters")
        out.append(shown)
    return tuple(out)


@dataclass(frozen=True)
class PromptInputs:
    """A prompt list, encoded: what an engine takes beside the frames. Never changed after
    it is made, so a frame path that holds one reference sees one consistent state."""

    prompts: tuple[str, ...]
    arrays: dict[str, np.ndarray]  # ENGINE_STATE -> float32, token axis at PROMPT_TOKENS
    readings: tuple[Reading, ...] = field(default=())  # one per prompt; () when not read

    def reread(self) -> list[dict]:
        """The prompts given to the model as a trained prompt, for logs and replies."""
        return [r.to_json() for r in self.readings if r.reread]


def pad_state(state: PromptState) -> dict[str, np.ndarray]:
    """A PromptState (torch) of singleton groups -> engine inputs (numpy), the token axis
    padded to PROMPT_TOKENS and every masked token's bias MASKED."""
    import torch

    keys, values, key_bias = state.keys, state.values, state.key_bias
    t = key_bias.shape[-1]
    assert t <= PROMPT_TOKENS, f"{t} tokens, the engines take at most {PROMPT_TOKENS}"
    pad = PROMPT_TOKENS - t
    # (L, P, heads, T, hd) -> (L, P, heads, PROMPT_TOKENS, hd), zeros after the last token
    keys = torch.nn.functional.pad(keys, (0, 0, 0, pad))
    values = torch.nn.functional.pad(values, (0, 0, 0, pad))
    key_bias = torch.nn.functional.pad(key_bias, (0, pad), value=MASKED)  # (P, TOKENS)
    key_bias = key_bias.clamp(min=MASKED)  # the model's -inf padding, finite here
    tensors = (keys, values, key_bias, state.fine_kernel, state.coarse_kernel, state.bias)
    return {name: np.ascontiguousarray(x.detach().float().cpu().numpy())
            for name, x in zip(ENGINE_STATE, tensors, strict=True)}


class PromptEncoder:
    """The frame-independent half of a TP-SIS checkpoint, in torch: prompts -> PromptInputs
    (a few milliseconds, once per prompt list)."""

    def __init__(self, checkpoint: TPSISCheckpoint, read: bool = True,
                 vocabulary: Path | None = None) -> None:
        """`read`: give the model a prompt it was not trained on as the trained prompt it
        means (engines/tpsis_reading.py), with the shipped instrument vocabulary plus the
        file `vocabulary` (segment.vocabulary); False: every prompt as typed."""
        from orstream.engines.tpsis import PromptState
        from orstream.engines.tpsis_vocabulary import vocabulary_for

        assert PromptState._fields == STATE_NAMES, PromptState._fields
        self.model = checkpoint.build()
        # The embedding table (and the trained prompts' features) are read now, not on the
        # first prompt change.
        self.reader = (PromptReader(checkpoint.prompts,
                                    vocabulary=vocabulary_for(checkpoint.prompts, vocabulary))
                       if read else None)
        default_encoder()

    def __call__(self, prompts: Sequence[str]) -> PromptInputs:
        import torch

        shown = check_prompts(prompts)
        tokenizer = default_encoder().tokenizer
        for i, text in enumerate(shown):
            pieces = len(tokenizer.encode(normalize_prompt(text), add_special_tokens=False).ids)
            if pieces > MAX_WORDS:
                raise PromptError(f"prompt {i + 1} is {pieces} word pieces long: at most "
                                  f"{MAX_WORDS}")
        readings = tuple(self.reader.read_all(shown)) if self.reader else ()
        texts = [r.text for r in readings] if readings else list(shown)
        with torch.inference_mode():
            state = self.model.encode_texts(texts)
        return PromptInputs(shown, pad_state(state), readings)


def example_inputs(checkpoint: TPSISCheckpoint, prompts: Sequence[str]) -> dict[str, np.ndarray]:
    """Engine inputs for `prompts` from a checkpoint: what exports and warm-ups feed."""
    return PromptEncoder(checkpoint)(prompts).arrays
