"""The VLM on exported engines: the Describer's API, greedy decoding over the static step graph.

    vlm = ExportedVLM.load(backend="onnxruntime")   # shipped weights; engines from the cache
    vlm.caption(frame)                              # the same words as Describer.caption
    vlm.answer(frame, "is there smoke?")

The engines are built on first use into the engine cache (engines/vlm/export.py says what
the two graphs are). Per answer: one encoder call (frame and prompt -> the logits of the
first answer token and the KV cache of everything read so far), then one step call per
further token, each taking the whole fixed-shape cache and returning it written one
position further. Decoding is greedy with the eager model's rules (engines/vlm/model.py
`VLM.generate`): the same number of tokens at most, <eos> ends it, ties go to the lowest
id. Batch 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from orstream.engines.backends import backend_class
from orstream.engines.cache import EngineCache
from orstream.engines.vlm import checkpoint as vlm_ckpt
from orstream.engines.vlm.describer import Describer
from orstream.engines.vlm.export import BATCH, INPUTS, PROMPT_LEN, export_vlm
from orstream.engines.vlm.preprocess import prepare_image


class Graphs:
    """A backend's encoder and step engines behind two calls. The cache is whatever the
    backend keeps it as (host arrays, or tensors on the GPU); logits come back to the host.

    encode: image (1, H, W, 3) uint8, prompt (1, PROMPT_LEN) int64 -> (visual, logits
    (PROMPT_LEN, vocab) float32 numpy, k, v); step: (token, position, k, v) -> (logits
    (vocab,) float32 numpy, k, v)."""

    backend: ClassVar[str]

    def __init__(self, files: dict[str, Path], size: tuple[int, int], precision: str,
                 device: str, threads: int | None) -> None:
        raise NotImplementedError

    def encode(self, image: np.ndarray, prompt: np.ndarray
               ) -> tuple[Any, np.ndarray, Any, Any]:
        raise NotImplementedError

    def step(self, token: int, position: int, k: Any, v: Any) -> tuple[np.ndarray, Any, Any]:
        raise NotImplementedError


class _HostGraphs(Graphs):
    """CPU engines fed with numpy arrays; the token and position inputs are reused buffers."""

    def __init__(self, files: dict[str, Path], size: tuple[int, int], precision: str,
                 device: str, threads: int | None) -> None:
        engine = backend_class(self.backend)
        self.encoder = engine(files["encoder"], size, precision, device, threads)
        self.stepper = engine(files["step"], size, precision, device, threads)
        self._token = np.zeros((BATCH, 1), np.int64)
        self._position = np.zeros(1, np.int64)

    def _run(self, engine: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def encode(self, image: np.ndarray, prompt: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        visual, logits, k, v = self._run(self.encoder, {"image": np.ascontiguousarray(image),
                                                        "prompt": prompt})
        return visual, logits[0], k, v

    def step(self, token: int, position: int, k: np.ndarray, v: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self._token[0, 0] = token
        self._position[0] = position
        names = INPUTS["step"]
        logits, k, v = self._run(self.stepper, dict(zip(names, (self._token, self._position, k,
                                                                 v), strict=True)))
        return logits[0], k, v


class OnnxRuntimeGraphs(_HostGraphs):
    backend = "onnxruntime"

    def _run(self, engine: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return engine.session.run(None, feeds)


class OpenVinoGraphs(_HostGraphs):
    backend = "openvino"

    def _run(self, engine: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        # Outputs are copied out of the request (share_outputs is off): the cache goes
        # straight back in as the next call's input.
        return list(engine.request.infer(feeds, share_inputs=True).to_tuple())


class TensorRtGraphs(Graphs):
    """Torch-TensorRT programs on CUDA: the cache stays on the GPU between steps; only the
    frame goes up and the logits (vocab floats) come back."""

    backend = "tensorrt"

    def __init__(self, files: dict[str, Path], size: tuple[int, int], precision: str,
                 device: str, threads: int | None) -> None:
        import torch

        engine = backend_class(self.backend)
        self.torch = torch
        self.encoder = engine(files["encoder"], size, precision, device, threads).module
        self.stepper = engine(files["step"], size, precision, device, threads).module
        self.device = device

    def encode(self, image: np.ndarray, prompt: np.ndarray
               ) -> tuple[Any, np.ndarray, Any, Any]:
        torch = self.torch
        with torch.inference_mode():
            visual, logits, k, v = self.encoder(
                torch.from_numpy(np.ascontiguousarray(image)).to(self.device),
                torch.from_numpy(prompt).to(self.device))
        return visual, logits[0].float().cpu().numpy(), k, v

    def step(self, token: int, position: int, k: Any, v: Any) -> tuple[np.ndarray, Any, Any]:
        torch = self.torch
        with torch.inference_mode():
            logits, k, v = self.stepper(
                torch.tensor([[token]], dtype=torch.long, device=self.device),
                torch.tensor([position], dtype=torch.long, device=self.device), k, v)
        return logits[0].float().cpu().numpy(), k, v


GRAPHS: dict[str, type[Graphs]] = {cls.backend: cls for cls in
                                   (OnnxRuntimeGraphs, OpenVinoGraphs, TensorRtGraphs)}


class ExportedVLM(Describer):
    """A Describer whose encoder and decoder run as exported engines (one per thread)."""

    def __init__(self, checkpoint: vlm_ckpt.VLMCheckpoint, weights: Path | str,
                 threads: int | None = None, max_new_tokens: int = 48,
                 backend: str = "onnxruntime", precision: str = "fp32", device: str = "cpu",
                 cache: EngineCache | None = None, rebuild: bool = False) -> None:
        """weights: the file `checkpoint` came from (its hash keys the engines).
        threads: the engines' intra-op threads (None: the backend's default)."""
        super().__init__(checkpoint, threads, max_new_tokens)
        self.backend, self.precision, self.device = backend, precision, device
        self.entries = export_vlm(weights, backend, precision, device, cache, rebuild,
                                  checkpoint)
        files = {graph: entry.engine_file for graph, entry in self.entries.items()}
        self.graphs = GRAPHS[backend](files, self.input_size, precision, device, threads)
        self.visual_count = checkpoint.config.visual_tokens
        self.max_len = checkpoint.config.decoder.max_len

    @classmethod
    def load(cls, path: str | Path | None = None, threads: int | None = None,
             max_new_tokens: int = 48, backend: str = "onnxruntime", precision: str = "fp32",
             device: str = "cpu", cache: EngineCache | None = None,
             rebuild: bool = False) -> ExportedVLM:
        """Load weights (None: the shipped ones), then find or build their engines."""
        weights = Path(path) if path is not None else vlm_ckpt.shipped()
        return cls(vlm_ckpt.load(weights), weights, threads, max_new_tokens, backend,
                   precision, device, cache, rebuild)

    def tokens(self, image_rgb_uint8: np.ndarray, prompt: str,
               max_new_tokens: int | None = None, stop_at_eos: bool = True) -> list[int]:
        """Greedy ids for a prompt about a frame, ending with <eos> if it was written; at
        most `max_new_tokens` (None: the instance's). `stop_at_eos=False` always writes that
        many, <eos> repeated after the first (fixed-length benchmarks), as `VLM.generate`."""
        ids = self.tokenizer.prompt(prompt)
        room = self.max_len - self.visual_count - len(ids) + 1
        if room < 1:  # a question asked over `orstream ask`: the asker's error, not a bug
            raise ValueError(f"the question is too long: its prompt of {len(ids)} tokens "
                             f"leaves no room for an answer; ask a shorter one")
        small = prepare_image(image_rgb_uint8, self.input_size)[None]  # (1, H, W, 3) uint8
        head, rest = ids[:PROMPT_LEN], ids[PROMPT_LEN:]
        prompt = np.full((BATCH, PROMPT_LEN), self.tokenizer.pad_id, np.int64)
        prompt[0, :len(head)] = head
        _, logits, k, v = self.graphs.encode(small, prompt)
        logits = logits[len(head) - 1]  # the last real prompt token's: the answer's first
        position = self.visual_count + len(head)
        for token in rest:  # a prompt longer than the graph reads: one step each
            logits, k, v = self.graphs.step(token, position, k, v)
            position += 1
        steps = min(self.max_new_tokens if max_new_tokens is None else max_new_tokens, room)
        eos = self.tokenizer.eos_id
        out: list[int] = []
        done = False
        for i in range(steps):
            # np.argmax takes the first of equal maxima, as torch's argmax does.
            out.append(eos if done else int(np.argmax(logits)))
            done = done or out[-1] == eos
            if (stop_at_eos and done) or i == steps - 1:
                break
            logits, k, v = self.graphs.step(out[-1], position, k, v)
            position += 1
        return out

    def engine_info(self) -> dict[str, Any]:
        """Which engines run, for logs and benchmark reports."""
        return {"backend": self.backend, "precision": self.precision, "device": self.device,
                **{g: e.folder.name for g, e in self.entries.items()}}

    def _generate(self, image: np.ndarray, prompt: str) -> str:
        return self.tokenizer.decode(self.tokens(image, prompt))
