"""`orstream view`: the reference display client.

Subscribes to a publisher (latest mode: a display wants the newest frame), shows the
overlay in a window when OpenCV has GUI support and a display exists, and otherwise runs
headless: a line per second of fps, latency (capture to receipt) and drops, `--save DIR` to
keep every Nth frame as PNG, and `--json` for a summary at exit. A publisher that sends
nothing (not running, or secured and this viewer without the key: a CurveZMQ handshake that
fails is silent) or stops mid-stream is warned about after `stall_warn_s`; figures of no
frames are None (JSON null), never 0.

A publisher that is restarted under the viewer is picked up again without restarting it:
ZeroMQ reconnects by itself (heartbeats drop a connection whose peer vanished without
closing it), a new capture run (the header's `run`, seq from 0) is counted as a restart
(pipeline/continuity.py), never as frames out of order or a seq gap, and the silence it
caused is reported as a gap, as is any other silence of `stall_warn_s` or more.

`--measure` reads the timecode burnt into the picture (pipeline/timecode.py) back from the
pixels about to be shown, after the viewer's resize and colour conversion, and reports
capture to display from it: the software part of glass to glass, measured the way a camera
filming the screen would, but without the screen's own scan-out and panel delay. The
header's capture time for the same frames and display instants is kept beside it, so the two
can be compared; a code that does not read, or reads a different seq than the header's, is
counted and never becomes a latency.

orstream depends on opencv-python-headless (servers, CI and the pipeline need no GUI, and
the two OpenCV wheels cannot live in one environment). For a window, replace it:
`pip uninstall -y opencv-python-headless && pip install opencv-python`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from loguru import logger

from orstream.common.timing import LatencyHistogram
from orstream.pipeline import timecode
from orstream.pipeline.continuity import SeqTracker
from orstream.pipeline.frame import Frame
from orstream.pipeline.security import Curve
from orstream.pipeline.transport import Receiver
from orstream.pipeline.wire import DEFAULT_MAX_BYTES

Clock = Literal["monotonic", "wall"]


def has_gui() -> bool:
    """True when this OpenCV build can open windows and a display is available."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    info = cv2.getBuildInformation()
    gui_line = next((line for line in info.splitlines() if line.strip().startswith("GUI")), "")
    return "NONE" not in gui_line.upper()


STALL_WARN_S = 2.0  # as the pipeline's status.stall_warn_s: longer than any jitter or GC pause


def no_frames_message(endpoint: str, waited_s: float) -> str:
    return (f"no frames received from {endpoint} in {waited_s:.0f} s (is the publisher "
            f"running? does it need --key?)")


def _percentiles(values: list[float]) -> dict[str, float | None]:
    """p50, p99 and max; None for each when there was nothing to measure."""
    if not values:
        return {"p50": None, "p99": None, "max": None}
    lat = np.asarray(values)
    return {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
            "max": float(lat.max())}


def _histogram_percentiles(hist: LatencyHistogram) -> dict[str, float | None]:
    """As _percentiles, from a histogram (each within 0.5 %)."""
    return {"p50": hist.percentile(50), "p99": hist.percentile(99),
            "max": hist.max if hist.count else None}


@dataclass
class GlassMeter:
    """Capture to display read from the pixels shown, and the header's figure beside it.

    clock: `monotonic` compares the code's t_capture_ns with this host's CLOCK_MONOTONIC,
    valid only on the capturing host; `wall` compares t_wall_ns with CLOCK_REALTIME, valid
    across hosts only as far as their clocks agree (NTP: about a millisecond; PTP: better).
    """

    clock: Clock = "monotonic"
    latencies_ms: list[float] = field(default_factory=list)  # from the pixels
    header_ms: list[float] = field(default_factory=list)  # same frames and instants, header
    capture_diff_ms: list[float] = field(default_factory=list)  # |pixels - header| capture
    # (seq, display instant, capture time read from the pixels) per counted frame, ns on
    # `clock`: to set against the pipeline's own traces of the same frames
    samples: list[tuple[int, int, int]] = field(default_factory=list)
    unreadable: int = 0  # no code, or one that failed its checks
    seq_mismatch: int = 0  # a valid code of another frame (e.g. burnt into a replayed file)

    def add(self, frame: Frame, shown: np.ndarray, t_mono_ns: int, t_wall_ns: int) -> float | None:
        """Read the code in `shown`, displayed at the given instant; the latency in ms, or None
        when it does not count (unreadable, another frame's code)."""
        code = timecode.read(shown)
        if code is None:
            self.unreadable += 1
            return None
        if code.seq != frame.seq & 0xFFFF_FFFF:
            self.seq_mismatch += 1
            return None
        if self.clock == "wall":
            now, pixel_t, header_t = t_wall_ns, code.t_wall_ns, frame.t_wall_ns
        else:
            now, pixel_t, header_t = t_mono_ns, code.t_capture_ns, frame.t_capture_ns
        latency = (now - pixel_t) / 1e6
        self.samples.append((frame.seq, now, pixel_t))
        self.latencies_ms.append(latency)
        self.header_ms.append((now - header_t) / 1e6)
        self.capture_diff_ms.append(abs(pixel_t - header_t) / 1e6)
        return latency

    def to_json(self) -> dict:
        diff = np.asarray(self.capture_diff_ms)
        return {**_percentiles(self.latencies_ms), "frames": len(self.latencies_ms),
                "unreadable": self.unreadable, "seq_mismatch": self.seq_mismatch,
                "clock": self.clock, "header": _percentiles(self.header_ms),
                "capture_diff_ms": {"mean_abs": float(diff.mean()) if diff.size else None,
                                    "max_abs": float(diff.max()) if diff.size else None}}


@dataclass
class ViewSummary:
    frames: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    increasing: bool = True  # seq strictly increased from frame to frame within each run
    restarts: int = 0  # times the publisher started again (seq fell back, time went on)
    gaps_s: list[float] = field(default_factory=list)  # silences: a stall or a restart
    dropped: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)  # PROTOCOL.md's keys
    # capture to receipt, from the header: a histogram, so a display that runs for days
    # holds its whole run's percentiles in constant memory
    latencies_ms: LatencyHistogram = field(default_factory=LatencyHistogram)
    saved: int = 0
    glass: GlassMeter | None = None  # --measure
    elapsed_s: float = 0.0  # from subscribing to the end of viewing

    def to_json(self) -> dict:
        out = {
            "frames": self.frames,
            "elapsed_s": round(self.elapsed_s, 3),
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "seq_strictly_increasing": self.increasing,
            "publisher_restarts": self.restarts,
            "gaps": {"count": len(self.gaps_s),
                     "longest_s": round(max(self.gaps_s), 3) if self.gaps_s else None,
                     "total_s": round(sum(self.gaps_s), 3)},
            "dropped": self.dropped,
            "rejected": self.rejected,
            "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
            "saved": self.saved,
            "latency_ms": _histogram_percentiles(self.latencies_ms),
        }
        if self.glass is not None:
            out["glass_ms"] = self.glass.to_json()
        return out


class _Window:
    """The last second's figures for the log line."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.count = 0
        self.latency: list[float] = []
        self.glass: list[float] = []
        self.unreadable = 0

    def line(self, now: float, receiver: Receiver, measure: bool, silent_s: float) -> str:
        def p(values: list[float], q: float) -> float:
            return float(np.percentile(values, q))

        if not self.count:  # the real rate, not the last one seen: nothing came
            return f"0.0 fps | no frames for {silent_s:.0f} s | dropped {receiver.dropped}"
        text = (f"{self.count / (now - self.start):.1f} fps | latency p50 "
                f"{p(self.latency, 50):.1f} ms p99 {p(self.latency, 99):.1f} ms")
        if measure:
            glass = (f"p50 {p(self.glass, 50):.1f} ms p99 {p(self.glass, 99):.1f} ms"
                     if self.glass else "none readable")
            text += f" | glass {glass} unreadable {self.unreadable}"
        return (f"{text} | dropped {receiver.dropped} | rejected "
                f"{sum(receiver.stats.rejected.values())}")


class _Display:
    """Resize, convert, show, save and measure one picture."""

    def __init__(self, title: str, show: bool, save: Path | None, save_every: int,
                 size: tuple[int, int] | None) -> None:
        self.title = title
        self.show = show
        self.save = save
        self.save_every = save_every
        self.size = size

    def present(self, frame: Frame, picture: np.ndarray, summary: ViewSummary,
                second: _Window) -> bool:
        """Show (and save, measure) one picture; True when the user asked to quit."""
        if self.size is not None and (picture.shape[1], picture.shape[0]) != self.size:
            picture = cv2.resize(picture, self.size, interpolation=cv2.INTER_AREA)
        # What a window is given (OpenCV windows take BGR): converted whenever it is shown,
        # saved or measured, so that the measured path is the displayed one.
        converted = self.show or summary.glass is not None or self.save is not None
        shown = cv2.cvtColor(picture, cv2.COLOR_RGB2BGR) if converted else picture
        quit_key = False
        if self.show:
            cv2.imshow(self.title, shown)
            # The window repaints inside waitKey: only then is the frame on its way out.
            quit_key = cv2.waitKey(1) & 0xFF in (ord("q"), 27)
        if summary.glass is not None:
            glass = summary.glass.add(frame, shown, time.monotonic_ns(), time.time_ns())
            if glass is None:
                second.unreadable += 1
            else:
                second.glass.append(glass)
        if self.save is not None and frame.seq % self.save_every == 0:
            cv2.imwrite(str(self.save / f"frame_{frame.seq:06d}.png"), shown)
            summary.saved += 1
        return quit_key


def view(endpoint: str, frames: int | None = None, save: Path | None = None,
         save_every: int = 30, window: bool | None = None, timeout_s: float | None = None,
         stop: threading.Event | None = None, quiet: bool = False, measure: bool = False,
         clock: Clock = "monotonic", size: tuple[int, int] | None = None,
         curve: Curve | None = None, stall_warn_s: float = STALL_WARN_S,
         on_frame: Callable[[Frame], None] | None = None,
         max_bytes: int = DEFAULT_MAX_BYTES) -> ViewSummary:
    """Receive until `frames` frames arrived, `timeout_s` passed without any, or `stop`.

    measure: read the timecode from each picture as displayed (after resizing to `size`,
    (W, H), and converting to the window's BGR) and report capture to display from it, on
    `clock` (monotonic: same host; wall: across hosts, as good as the clocks' agreement).
    stall_warn_s: warn once when no frame came for this long (none yet, or none since the
    last), and say when frames come again; such a silence, or the one before a publisher's
    restart, is a gap in the summary.
    on_frame: called with each frame received, once it was shown (an application embedding
    the viewer, or a harness that must know what arrived).
    max_bytes: a larger message is rejected (`oversize`) unread.
    """
    stop = stop or threading.Event()
    show = has_gui() if window is None else window
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)
    summary = ViewSummary(glass=GlassMeter(clock) if measure else None)
    display = _Display(f"orstream {endpoint}", show, save, save_every, size)
    second = _Window()
    seqs = SeqTracker()
    started = last_frame_at = time.monotonic()
    stalled = False  # warned about the current silence
    with Receiver(endpoint, "latest", name="view", curve=curve,
                  max_bytes=max_bytes) as receiver:
        logger.info("viewing {} ({}{})", receiver.endpoint, "window" if show else "headless",
                    ", measuring capture to display from the picture" if measure else "")
        while not stop.is_set() and (frames is None or summary.frames < frames):
            frame = receiver.recv(timeout_ms=200)
            now = time.monotonic()
            if frame is None:
                silent_s = now - last_frame_at
                if timeout_s is not None and silent_s > timeout_s:
                    break
                if not stalled and silent_s >= stall_warn_s:
                    stalled = True
                    logger.warning("{}", no_frames_message(endpoint, silent_s)
                                   if summary.frames == 0 else
                                   f"no frames for {silent_s:.0f} s from {endpoint} (the "
                                   f"publisher stopped or stalls)")
            else:
                silent_s = now - last_frame_at
                step = seqs.step(frame.stream, frame.seq, frame.t_wall_ns, frame.run)
                if step.kind == "restart":
                    summary.restarts += 1
                    logger.warning("the publisher of {} restarted (seq {} after {}): frames "
                                   "again after {:.1f} s", frame.stream, frame.seq,
                                   summary.last_seq, silent_s)
                elif stalled:
                    logger.info("frames again from {} after {:.1f} s", endpoint, silent_s)
                if summary.frames and (stalled or step.kind == "restart"):
                    summary.gaps_s.append(silent_s)
                stalled = False
                last_frame_at = now
                # Capture to receipt, on the monotonic clock: meaningful on one host.
                latency = (time.monotonic_ns() - frame.t_capture_ns) / 1e6
                if step.kind == "stale":
                    summary.increasing = False
                if summary.first_seq is None:
                    summary.first_seq = frame.seq
                summary.last_seq = frame.seq
                summary.frames += 1
                summary.latencies_ms.add(latency)
                second.count += 1
                second.latency.append(latency)
                picture = frame.overlay if frame.overlay is not None else frame.image
                quit_key = picture is not None and display.present(frame, picture, summary,
                                                                   second)
                if on_frame is not None:
                    on_frame(frame)
                if quit_key:
                    break  # q or Esc in the window
            if now - second.start >= 1.0:
                if not quiet:
                    logger.info("{}", second.line(now, receiver, measure, now - last_frame_at))
                second = _Window()
        summary.dropped = receiver.dropped
        summary.rejected = sum(receiver.stats.rejected.values())
        summary.rejected_by_reason = dict(receiver.stats.rejected)
        summary.elapsed_s = time.monotonic() - started
    if show:
        cv2.destroyAllWindows()
    return summary
