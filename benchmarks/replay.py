"""Replay capture overhead and decoder threading, against raw PyAV decode of the same file.

    python -m benchmarks.replay [--seconds 10] [--repeats 3] [--live-frames 90]
                                [--clip PATH] [--out benchmarks/results]

All in one run, on one 1080p H.264 clip made by the project's synthetic writer
(`training.synth.writers.write_video`, cached next to the results):

1. Throughput, frames/s, every frame decoded and converted to RGB (lossless replay):
   - raw PyAV decode + `to_ndarray("rgb24")`, single-threaded and with frame threading;
   - the lossless file source through the capture thread (what `orstream replay --mode
     lossless` runs before segmentation);
   - the same plus the capture->segment edge (Frame, trace stamp, inproc lossless hop) into
     a consumer that does nothing: lossless replay with segmentation switched off.
   Rows are interleaved and repeated; the median of the repeats is reported. Target: the
   capture path within 10 % of raw decode with the same threading.
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

# Run as a file, this folder comes first on sys.path and benchmarks/pipeline.py would shadow
# the `pipeline` package: take the folder off (`python -m benchmarks.replay` needs no help).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import av  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import machine, stats, table, write_json  # noqa: E402
from pipeline.capture import CaptureThread  # noqa: E402
from pipeline.config import SourceConfig  # noqa: E402
from pipeline.runner import _frame_of  # noqa: E402
from pipeline.sources import DECODER_DEFAULTS, VideoFileSource  # noqa: E402
from pipeline.transport import Receiver, Sender  # noqa: E402

TARGET_OVERHEAD = 0.10
LIVE_FPS = 30.0


def make_clip(path: Path, seconds: float) -> Path:
    from training.synth.writers import write_video

    if path.is_file():
        return path
    return write_video(path, seconds=seconds, width=1920, height=1080, fps=30.0, seed=0)


def _rate(times: list[float], start: float) -> dict:
    """Frames/s over the whole pass and the per-frame interval distribution (ms)."""
    gaps = np.diff([start, *times]) * 1e3
    return {"frames": len(times), "fps": len(times) / (times[-1] - start), **stats(gaps)}


# ------------------------------------------------------------------ throughput rows


def raw_decode(path: Path, thread_type: str) -> dict:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_type = thread_type
        stream.codec_context.thread_count = 0
        times = []
        start = time.perf_counter()
        for frame in container.decode(stream):
            frame.to_ndarray(format="rgb24")
            times.append(time.perf_counter())
    return _rate(times, start)


def capture_only(path: Path) -> dict:
    source = VideoFileSource(SourceConfig(spec=str(path), mode="lossless"))
    times = []
    start = time.perf_counter()  # includes opening the file, as a replay does
    with CaptureThread(source) as capture:
        for _ in capture.frames(threading.Event()):
            times.append(time.perf_counter())
    return _rate(times, start)


def capture_and_edge(path: Path) -> dict:
    """The runner's capture loop, segmentation off: every frame becomes a Frame, is stamped
    and crosses the capture->segment edge (inproc, lossless) to a consumer that drops it."""
    endpoint = "inproc://bench-replay-capture"
    receiver = Receiver(endpoint, "lossless", name="null", bind=True)
    sender = Sender(endpoint, "lossless", bind=False)
    source = VideoFileSource(SourceConfig(spec=str(path), mode="lossless"))
    times: list[float] = []
    done = threading.Event()

    def consume() -> None:
        while True:
            if receiver.recv(timeout_ms=20) is not None:
                times.append(time.perf_counter())
            elif done.is_set():
                return  # the producer has finished and the edge is drained

    consumer = threading.Thread(target=consume)
    consumer.start()
    start = time.perf_counter()
    try:
        with CaptureThread(source) as capture:
            for item in capture.frames(threading.Event()):
                frame = _frame_of("bench", item)
                frame.stamp("capture", frame.t_capture_ns)
                while not sender.send(frame):
                    pass
    finally:
        done.set()
        consumer.join()
        sender.close()
        receiver.close()
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
        "... + capture->segment edge, segmentation off": lambda: capture_and_edge(clip),
    }
    raw_decode(clip, lossless_type)  # warm-up: page cache, codec init, allocator
    runs: dict[str, list[dict]] = {name: [] for name in rows}
    for _ in range(repeats):  # interleaved: a busy moment hits every row alike
        for name, fn in rows.items():
            runs[name].append(fn())
    throughput = {}
    for name, results in runs.items():
        best = sorted(results, key=lambda r: r["fps"])[len(results) // 2]  # the median run
        throughput[name] = {**best, "fps_runs": [r["fps"] for r in results]}
    raw = throughput[f"raw PyAV decode + RGB, thread_type {lossless_type}"]["fps"]
    pipeline = throughput["... + capture->segment edge, segmentation off"]["fps"]
    overhead = 1 - pipeline / raw

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
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length to make")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--live-frames", type=int, default=90)
    parser.add_argument("--clip", type=Path, help="a 1080p H.264 clip (default: made once)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    clip = args.clip or make_clip(args.out / f"replay_1080p_{args.seconds:g}s.mp4",
                                  args.seconds)
    r = run(clip, args.repeats, args.live_frames)
    print(f"Lossless replay of {r['clip']['frames']} frames, {r['clip']['size']} H.264 "
          f"(median of {r['repeats']} interleaved runs)")
    rows = [{"what": k, **v, "runs": " ".join(f"{x:.0f}" for x in v["fps_runs"])}
            for k, v in r["throughput"].items()]
    print(table(rows, [("what", "", "s"), ("fps", "frames/s", ".1f"), ("runs", "runs", "s"),
                       ("p50", "p50 ms", ".2f"), ("p99", "p99 ms", ".2f"),
                       ("max", "max ms", ".1f")]))
    for name, ok in r["targets"].items():
        print(f"  capture overhead {r['capture_overhead']:+.1%} of raw decode; {name}: "
              f"{'met' if ok else 'MISSED'}")
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
