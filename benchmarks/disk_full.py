"""A recording onto a disk that fills: `orstream run --record` on a small tmpfs.

    python -m orstream.benchmarks.disk_full [--size-mb 4] [--after-s 5] [--small] [--out DIR]

Runs the default config (`--small`: 640x360, no model, no VLM) recording onto a tmpfs of
--size-mb (the kernel's own ENOSPC) with a display subscribed to its publisher, and waits
for the disk to fill. The tmpfs is mounted in the pipeline's own mount namespace (`unshare
--user --map-root-user --mount`): no root needed where the kernel lets users make
namespaces, nothing to unmount, and nothing else on the host sees it; the file is read
through /proc/PID/root while the pipeline lives. Then, for --after-s seconds, the pipeline must
go on: the display keeps receiving frames at the rate it did before; then SIGINT must stop
it with exit 1, the status that tells a script its recording is incomplete. Measured and
judged:

- the error lines the process printed (the target: one, naming the file and the cause);
- the display's frame rate in the --after-s seconds before and after the disk filled;
- the recording: frames PyAV decodes, seconds it plays, and how long before the error line
  its last frame was captured (the timecode in its pixels; the target: within 1 s);
- `orstream replay` of the file: exit 0 with every frame PyAV decoded.

Writes disk_full.json to --out and prints a table. tests/test_recording_faults.py is the
bounded CI version.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq

from orstream.benchmarks import crash_safety
from orstream.pipeline import wire

# In the new namespace: the tmpfs over $2, then a ballast file of $3 bytes, then the command.
_MOUNT = ('mount -t tmpfs -o size="$1" tmpfs "$2" && '
          '{ [ "$3" -eq 0 ] || head -c "$3" /dev/zero > "$2/ballast"; } && shift 3 && exec "$@"')


def small_disk(folder: Path, size_bytes: int, free_bytes: int | None = None) -> list[str]:
    """A command prefix under which `folder` is a tmpfs of `size_bytes`, all but `free_bytes`
    of it taken by a ballast file (None: empty). What follows execs in the same process."""
    ballast = size_bytes - free_bytes if free_bytes is not None else 0
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", _MOUNT, "sh",
            str(size_bytes), str(folder), str(ballast)]


def small_disk_unavailable(folder: Path) -> str | None:
    """Why small_disk() cannot work on this host, or None when it can."""
    if shutil.which("unshare") is None:
        return "no unshare (util-linux) to make a mount namespace"
    done = subprocess.run([*small_disk(folder, 1 << 20), "true"], capture_output=True,
                          text=True)
    if done.returncode != 0:
        return (f"cannot mount a tmpfs in a user namespace here: "
                f"{done.stderr.strip() or f'exit {done.returncode}'}")
    return None


def seen_by(pid: int, path: Path) -> Path:
    """`path` as the process `pid` sees it (in its own mount namespace)."""
    return Path(f"/proc/{pid}/root{path.resolve()}")


def display(endpoint: str, received: list[tuple[int, int]],
            stop: threading.Event) -> threading.Thread:
    """A subscriber appending (seq, monotonic ns at receipt) of each frame published."""
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)

    def loop() -> None:
        try:
            while not stop.is_set():
                if sub.poll(100):
                    frame = wire.decode(sub.recv_multipart())
                    received.append((frame.seq, time.monotonic_ns()))
        finally:
            sub.close(0)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def measure(folder: Path, size_bytes: int, after_s: float, extra: list[str],
            kept: Path) -> dict:
    """Record onto a `size_bytes` tmpfs over `folder` until it fills; the file is copied to
    `kept` (before the pipeline, and its namespace, go)."""
    received: list[tuple[int, int]] = []
    stop = threading.Event()
    run = crash_safety.launch(folder / "rec.mp4", 0, extra, small_disk(folder, size_bytes))
    viewer = display(run.publish, received, stop)
    try:
        t_full = crash_safety.wait_line(run, "recording stopped", timeout_s=300)
        if t_full is not None:
            time.sleep(after_s)
        alive = run.proc.poll() is None
        if alive and t_full is not None:
            shutil.copyfile(seen_by(run.proc.pid, folder / "rec.mp4"), kept)
        run.proc.send_signal(signal.SIGINT)
        try:
            code = run.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            code = None
    finally:
        stop.set()
        viewer.join(5)
        crash_safety.kill_group(run)
    log = [line for _, line in run.lines]
    if t_full is None:
        return {"ok": False, "error": "the disk never filled, or the pipeline died",
                "log_tail": log[-20:]}
    errors = [line for line in log if "ERROR" in line or "Traceback" in line
              or "No space" in line]
    window = int(after_s * 1e9)
    before = sum(t_full - window <= t < t_full for _, t in received) / after_s
    after = sum(t_full <= t < t_full + window for _, t in received) / after_s
    if not kept.exists():
        return {"ok": False, "error": "the pipeline exited when the disk filled",
                "exit_code": code, "log_tail": log[-20:]}
    codes, cut = crash_safety.decoded(kept)
    times = [c[1] for c in codes if c is not None]
    replay_exit, replayed = crash_safety.replay_cli(kept)
    row = {
        "full_after_launch_s": (t_full - run.t_launch_ns) / 1e9,
        "error_lines": len(errors), "error_line": errors[0] if errors else None,
        "alive_after_s": after_s if alive else None, "exit_code": code,
        "display_fps_before": before, "display_fps_after": after,
        "recorded_frames": len(codes), "cut_tail": cut,
        "recorded_s": (times[-1] - times[0]) / 1e9 if len(times) > 1 else 0.0,
        "last_frame_before_error_s": (t_full - times[-1]) / 1e9 if times else None,
        "replay_exit": replay_exit, "replay_frames": replayed,
    }
    checks = {
        "one_error_line": len(errors) == 1 and "No space left on device" in errors[0],
        # Alive after the disk filled, and on Ctrl-C it exits 1: the recording is incomplete
        # (pipeline/cli.py says so in its last line), which a script must be able to see.
        "pipeline_went_on": alive and code == 1,
        "display_kept_its_rate": after >= 0.8 * before > 0,
        "file_plays_to_within_1s": row["last_frame_before_error_s"] is not None
        and row["last_frame_before_error_s"] <= crash_safety.WITHIN_S,
        "replay_plays_to_the_end": replay_exit == 0 and replayed == len(codes),
    }
    return {**row, "checks": checks, "ok": all(checks.values())}


def main(argv: list[str] | None = None) -> int:
    from orstream.benchmarks.common import machine, table, write_json

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=4.0, help="the tmpfs's size")
    parser.add_argument("--after-s", type=float, default=5.0,
                        help="how long the pipeline must go on after the disk filled")
    parser.add_argument("--small", action="store_true",
                        help="640x360 without model and VLM (as the CI test)")
    parser.add_argument("--out", type=Path, default=Path("bench-out/disk_full"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="orstream-disk-full-") as tmp:
        folder = Path(tmp) / "disk"
        folder.mkdir()
        why = small_disk_unavailable(folder)
        if why is not None:
            print(why, file=sys.stderr)
            return 2
        row = measure(folder, int(args.size_mb * 2**20), args.after_s,
                      crash_safety.SMALL if args.small else [], Path(tmp) / "rec.mp4")
    result = {"machine": machine(), "result": row,
              "config": {"size_mb": args.size_mb, "after_s": args.after_s,
                         "pipeline": "640x360, no model, no VLM" if args.small
                         else "orstream run (default config)"}}
    print(table([row], [
        ("full_after_launch_s", "disk full after launch s", ".2f"),
        ("error_lines", "error lines", "d"),
        ("display_fps_before", "display fps before", ".1f"),
        ("display_fps_after", "display fps after", ".1f"),
        ("recorded_frames", "frames recorded", "d"), ("recorded_s", "seconds", ".2f"),
        ("last_frame_before_error_s", "last frame before the error s", ".3f"),
        ("replay_exit", "replay exit", "d"), ("exit_code", "SIGINT exit", "d")]))
    if row.get("error_line"):
        print(f"\nthe error line: {row['error_line']}")
    for name, ok in row.get("checks", {}).items():
        print(f"{name}: {'PASS' if ok else 'FAIL'}")
    args.out.mkdir(parents=True, exist_ok=True)
    print(write_json(args.out / "disk_full.json", result))
    return 0 if row["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
