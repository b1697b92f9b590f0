"""Scale-out on this machine: frames per second with 1 and 2 segment worker processes, and the
bytes per frame of the mask-only stream against the full overlay stream.

    python -m orstream.benchmarks.scaleout [--workers 1,2] [--rounds 2] [--seconds 12] [--threads 1]
                                  [--backend torch] [--size 640x360] [--out ...]

Workers: this process runs capture and render (`stages` capture,render); each worker is an
`orstream run --stages segment` process. Capture deals frames out over a lossless PUSH edge
(`bind: sender`, hwm 1: a worker never holds more than one stale frame) and render puts the
results back in order (`render.reorder_ms`). The source is live: frames the workers cannot
take are dropped at capture, so the rendered rate is the throughput. Counts alternate
(1, 2, 1, 2, ...) so that load from elsewhere hits both alike; the ratio is 2 workers over
1 worker within the same run. Each worker gets `--threads` inference threads (default 1,
as a worker per GPU or per box would have its own device); `--threads 0` shares this
machine's cores out among the workers instead.

The default backend is eager torch (about 50 ms a frame here): the workers must be the
bottleneck for their number to matter. With the default openvino bf16 engine (4 ms) the
synthetic 1080p capture saturates first and a second worker has nothing to add on 2 cores.

Bytes: one pipeline publishes the full overlay stream and the mask-only stream of the same
frames; subscribers count the bytes of every message (ZeroMQ frames, headers included).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

from orstream.benchmarks.common import machine, table, write_json
from orstream.common.sizes import parse_size
from orstream.pipeline.config import load_config
from orstream.pipeline.runner import Pipeline

REPO = Path(__file__).resolve().parents[1]


def _worker_config(folder: Path, backend: str, size: tuple[int, int], threads: int) -> Path:
    tree = {
        "source": {"width": size[0], "height": size[1], "fps": 60},
        "segment": {"backend": backend, "precision": "fp32", "threads": threads},
        "render": {"reorder_ms": 200},
        "publish": {"endpoint": None},
        "edges": {
            "capture->segment": {"endpoint": f"ipc://{folder}/dispatch", "mode": "lossless",
                                 "bind": "sender", "hwm": 1},
            "segment->render": {"endpoint": f"ipc://{folder}/results", "mode": "lossless"},
        },
    }
    path = folder / "scaleout.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _throughput(config: Path, workers: int, threads: int, seconds: float,
                warmup_s: float) -> dict:
    cfg = load_config(config)
    times: list[int] = []
    pipeline = Pipeline(cfg, stages=["capture", "render"],
                        on_frame=lambda f: times.append(time.monotonic_ns()))
    runner = threading.Thread(target=pipeline.run, daemon=True)
    runner.start()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    procs = [subprocess.Popen([sys.executable, "-m", "orstream.pipeline.cli", "run", "--config",
                               str(config), "--stages", "segment"], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(workers)]
    try:
        # Workers load their model; the clock starts once frames flow, after a warm-up.
        deadline = time.monotonic() + 120
        while not times and time.monotonic() < deadline:
            time.sleep(0.1)
        if not times:
            raise RuntimeError("no frame came back from the workers within 120 s: "
                               + procs[0].stderr.read1(4000).decode())
        time.sleep(warmup_s)
        t0 = time.monotonic_ns()
        n0 = len(times)
        time.sleep(seconds)
        t1 = time.monotonic_ns()
        n1 = len(times)
    finally:
        pipeline.request_stop()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        runner.join(30)
    gaps = np.diff(np.array([t for t in times if t0 <= t <= t1])) / 1e6
    return {"workers": workers, "fps": (n1 - n0) / ((t1 - t0) / 1e9),
            "frame_gap_p99_ms": float(np.percentile(gaps, 99)) if len(gaps) else None,
            "late": pipeline.result.dropped}


def _bytes_per_frame(frames: int) -> dict:
    """Both streams of one pipeline on the synthetic 1080p feed with the shipped model."""
    import zmq

    from orstream.pipeline import masks

    folder = Path(tempfile.mkdtemp(prefix="orstream-bytes-"))
    full, mask = f"ipc://{folder}/full", f"ipc://{folder}/mask"
    cfg = load_config(None, [f"publish.endpoint={full}", f"masks.endpoint={mask}",
                             "publish.parts=[overlay]"])
    ctx = zmq.Context.instance()
    sizes: dict[str, list[int]] = {"overlay": [], "mask": []}
    decoded = 0
    socks = {}
    for name, endpoint in (("overlay", full), ("mask", mask)):
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.SUBSCRIBE, b"")
        s.setsockopt(zmq.RCVHWM, 1000)
        s.connect(endpoint)
        socks[name] = s
    pipeline = Pipeline(cfg, max_frames=frames)
    runner = threading.Thread(target=pipeline.run, daemon=True)
    runner.start()
    poller = zmq.Poller()
    for s in socks.values():
        poller.register(s, zmq.POLLIN)
    while runner.is_alive() or any(s.poll(0) for s in socks.values()):
        for s, _ in poller.poll(200):
            message = s.recv_multipart()
            name = "overlay" if s is socks["overlay"] else "mask"
            sizes[name].append(sum(len(p) for p in message))
            if name == "mask":
                masks.decode(message)  # what a display would do: it must decode
                decoded += 1
    for s in socks.values():
        s.close(0)
    over = np.array(sizes["overlay"])
    msk = np.array(sizes["mask"])
    return {"frames_overlay": len(over), "frames_mask": len(msk), "decoded": decoded,
            "overlay_bytes_p50": float(np.median(over)),
            "mask_bytes_p50": float(np.median(msk)), "mask_bytes_max": float(msk.max()),
            "ratio_overlay_over_mask": float(np.median(over) / np.median(msk))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--threads", type=int, default=1,
                        help="inference threads per worker; 0 = the cores shared out")
    parser.add_argument("--size", type=parse_size, default="640x360", help="source WxH")
    parser.add_argument("--bytes-frames", type=int, default=90)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scaleout.json"))
    args = parser.parse_args(argv)
    counts = [int(v) for v in args.workers.split(",")]
    w, h = args.size
    cores = os.cpu_count() or 1
    runs = []
    with tempfile.TemporaryDirectory(prefix="orstream-scaleout-") as tmp:
        for r in range(args.rounds):
            for n in counts:
                threads = args.threads or max(1, cores // n)
                config = _worker_config(Path(tmp), args.backend, (w, h), threads)
                run = _throughput(config, n, threads, args.seconds, args.warmup)
                run.update(round=r, threads_per_worker=threads)
                runs.append(run)
                print(f"round {r}: {n} worker(s) x {threads} thread(s): {run['fps']:.1f} fps",
                      flush=True)
    rows = []
    base = np.median([x["fps"] for x in runs if x["workers"] == counts[0]])
    for n in counts:
        fps = [x["fps"] for x in runs if x["workers"] == n]
        rows.append({"workers": n, "fps": float(np.median(fps)), "fps_min": min(fps),
                     "fps_max": max(fps), "ratio": float(np.median(fps) / base)})
    print(f"\nthroughput, {args.backend} fp32, source {w}x{h}, median of {args.rounds} rounds")
    print(table(rows, [("workers", "segment workers", "d"), ("fps", "fps", ".1f"),
                       ("fps_min", "min", ".1f"), ("fps_max", "max", ".1f"),
                       ("ratio", f"vs {counts[0]}", ".2f")]))
    sizes = _bytes_per_frame(args.bytes_frames)
    print("\nbytes per frame, synthetic 1080p, shipped types model")
    print(table([{"stream": "overlay (full)", "bytes": sizes["overlay_bytes_p50"]},
                 {"stream": "mask-only", "bytes": sizes["mask_bytes_p50"]}],
                [("stream", "stream", "s"), ("bytes", "bytes p50", ",.0f")]))
    print(f"overlay / mask: {sizes['ratio_overlay_over_mask']:.0f}x")
    path = write_json(args.out, {"machine": machine(), "backend": args.backend,
                                 "source": [w, h], "runs": runs, "throughput": rows,
                                 "bytes": sizes})
    print(f"\n{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
