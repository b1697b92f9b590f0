"""Replay capture overhead and decoder threading, against raw PyAV decode of the same file.

    python -m orstream.benchmarks.replay [--seconds 10] [--repeats 5] [--live-frames 90]
                                [--clip PATH] [--out benchmarks/results] [--default-malloc]

All in one run, on one 1080p H.264 clip made by the project's synthetic writer
(`training.synth.writers.write_video`, cached next to the results):

1. Throughput, frames/s, every frame decoded and converted to RGB (lossless replay):
   - raw PyAV decode + `to_ndarray("rgb24")`, single-threaded and with the threading the
     lossless source uses (DECODER_DEFAULTS["lossless"]);
   - the lossless file source through the capture thread alone (the decode side of the
     capture path, for reading the next row);
   - the real pipeline with segmentation switched off: `Pipeline` on the shipped config with
     `source.mode=lossless`, `segment.enabled=false` and the publisher off, i.e. `orstream
     replay CLIP --mode lossless --set segment.enabled=false` (capture thread, capture edge,
     render with its status line, null sink), timed as frames leave render.
   Rates are steady-state: frames after the first over the time from the first to the last,
   so one-off start-up (opening the file, loading the render kernels) is left out and shown
   apart as "first frame after". Rows are interleaved and repeated; the median run of each
   row is reported, and the overhead is the median over repeats of 1 - pipeline/raw within
   a repeat. Target: the pipeline within 10 % of raw decode with the same threading.
   The process keeps freed frame memory (`pipeline.capture.keep_frame_memory`), as an
   entry point running the pipeline should; `--default-malloc` measures without it.
2. Live decode latency per FFmpeg thread type: packets of a zero-latency (no B-frame)
   re-encode of the clip fed at 30 fps, as a network encoder sends them; the time from a
   packet's arrival to its RGB frame. Frame threading holds frames in flight, which is
   throughput in a replay but latency in a live stream: this picks DECODER_DEFAULTS["live"].
"""

from __future__ import annotations

import argparse
import io
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

# Run as a file, this folder comes first on sys.path, where a module of the same name as a
# library's (codecs.py) would shadow it: take the folder off (`python -m` needs no help).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import av  # noqa: E402
import numpy as np  # noqa: E402
from loguru import logger  # noqa: E402

from orstream.benchmarks.common import machine, stats, table, write_json  # noqa: E402
from orstream.pipeline.capture import CaptureThread, keep_frame_memory  # noqa: E402
from orstream.pipeline.config import SourceConfig, load_config  # noqa: E402
from orstream.pipeline.runner import Pipeline  # noqa: E402
from orstream.pipeline.sources import DECODER_DEFAULTS, VideoFileSource  # noqa: E402

TARGET_OVERHEAD = 0.10
PIPELINE_ROW = "pipeline, segmentation off (capture, render, null sink)"
LIVE_FPS = 30.0


def make_clip(path: Path, seconds: float) -> Path:
    from orstream.training.synth.writers import write_video

    if path.is_file():
        return path
    return write_video(path, seconds=seconds, width=1920, height=1080, fps=30.0, seed=0)


def _rate(times: list[float], start: float) -> dict:
    """Steady-state frames/s (frames after the first, over first to last), the per-frame
    interval distribution (ms) and the time from `start` to the first frame (ms)."""
    assert len(times) > 1, "too few frames to time: is the clip empty?"
    gaps = np.diff(times) * 1e3
    return {"frames": len(times), "fps": (len(times) - 1) / (times[-1] - times[0]),
            "first_ms": (times[0] - start) * 1e3, **stats(gaps)}


# ------------------------------------------------------------------ throughput rows


def raw_decode(path: Path, thread_type: str) -> dict:
    start = time.perf_counter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_type = thread_type
        stream.codec_context.thread_count = 0
        times = []
        for frame in container.decode(stream):
            frame.to_ndarray(format="rgb24")
            times.append(time.perf_counter())
    return _rate(times, start)


def capture_only(path: Path) -> dict:
    start = time.perf_counter()
    source = VideoFileSource(SourceConfig(spec=str(path), mode="lossless"))
    times = []
    with CaptureThread(source) as capture:
        for _ in capture.frames(threading.Event()):
            times.append(time.perf_counter())
    return _rate(times, start)


def pipeline_segmentation_off(path: Path) -> dict:
    """The real pipeline, segmentation off, publisher off: every frame rendered, once."""
    cfg = load_config(None, ["segment.enabled=false", "publish.endpoint=null"],
                      source__spec=str(path), source__mode="lossless")
    times: list[float] = []
    start = time.perf_counter()
    pipeline = Pipeline(cfg, on_frame=lambda _: times.append(time.perf_counter()))
    result = pipeline.run()
    assert result.frames_out == len(times), "on_frame missed rendered frames"
    assert result.dropped == 0, f"lossless replay dropped {result.dropped} frames"
    return _rate(times, start)


# ------------------------------------------------------------------ live latency


def zero_latency_stream(path: Path, frames: int) -> bytes:
    """The clip's first frames re-encoded as a live encoder sends them (MPEG-TS, H.264
    tune zerolatency: no B-frames, no lookahead)."""
    out = io.BytesIO()
    with av.open(str(path)) as src, av.open(out, "w", format="mpegts") as dst:
        stream = dst.add_stream("libx264", rate=int(LIVE_FPS))
        stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
        stream.options = {"preset": "ultrafast", "tune": "zerolatency", "g": "30",
                          "crf": "23"}
        for i, frame in enumerate(src.decode(video=0)):
            if i >= frames:
                break
            frame.pts, frame.time_base = i, Fraction(1, int(LIVE_FPS))
            for packet in stream.encode(frame.reformat(format="yuv420p")):
                dst.mux(packet)
        for packet in stream.encode():
            dst.mux(packet)
    return out.getvalue()


def live_latency(data: bytes, thread_type: str, low_delay: bool) -> dict:
    """Packets released at 30 fps; ms from a packet's release to its frame in RGB.
    `low_delay` is FFmpeg's AV_CODEC_FLAG_LOW_DELAY, which the network source sets (and
    which makes FFmpeg use slice threads where frame threads were asked for)."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.size]
    codec = av.CodecContext.create("h264", "r")
    codec.extradata = stream.codec_context.extradata
    codec.thread_type = thread_type
    codec.thread_count = 0
    if low_delay:
        codec.options = {"flags": "+low_delay"}
    released: dict[int, float] = {}
    latency = []
    in_flight = 0
    start = time.perf_counter()
    for k, packet in enumerate(packets):
        delay = start + k / LIVE_FPS - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        released[packet.pts] = time.perf_counter()
        frames = codec.decode(packet)
        for frame in frames:
            frame.to_ndarray(format="rgb24")
            latency.append((time.perf_counter() - released.pop(frame.pts)) * 1e3)
        in_flight = max(in_flight, len(released))
    codec.decode(None)  # flush; frames held to the end are not live frames
    return {**stats(np.asarray(latency[5:])), "max_frames_in_flight": in_flight}


# ------------------------------------------------------------------ run


def run(clip: Path, repeats: int, live_frames: int) -> dict:
    lossless_type = DECODER_DEFAULTS["lossless"][0].upper()
    rows = {
        "raw PyAV decode + RGB, thread_type NONE": lambda: raw_decode(clip, "NONE"),
        f"raw PyAV decode + RGB, thread_type {lossless_type}": lambda: raw_decode(
            clip, lossless_type),
        "file source + capture thread (lossless)": lambda: capture_only(clip),
        PIPELINE_ROW: lambda: pipeline_segmentation_off(clip),
    }
    raw_decode(clip, lossless_type)  # warm-up: page cache, codec init, allocator
    runs: dict[str, list[dict]] = {name: [] for name in rows}
    for _ in range(repeats):  # interleaved: a busy moment hits every row alike
        for name, fn in rows.items():
            runs[name].append(fn())
    counts = {name: {r["frames"] for r in results} for name, results in runs.items()}
    assert len(set().union(*counts.values())) == 1, f"rows saw different frames: {counts}"
    throughput = {}
    for name, results in runs.items():
        best = sorted(results, key=lambda r: r["fps"])[len(results) // 2]  # the median run
        throughput[name] = {**best, "fps_runs": [r["fps"] for r in results]}
    # Overhead from each repeat's pair (raw, then the pipeline moments later), the median
    # over repeats: on a shared machine a pair sees the same load, two medians may not.
    raw_runs = runs[f"raw PyAV decode + RGB, thread_type {lossless_type}"]
    pipeline_runs = runs[PIPELINE_ROW]
    overhead = float(np.median([1 - p["fps"] / r["fps"]
                                for r, p in zip(raw_runs, pipeline_runs, strict=True)]))

    data = zero_latency_stream(clip, live_frames)
    live = {f"{t}{' + low_delay' if low else ''}": live_latency(data, t, low)
            for t, low in (("NONE", False), ("SLICE", False), ("FRAME", False),
                           ("AUTO", False), ("AUTO", True))}
    return {
        "clip": {"path": str(clip), "frames": throughput[next(iter(throughput))]["frames"],
                 "size": "1920x1080", "codec": "h264 (write_video: libx264 veryfast crf 18)"},
        "repeats": repeats,
        "throughput": throughput,
        "capture_overhead": overhead,
        "targets": {f"capture overhead <= {TARGET_OVERHEAD:.0%}": bool(
            overhead <= TARGET_OVERHEAD)},
        "live_latency_ms": live,
        "live_frames": live_frames,
        "decoder_defaults": {k: list(v) for k, v in DECODER_DEFAULTS.items()},
        "pyav": av.__version__,
        "libavcodec": ".".join(map(str, av.library_versions["libavcodec"])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length to make")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--live-frames", type=int, default=90)
    parser.add_argument("--clip", type=Path, help="a 1080p H.264 clip (default: made once)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's allocator as it is (no keep_frame_memory)")
    args = parser.parse_args()
    logger.remove()  # each pipeline run logs its start and end at INFO: keep the table readable
    logger.add(sys.stderr, level="WARNING")
    # Process-wide, so set (or not) before anything runs, for every row alike.
    allocator = "default" if args.default_malloc or not keep_frame_memory() else (
        "keep_frame_memory (glibc mmap threshold 64 MiB, trim threshold 256 MiB)")
    clip = args.clip or make_clip(args.out / f"replay_1080p_{args.seconds:g}s.mp4",
                                  args.seconds)
    r = run(clip, args.repeats, args.live_frames)
    r["allocator"] = allocator
    print(f"Lossless replay of {r['clip']['frames']} frames, {r['clip']['size']} H.264 "
          f"(median of {r['repeats']} interleaved runs; allocator: {allocator})")
    rows = [{"what": k, **v, "runs": " ".join(f"{x:.0f}" for x in v["fps_runs"])}
            for k, v in r["throughput"].items()]
    print(table(rows, [("what", "", "s"), ("fps", "frames/s", ".1f"), ("runs", "runs", "s"),
                       ("p50", "p50 ms", ".2f"), ("p99", "p99 ms", ".2f"),
                       ("max", "max ms", ".1f"), ("first_ms", "first frame after ms", ".0f")]))
    for name, ok in r["targets"].items():
        print(f"  capture overhead {r['capture_overhead']:+.1%} of raw decode (median over "
              f"repeats of 1 - pipeline/raw); {name}: {'met' if ok else 'MISSED'}")
    print(f"\nLive decode latency, {r['live_frames']} zero-latency 1080p packets at "
          f"{LIVE_FPS:g} fps (packet arrival -> RGB frame)")
    rows = [{"what": k, **v} for k, v in r["live_latency_ms"].items()]
    print(table(rows, [("what", "thread_type", "s"), ("p50", "p50 ms", ".1f"),
                       ("p95", "p95 ms", ".1f"), ("p99", "p99 ms", ".1f"),
                       ("max", "max ms", ".1f"),
                       ("max_frames_in_flight", "frames in flight", "d")]))
    path = write_json(args.out / "replay.json", {"machine": machine(), **r})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
