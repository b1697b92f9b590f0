"""One browser tab: what it was sent, what it painted, and how far it may run ahead.

Flow control is the page's answer, not the socket's: the page answers every frame once it
is done with it (painted, or superseded by a newer one before it could be), and the server
sends a tab a frame only while fewer than `window` of its frames are unanswered. A tab whose
page stalls (a busy script, a hidden tab that paints nothing, a suspended laptop, a dead
connection) is therefore sent nothing after `window` frames, instead of filling the socket
buffers with seconds of video that it would then show late; when it answers again it gets
the newest frame, and the frames it missed are counted as skipped. Two frames in flight let
the next frame travel and decode while the page paints the last one.

The page also reports each frame it painted with its capture-to-painted latency (capture
wall clock in the header to the first animation frame after drawImage), and the capture to
the message's arrival and to the JPEG decoded, kept here for /api/stats: where the
milliseconds go.

And it reports the box it shows the video in (device pixels): the tab is then sent frames
scaled to fit it (hub.sent_size).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass, field

from orstream.pipeline.web.hub import SAMPLES, Box, Encoded, Size, percentiles

FIGURES = ("latency_ms", "arrived_ms", "decoded_ms")  # what a page reports of each frame
WINDOW = 2  # frames in flight per tab: one being decoded, one on the way
MAX_SIDE = 16384  # px: no display shows more (Chromium's own canvas limit is 32767)


def box_of(width: object, height: object) -> Box:
    """The box a page reported (whole device pixels, as numbers or the query's strings);
    None for what no page of ours sends (a hidden canvas measures 0 x 0)."""
    sides = []
    for side in (width, height):
        if isinstance(side, str) and side.isdigit():
            side = int(side)
        if isinstance(side, bool) or not isinstance(side, int | float) or \
                not 1 <= side <= MAX_SIDE:
            return None
        sides.append(round(side))
    return sides[0], sides[1]


@dataclass(eq=False)
class Tab:
    id: int
    peer: str  # the client's address, for the log (never anything from the picture)
    window: int = WINDOW
    opened_at: float = field(default_factory=time.monotonic)
    sent: int = 0  # frames sent
    skipped: int = 0  # frames received between two sent to this tab (see skipped_now)
    last_index: int = 0  # server receipt index of the last frame sent (0: none yet)
    last_seq: int | None = None  # seq of the last frame sent
    box: Box = None  # what the page shows the video in, device pixels; None: full size
    last_size: Size | None = None  # of the last frame sent
    last_bytes: int = 0  # its message's length
    in_flight: int = 0  # sent and not yet acknowledged
    painted: int = 0  # frames the page says it painted
    painted_seq: int | None = None  # the last of them
    page_dropped: int = 0  # arrived at the page, superseded before it could paint them
    # One record per painted frame: when the report came (monotonic s, for figures over
    # the last seconds only), then FIGURES: capture to painted, capture to the message's
    # arrival at the page (the rest is decoding and painting) and capture to the JPEG
    # decoded (createImageBitmap resolved; after it, drawing and the paint). NaN: not
    # reported.
    reports: deque[tuple[float, float, float, float]] = field(
        default_factory=lambda: deque(maxlen=SAMPLES))
    room: asyncio.Event = field(default_factory=asyncio.Event)  # set: may be sent a frame
    telling: asyncio.Task | None = None  # the last figures message being sent to it

    def __post_init__(self) -> None:
        self.room.set()

    def sending(self, frame: Encoded) -> None:
        """Account for `frame` about to be sent."""
        if self.last_index:
            self.skipped += frame.index - self.last_index - 1
        self.last_index, self.last_seq = frame.index, frame.seq
        self.last_size, self.last_bytes = frame.size, len(frame.data)
        self.sent += 1
        self.in_flight += 1
        if self.in_flight >= self.window:
            self.room.clear()

    def acked(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        if self.in_flight < self.window:
            self.room.set()

    def painted_report(self, seq: object, latency_ms: object, dropped: object,
                       arrived_ms: object = None, decoded_ms: object = None) -> None:
        """A page's report of one painted frame; values a page made up are ignored."""
        if type(seq) is not int or not _plausible(latency_ms):
            return
        self.painted += 1
        self.painted_seq = seq
        self.reports.append((time.monotonic(), float(latency_ms),
                             float(arrived_ms) if _plausible(arrived_ms) else math.nan,
                             float(decoded_ms) if _plausible(decoded_ms) else math.nan))
        if type(dropped) is int and dropped >= self.page_dropped:
            self.page_dropped = dropped

    def skipped_now(self, received: int) -> int:
        """Frames this server received after the tab's first that it was not sent: those
        passed over between its frames, and, while it has no room, those since its last
        (a tab with room is being sent the newest)."""
        waiting = received - self.last_index if self.last_index and not self.room.is_set() \
            else 0
        return self.skipped + waiting

    def latencies(self, since: float | None = None) -> list[float]:
        """Capture to painted of the frames reported at or after `since` (monotonic s;
        None: every one kept)."""
        return self.samples("latency_ms", since)

    def samples(self, figure: str, since: float | None = None) -> list[float]:
        """One of FIGURES for the frames reported at or after `since`, those a page did not
        report left out."""
        column = 1 + FIGURES.index(figure)
        kept = []
        # the newest first: a window of the last seconds is a short walk from the end
        for record in reversed(self.reports):
            if since is not None and record[0] < since:
                break
            if not math.isnan(record[column]):
                kept.append(record[column])
        return kept

    def to_json(self, received: int, since: float | None = None) -> dict:
        """The tab's figures; the latencies of the frames reported since `since` only
        (monotonic s), when given."""
        figures = {figure: self.samples(figure, since) for figure in FIGURES}
        return {"id": self.id, "connected_s": round(time.monotonic() - self.opened_at, 1),
                "sent": self.sent, "skipped": self.skipped_now(received),
                "in_flight": self.in_flight,
                "last_seq": self.last_seq, "painted": self.painted,
                "painted_seq": self.painted_seq, "page_dropped": self.page_dropped,
                "box": list(self.box) if self.box else None,
                "sent_size": list(self.last_size) if self.last_size else None,
                "jpeg_bytes": self.last_bytes,
                "measured": len(figures["latency_ms"]),  # frames in the figures
                **{figure: percentiles(values) for figure, values in figures.items()}}


def _plausible(ms: object) -> bool:
    """A number of ms a latency can be (a clock jump or nonsense is not one)."""
    return isinstance(ms, int | float) and not isinstance(ms, bool) and -60_000 < ms < 600_000
