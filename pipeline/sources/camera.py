"""Cameras and capture cards through OpenCV's V4L2 backend: `camera:N` or `/dev/videoN`.

A USB camera or an HDMI/SDI capture card is live: the device's clock sets the pace and the
capture edge keeps only the newest frame. The requested size, rate and pixel format
(FOURCC: MJPG, YUYV, ...) are asked of the driver, which may choose something close: what
it chose is logged, never silently assumed. A device that stops delivering (unplugged,
driver reset) is released and reopened with backoff (`ReconnectingSource`); one that is
absent at the start is an error naming the devices that are present.
"""

from __future__ import annotations

import glob
import math
import os
import re
import threading
import time
from collections.abc import Iterator

import cv2
import numpy as np
from loguru import logger

from orstream.pipeline.config import SourceConfig
from orstream.pipeline.sources.base import SourceInfo
from orstream.pipeline.sources.reconnecting import ReconnectingSource

# OpenCV's V4L2 backend ignores CAP_PROP_READ_TIMEOUT_MSEC (only its FFmpeg backend has it):
# a read waits in select() for OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT seconds (default 10), read
# once per process at the first V4L2 read. It is set from source.read_timeout_s before the
# first camera opens, unless the environment already sets it.
_V4L_SELECT_TIMEOUT = "OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT"


def device_path(spec: str) -> str:
    """`camera:N` -> /dev/videoN (V4L2 numbers devices that way); a path stays a path."""
    match = re.fullmatch(r"camera:(\d+)", spec)
    return f"/dev/video{match.group(1)}" if match else spec


def present_devices() -> list[str]:
    def number(path: str) -> int:
        digits = re.sub(r"\D", "", path)
        return int(digits) if digits else -1

    return sorted(glob.glob("/dev/video*"), key=number)


def fourcc_text(code: float) -> str:
    value = int(code)
    return "".join(chr((value >> 8 * i) & 0xFF) for i in range(4)).strip("\0") or "?"


class CameraSource(ReconnectingSource):
    """A V4L2 camera or capture card, read on the capture thread, reopened when it drops."""

    unreachable_hint = ("plug the camera or capture card in and check `v4l2-ctl "
                        "--list-devices`; in a container, pass the device through (docker "
                        "run --device /dev/video0); then give camera:N or /dev/videoN of a "
                        "device that is present")

    def __init__(self, cfg: SourceConfig) -> None:
        self.device = device_path(cfg.spec)
        super().__init__(cfg.spec if cfg.spec == self.device else f"{cfg.spec} ({self.device})",
                         cfg)
        self.width, self.height, self.fps = cfg.width, cfg.height, cfg.fps
        self.pixel_format = cfg.pixel_format
        self.read_timeout_s = cfg.read_timeout_s
        # A camera absent at the start is a wrong spec or a missing device, not an outage:
        # fail now, naming what is there (retries are for a device lost while running).
        cap, first = self._first_connect(fatal=True)  # type: ignore[misc]
        height, width = first.shape[:2]
        fps = cap.get(cv2.CAP_PROP_FPS) or cfg.fps
        self.info = SourceInfo(self.name, True, float(fps), width, height)
        got = f"{width}x{height} @ {fps:g} fps {fourcc_text(cap.get(cv2.CAP_PROP_FOURCC))}"
        wanted = (width, height) == (cfg.width, cfg.height) and abs(fps - cfg.fps) < 0.5
        (logger.info if wanted else logger.warning)(
            "source {}: {}{}", self.name, got, "" if wanted else
            f" (asked for {cfg.width}x{cfg.height} @ {cfg.fps:g} fps"
            f"{' ' + cfg.pixel_format if cfg.pixel_format else ''}: the device chose this)")

    # ------------------------------------------------------------ opening the device

    def _open_capture(self) -> cv2.VideoCapture:
        """The device opened with the V4L2 backend and the requested format. The lowest
        layer: tests without a camera put a video file's VideoCapture here."""
        # OSErrors: retried while running (a camera unplugged comes back, udev fixes the
        # permissions of a replugged device); at the start they end in SourceError.
        if not os.path.exists(self.device):
            present = present_devices()
            listed = (f"present: {', '.join(present)}" if present else
                      "no /dev/video* device exists at all")
            raise FileNotFoundError(f"no such camera {self.device}; {listed}")
        if not os.access(self.device, os.R_OK | os.W_OK):
            raise PermissionError(f"permission denied on {self.device}: add the user to the "
                                  "'video' group (sudo usermod -aG video $USER, log in again)")
        os.environ.setdefault(_V4L_SELECT_TIMEOUT, str(max(1, math.ceil(self.read_timeout_s))))
        cap = cv2.VideoCapture(self.device, cv2.CAP_V4L2)
        if not cap.isOpened():
            cap.release()
            raise OSError(f"{self.device} did not open (busy in another program, or not a "
                          "video capture device: try the next /dev/video number)")
        # V4L2 applies the pixel format first and the size within it: set it first.
        if self.pixel_format:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*self.pixel_format))
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        cap.set(cv2.CAP_PROP_FPS, self.fps)
        return cap

    # ------------------------------------------------------------ ReconnectingSource

    def _connect(self) -> tuple[cv2.VideoCapture, np.ndarray]:
        cap = self._open_capture()
        # A device can open and then deliver nothing (a capture card with no signal, a
        # format the camera refuses): only a first frame proves the link.
        ok, frame = cap.read()
        if not ok or frame is None:
            cap.release()
            raise OSError(f"{self.device} opened but delivered no frame within "
                          f"{self.read_timeout_s:g} s (no input signal? unsupported "
                          "pixel format?)")
        return cap, frame

    def _read(self, link: object, stop: threading.Event) -> Iterator[tuple[np.ndarray, int]]:
        cap, first = link  # type: ignore[misc]
        if first is not None:
            yield cv2.cvtColor(first, cv2.COLOR_BGR2RGB), time.monotonic_ns()
        while not stop.is_set():
            # grab() returns when the device hands over a frame: that is its capture time;
            # retrieve() then decodes it (MJPG) or converts it (YUYV) to BGR.
            if not cap.grab():
                return
            t_ns = time.monotonic_ns()
            ok, frame = cap.retrieve()
            if not ok or frame is None:
                return
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), t_ns

    def _lost_reason(self, link: object) -> str:
        return (f"no frame within {self.read_timeout_s:g} s (unplugged? signal lost?)"
                if os.path.exists(self.device) else f"{self.device} disappeared (unplugged)")

    def _release(self, link: object) -> None:
        cap, _ = link  # type: ignore[misc]
        cap.release()
