"""Inference engines on this machine: latency per model variant x backend x precision x input
size, and the speedup over eager fp32 NCHW measured in the same run.

    python -m orstream.benchmarks.engines [--variants unet_xs,unet_s] [--sizes 320x256,640x512]
                                 [--backends torch,compile,onnxruntime,openvino]
                                 [--rounds 5] [--iters 20] [--idle-ms 0] [--out ...]

Every engine takes the live path's input (a uint8 frame at the model's size) and returns the
uint8 label map, so host-side normalisation and argmax are counted where a backend does them.
The baseline is eager fp32 with NCHW (contiguous) tensors, the way a model is usually run
first. Engines of one (variant, size) are timed in interleaved rounds, baseline included, so
a burst of load from another process hits all of them alike and the ratios stay honest.

A second table times the CPU preprocessing of a 1080p frame (crop of the endoscope's field of
view -> model input) by the ways this project could do it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

from orstream.benchmarks.common import machine, stats, table, time_calls, write_json
from orstream.common.classes import CLASSES
from orstream.common.sizes import format_hw, parse_hw
from orstream.engines import checkpoint as ckpt
from orstream.engines.backends import BackendError
from orstream.engines.cache import EngineCache
from orstream.engines.export import EngineSpec, open_engine
from orstream.engines.registry import build_model, model_config

# (backend, precision) pairs tried per device; unservable ones are listed as skipped, with why.
CANDIDATES = {
    "cpu": [("torch", "fp32"), ("torch", "bf16"), ("compile", "fp32"), ("compile", "bf16"),
            ("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")],
    "cuda": [("torch", "fp32"), ("torch", "fp16"), ("compile", "fp32"), ("compile", "fp16"),
             ("tensorrt", "fp16")],
}


def _weights(variant: str, workdir: Path) -> Path:
    """The shipped weights for unet_xs; other variants get seeded random weights (latency
    does not depend on what the weights learned)."""
    if variant == "unet_xs":
        return ckpt.shipped("types")
    torch.manual_seed(0)
    model = build_model(variant, len(CLASSES["types"]))
    return ckpt.save(ckpt.Checkpoint(variant, model_config(variant, len(CLASSES["types"])),
                                     "types", CLASSES["types"], (256, 320),
                                     model.state_dict()), workdir / f"{variant}.pt")


def _eager_nchw(weights: Path, device: str):
    """The baseline: eager fp32, NCHW, host-side normalise and argmax."""
    checkpoint = ckpt.load(weights)
    model = checkpoint.build().to(device)
    mean = torch.tensor(checkpoint.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(checkpoint.std, device=device).view(1, 3, 1, 1) * 255

    @torch.inference_mode()
    def run(image: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(image[None]).to(device).permute(0, 3, 1, 2).float()
        x = ((x - mean) / std).contiguous()
        return model(x).argmax(1)[0].to(torch.uint8).cpu().numpy()

    return run


def measure(variant: str, size: tuple[int, int], device: str, backends: list[str],
            rounds: int, iters: int, cache: EngineCache, workdir: Path,
            idle_ms: float = 0.0) -> list[dict]:
    weights = _weights(variant, workdir)
    image = np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)
    engines = {("eager NCHW (baseline)", "fp32"): _eager_nchw(weights, device)}
    skipped = []
    for backend, precision in CANDIDATES[device]:
        if backend not in backends:
            continue
        try:
            print(f"  {variant} {format_hw(size)}: loading {backend} {precision} ...",
                  file=sys.stderr, flush=True)
            engines[(backend, precision)] = open_engine(
                EngineSpec(weights, backend, precision, size, device, cache=cache.root))
        except BackendError as exc:
            skipped.append({"variant": variant, "input": format_hw(size),
                            "backend": backend, "precision": precision, "skipped": str(exc)})
    samples: dict[tuple[str, str], list[np.ndarray]] = {k: [] for k in engines}
    sync = torch.cuda.synchronize if device == "cuda" else None
    for _ in range(rounds):
        for key, engine in engines.items():
            samples[key].append(time_calls(lambda e=engine: e(image), iters, warmup=3,
                                           sync=sync, idle_s=idle_ms / 1000))
    base = stats(np.concatenate(samples[("eager NCHW (baseline)", "fp32")]))
    rows = []
    for (backend, precision), parts in samples.items():
        s = stats(np.concatenate(parts))
        rows.append({"variant": variant, "input": format_hw(size), "device": device,
                     "backend": backend, "precision": precision, "idle_ms": idle_ms, **s,
                     "speedup_p50": base["p50"] / s["p50"]})
    return rows + skipped


def preprocess_rows(size: tuple[int, int], iters: int) -> list[dict]:
    """1080p RGB frame -> model input, three ways."""
    from orstream.common.crop import endovis_region

    frame = np.random.default_rng(1).integers(0, 255, (1080, 1920, 3), dtype=np.uint8)
    y, x, h, w = endovis_region(1080, 1920)
    crop = frame[y:y + h, x:x + w]
    mh, mw = size
    mean = np.array(ckpt.DEFAULT_MEAN, np.float32) * 255
    std = np.array(ckpt.DEFAULT_STD, np.float32) * 255

    def blob():
        b = cv2.dnn.blobFromImage(crop, 1.0, (mw, mh), tuple(float(m) for m in mean),
                                  swapRB=False, crop=False)
        return b / std.reshape(1, 3, 1, 1)

    def numpy_norm():
        small = cv2.resize(crop, (mw, mh), interpolation=cv2.INTER_LINEAR)
        return np.ascontiguousarray(((small - mean) / std).transpose(2, 0, 1))[None]

    def resize_only():  # what orstream does: normalisation is fused into the engine
        return cv2.resize(crop, (mw, mh), interpolation=cv2.INTER_LINEAR)

    rows = []
    for name, fn in [("cv2.dnn.blobFromImage + std", blob),
                     ("cv2.resize + numpy normalise + CHW", numpy_norm),
                     ("cv2.resize uint8 (normalise in engine)", resize_only)]:
        rows.append({"method": name, "input": f"{mh}x{mw}",
                     **stats(time_calls(fn, iters, warmup=5))})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="unet_xs,unet_s")
    parser.add_argument("--sizes", default="320x256,640x512", help="model inputs, WxH")
    parser.add_argument("--backends", default="torch,compile,onnxruntime,openvino,tensorrt")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--devices", default="cpu,cuda",
                        help="cpu, cuda or both (cuda is skipped without a GPU)")
    parser.add_argument("--idle-ms", type=float, default=0.0,
                        help="sleep before each timed call, as a live feed's gap between frames "
                             "(33 at 30 fps): waking an idle CPU shows in the figures")
    parser.add_argument("--cache", type=Path, help="engine cache (default: a throwaway one)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    sizes = [parse_hw(s) for s in args.sizes.split(",")]  # (H, W) each
    wanted = args.devices.split(",")
    devices = [d for d in wanted if d == "cpu" or (d == "cuda" and torch.cuda.is_available())]
    if "cuda" in devices and (1024, 1280) not in sizes:
        sizes.append((1024, 1280))
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = EngineCache(args.cache or Path(tmp) / "engines")
        for device in devices:
            for variant in args.variants.split(","):
                for size in sizes:
                    if device == "cpu" and size[0] > 512:
                        continue  # 1280x1024 is a GPU size: seconds per frame on two cores
                    rows += measure(variant, size, device, args.backends.split(","),
                                    args.rounds, args.iters, cache, Path(tmp), args.idle_ms)
    timed = [r for r in rows if "skipped" not in r]
    print(table(timed, [("device", "device", ""), ("variant", "variant", ""),
                        ("input", "input", ""), ("backend", "backend", ""),
                        ("precision", "precision", ""), ("p50", "p50 ms", ".2f"),
                        ("p99", "p99 ms", ".2f"),
                        ("speedup_p50", "speedup vs eager fp32 (>1 faster)", ".2f")]))
    for r in rows:
        if "skipped" in r:
            print(f"skipped {r['variant']} {r['input']} {r['backend']} {r['precision']}: "
                  f"{r['skipped']}")
    pre = preprocess_rows((256, 320), args.iters * args.rounds)
    print()
    print(table(pre, [("method", "1080p crop -> model input", ""), ("input", "input", ""),
                      ("p50", "p50 ms", ".2f"), ("p99", "p99 ms", ".2f")]))
    path = write_json(args.out / "engines.json",
                      {"machine": machine(), "engines": rows, "preprocess": pre})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
