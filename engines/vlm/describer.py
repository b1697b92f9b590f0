"""The VLM as the pipeline uses it: a frame in, a caption or an answer out.

    describer = Describer.load()            # shipped weights, engines/weights/vlm_tiny.pt
    describer.caption(frame)                # 'bipolar forceps in the left grasp tissue; ...'
    describer.answer(frame, "is there smoke?")

Frames are full-size RGB uint8 (1080p, or an already-cropped 256x320); the Describer crops the
field of view and resizes itself. Decoding is greedy with the KV cache.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from orstream.engines.preprocess import normalize
from orstream.engines.vlm import checkpoint as vlm_ckpt
from orstream.engines.vlm.model import CAPTION_PROMPT
from orstream.engines.vlm.preprocess import prepare_image


class Describer:
    """Captions and answers for single frames; one instance per thread that uses it."""

    def __init__(self, checkpoint: vlm_ckpt.VLMCheckpoint, threads: int | None = None,
                 max_new_tokens: int = 48) -> None:
        """threads: torch threads for this Describer's work (None: leave torch's setting).
        max_new_tokens: longest answer; the longest template caption is ~35 words."""
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.checkpoint = checkpoint
        self.tokenizer = checkpoint.tokenizer
        self.threads = threads
        self.max_new_tokens = max_new_tokens
        self.input_size = checkpoint.input_size
        self.model = checkpoint.build()

    @classmethod
    def load(cls, path: str | Path | None = None, threads: int | None = None,
             max_new_tokens: int = 48) -> Describer:
        """Load weights (None: the shipped ones) and check them (CheckpointError if bad)."""
        return cls(vlm_ckpt.load(path if path is not None else vlm_ckpt.shipped()),
                   threads, max_new_tokens)

    def caption(self, image_rgb_uint8: np.ndarray) -> str:
        return self._generate(image_rgb_uint8, CAPTION_PROMPT)

    def answer(self, image_rgb_uint8: np.ndarray, question: str) -> str:
        if not question.strip():
            raise ValueError("the question is empty")
        return self._generate(image_rgb_uint8, question)

    def unknown_words(self, text: str) -> list[str]:
        """Words of a question the model has never seen (it reads them as <unk>)."""
        return self.tokenizer.unknown(text)

    def image_tensor(self, image_rgb_uint8: np.ndarray) -> torch.Tensor:
        """Frame -> (1, 3, H, W) model input, exactly as training prepared it."""
        small = prepare_image(image_rgb_uint8, self.input_size)
        return normalize(torch.from_numpy(small)[None], self.checkpoint.mean,
                         self.checkpoint.std)

    def _generate(self, image: np.ndarray, prompt: str) -> str:
        if self.threads is not None and torch.get_num_threads() != self.threads:
            # torch keeps the thread count per OS thread once that thread has run an op,
            # so setting it here, in the caller's thread, gives a describe thread its own
            # budget without changing the segmentation thread's.
            torch.set_num_threads(self.threads)
        prompt_ids = torch.tensor([self.tokenizer.prompt(prompt)], dtype=torch.long)
        with torch.inference_mode():
            out = self.model.generate(self.image_tensor(image), prompt_ids,
                                      self.max_new_tokens, self.tokenizer.eos_id)
        return self.tokenizer.decode(out[0].tolist())
