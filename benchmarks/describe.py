"""What the describe stage costs the frame path, and how fast `orstream ask` answers.

    python -m orstream.benchmarks.describe [--rounds 3] [--frames 300] [--interval 1.0]
                                  [--set KEY=VALUE] [--out ...]

The default live pipeline (synthetic 1080p30, the shipped U-Net on the auto engine) runs
`--frames` frames with describe off, then on at `--interval` seconds, alternating for
`--rounds` rounds in this one process, so load from elsewhere falls on both alike. The
figure is the segmentation path's end-to-end latency (capture to rendered) pooled per
condition, p99 on / p99 off. While describe is on, a question goes to the ask socket every
2 s and the time to its answer is recorded, as `orstream ask` would see it.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

from orstream.benchmarks.common import machine, stats, table, write_json
from orstream.common.net import free_port
from orstream.pipeline.capture import keep_frame_memory
from orstream.pipeline.config import load_config
from orstream.pipeline.describe import ask
from orstream.pipeline.runner import Pipeline

QUESTIONS = ("is there smoke?", "which instruments are visible?", "how many instruments?")


def _run(on: bool, frames: int, warmup: int, interval: float, extra: list[str]) -> dict:
    port = free_port()
    cfg = load_config(None, ["publish.endpoint=null", f"describe.enabled={str(on).lower()}",
                             f"describe.interval_s={interval}",
                             f"describe.ask_endpoint=tcp://127.0.0.1:{port}", *extra])
    latencies: list[float] = []
    pipeline = Pipeline(cfg, max_frames=frames + warmup, on_frame=lambda f: latencies.append(
        (time.monotonic_ns() - f.t_capture_ns) / 1e6))
    asked: list[float] = []
    errors: list[str] = []
    stop = threading.Event()

    def questions() -> None:
        i = 0
        while not stop.wait(2.0):
            t0 = time.monotonic()
            try:
                reply = ask(f"tcp://127.0.0.1:{port}", QUESTIONS[i % len(QUESTIONS)], 5.0)
            except TimeoutError as exc:
                errors.append(str(exc))
                continue
            if "still loading" in reply.get("error", ""):
                continue  # the model process starts beside the pipeline: not an answer yet
            if "error" in reply:
                errors.append(reply["error"])
            elif len(latencies) > warmup:
                asked.append((time.monotonic() - t0) * 1e3)
            i += 1

    asker = threading.Thread(target=questions, daemon=True)
    if on:
        asker.start()
    result = pipeline.run()
    stop.set()
    if on:
        asker.join(10)
    return {"describe": on, "frames": result.frames_out, "captions": result.captions,
            "latencies_ms": latencies[warmup:], "ask_ms": asked, "ask_errors": errors,
            "elapsed_s": result.elapsed_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="pipeline config override, e.g. describe.weights=PATH")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/describe.json"))
    args = parser.parse_args(argv)
    keep_frame_memory()  # as `orstream run` does
    runs = []
    for r in range(args.rounds):
        for on in (False, True):
            run = _run(on, args.frames, args.warmup, args.interval, args.set)
            s = stats(np.array(run["latencies_ms"]))
            print(f"round {r} describe {'on ' if on else 'off'}: e2e p50 {s['p50']:.1f} ms "
                  f"p99 {s['p99']:.1f} ms, {run['captions']} captions, "
                  f"{len(run['ask_ms'])} questions", flush=True)
            runs.append({**run, "e2e": s, "round": r})
    rows = []
    pooled = {}
    for on in (False, True):
        lat = np.concatenate([x["latencies_ms"] for x in runs if x["describe"] is on])
        pooled[on] = stats(lat)
        rows.append({"describe": "on" if on else "off", **pooled[on]})
    ratio = pooled[True]["p99"] / pooled[False]["p99"]
    ask_ms = np.array([v for x in runs for v in x["ask_ms"]])
    ask_errors = [e for x in runs for e in x["ask_errors"]]
    print(f"\nsegmentation path end to end, {args.rounds} x {args.frames} frames per condition,"
          f" describe every {args.interval:g} s")
    print(table(rows, [("describe", "describe", "s"), ("p50", "p50 ms", ".1f"),
                       ("p95", "p95 ms", ".1f"), ("p99", "p99 ms", ".1f"),
                       ("max", "max ms", ".1f")]))
    print(f"p99 on / off: {ratio:.3f} (target <= 1.10)")
    if len(ask_ms):
        a = stats(ask_ms)
        print(f"orstream ask while running: {a['n']} questions, p50 {a['p50']:.0f} ms, "
              f"max {a['max']:.0f} ms (target < 1000); {len(ask_errors)} errors")
    summary = {"p99_ratio_on_off": ratio, "pooled": {"off": pooled[False], "on": pooled[True]},
               "ask_ms": stats(ask_ms) if len(ask_ms) else None, "ask_errors": ask_errors}
    for x in runs:
        x.pop("latencies_ms")
    path = write_json(args.out, {"machine": machine(), "interval_s": args.interval,
                                 "summary": summary, "runs": runs})
    print(f"\n{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
