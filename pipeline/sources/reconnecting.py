"""Live sources whose link can drop (network streams, cameras): the reconnect loop with capped
exponential backoff, and the `SourceState` it publishes for the status line."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator

import numpy as np
from loguru import logger

from orstream.pipeline.config import SourceConfig
from orstream.pipeline.sources.base import (
    Captured,
    Source,
    SourceError,
    SourceLost,
    SourceState,
)


class ReconnectingSource(Source):
    """A live source whose link can drop: a network stream, a camera that is unplugged.

    Subclasses say how to connect, read and release; this class owns the loop around them.
    When the link drops or cannot be made, it waits (capped exponential backoff, woken at
    once by `stop`) and tries again, for at most `source.reconnect_max_s` of continuous
    outage (None: until stopped), then raises SourceError naming the source. Meanwhile
    `state` says it is down, so the pipeline keeps running and its status line shows it;
    once it is back, `state` adds the outage to `outage_s` and `missed`.
    """

    # What to check when the source stays unreachable; subclasses say it for their kind.
    unreachable_hint = "check the source is on and reachable"

    def __init__(self, name: str, cfg: SourceConfig) -> None:
        self.name = name
        self.delay_s = cfg.reconnect_delay_s
        self.delay_max_s = cfg.reconnect_delay_max_s
        self.budget_s = cfg.reconnect_max_s
        self.state = SourceState()
        self._pending: object | None = None  # a link opened up front, used by frames() first
        self._last_frame_ns: int | None = None  # the newest frame's time, across links

    # ------------------------------------------------------------ what subclasses provide

    def _connect(self) -> object:
        """Open the link; raise SourceError (fatal: retrying cannot help) or any other
        exception (worth retrying)."""
        raise NotImplementedError

    def _read(self, link: object,
              stop: threading.Event) -> Iterator[tuple[np.ndarray, int]]:
        """(RGB image, acquisition time in monotonic ns) until the link drops (return) or
        `stop` is set."""
        raise NotImplementedError

    def _release(self, link: object) -> None:
        raise NotImplementedError

    def _lost_reason(self, link: object) -> str:
        """Why `_read` returned: the stream ended, a read timed out, ..."""
        return "the stream ended"

    # ------------------------------------------------------------ the loop

    def _first_connect(self, fatal: bool = False) -> object | None:
        """Connect once before the pipeline starts, so that a wrong spec fails at once and
        the frame size is known. An unreachable source is fatal when `fatal` or when no
        retries are allowed; otherwise the pipeline starts and shows it down while it
        retries (None)."""
        try:
            link = self._connect()
        except SourceError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure to connect is retried
            if fatal or self.budget_s == 0:
                raise SourceError(f"source {self.name}: cannot connect ({_reason(exc)}); "
                                  f"{self.unreachable_hint}") from None
            self._down(exc, attempt=1)
            logger.warning("source {}: cannot connect ({}); the pipeline starts and retries "
                           "{}", self.name, _reason(exc), self._budget_text())
            return None
        self._pending = link
        return link

    def frames(self, stop: threading.Event) -> Iterator[Captured]:
        index = 0
        while not stop.is_set():
            link, self._pending = self._pending, None
            if link is None:
                link = self._reconnect(stop)
                if link is None:
                    return  # stopped while waiting
            delivered = False
            try:
                for image, t_ns in self._read(link, stop):
                    if not self.state.up:
                        self._recovered(t_ns)
                    self._last_frame_ns = t_ns
                    delivered = True
                    yield Captured(index, image, t_ns)
                    index += 1
                if stop.is_set():
                    return
                reason = self._lost_reason(link)
            finally:
                self._release(link)
            # A link that delivered frames is retried at once (a glitch is often over by
            # then); one that connected but delivered nothing counts as a failed attempt,
            # so that a peer accepting and hanging up at once is retried with backoff.
            self._down(reason, attempt=0 if delivered else self.state.attempt + 1)
            logger.warning("source {}: lost ({}); reconnecting {}", self.name, reason,
                           self._budget_text())

    def _delay_s(self, attempt: int) -> float:
        """The wait before reconnect attempt `attempt` (1: none): delay_s, then doubling up
        to the cap. A source that is rebooting is found quickly, one that is gone costs one
        attempt per cap."""
        return 0.0 if attempt <= 1 else min(self.delay_max_s, self.delay_s * 2 ** (attempt - 2))

    def _reconnect(self, stop: threading.Event) -> object | None:
        """Try until connected (the link), stopped (None) or out of budget (SourceError)."""
        while True:
            attempt = self.state.attempt + 1
            wait = self._delay_s(attempt)
            if self.budget_s is not None and self.state.down_since is not None:
                left = self.budget_s - (time.monotonic() - self.state.down_since)
                if left <= 0:
                    raise SourceLost(
                        f"source {self.name}: down for {self.budget_s:g} s, {attempt - 1} "
                        f"attempt(s) to connect failed (last: {self.state.error}); "
                        f"{self.unreachable_hint}, or set source.reconnect_max_s: null to "
                        "keep retrying")
                wait = min(wait, left)
            if wait > 0 and stop.wait(wait):
                return None
            try:
                return self._connect()
            except SourceError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure to connect is retried
                self._down(exc, attempt=attempt)
                logger.warning("source {}: reconnect attempt {} failed ({}); next in {:.1f} s",
                               self.name, attempt, _reason(exc), self._delay_s(attempt + 1))

    def _down(self, error: BaseException | str, attempt: int) -> None:
        s = self.state
        since = s.down_since if not s.up and s.down_since is not None else time.monotonic()
        self.state = dataclasses.replace(s, up=False, attempt=attempt, error=_reason(error),
                                         down_since=since)

    def _recovered(self, t_ns: int) -> None:
        """The first frame after an outage came at `t_ns` (monotonic ns)."""
        s = self.state
        down_s = time.monotonic() - s.down_since if s.down_since is not None else 0.0
        # The gap a display saw: from the last frame before (the loss is only noticed a
        # read timeout later), or, for a source down from the start, from when it was found
        # down.
        if self._last_frame_ns is not None:
            gap_s = (t_ns - self._last_frame_ns) / 1e9
        else:
            gap_s = down_s
        missed = max(0, round(gap_s * self.info.fps) - 1)
        logger.info("source {}: reconnected after {:.1f} s down ({} failed attempt(s) "
                    "before); {:.1f} s without frames, ~{} missed at {:.3g} fps", self.name,
                    down_s, s.attempt, gap_s, missed, self.info.fps)
        self.state = SourceState(True, 0, s.reconnects + 1, outage_s=s.outage_s + gap_s,
                                 missed=s.missed + missed)

    def _budget_text(self) -> str:
        backoff = f"(backoff {self.delay_s:g} s doubling to {self.delay_max_s:g} s)"
        if self.budget_s is None:
            return f"until stopped {backoff}; set source.reconnect_max_s to give up"
        return f"for up to {self.budget_s:g} s {backoff} (source.reconnect_max_s)"

    def close(self) -> None:
        link, self._pending = self._pending, None
        if link is not None:
            self._release(link)


def _reason(error: BaseException | str) -> str:
    if isinstance(error, str):
        return error
    text = str(error) or error.__class__.__name__
    return text if len(text) < 300 else text[:300] + "..."
