"""One subscriber to the pipeline, one JPEG per frame and size shown, shared by the tabs.

A thread receives from the publisher in `latest` mode and keeps only the newest frame in a
one-slot holder. A frame is JPEG-encoded only when some tab is waiting for one, once per
distinct size that the waiting tabs show it at, into one WebSocket message that every tab of
that size sends as is. A tab asks for the next frame only when it has room
(pipeline/web/tabs.py): it then gets the newest frame that exists, never a backlog. So a slow
or stalled tab costs the pipeline and the other tabs nothing: the pipeline sees one
subscriber, whose receive loop never waits on a tab; the other tabs are served from the same
slot whatever one of them does.

Sizes: a page reports the box it shows the video in, in device pixels; the frame is sent
scaled down to fit that box (sent_size), because a browser that decodes and composites a
1080p JPEG to show it in a 900-pixel canvas spends most of its time on pixels nobody sees. A
tab that reports nothing gets the frame at full resolution.

A message is binary: a 4-byte big-endian header length, the JSON header, the JPEG. A TP-SIS
frame's header carries its own class table (`classes`, task "prompts": the prompt texts it was
segmented with and their colours), so the page lists the prompts of the frame it shows; the
hub also keeps the newest frame's prompts (None: the stream segments no prompts) for a page
that opens before its first frame, and for /api/stats.
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

from orstream.common.classes import PROMPTS_TASK
from orstream.pipeline.frame import Frame
from orstream.pipeline.security import Curve
from orstream.pipeline.transport import Receiver

RECV_TIMEOUT_MS = 200  # how soon the receive thread sees a stop request
SAMPLES = 3000  # latency samples kept per figure: the last ~100 s at 30 fps
# Sent widths are multiples of this: tabs a few pixels apart (a scrollbar, a zoom step)
# share one encoding instead of costing one each.
SIZE_STEP = 16
# No frame is sent narrower than this: a smaller canvas is rare and the browser scales it
# down cheaply, while the encodings of a wall of thumbnails would each cost the server.
MIN_WIDTH = 320
_LENGTH = struct.Struct(">I")

Size = tuple[int, int]  # width, height in pixels
Box = Size | None  # what a tab shows the video in (device pixels); None: full resolution


def sent_size(width: int, height: int, box: Box) -> Size:
    """The size a width x height frame is sent at to a tab that shows it in `box`: fitted
    inside the box with its aspect kept, the width rounded down to SIZE_STEP and at least
    MIN_WIDTH; never larger than the frame (the browser would scale it up just as well).
    The frame's own size for a tab without a box."""
    if box is None:
        return width, height
    fitted = min(box[0], box[1] * width // height)  # integers: 540 * 1920 // 1080 is 960
    target = max(MIN_WIDTH, fitted // SIZE_STEP * SIZE_STEP)
    if target >= width:
        return width, height
    # round(), not a floor: within the box, since target * height / width <= box height
    return target, max(1, round(target * height / width))


def scale(picture: np.ndarray, size: Size) -> np.ndarray:
    """`picture` (H, W, C) down to `size` (width, height) -> (height, width, C).

    Whole halvings with INTER_AREA (2x2 means: OpenCV's fast path for integer factors), then
    INTER_LINEAR for the factor left, below 2: at such a factor bilinear still reads every
    source pixel, so 1-pixel mask outlines and instrument edges do not drop out. INTER_AREA
    in one go looks the same but costs 7-17 ms a 1080p frame at a non-integer factor on the
    2-core host (1.3-2 ms this way), more than the JPEG it saves encoding.
    """
    height, width = picture.shape[:2]
    while width // 2 >= size[0]:
        width, height = width // 2, height // 2
        picture = cv2.resize(picture, (width, height), interpolation=cv2.INTER_AREA)
    if (width, height) != size:
        picture = cv2.resize(picture, size, interpolation=cv2.INTER_LINEAR)
    return picture


def percentiles(values: deque[float] | list[float]) -> dict[str, float | None]:
    """p50/p95/p99/max in ms, rounded to 0.01; None each when nothing was measured."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    data = np.asarray(values)
    p50, p95, p99 = np.percentile(data, (50, 95, 99))
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2),
            "p99": round(float(p99), 2), "max": round(float(data.max()), 2)}


def prompts_of(frame: Frame) -> tuple[str, ...] | None:
    """The prompt texts `frame` was segmented with (its class table's names after
    "background"); None when it carries no table of task "prompts"."""
    table = frame.classes  # wire.decode sets it only for a table of the frame's own
    if table is None or table.get("task") != PROMPTS_TASK:
        return None
    return tuple(table["names"][1:])


@dataclass(frozen=True)
class Encoded:
    """A frame as every tab receives it."""

    index: int  # this server's receipt count of the frame (1, 2, ...): gaps = skipped
    seq: int
    size: Size  # of the JPEG
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
    and the scaling and JPEG encoding in a worker thread (OpenCV releases the GIL).
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
        # box -> the newest frame encoded for tabs showing that box; boxes that send the
        # same size share one Encoded. Only boxes some tab may still want are kept.
        self._latest: dict[Box, Encoded] = {}
        self.encoded = 0  # JPEGs made: one per frame and distinct size wanted
        self.receipt_ms: deque[float] = deque(maxlen=SAMPLES)  # capture -> this server
        self.encode_ms: deque[float] = deque(maxlen=SAMPLES)  # scaling + JPEG, per JPEG
        self.jpeg_bytes = 0  # of the last JPEG made
        self._arrivals: deque[float] = deque(maxlen=64)  # for the fps figure
        # The newest frame's prompts; None: no prompts table on it (a U-Net, or no frame yet)
        self._prompts: tuple[str, ...] | None = None
        # (box, at_least) -> tabs showing `box` waiting for a frame of at least that index
        self._wants: Counter[tuple[Box, int]] = Counter()
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
                prompts = prompts_of(frame)
                with self._lock:
                    self._slot = (frame, now_ns)
                    self.received += 1
                    self.last_at = now_ns / 1e9
                    self.first_at = self.first_at or self.last_at
                    self._arrivals.append(self.last_at)
                    self.receipt_ms.append((now_ns - frame.t_capture_ns) / 1e6)
                    changed, self._prompts = prompts != self._prompts, prompts
                    pending, self._wake_pending = self._wake_pending, True
                if changed:  # the prompt texts, as the pipeline logs them; never pixels
                    logger.info("web: from frame {}: {}", frame.seq, "no prompts"
                                if prompts is None else f"the prompts {list(prompts)}")
                if not pending:  # one wake-up in flight at most, however slow the loop
                    self._loop.call_soon_threadsafe(self._on_frame)
        finally:
            receiver.close()

    def _on_frame(self) -> None:
        with self._lock:
            self._wake_pending = False
        self._kick.set()

    # ----------------------------------------------------------------------- event loop

    async def next_after(self, index: int, box: Box = None) -> Encoded:
        """The newest frame, encoded for `box`, once it is newer than `index` and at least as
        new as the newest received now: a tab never gets a frame older than one already
        here."""
        with self._lock:
            at_least = max(self.received, index + 1)
        want = (box, at_least)
        self._wants[want] += 1
        self._kick.set()
        try:
            async with self._fresh:
                await self._fresh.wait_for(lambda: self._done(box) >= at_least)
                return self._latest[box]
        finally:
            self._wants[want] -= 1
            if not self._wants[want]:
                del self._wants[want]

    @property
    def waiting(self) -> int:
        """Tabs waiting for a frame newer than the one encoded for them."""
        return sum(self._wants.values())

    def _done(self, box: Box) -> int:
        """Index of the newest frame encoded for `box`; 0 before the first."""
        encoded = self._latest.get(box)
        return encoded.index if encoded is not None else 0

    def _due(self, index: int, width: int, height: int) -> set[Size]:
        """The sizes that tabs wait for frame `index` (width x height) at."""
        return {sent_size(width, height, box) for box, at_least in self._wants
                if at_least <= index and self._done(box) < at_least}

    async def _encode_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._kick.wait()
            self._kick.clear()
            while True:
                with self._lock:
                    slot, index = self._slot, self.received
                if slot is None:
                    break  # nothing received yet: the first frame kicks again
                frame, receipt_ns = slot
                picture = frame.overlay if frame.overlay is not None else frame.image
                if picture is None:
                    break  # nothing to show in this one: the next frame kicks again
                height, width = picture.shape[:2]
                due = self._due(index, width, height)
                if not due:
                    break  # every waiting tab waits for a frame that has not come yet
                # The smallest first: the cheapest, so most tabs are served soonest. The loop
                # then looks again: a frame that came meanwhile is the one the rest get.
                size = min(due, key=lambda wh: wh[0] * wh[1])
                started = time.monotonic()
                data = await loop.run_in_executor(self._pool, self._encode, frame, picture,
                                                  size, index, receipt_ns)
                if data is None:
                    break
                self.encode_ms.append((time.monotonic() - started) * 1e3)
                self.encoded += 1
                self.jpeg_bytes = len(data)
                async with self._fresh:
                    self._store(Encoded(index, frame.seq, size, data), width, height)
                    self._fresh.notify_all()

    def _store(self, encoded: Encoded, width: int, height: int) -> None:
        """`encoded` for every wanted box it is the size of, whose frame it is newer than
        (tabs that asked while it was being encoded included); boxes nobody waits for and
        whose frame is older than this one are dropped: every later want is for this frame
        or a newer one."""
        boxes = {box for box, _ in self._wants}
        for box in boxes:
            if sent_size(width, height, box) == encoded.size and \
                    self._done(box) < encoded.index:
                self._latest[box] = encoded
        for box in [box for box, done in self._latest.items()
                    if box not in boxes and done.index < encoded.index]:
            del self._latest[box]

    def _encode(self, frame: Frame, picture: np.ndarray, size: Size, index: int,
                receipt_ns: int) -> bytes | None:
        height, width = picture.shape[:2]
        if size != (width, height):
            picture = scale(picture, size)
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
            # the frame's own size (what overlay coordinates refer to), then the JPEG's
            "width": width, "height": height, "sent_width": size[0], "sent_height": size[1],
            "caption": caption,
            # the frame's own table when it has one (TP-SIS prompts); null: a fixed task's
            "classes": frame.classes if prompts_of(frame) is not None else None,
            "server": {"receipt_ms": round((receipt_ns - frame.t_capture_ns) / 1e6, 2),
                       "fps": round(self.fps(), 1), "lost": self.lost},
        }
        return pack(header, jpeg.tobytes())

    # ------------------------------------------------------------------------- figures

    @property
    def prompts(self) -> tuple[str, ...] | None:
        """The prompts the newest frame was segmented with; None when it has no prompts table
        (a U-Net pipeline) or before the first frame."""
        with self._lock:
            return self._prompts

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
        sizes = {f"{e.size[0]}x{e.size[1]}": len(e.data) for e in self._latest.values()}
        return {"endpoint": self.endpoint, "received": self.received, "encoded": self.encoded,
                "lost": self.lost, "rejected": self.rejected, "fps": round(self.fps(), 1),
                "jpeg_bytes": self.jpeg_bytes, "quality": self.quality,
                "sizes": sizes,  # sent size -> bytes of its newest message, as tabs show now
                "prompts": list(prompts) if (prompts := self.prompts) is not None else None,
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
