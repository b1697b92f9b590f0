"""The VLM as two static-shape graphs for the engine backends, built into the engine cache.

    encoder  image (1, H, W, 3) uint8 RGB at the model's input size, prompt (1, P) int64
             -> visual (1, V, D), logits (1, P, vocab) float32,
                k_cache, v_cache (L, 1, heads, max_len, head_dim)
    step     token (1, 1) int64, position (1,) int64, k_cache, v_cache
             -> logits (1, vocab) float32, k_next, v_next (the caches with `position` written)

Every shape is fixed (V = 21 visual tokens, P = PROMPT_LEN, max_len = 96 for vlm_tiny),
which is what TensorRT needs and what lets ONNX Runtime and OpenVINO plan their memory
once: greedy decoding is a loop over the same step graph, the cache going out of one call
and into the next (engines/vlm/exported.py runs it).

What the encoder graph holds, and why:
- It takes the uint8 frame, as the U-Net's deployable graph does (engines/deploy.py):
  normalisation runs inside the engine and the host hands over the resized frame as is.
- ViT and projector give the visual tokens (an output, for parity checks only); then the
  decoder reads them and the prompt `<bos> text <sep>` in one causal pass, as
  `VLM.generate` prefills, and the graph returns the KV cache that pass filled and the
  logits at every prompt position. The prompt is padded with <pad> to P tokens: a padded
  position's logits are never read, and its cache slot is written by the step for that
  position before any step may attend to it (a step at position p writes slot p and sees
  slots <= p), so what padding leaves there never counts. A longer prompt feeds its first P
  tokens here and the rest through the step graph.
- One prefill graph instead of single steps for the visual and prompt tokens: V + 6 = 27
  step calls for a caption would cost more than the 20 tokens it writes (measured with
  ONNX Runtime on two cores: a step 0.5 ms, this graph 3 ms).

The step graph uses the eager decoder's own layers and weights; only the cache handling
differs from engines/vlm/decoder.py: the new key and value are written into their slot with
a `where` against the position (not a slice at a Python int), and attention sees every slot
under a mask of the positions up to this one (not a slice of the cache). The tests check
both graphs against the eager model, logits and tokens.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from loguru import logger
from torch import nn

from orstream.engines.backends import BackendError, backend_class
from orstream.engines.backends.base import device_name
from orstream.engines.backends.onnx_export import export_module
from orstream.engines.cache import EngineCache, EngineKey, Entry, file_sha256
from orstream.engines.deploy import Normalize
from orstream.engines.export import _heartbeat
from orstream.engines.vlm import checkpoint as vlm_ckpt
from orstream.engines.vlm.model import VLMConfig

GRAPHS = ("encoder", "step")
INPUTS = {"encoder": ("image", "prompt"), "step": ("token", "position", "k_cache", "v_cache")}
OUTPUTS = {"encoder": ("visual", "logits", "k_cache", "v_cache"),
           "step": ("logits", "k_next", "v_next")}
# Prompt tokens the encoder graph reads: the longest template prompt is 14 (<bos>, 12 words,
# <sep>; DecoderConfig.max_len budgets 14), and a few more cost next to nothing.
PROMPT_LEN = 16
# Part of every cache key: a change to what the graphs compute or take must not reuse engines
# built by the code before it. Raise it with any change to EncoderGraph or DecoderStep.
GRAPH_VERSION = "1"
BACKENDS = ("onnxruntime", "openvino", "tensorrt")  # eager torch is the Describer itself
BATCH = 1  # one frame at a time, as the describe stage asks
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def kv_shape(cfg: VLMConfig, batch: int = BATCH) -> tuple[int, int, int, int, int]:
    """(layers, batch, heads, max_len, head_dim): engines/vlm/decoder.py's KVCache."""
    d = cfg.decoder
    return d.depth, batch, d.heads, d.max_len, d.head_dim


class _PrefixCache:
    """Stands in for KVCache while the decoder reads the prefix from position 0:
    keeps each layer's keys and values as they come and pads them to max_len at the end.
    KVCache's slice writes into a zero cache export as ScatterElements, slow in ONNX Runtime
    (the encoder graph took 7.3 ms with them, 3 ms with this pad, on two cores)."""

    def __init__(self) -> None:
        self.length = 0  # Decoder.forward advances it after all layers ran
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        assert layer == len(self.k) and self.length == 0, "one pass from position 0 only"
        self.k.append(k)
        self.v.append(v)
        return k, v

    def padded(self, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """L x (B, heads, T, hd) -> (L, B, heads, max_len, hd), zeros after position T."""
        pad = (0, 0, 0, max_len - self.length)
        return F.pad(torch.stack(self.k), pad), F.pad(torch.stack(self.v), pad)


class EncoderGraph(nn.Module):
    """(B, H, W, 3) uint8 RGB, prompt (B, P) int64 -> visual (B, V, D), logits (B, P, vocab)
    at the prompt positions, and the KV cache of positions 0..V+P-1."""

    def __init__(self, checkpoint: vlm_ckpt.VLMCheckpoint,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.model = checkpoint.build().to(dtype)
        self.dtype = dtype
        self.normalize = Normalize(checkpoint.mean, checkpoint.std, dtype)

    def forward(self, image: torch.Tensor, prompt: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.normalize(image)  # (B, H, W, 3) uint8 -> (B, 3, H, W)
        visual = self.model.visual_tokens(x)  # -> (B, V, D)
        decoder = self.model.decoder
        cache = _PrefixCache()
        seq = torch.cat([visual, decoder.embed(prompt)], dim=1)  # (B, V + P, D)
        logits = decoder(seq, cache)[:, visual.shape[1]:].float()  # -> (B, P, vocab)
        k, v = cache.padded(decoder.cfg.max_len)  # (L, B, heads, max_len, hd)
        return visual, logits, k, v


class DecoderStep(nn.Module):
    """One new token against a static KV cache.

    token (B, 1) int64, position (1,) int64 (the token's position, the same for every row;
    the cache holds positions < position), k_cache, v_cache (L, B, heads, max_len, head_dim)
    -> logits (B, vocab) float32 for the next token, and the caches with `position` written.
    """

    def __init__(self, checkpoint: vlm_ckpt.VLMCheckpoint,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.decoder = checkpoint.build().decoder.to(dtype)
        self.register_buffer("slots", torch.arange(checkpoint.config.decoder.max_len),
                             persistent=False)

    def forward(self, token: torch.Tensor, position: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dec = self.decoder
        b, d = token.shape[0], dec.cfg.dim
        # The position embedding enters once, with the token (as Decoder.forward adds it).
        x = dec.embed(token) + dec.pos_embed.index_select(0, position)  # (B, 1) -> (B, 1, D)
        here = (self.slots == position).view(1, 1, -1, 1)  # the slot this token fills
        seen = (self.slots <= position).view(1, 1, 1, -1)  # the slots it may attend to
        keys, values = [], []
        for i, block in enumerate(dec.blocks):
            attn = block.attn
            qkv = attn.qkv(block.norm1(x)).view(b, 1, 3, attn.heads, attn.head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, 1, 3, H, hd) -> 3 x (B, H, 1, hd)
            k = torch.where(here, k, k_cache[i])  # -> (B, H, max_len, hd), slot written
            v = torch.where(here, v, v_cache[i])
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=seen, scale=attn.scale)
            x = x + attn.proj(y.transpose(1, 2).reshape(b, 1, d))  # (B, H, 1, hd) -> (B, 1, D)
            x = x + block.mlp(block.norm2(x))
            keys.append(k)
            values.append(v)
        logits = dec.head(dec.norm(x))[:, -1].float()  # (B, 1, D) -> (B, vocab)
        return logits, torch.stack(keys), torch.stack(values)


def graph_module(checkpoint: vlm_ckpt.VLMCheckpoint, graph: str,
                 dtype: torch.dtype = torch.float32) -> nn.Module:
    return {"encoder": EncoderGraph, "step": DecoderStep}[graph](checkpoint, dtype).eval()


def example_inputs(cfg: VLMConfig, graph: str, dtype: torch.dtype = torch.float32,
                   device: str = "cpu") -> tuple[torch.Tensor, ...]:
    """Inputs of the shapes and types the graph is built for (BATCH rows)."""
    if graph == "encoder":
        return (torch.zeros((BATCH, *cfg.image_size, 3), dtype=torch.uint8, device=device),
                torch.zeros((BATCH, PROMPT_LEN), dtype=torch.long, device=device))
    cache = torch.zeros(kv_shape(cfg), dtype=dtype, device=device)
    return (torch.zeros((BATCH, 1), dtype=torch.long, device=device),
            torch.tensor([cfg.visual_tokens], dtype=torch.long, device=device),
            cache, cache.clone())


def export_graph_onnx(checkpoint: vlm_ckpt.VLMCheckpoint, graph: str, out: Path) -> Path:
    """Write one graph as ONNX (fp32, every shape static)."""
    return export_module(graph_module(checkpoint, graph), example_inputs(checkpoint.config, graph),
                         INPUTS[graph], OUTPUTS[graph], out)


# --------------------------------------------------------------------------- building
def _build_onnxruntime(checkpoint: vlm_ckpt.VLMCheckpoint, graph: str, precision: str,
                       out: Path) -> None:
    export_graph_onnx(checkpoint, graph, out)  # the ONNX model is the engine


def _build_openvino(checkpoint: vlm_ckpt.VLMCheckpoint, graph: str, precision: str,
                    out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = export_graph_onnx(checkpoint, graph, Path(tmp) / f"{graph}.onnx")
        backend_class("openvino").build_from_onnx(onnx_file, precision, out)


def _build_tensorrt(checkpoint: vlm_ckpt.VLMCheckpoint, graph: str, precision: str,
                    out: Path) -> None:
    """Torch-TensorRT's dynamo path from the graph module, every input static (as
    engines/backends/tensorrt_backend.py builds the U-Net)."""
    from orstream.engines.backends.tensorrt_backend import _trt

    trt = _trt()
    dtype = _DTYPES[precision]
    model = graph_module(checkpoint, graph, dtype).to("cuda")
    example = example_inputs(checkpoint.config, graph, dtype, "cuda")
    with torch.inference_mode():
        program = torch.export.export(model, example)
        compiled = trt.dynamo.compile(program, inputs=list(example), enabled_precisions={dtype},
                                      min_block_size=1)
        trt.save(compiled, str(out), inputs=list(example))


_BUILDERS = {"onnxruntime": _build_onnxruntime, "openvino": _build_openvino,
             "tensorrt": _build_tensorrt}


def check(backend: str, precision: str, device: str) -> None:
    """Raise BackendError unless the VLM graphs can be built and run as asked."""
    if backend not in BACKENDS:
        raise BackendError(f"the VLM exports to backends {', '.join(BACKENDS)}, not {backend!r} "
                           f"(eager torch is the Describer itself)")
    if precision == "int8":
        raise BackendError("int8 VLM engines are not built (no calibration for the VLM): use "
                           "precision fp32")
    backend_class(backend).check(precision, device)


def graph_key(weights_sha256: str, checkpoint: vlm_ckpt.VLMCheckpoint, graph: str,
              backend: str, precision: str, device: str) -> EngineKey:
    """Keyed like the U-Net's engines (engines/export.engine_key), one entry per graph."""
    return EngineKey(weights_sha256=weights_sha256, model=f"{checkpoint.model_name}.{graph}",
                     input_size=tuple(checkpoint.input_size), precision=precision,
                     backend=backend, device=device_name(device),
                     versions=backend_class(backend).versions(),
                     extra={"graph_version": GRAPH_VERSION, "batch": str(BATCH),
                            "prompt_len": str(PROMPT_LEN)})


def export_vlm(weights: Path | str | None = None, backend: str = "onnxruntime",
               precision: str = "fp32", device: str = "cpu", cache: EngineCache | None = None,
               rebuild: bool = False, checkpoint: vlm_ckpt.VLMCheckpoint | None = None
               ) -> dict[str, Entry]:
    """Build the encoder and step engines into the cache (or find them there): graph -> entry.

    weights: a VLM checkpoint (None: the shipped engines/weights/vlm_tiny.pt).
    """
    weights = Path(weights) if weights is not None else vlm_ckpt.shipped()
    checkpoint = checkpoint or vlm_ckpt.load(weights)
    check(backend, precision, device)
    cache = cache or EngineCache()
    sha = file_sha256(weights)
    cls = backend_class(backend)
    entries: dict[str, Entry] = {}
    for graph in GRAPHS:
        key = graph_key(sha, checkpoint, graph, backend, precision, device)
        if not rebuild and (entry := cache.lookup(key)) is not None:
            logger.info("engine cache hit: {} (built {} in {:.1f} s)", entry.folder.name,
                        entry.meta["built_at"], entry.meta["build_s"])
            entries[graph] = entry
            continue
        logger.info("building the VLM {} graph for {} {} from {} on {} ...", graph, backend,
                    precision, weights.name, key.device)

        def build(out: Path, graph: str = graph) -> None:
            with _heartbeat(f"building VLM {graph} ({backend} {precision})"):
                _BUILDERS[backend](checkpoint, graph, precision, out)

        entries[graph] = cache.store(key, cls.artifact, build, notes={
            "weights": str(weights), "graph": graph, "inputs": list(INPUTS[graph]),
            "outputs": list(OUTPUTS[graph]), "kv_cache": list(kv_shape(checkpoint.config)),
            "prompt_len": PROMPT_LEN})
        logger.info("built {} in {:.1f} s -> {}", graph, entries[graph].meta["build_s"],
                    entries[graph].folder)
    return entries


def main(argv: list[str] | None = None) -> int:
    """python -m engines.vlm.export --backend onnxruntime [--weights ...] [--rebuild]"""
    parser = argparse.ArgumentParser(description="build the VLM's encoder and step engines "
                                                 "into the engine cache")
    parser.add_argument("--weights", type=Path, help="VLM checkpoint (default: the shipped one)")
    parser.add_argument("--backend", choices=BACKENDS, default="onnxruntime")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--cache", type=Path,
                        help="engine cache (default $ORSTREAM_ENGINE_CACHE or ~/.cache/orstream)")
    parser.add_argument("--rebuild", action="store_true", help="build even if cached")
    args = parser.parse_args(argv)
    try:
        entries = export_vlm(args.weights, args.backend, args.precision, args.device,
                             EngineCache(args.cache), args.rebuild)
    except BackendError as exc:
        logger.error("{}", exc)
        return 2
    for entry in entries.values():
        print(entry.folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
