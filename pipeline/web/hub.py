"""One subscriber to the pipeline, one JPEG per frame, shared by every tab.

A thread receives from the publisher in `latest` mode and keeps only the newest frame in a
one-slot holder. A frame is JPEG-encoded only when some tab is waiting for one, once, into
one WebSocket message that every waiting tab sends as is. A tab asks for the next frame only
when it has room (pipeline/web/tabs.py): it then gets the newest frame that exists, never a
backlog. So a slow or stalled tab costs the pipeline and the other tabs nothing: the pipeline
sees one subscriber, whose receive loop never waits on a tab; the other tabs are served from
the same slot whatever one of them does.

A message is binary: a 4-byte big-endian header length, the JSON header, the JPEG.
"""

from __future__ import annotations

import asyncio
import json
import struct
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
from loguru import logger

from orstream.pipeline.frame import Frame
from orstream.pipeline.security import Curve
from orstream.pipeline.transport import Receiver

RECV_TIMEOUT_MS = 200  # how soon the receive thread sees a stop request
SAMPLES = 3000  # latency samples kept per figure: the last ~100 s at 30 fps
_LENGTH = struct.Struct(">I")


def percentiles(values: deque[float] | list[float]) -> dict[str, float | None]:
    """p50/p95/p99/max in ms, rounded to 0.01; None each when nothing was measured."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    data = np.asarray(values)
    p50, p95, p99 = np.percentile(data, (50, 95, 99))
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2),
            "p99": round(float(p99), 2), "max": round(float(data.max()), 2)}


@dataclass(frozen=True)
class Encoded:
    """A frame as every tab receives it."""

    index: int  # this server's receipt count of the frame (1, 2, ...): gaps = skipped
    seq: int
    data: bytes  # the whole WebSocket message


def pack(header: dict, jpeg: bytes) -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return _LENGTH.pack(len(head)) + head + jpeg


def unpack(message: bytes) -> tuple[dict, bytes]:
    """The header and the JPEG of a message (for Python clients and tests)."""
    (length,) = _LENGTH.unpack_from(message)
    return json.loads(message[4:4 + length]), message[4 + length:]


class FrameHub:
    """The receive thread, the latest-frame slot and the encoder.

    The receive thread only stores into the slot; everything else runs on the event loop,
    and the JPEG encoding in a worker thread (OpenCV releases the GIL while it encodes).
    """

    def __init__(self, endpoint: str, curve: Curve | None, quality: int) -> None:
        self.endpoint = endpoint
        self.quality = quality
        # Created here, not in the thread: a bad endpoint or key is the caller's error.
        self._receiver = Receiver(endpoint, "latest", name="web", curve=curve)
        self._lock = threading.Lock()
        self._slot: tuple[Frame, int] | None = None  # newest frame, its receipt time (mono ns)
        self.received = 0  # frames taken from the publisher (= index of the newest)
        self.first_at: float | None = None
        self.last_at: float | None = None  # monotonic s of the newest frame's receipt
        self._wake_pending = False
        self.latest: Encoded | None = None
        self.encoded = 0
        self.receipt_ms: deque[float] = deque(maxlen=SAMPLES)  # capture -> this server
        self.encode_ms: deque[float] = deque(maxlen=SAMPLES)
        self.jpeg_bytes = 0  # of the latest
        self._arrivals: deque[float] = deque(maxlen=64)  # for the fps figure
        # at_least -> tabs waiting for a frame of at least that index
        self._wants: Counter[int] = Counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kick: asyncio.Event | None = None
        self._fresh: asyncio.Condition | None = None
        self._encoder: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="web-jpeg")

    # ------------------------------------------------------------------ receive thread

    def start(self) -> None:
        """Start receiving and encoding; on the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._kick = asyncio.Event()
        self._fresh = asyncio.Condition()
        self._encoder = asyncio.create_task(self._encode_loop(), name="web-encoder")
        self._thread = threading.Thread(target=self._receive_loop, name="web-receive",
                                        daemon=True)
        self._thread.start()

    def _receive_loop(self) -> None:
        receiver = self._receiver
        try:
            while not self._stop.is_set():
                frame = receiver.recv(timeout_ms=RECV_TIMEOUT_MS)
                if frame is None:
                    continue
                now_ns = time.monotonic_ns()
                with self._lock:
                    self._slot = (frame, now_ns)
                    self.received += 1
                    self.last_at = now_ns / 1e9
                    self.first_at = self.first_at or self.last_at
                    self._arrivals.append(self.last_at)
                    self.receipt_ms.append((now_ns - frame.t_capture_ns) / 1e6)
                    pending, self._wake_pending = self._wake_pending, True
                if not pending:  # one wake-up in flight at most, however slow the loop
                    self._loop.call_soon_threadsafe(self._on_frame)
        finally:
            receiver.close()

    def _on_frame(self) -> None:
        with self._lock:
            self._wake_pending = False
        self._kick.set()

    # ----------------------------------------------------------------------- event loop

    async def next_after(self, index: int) -> Encoded:
        """The newest frame, encoded, once it is newer than `index` and at least as new as
        the newest received now: a tab never gets a frame older than one already here."""
        with self._lock:
            at_least = max(self.received, index + 1)
        self._wants[at_least] += 1
        self._kick.set()
        try:
            async with self._fresh:
                await self._fresh.wait_for(
                    lambda: self.latest is not None and self.latest.index >= at_least)
                return self.latest
        finally:
            self._wants[at_least] -= 1
            if not self._wants[at_least]:
                del self._wants[at_least]

    @property
    def waiting(self) -> int:
        """Tabs waiting for a frame newer than the latest encoded one."""
        return sum(self._wants.values())

    def _wanted(self) -> bool:
        """Some tab waits for a newer frame than the latest encoded one."""
        done = self.latest.index if self.latest is not None else 0
        return any(want > done for want in self._wants)

    async def _encode_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._kick.wait()
            self._kick.clear()
            while self._wanted():
                with self._lock:
                    slot, index = self._slot, self.received
                if slot is None or (self.latest is not None and self.latest.index >= index):
                    break  # the wanted frame has not come yet: the next one kicks again
                frame, receipt_ns = slot
                started = time.monotonic()
                data = await loop.run_in_executor(self._pool, self._encode, frame, index,
                                                  receipt_ns)
                if data is None:
                    break
                self.encode_ms.append((time.monotonic() - started) * 1e3)
                self.encoded += 1
                self.jpeg_bytes = len(data)
                async with self._fresh:
                    self.latest = Encoded(index, frame.seq, data)
                    self._fresh.notify_all()

    def _encode(self, frame: Frame, index: int, receipt_ns: int) -> bytes | None:
        picture = frame.overlay if frame.overlay is not None else frame.image
        if picture is None:
            return None
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR),
                                (cv2.IMWRITE_JPEG_QUALITY, self.quality))
        if not ok:  # OpenCV refuses only pictures it cannot encode at all
            logger.warning("web: frame {} could not be encoded as JPEG", frame.seq)
            return None
        caption = None
        if frame.caption is not None:
            caption = {"text": frame.caption.text, "seq": frame.caption.seq,
                       "age_ms": round((frame.t_capture_ns - frame.caption.t_capture_ns) / 1e6,
                                       1)}
        header = {
            "v": 1, "stream": frame.stream, "seq": frame.seq, "index": index,
            # JavaScript numbers hold integers up to 2**53: ns since 1970 need the ms float
            "t_wall_ns": frame.t_wall_ns, "t_wall_ms": frame.t_wall_ns / 1e6,
            "width": int(picture.shape[1]), "height": int(picture.shape[0]),
            "caption": caption,
            "server": {"receipt_ms": round((receipt_ns - frame.t_capture_ns) / 1e6, 2),
                       "fps": round(self.fps(), 1), "lost": self.lost},
        }
        return pack(header, jpeg.tobytes())

    # ------------------------------------------------------------------------- figures

    def fps(self) -> float:
        with self._lock:
            times = list(self._arrivals)
        if len(times) < 2 or time.monotonic() - times[-1] > 1.0:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    @property
    def lost(self) -> int:
        """Frames the publisher sent that this server never got (seq gaps)."""
        return self._receiver.dropped

    @property
    def rejected(self) -> int:
        return sum(self._receiver.stats.rejected.values())

    def silent_s(self, since: float) -> float:
        """Seconds since the newest frame, or since `since` (monotonic s) before the first."""
        with self._lock:
            last = self.last_at
        return time.monotonic() - (last if last is not None else since)

    def to_json(self) -> dict:
        with self._lock:
            receipt = list(self.receipt_ms)
        return {"endpoint": self.endpoint, "received": self.received, "encoded": self.encoded,
                "lost": self.lost, "rejected": self.rejected, "fps": round(self.fps(), 1),
                "jpeg_bytes": self.jpeg_bytes, "quality": self.quality,
                "receipt_ms": percentiles(receipt), "encode_ms": percentiles(self.encode_ms)}

    async def close(self) -> None:
        self._stop.set()
        if self._encoder is not None:
            self._encoder.cancel()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
        else:
            self._receiver.close()
        self._pool.shutdown(wait=True, cancel_futures=True)
