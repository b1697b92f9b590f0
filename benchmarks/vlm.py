"""Scene-VLM latency on this machine: a ~20-token caption from a 1080p frame, with the KV
cache, against the same model decoding without it (the reference SeeMore way), and against
the exported encoder + static-cache step engines (engines/vlm/exported.py), in one run.

    python -m orstream.benchmarks.vlm [--weights engines/weights/vlm_tiny.pt] [--tokens 20]
                             [--threads 2] [--rounds 5] [--iters 20] [--out ...]
                             [--exported onnxruntime,openvino | --exported none]

Every timed call starts from the uint8 1080p frame (crop, resize, normalise, encode, decode),
as the describe stage will. Fixed-length rows ignore <eos> and always write `--tokens`
tokens, so cached and uncached decoding do the same work; the `caption()` row is the
Describer as the pipeline calls it, at whatever length the caption naturally has. Exported
rows run the same weights through the engines (built into the engine cache on first use, and
checked to write the eager tokens on every frame before timing). Rows are timed in
interleaved rounds so a burst of load from another process hits all of them alike.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from orstream.benchmarks.common import machine, stats, table, time_calls, write_json
from orstream.engines.backends import backend_class
from orstream.engines.vlm import checkpoint as vlm_ckpt
from orstream.engines.vlm.describer import Describer
from orstream.engines.vlm.exported import ExportedVLM
from orstream.engines.vlm.model import CAPTION_PROMPT
from orstream.training.synth.generator import SynthConfig, SyntheticEndoscope


def _frames(count: int) -> list[np.ndarray]:
    """1080p synthetic frames of a seed no shipped model trained on."""
    synth = SyntheticEndoscope(SynthConfig(seed=99))
    return [synth.render(i).image for i in range(0, 30 * count, 30)]


def measure(describer: Describer, frames: list[np.ndarray], tokens: int, rounds: int,
            iters: int, exported: Sequence[ExportedVLM] = ()) -> tuple[list[dict], dict]:
    model, tok = describer.model, describer.tokenizer
    prompt = torch.tensor([tok.prompt(CAPTION_PROMPT)], dtype=torch.long)
    turn = iter(range(10**9))

    def frame() -> np.ndarray:  # a different frame each call, as a live tap sees
        return frames[next(turn) % len(frames)]

    def fixed(use_cache: bool):
        def run():
            with torch.inference_mode():
                out = model.generate(describer.image_tensor(frame()), prompt, tokens,
                                     tok.eos_id, use_cache=use_cache, stop_at_eos=False)
            assert out.shape[1] == tokens, "fixed-length decoding stopped early"
        return run

    def encoder():
        with torch.inference_mode():
            model.visual_tokens(describer.image_tensor(frame()))

    def fixed_exported(vlm: ExportedVLM):
        def run():
            out = vlm.tokens(frame(), CAPTION_PROMPT, tokens, stop_at_eos=False)
            assert len(out) == tokens, "fixed-length decoding stopped early"
        return run

    for vlm in exported:  # timing engines that write other words would be meaningless
        for f in frames:
            with torch.inference_mode():
                eager = model.generate(describer.image_tensor(f), prompt,
                                       describer.max_new_tokens, tok.eos_id)[0].tolist()
            assert vlm.tokens(f, CAPTION_PROMPT) == eager, f"{vlm.backend} differs from eager"

    calls = {
        f"{tokens} tokens, KV cache": fixed(True),
        f"{tokens} tokens, no cache (baseline)": fixed(False),
        "caption() as the pipeline calls it": lambda: describer.caption(frame()),
        "encoder + projector only": encoder,
    }
    for vlm in exported:
        calls[f"{tokens} tokens, exported {vlm.backend}"] = fixed_exported(vlm)
        calls[f"caption(), exported {vlm.backend}"] = lambda vlm=vlm: vlm.caption(frame())
    samples: dict[str, list[np.ndarray]] = {k: [] for k in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            samples[name].append(time_calls(fn, iters, warmup=3))
    base = stats(np.concatenate(samples[f"{tokens} tokens, no cache (baseline)"]))
    cached = stats(np.concatenate(samples[f"{tokens} tokens, KV cache"]))
    rows = []
    for name, parts in samples.items():
        s = stats(np.concatenate(parts))
        rows.append({"call": name, **s, "speedup_p50": base["p50"] / s["p50"],
                     "vs_cache_p50": cached["p50"] / s["p50"]})
    lengths = [len(tok.encode(describer.caption(f))) for f in frames]
    return rows, {"caption_tokens_mean": float(np.mean(lengths)),
                  "caption_tokens_max": int(np.max(lengths)),
                  "example_caption": describer.caption(frames[0])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=None,
                        help="VLM checkpoint (default: the shipped engines/weights/vlm_tiny.pt)")
    parser.add_argument("--tokens", type=int, default=20, help="tokens per fixed-length caption")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--exported", default="onnxruntime",
                        help="comma-separated backends to time the exported engines on "
                             "(onnxruntime, openvino), or none")
    args = parser.parse_args(argv)
    weights = args.weights or vlm_ckpt.shipped()
    describer = Describer.load(weights, threads=args.threads)
    backends = [b for b in args.exported.split(",") if b and b != "none"]
    exported = [ExportedVLM.load(weights, threads=args.threads, backend=b) for b in backends]
    frames = _frames(8)
    print(f"VLM {describer.checkpoint.model_name} ({weights}), batch 1, 1080p frame in, "
          f"{args.threads} torch threads, {args.rounds} x {args.iters} calls per row",
          file=sys.stderr)
    rows, captions = measure(describer, frames, args.tokens, args.rounds, args.iters, exported)
    print(table(rows, [("call", "call", ""), ("p50", "p50 ms", ".2f"), ("p95", "p95 ms", ".2f"),
                       ("p99", "p99 ms", ".2f"), ("max", "max ms", ".2f"),
                       ("speedup_p50", "x no cache", ".2f"),
                       ("vs_cache_p50", "x KV cache", ".2f")]))
    print(f"\ncaptions of these frames: {captions['caption_tokens_mean']:.1f} tokens on "
          f"average, {captions['caption_tokens_max']} at most; e.g. "
          f"\"{captions['example_caption']}\"")
    path = write_json(args.out / "vlm.json", {
        "machine": {**machine(), "torch_threads": args.threads},
        "weights": str(weights), "model": describer.checkpoint.model_name,
        "tokens": args.tokens, "rows": rows, **captions,
        "exported": [{**vlm.engine_info(), **backend_class(vlm.backend).versions(),
                      "tokens_equal_eager": True} for vlm in exported]})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
