"""U-Net latency per variant on this CPU: eager fp32, channels_last, bf16 autocast + channels_last.

    python -m orstream.benchmarks.unet_latency [--variants unet_xs,unet_s] [--sizes 320x256,640x512]
                                      [--iters 20] [--out benchmarks/results]

Batch 1, as the live path runs. Each mode is reported as a ratio to eager fp32 of the same
variant and size, measured in the same process, so the choice of a default does not depend on
how busy the machine was. The fastest mode of the smallest variant at 256x320 decides
whether a 30 fps feed (33 ms per frame) leaves room for the rest of the pipeline.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from orstream.benchmarks.common import machine, stats, table, time_calls, write_json
from orstream.common.sizes import format_hw, parse_hw
from orstream.engines.backends.torch_backend import cpu_bf16_supported
from orstream.engines.registry import VARIANTS, build_model


def _bf16_supported() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.functional.conv2d(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 3, 3))
        return True
    except RuntimeError:
        return False


def measure(variant: str, size: tuple[int, int], iters: int, warmup: int = 3) -> list[dict]:
    torch.manual_seed(0)
    h, w = size
    model = build_model(variant, 2).eval()
    x = torch.randn(1, 3, h, w)
    rows = []

    def row(mode: str, fn) -> None:
        with torch.inference_mode():
            s = stats(time_calls(fn, iters=iters, warmup=warmup))
        rows.append({"variant": variant, "size": format_hw(size), "mode": mode, **s})

    row("eager fp32", lambda: model(x))
    model_cl = build_model(variant, 2).eval().to(memory_format=torch.channels_last)
    model_cl.load_state_dict(model.state_dict())
    x_cl = x.contiguous(memory_format=torch.channels_last)
    row("channels_last fp32", lambda: model_cl(x_cl))
    if _bf16_supported():
        def bf16() -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model_cl(x_cl)
        # Without AVX-512 BF16/AMX, oneDNN emulates bf16: slower than fp32, and labelled so.
        native = cpu_bf16_supported()
        row("bf16 autocast + channels_last" + ("" if native else " (emulated)"), bf16)
    base = rows[0]["p50"]
    for r in rows:
        r["ratio_to_eager"] = r["p50"] / base
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="unet_xs,unet_s,unet_m,attunet_xs")
    parser.add_argument("--sizes", default="320x256,640x512", help="model inputs, WxH")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}: choose from {', '.join(VARIANTS)}")
    sizes = [parse_hw(s) for s in args.sizes.split(",")]  # (H, W) each
    rows = []
    for variant in variants:
        for size in sizes:
            rows += measure(variant, size, args.iters)
            print(f"  {variant} {format_hw(size)} done", flush=True)
    print(f"U-Net latency, batch 1, {torch.get_num_threads()} threads, {args.iters} runs each")
    print(table(rows, [("variant", "variant", "s"), ("size", "input", "s"), ("mode", "mode", "s"),
                       ("p50", "p50 ms", ".1f"), ("p99", "p99 ms", ".1f"),
                       ("ratio_to_eager", "time / eager fp32 (<1 faster)", ".2f")]))
    fastest = min((r for r in rows if r["variant"] == variants[0]
                   and r["size"] == format_hw(sizes[0])), key=lambda r: r["p50"])
    print(f"fastest {variants[0]} at {fastest['size']}: {fastest['mode']}, "
          f"{fastest['p50']:.1f} ms p50 ({1000 / fastest['p50']:.0f} fps)")
    path = write_json(args.out / "unet_latency.json", {"machine": machine(), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
