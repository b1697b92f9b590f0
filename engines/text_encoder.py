"""Prompt text -> word features (T, D) and a sentence feature (D), from weights in a package.

No CLIP text tower can be downloaded here, so TP-SIS's language side is WordLlama's
`l2_supercat` token embedding table (MIT; 32000 Llama-2 tokens x 256, fp16, 16 MB): it ships
*inside* the `wordllama` wheel (`wordllama/weights/`, with its tokenizer in
`wordllama/tokenizers/`), so nothing is fetched at run time. The two files are read directly
rather than through `WordLlama.load`: in wordllama 0.4 `load` looks for the tokenizer under
`wordllama/tokenizer/` (singular) and, not finding it, downloads it (or fails offline). Reading
the files also keeps `requests` and wordllama's Cython helpers out of the process.

A word feature is a token's embedding; the sentence feature is their mean, as WordLlama pools,
scaled to unit length. Prompts are lower-cased and their whitespace collapsed first: the
tokenizer is case-sensitive, and "Large Needle Driver" typed as "large needle driver" must
mean the same. Features are pure functions of the text, cached per prompt.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from orstream.common.errors import OrstreamError

WEIGHTS_FILE = "weights/l2_supercat_256.safetensors"
TOKENIZER_FILE = "tokenizers/l2_supercat_tokenizer_config.json"
EMBED_DIM = 256
MAX_WORDS = 32  # tokens kept per prompt (Llama-2 pieces): the longest shipped prompt has 16


class TextEncoderError(OrstreamError):
    """The text encoder's files are missing (wordllama not installed) or a prompt is empty."""


@dataclass(frozen=True)
class PromptFeatures:
    """One prompt, encoded. words (T, D) float32 with 1 <= T <= MAX_WORDS; sentence (D,)
    float32 of unit length."""

    text: str
    tokens: tuple[str, ...]
    words: np.ndarray
    sentence: np.ndarray


def normalize_prompt(text: str) -> str:
    return " ".join(text.lower().split())


def _package_dir() -> Path:
    # find_spec locates the package without importing it (its __init__ imports requests).
    spec = importlib.util.find_spec("wordllama")
    if spec is None or not spec.submodule_search_locations:
        raise TextEncoderError("the TP-SIS text encoder needs the `wordllama` package (its "
                               "wheel holds the embedding table): pip install 'wordllama>=0.4'")
    return Path(next(iter(spec.submodule_search_locations)))


class TextEncoder:
    """WordLlama's embedding table and tokenizer, loaded once (0.4 s) from the package folder."""

    def __init__(self) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        root = _package_dir()
        weights, tokenizer = root / WEIGHTS_FILE, root / TOKENIZER_FILE
        for path in (weights, tokenizer):
            if not path.is_file():
                raise TextEncoderError(f"wordllama is installed without {path}: reinstall it "
                                       "(pip install --force-reinstall 'wordllama>=0.4')")
        self.table = load_file(str(weights))["embedding.weight"].astype(np.float32)
        self.tokenizer = Tokenizer.from_file(str(tokenizer))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        assert self.table.shape[1] == EMBED_DIM, f"expected {EMBED_DIM}-d embeddings"

    @lru_cache(maxsize=1024)  # noqa: B019 - one encoder per process (`default_encoder`)
    def encode(self, text: str) -> PromptFeatures:
        prompt = normalize_prompt(text)
        if not prompt:
            raise TextEncoderError("a prompt must hold at least one word")
        enc = self.tokenizer.encode(prompt, add_special_tokens=False)
        ids = np.asarray(enc.ids[:MAX_WORDS], np.int64)
        ids = np.clip(ids, 0, len(self.table) - 1)
        words = self.table[ids]  # (T, D)
        sentence = words.mean(axis=0)
        sentence = sentence / max(float(np.linalg.norm(sentence)), 1e-6)  # (D,)
        words.setflags(write=False)
        sentence.setflags(write=False)
        return PromptFeatures(prompt, tuple(enc.tokens[:MAX_WORDS]), words, sentence)

    def batch(self, texts: list[str] | tuple[str, ...]) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray]:
        """Prompts padded to one length: words (P, T, D), mask (P, T) bool (True = a word),
        sentences (P, D)."""
        feats = [self.encode(t) for t in texts]
        t_max = max(len(f.words) for f in feats)
        words = np.zeros((len(feats), t_max, EMBED_DIM), np.float32)
        mask = np.zeros((len(feats), t_max), bool)
        for i, f in enumerate(feats):
            words[i, :len(f.words)] = f.words
            mask[i, :len(f.words)] = True
        return words, mask, np.stack([f.sentence for f in feats])


@lru_cache(maxsize=1)
def default_encoder() -> TextEncoder:
    """The process's one encoder: the table is 32 MB in fp32, loaded on first use."""
    return TextEncoder()
