"""Start and stop of `orstream run` as the operating room lives them: how soon the
recording starts, what a SIGKILL leaves, how soon Ctrl-C gives the terminal back.

    python -m orstream.benchmarks.lifecycle [--runs 3] [--kill-after 5] [--stop-after 10]
                                            [--out DIR]

Each run, in this order, so that load from elsewhere hits every row alike:

- floor (the baseline, same run): a Python process that imports numpy, cv2, av and zmq
  and exits; the least any Python pipeline built on these libraries pays to start.
- first frame: launch of `orstream run --record X.mp4` (the default config: synthetic
  1080p30, shipped weights, the VLM) to the recorder opening X.mp4 on the first frame
  drawn (its log line, read as it comes).
- killed: that same process SIGKILLed --kill-after seconds after launch: the seconds of
  video X.mp4 plays (the issue: at least 4 s when killed after 5 s).
- stop: a second launch, SIGINT after --stop-after seconds: seconds until the process has
  exited, and its exit code (0: the recorder finalised, every stage stopped).

The pipelines it starts take `--port-base` on a free loopback port (publisher and ask socket)
rather than the defaults 5600/5601, so a pipeline already running here does not fail it.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from orstream.benchmarks.common import machine, table, write_json
from orstream.common.net import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
ORSTREAM = [sys.executable, "-m", "orstream.pipeline.cli"]
FLOOR_IMPORTS = "import numpy, cv2, av, zmq"
PLAYABLE_TARGET_S = 4.0  # the issue's, for a kill 5 s after launch


def floor_s() -> float:
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", FLOOR_IMPORTS], check=True, cwd=REPO_ROOT)
    return time.monotonic() - t0


def playable_s(path: Path) -> float:
    """Seconds of video a player gets from `path`: first to last decodable frame plus one
    frame period; 0 for a missing, empty or unreadable file."""
    import av

    if not path.exists() or path.stat().st_size == 0:
        return 0.0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            times = [f.time for f in container.decode(stream) if f.time is not None]
            rate = float(stream.average_rate or stream.guessed_rate or 30)
    except (av.FFmpegError, IndexError, OSError):
        return 0.0
    return (times[-1] - times[0] + 1 / rate) if times else 0.0


def first_frame_and_kill(path: Path, kill_after_s: float) -> tuple[float | None, float]:
    """(launch -> recorder open in s, or None if it never opened; playable s after SIGKILL)."""
    path.unlink(missing_ok=True)
    marker = f"recorder {path}:".encode()
    t0 = time.monotonic()
    proc = subprocess.Popen([*ORSTREAM, "run", "--record", str(path), "--port-base",
                             str(free_port())], cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    opened: list[float] = []

    def watch() -> None:  # also keeps the pipe drained
        for line in proc.stderr:  # type: ignore[union-attr]
            if not opened and marker in line:
                opened.append(time.monotonic() - t0)

    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    time.sleep(max(0.0, t0 + kill_after_s - time.monotonic()))
    proc.kill()
    proc.wait()
    reader.join(5)
    return (opened[0] if opened else None), playable_s(path)


def stop(stop_after_s: float) -> tuple[float, int]:
    """(SIGINT -> exited in s, exit code) of a default `orstream run`."""
    proc = subprocess.Popen([*ORSTREAM, "run", "--port-base", str(free_port())],
                            cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(stop_after_s)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return time.monotonic() - t0, -9
    return time.monotonic() - t0, code


def run(runs: int, kill_after_s: float, stop_after_s: float, out: Path) -> dict:
    rows = []
    for i in range(runs):
        floor = floor_s()
        first, playable = first_frame_and_kill(out / f"killed-{i}.mp4", kill_after_s)
        stop_s, code = stop(stop_after_s)
        row = {"run": i, "floor_s": floor, "first_frame_s": first,
               "first_over_floor": first / floor if first is not None else None,
               "playable_s": playable, "stop_s": stop_s, "exit_code": code}
        rows.append(row)
        print(f"run {i}: floor {floor:.2f} s, first frame "
              f"{'never' if first is None else f'{first:.2f} s'}, playable {playable:.2f} s, "
              f"stop {stop_s:.2f} s (exit {code})", flush=True)

    def median(key: str) -> float | None:
        values = [r[key] for r in rows if r[key] is not None]
        return float(np.median(values)) if values else None

    summary = {key: median(key) for key in ("floor_s", "first_frame_s", "first_over_floor",
                                             "playable_s", "stop_s")}
    targets = {}
    if kill_after_s == 5:
        targets[f"playable_s>={PLAYABLE_TARGET_S:g}"] = all(
            r["playable_s"] >= PLAYABLE_TARGET_S for r in rows)
    targets["every_stop_exit_0"] = all(r["exit_code"] == 0 for r in rows)
    return {"machine": machine(), "runs": rows, "summary": summary, "targets": targets,
            "config": {"kill_after_s": kill_after_s, "stop_after_s": stop_after_s,
                       "floor": FLOOR_IMPORTS, "command": "orstream run (default config)"}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kill-after", type=float, default=5.0,
                        help="seconds from launch to SIGKILL")
    parser.add_argument("--stop-after", type=float, default=10.0,
                        help="seconds from launch to SIGINT")
    parser.add_argument("--out", type=Path, default=Path("bench-out/lifecycle"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    result = run(args.runs, args.kill_after, args.stop_after, args.out.resolve())
    print()
    print(table(result["runs"], [
        ("run", "run", "d"), ("floor_s", "floor s", ".2f"),
        ("first_frame_s", "launch -> first frame s", ".2f"),
        ("first_over_floor", "/ floor", ".2f"),
        ("playable_s", f"playable after SIGKILL at {args.kill_after:g} s", ".2f"),
        ("stop_s", "SIGINT -> exited s", ".2f"), ("exit_code", "exit", "d")]))
    for name, ok in result["targets"].items():
        print(f"{name}: {'PASS' if ok else 'FAIL'}")
    print(write_json(args.out / "lifecycle.json", result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
