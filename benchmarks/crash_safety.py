"""Crash safety of a recording: `orstream run --record` SIGKILLed at random moments, and
what a player gets from every file it leaves.

    python -m orstream.benchmarks.crash_safety [--kills 20] [--rotate-s 2] [--seed 0]
                                               [--small] [--out DIR]

Each kill launches a fresh `orstream run --record DIR/rec.mp4 --set record.rotate_s=R`
(the default config: synthetic 1080p30 with its timecode, shipped weights, the VLM;
`--small`: 640x360, no model, no VLM) and SIGKILLs it at a moment of one of four kinds,
taken in turn, each at a random offset from what the process logs (read as it comes):

- start-up: a random time from launch to shortly after the recorder opened its first file
  in earlier runs: before any file exists, or in its first frames;
- first file: just after the recorder opened its first file (its first 1/15 s is the window
  where a file holds a header and at most one frame);
- rotation: from 0.1 s before to 0.15 s after a file's rotate_s boundary: while it closes,
  while the next one opens, and in that one's first frames;
- recording: anywhere in the first three files.

Then every file the kill left is judged (what the issue asks of each):

- it opens and decodes with PyAV (frames up to the first error: a fragment cut by the kill);
- the timecode the synthetic source burns into each frame (pipeline/timecode.py) gives the
  frame's seq and capture time: seqs increase across the files in name order, no span
  between two recorded frames (within a file or across a rotation) is over 1 s, and the
  last recorded frame was captured within 1 s of the kill (CLOCK_MONOTONIC is one clock
  for the whole host). Where no file exists, the recorder must not have opened more than
  1 s before the kill;
- `orstream replay FILE --mode lossless` (no model, no VLM: the replay's reading of the
  file is what is judged) exits 0 having replayed every frame PyAV decoded.

Files named ``*.part`` are files killed before their first frame was on disk (the recorder
renames a file only once it plays); they are counted, not judged.

Writes crash_safety.json to --out and prints a table. tests/test_recording_faults.py runs the
same kills, fewer and smaller, in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from orstream.common.net import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
ORSTREAM = [sys.executable, "-m", "orstream.pipeline.cli"]
KINDS = ("start-up", "first file", "rotation", "recording")
WITHIN_S = 1.0  # the issue: playable up to within 1 s of the kill
SMALL = ["--set", "source.width=640", "--set", "source.height=360",
         "--set", "segment.enabled=false", "--set", "describe.enabled=false"]
# "recorder /path/rec-0001.mp4: 640x360 at ..." (opened) or ": closed after N frames"
_RECORDER_LINE = re.compile(rb"recorder (\S+): (closed after|\d+x\d+ at)")
_REPLAYED = re.compile(r": (\d+) frames replayed in")


@dataclass
class Launch:
    """A running `orstream run --record`, its stderr read (and timestamped) as it comes."""

    proc: subprocess.Popen
    t_launch_ns: int
    publish: str  # where its frames go out (--port-base on a free port)
    opened: list[tuple[int, str]] = field(default_factory=list)  # (monotonic ns, file)
    closed: list[tuple[int, str]] = field(default_factory=list)
    lines: list[tuple[int, str]] = field(default_factory=list)  # (monotonic ns, line)
    changed: threading.Condition = field(default_factory=threading.Condition)
    ended: bool = False


def launch(record: Path, rotate_s: float, extra: list[str],
           prefix: list[str] | None = None) -> Launch:
    """`orstream run --record` on a free --port-base, never the live 5600/5601; `prefix`:
    a command that execs it (in the same process: its pid is the pipeline's)."""
    port = free_port()
    cmd = [*(prefix or []), *ORSTREAM, "run", "--record", str(record),
           "--set", f"record.rotate_s={rotate_s}", "--port-base", str(port), *extra]
    # Its own session: the VLM's worker process goes with it in kill_group().
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    run = Launch(proc, time.monotonic_ns(), f"tcp://127.0.0.1:{port}")

    def read() -> None:  # also keeps the pipe drained
        for line in proc.stderr:  # type: ignore[union-attr]
            now = time.monotonic_ns()
            match = _RECORDER_LINE.search(line)
            with run.changed:
                if match:
                    events = run.closed if match.group(2) == b"closed after" else run.opened
                    events.append((now, Path(match.group(1).decode()).name))
                run.lines.append((now, line.decode(errors="replace").rstrip()))
                run.changed.notify_all()
        with run.changed:
            run.ended = True
            run.changed.notify_all()

    threading.Thread(target=read, daemon=True).start()
    return run


def wait_for(run: Launch, events: str, count: int, timeout_s: float = 120.0) -> int | None:
    """Monotonic ns of the `count`-th `events` ('opened' or 'closed') line, or None if the
    process ended or `timeout_s` passed first."""
    deadline = time.monotonic() + timeout_s
    with run.changed:
        while len(getattr(run, events)) < count:
            left = deadline - time.monotonic()
            if run.ended or left <= 0:
                return None
            run.changed.wait(left)
        return getattr(run, events)[count - 1][0]


def wait_line(run: Launch, pattern: str, timeout_s: float = 120.0) -> int | None:
    """Monotonic ns of the first stderr line matching `pattern`, or None if the process
    ended or `timeout_s` passed first."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout_s
    with run.changed:
        while True:
            found = [t for t, line in run.lines if regex.search(line)]
            left = deadline - time.monotonic()
            if found or run.ended or left <= 0:
                return found[0] if found else None
            run.changed.wait(left)


def kill_group(run: Launch) -> None:
    """What is left of the launch's session (the VLM worker) goes too, and is reaped."""
    # Before the wait: the unreaped pipeline keeps its pid, so the group cannot be another's.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(run.proc.pid, signal.SIGKILL)
    run.proc.wait()


def sleep_until(t_ns: int) -> None:
    delay = (t_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        time.sleep(delay)


def kill_at(run: Launch, kind: str, rng: np.random.Generator, rotate_s: float,
            startup_s: float) -> tuple[int | None, str]:
    """SIGKILL the pipeline at a random moment of `kind`. (monotonic ns of the kill or None
    if the moment never came, what it was aimed at)."""
    if kind == "start-up":
        offset = rng.uniform(0.1, startup_s + 0.3)
        anchor: int | None = run.t_launch_ns
        aim = f"{offset:.2f} s after launch"
    elif kind == "first file":
        offset = rng.uniform(0.0, 0.12)
        anchor = wait_for(run, "opened", 1)
        aim = f"{offset * 1e3:.0f} ms after file 1 opened"
    elif kind == "rotation":
        # Around the moment file `number` ends: the recording's time runs from its first
        # frame, which the recorder logs opening; pipeline latency puts the real boundary a
        # few ms later. From 0.1 s before to 0.15 s after: while the old file is closing,
        # the new one opening, and in the new one's first frames.
        number = int(rng.integers(1, 3))
        offset = number * rotate_s + rng.uniform(-0.1, 0.15)
        anchor = wait_for(run, "opened", 1)
        aim = f"{(offset - number * rotate_s) * 1e3:+.0f} ms from file {number}'s end"
    else:
        offset = rng.uniform(0.2, 3 * rotate_s)
        anchor = wait_for(run, "opened", 1)
        aim = f"{offset:.2f} s after file 1 opened"
    if anchor is None:
        return None, aim
    sleep_until(anchor + int(offset * 1e9))
    t_kill = time.monotonic_ns()
    run.proc.send_signal(signal.SIGKILL)  # the pipeline only: no close(), no trailer
    return t_kill, aim


def decoded(path: Path) -> tuple[list[tuple[int, int] | None], bool]:
    """([(seq, capture ns) from each decodable frame's timecode, None where it does not
    read], whether decoding stopped at an error: the fragment the kill cut)."""
    import av

    from orstream.pipeline import timecode

    codes: list[tuple[int, int] | None] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        try:
            for packet in container.demux(stream):
                for frame in packet.decode():
                    code = timecode.read(frame.to_ndarray(format="rgb24"))
                    codes.append((code.seq, code.t_capture_ns) if code else None)
        except av.FFmpegError:
            return codes, True
    return codes, False


def file_summary(path: Path) -> str:
    """A file's size and its first top-level MP4 boxes: what a failure to open it reports,
    so that a recording that does not play says how it is broken (cut in its header, empty,
    or not an MP4 at all)."""
    data = path.read_bytes()
    boxes, offset = [], 0
    while offset + 8 <= len(data) and len(boxes) < 6:
        size = int.from_bytes(data[offset:offset + 4], "big")
        boxes.append(f"{data[offset + 4:offset + 8].decode('latin-1')!r}:{size}")
        if size < 8:
            break
        offset += size
    return f"{path.name}: {len(data)} bytes, boxes {' '.join(boxes) or 'none'}, " \
           f"starts {data[:16].hex()}"


def replay_cli(path: Path) -> tuple[int, int | None]:
    """`orstream replay path --mode lossless` without model or VLM: (exit code, frames it
    says it replayed)."""
    done = subprocess.run([*ORSTREAM, "replay", str(path), "--mode", "lossless", "--publish",
                           "null", "--port-base", str(free_port()), "--set",
                           "segment.enabled=false", "--set", "describe.enabled=false"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    return done.returncode, replayed_frames(done.stderr)


def replayed_frames(log: str) -> int | None:
    """The frame count of the file source's closing line in a replay's log."""
    found = _REPLAYED.findall(log)
    return int(found[-1]) if found else None


def recording_files(folder: Path, stem: str) -> tuple[list[Path], list[Path]]:
    """(the recording's files in name order, its .part files)."""
    files = sorted(p for p in folder.glob(f"{stem}*") if p.suffix in (".mp4", ".ts"))
    return files, sorted(folder.glob(f"{stem}*.part"))


def judge(folder: Path, stem: str, t_kill_ns: int, opened_ns: int | None,
          replay=replay_cli) -> dict:
    """Everything the kill left in `folder`, judged as the module docstring says."""
    files, parts = recording_files(folder, stem)
    rows, codes = [], []
    for path in files:
        try:
            frame_codes, cut = decoded(path)
            error = None
        except Exception as exc:  # noqa: BLE001 - any failure to open is the finding
            frame_codes, cut, error = [], False, f"{type(exc).__name__}: {exc}"
        code, replayed = replay(path) if error is None else (None, None)
        readable = [c for c in frame_codes if c is not None]
        rows.append({"file": path.name, "bytes": path.stat().st_size,
                     "frames": len(frame_codes), "unreadable_timecodes":
                     len(frame_codes) - len(readable), "cut_tail": cut, "open_error": error,
                     "first_seq": readable[0][0] if readable else None,
                     "last_seq": readable[-1][0] if readable else None,
                     "replay_exit": code, "replay_frames": replayed})
        codes += readable
    seqs = [s for s, _ in codes]
    times = [t for _, t in codes]
    gaps = np.diff(times) / 1e9 if len(times) > 1 else np.zeros(0)
    lag_s = (t_kill_ns - times[-1]) / 1e9 if times else None
    opened_s = (t_kill_ns - opened_ns) / 1e9 if opened_ns is not None else None
    checks = {
        "every_file_plays": all(r["open_error"] is None and r["frames"] >= 1 for r in rows),
        "seq_increases": all(b > a for a, b in zip(seqs, seqs[1:], strict=False)),
        "no_gap_over_1s": bool(gaps.size == 0 or gaps.max() <= WITHIN_S),
        "last_frame_within_1s": (lag_s <= WITHIN_S if lag_s is not None
                                 else opened_s is None or opened_s <= WITHIN_S),
        "replay_plays_to_the_end": all(r["replay_exit"] == 0 and r["replay_frames"] ==
                                       r["frames"] for r in rows),
    }
    return {"files": rows, "part_files": [p.name for p in parts],
            "frames": sum(r["frames"] for r in rows), "lag_s": lag_s,
            "max_gap_s": float(gaps.max()) if gaps.size else None,
            "recorder_opened_before_kill_s": opened_s, "checks": checks,
            "ok": all(checks.values())}


def one_kill(folder: Path, kind: str, rng: np.random.Generator, rotate_s: float,
             startup_s: float, extra: list[str], replay=replay_cli) -> dict:
    """Launch, kill at a moment of `kind`, judge what is left in `folder` (made empty)."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():
        stale.unlink()
    run = launch(folder / "rec.mp4", rotate_s, extra)
    try:
        t_kill, aim = kill_at(run, kind, rng, rotate_s, startup_s)
    finally:
        kill_group(run)
    row = {"kind": kind, "aim": aim,
           "killed_after_launch_s": (t_kill - run.t_launch_ns) / 1e9 if t_kill else None,
           "files_opened": sum(1 for t, _ in run.opened if t_kill and t < t_kill),
           "files_closed": sum(1 for t, _ in run.closed if t_kill and t < t_kill),
           "startup_s": (run.opened[0][0] - run.t_launch_ns) / 1e9 if run.opened else None}
    if t_kill is None:  # the moment never came: the pipeline died or never recorded
        return {**row, "ok": False, "checks": {"moment_reached": False},
                "log_tail": [line for _, line in run.lines[-20:]]}
    opened = run.opened[0][0] if run.opened and run.opened[0][0] < t_kill else None
    return {**row, **judge(folder, "rec", t_kill, opened, replay)}


def run(kills: int, rotate_s: float, seed: int, small: bool, out: Path) -> dict:
    rng = np.random.default_rng(seed)
    extra = SMALL if small else []
    rows: list[dict] = []
    for i in range(kills):
        # start-up kills aim from launch to just past where earlier runs opened the file
        seen = [r["startup_s"] for r in rows if r.get("startup_s")]
        startup_s = float(np.median(seen)) if seen else (1.0 if small else 3.0)
        row = one_kill(out / f"kill-{i:02d}", KINDS[i % len(KINDS)], rng, rotate_s,
                       startup_s, extra)
        rows.append({"kill": i, **row})
        failed = [k for k, ok in row["checks"].items() if not ok]
        print(f"kill {i:2d} {row['kind']:<10} ({row['aim']}): {len(row.get('files', []))} "
              f"files, {len(row.get('part_files', []))} .part, {row.get('frames', 0)} frames, "
              f"lag {_fmt(row.get('lag_s'))} s: {'ok' if row['ok'] else f'FAIL {failed}'}",
              flush=True)
    lags = [r["lag_s"] for r in rows if r.get("lag_s") is not None]
    summary = {"kills": len(rows), "ok": sum(r["ok"] for r in rows),
               "files_judged": sum(len(r.get("files", [])) for r in rows),
               "part_files": sum(len(r.get("part_files", [])) for r in rows),
               "lag_s_median": float(np.median(lags)) if lags else None,
               "lag_s_max": float(max(lags)) if lags else None,
               "kills_by_kind": {k: sum(r["kind"] == k for r in rows) for k in KINDS}}
    return {"summary": summary, "targets": {"every_kill_ok": summary["ok"] == len(rows)},
            "config": {"kills": kills, "rotate_s": rotate_s, "seed": seed,
                       "pipeline": "640x360, no model, no VLM" if small
                       else "orstream run (default config)", "within_s": WITHIN_S},
            "kills": rows}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    from orstream.benchmarks.common import machine, table, write_json

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--rotate-s", type=float, default=2.0,
                        help="record.rotate_s of the killed pipelines")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--small", action="store_true",
                        help="640x360 without model and VLM (as the CI test)")
    parser.add_argument("--out", type=Path, default=Path("bench-out/crash_safety"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    result = run(args.kills, args.rotate_s, args.seed, args.small, args.out.resolve())
    result["machine"] = machine()
    table_rows = [{**r, "files_n": len(r.get("files", [])),
                   "parts_n": len(r.get("part_files", [])),
                   "replays": sum(f["replay_exit"] == 0 for f in r.get("files", [])),
                   "verdict": "ok" if r["ok"] else "FAIL"} for r in result["kills"]]
    print()
    print(table(table_rows, [
        ("kill", "kill", "d"), ("kind", "moment", "s"), ("aim", "aimed at", "s"),
        ("killed_after_launch_s", "killed after launch s", ".2f"),
        ("files_n", "files", "d"), ("parts_n", ".part", "d"), ("frames", "frames", "d"),
        ("lag_s", "kill - last frame s", ".3f"), ("max_gap_s", "largest gap s", ".3f"),
        ("replays", "replays exit 0", "d"), ("verdict", "verdict", "s")]))
    s = result["summary"]
    print(f"\n{s['ok']} of {s['kills']} kills ok; {s['files_judged']} files judged, "
          f"{s['part_files']} .part; kill - last frame median {_fmt(s['lag_s_median'])} s, "
          f"max {_fmt(s['lag_s_max'])} s")
    print(write_json(args.out / "crash_safety.json", result))
    return 0 if result["targets"]["every_kill_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
