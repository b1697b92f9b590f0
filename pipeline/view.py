"""`orstream view`: the reference display client.

Subscribes to a publisher (latest mode: a display wants the newest frame), shows the
overlay in a window when OpenCV has GUI support and a display exists, and otherwise runs
headless: a line per second of fps, latency (capture to receipt) and drops, `--save DIR` to
keep every Nth frame as PNG, and `--json` for a summary at exit.

orstream depends on opencv-python-headless (servers, CI and the pipeline need no GUI, and
the two OpenCV wheels cannot live in one environment). For a window, replace it:
`pip uninstall -y opencv-python-headless && pip install opencv-python`.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from loguru import logger

from pipeline.transport import Receiver


def has_gui() -> bool:
    """True when this OpenCV build can open windows and a display is available."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    info = cv2.getBuildInformation()
    gui_line = next((line for line in info.splitlines() if line.strip().startswith("GUI")), "")
    return "NONE" not in gui_line.upper()


@dataclass
class ViewSummary:
    frames: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    increasing: bool = True  # seq strictly increased from frame to frame
    dropped: int = 0
    rejected: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    saved: int = 0

    def to_json(self) -> dict:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {
            "frames": self.frames,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "seq_strictly_increasing": self.increasing,
            "dropped": self.dropped,
            "rejected": self.rejected,
            "saved": self.saved,
            "latency_ms": {"p50": float(np.percentile(lat, 50)),
                           "p99": float(np.percentile(lat, 99)),
                           "max": float(lat.max())},
        }


def view(endpoint: str, frames: int | None = None, save: Path | None = None,
         save_every: int = 30, window: bool | None = None, timeout_s: float | None = None,
         stop: threading.Event | None = None, quiet: bool = False) -> ViewSummary:
    """Receive until `frames` frames arrived, `timeout_s` passed without any, or `stop`."""
    stop = stop or threading.Event()
    show = has_gui() if window is None else window
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)
    summary = ViewSummary()
    last_report = time.monotonic()
    window_count = 0
    window_lat: list[float] = []
    last_frame_at = time.monotonic()
    with Receiver(endpoint, "latest", name="view") as receiver:
        logger.info("viewing {} ({})", receiver.endpoint, "window" if show else "headless")
        while not stop.is_set() and (frames is None or summary.frames < frames):
            frame = receiver.recv(timeout_ms=200)
            now = time.monotonic()
            if frame is None:
                if timeout_s is not None and now - last_frame_at > timeout_s:
                    break
            else:
                last_frame_at = now
                # Capture to receipt, on the monotonic clock: meaningful on one host.
                latency = (time.monotonic_ns() - frame.t_capture_ns) / 1e6
                if summary.last_seq is not None and frame.seq <= summary.last_seq:
                    summary.increasing = False
                if summary.first_seq is None:
                    summary.first_seq = frame.seq
                summary.last_seq = frame.seq
                summary.frames += 1
                summary.latencies_ms.append(latency)
                window_count += 1
                window_lat.append(latency)
                picture = frame.overlay if frame.overlay is not None else frame.image
                if save is not None and picture is not None and frame.seq % save_every == 0:
                    cv2.imwrite(str(save / f"frame_{frame.seq:06d}.png"),
                                cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
                    summary.saved += 1
                if show and picture is not None:
                    cv2.imshow(f"orstream {endpoint}", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
                    if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                        break
            if now - last_report >= 1.0:
                if not quiet:
                    p50 = float(np.percentile(window_lat, 50)) if window_lat else 0.0
                    p99 = float(np.percentile(window_lat, 99)) if window_lat else 0.0
                    logger.info("{:.1f} fps | latency p50 {:.1f} ms p99 {:.1f} ms | dropped {} "
                                "| rejected {}", window_count / (now - last_report), p50, p99,
                                receiver.dropped, sum(receiver.stats.rejected.values()))
                window_count, window_lat, last_report = 0, [], now
        summary.dropped = receiver.dropped
        summary.rejected = sum(receiver.stats.rejected.values())
    if show:
        cv2.destroyAllWindows()
    return summary
