"""Frame sources, chosen by a factory keyed on the source spec.

A source yields RGB uint8 images at its own pace, on its own thread (pipeline/capture.py).
`info.live` sources (the synthetic endoscope, a paced replay, network streams, cameras)
produce frames whether or not anyone keeps up, so the capture edge delivers only the newest.
A lossless replay is not live: every decodable frame is delivered once, in order, as fast as
the pipeline takes them.

Recorded files go through PyAV, so any container and codec FFmpeg reads works, in any pixel
format (converted to RGB24). Time comes from presentation timestamps, never from a nominal
frame rate, so variable-frame-rate recordings replay with their own gaps.

Network streams (pipeline/network.py, PyAV) and cameras (pipeline/camera.py, OpenCV V4L2)
can drop out and come back: they are `ReconnectingSource`s, which reconnect with capped
exponential backoff and publish a `SourceState` that the runner's status line reads.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from loguru import logger
from orstream.pipeline.config import SourceConfig
from orstream.pipeline.transport import RateLimitedLog

if TYPE_CHECKING:
    import av


class SourceError(RuntimeError):
    """A source that cannot be opened or read; names the source and the fix."""


@dataclass
class SourceInfo:
    name: str
    live: bool  # produces frames on its own clock: the capture edge keeps only the newest
    fps: float  # nominal rate (a file's average); pacing itself follows timestamps
    width: int
    height: int
    # Burns the timecode in when source.timecode is auto: a test feed, whose pixels nobody
    # needs untouched (pipeline/timecode.py)
    timecode: bool = False


@dataclass(frozen=True)
class Captured:
    """One frame as a source hands it over."""

    index: int  # position in the source's sequence; a gap is a frame never delivered
    image: np.ndarray  # (H, W, 3) uint8 RGB
    # When the frame was acquired (monotonic ns): the synthetic render's start, a paced
    # replay's release time. None: the moment the pipeline takes it (lossless replay, where
    # queueing ahead of a busy model is not latency anyone sees).
    t_capture_ns: int | None = None
    media_s: float | None = None  # files: presentation time from the recording's start


@dataclass(frozen=True)
class SourceState:
    """Whether a source is delivering; replaced whole, so readers on other threads (the
    runner's status line) always see one consistent value."""

    up: bool = True
    attempt: int = 0  # failed reconnect attempts in the current outage
    reconnects: int = 0  # outages recovered from since the start
    error: str | None = None  # why it is down
    down_since: float | None = None  # monotonic seconds

    def describe(self) -> str:
        if self.up:
            return "source up"
        down_s = time.monotonic() - self.down_since if self.down_since is not None else 0.0
        return (f"source down (reconnecting, attempt {self.attempt + 1}, down {down_s:.0f} s):"
                f" {self.error}")


class Source:
    """Yields frames until the end or until `stop` is set; waits only on `stop`."""

    info: SourceInfo
    state: SourceState = SourceState()  # sources that cannot drop out are always up

    def prepare(self) -> None:
        """Set-up that can run while the stages open (the runner calls it from the capture
        thread before capture starts); `frames` calls it too. Default: nothing."""

    def frames(self, stop: threading.Event) -> Iterator[Captured]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what `frames` does not release itself; safe to call twice."""


# ------------------------------------------------------------------ synthetic


class SyntheticSource(Source):
    """The built-in synthetic endoscope, paced in real time at its fps."""

    def __init__(self, cfg: SourceConfig) -> None:
        from orstream.training.synth.generator import SynthConfig

        self._config = SynthConfig(width=cfg.width, height=cfg.height, fps=cfg.fps,
                                   seed=cfg.seed)
        self._synth = None
        self.info = SourceInfo("synthetic", True, cfg.fps, cfg.width, cfg.height,
                               timecode=True)

    def prepare(self) -> None:
        # The generator's textures take 0.45-0.7 s to build at 1080p, time a start cannot
        # show or record a frame in: they come from the background cache (milliseconds)
        # after the first start, and are built here, in the capture thread, so that even a
        # first build overlaps the model's loading instead of preceding it.
        if self._synth is None:
            from orstream.training.synth.background_cache import BackgroundCache
            from orstream.training.synth.generator import SyntheticEndoscope

            self._synth = SyntheticEndoscope(self._config, cache=BackgroundCache())

    def frames(self, stop: threading.Event) -> Iterator[Captured]:
        self.prepare()
        period = 1.0 / self.info.fps
        start = time.monotonic()
        index = 0  # which moment of the procedure is rendered
        emitted = 0  # frames handed over: the sequence downstream counts drops against
        while not stop.is_set():
            # Frame i is due at start + i * period; a late render is not made up for by
            # bursting, the schedule skips ahead as a camera's clock would.
            due = start + index * period
            delay = due - time.monotonic()
            if delay > 0 and stop.wait(delay):
                return
            if delay < -period:
                index = int((time.monotonic() - start) / period)
            # The render counts as capture latency, like a sensor's readout.
            started = time.monotonic_ns()
            yield Captured(emitted, self._synth.render_image(index), started)
            index += 1
            emitted += 1


# ------------------------------------------------------------------ recorded files

# Decoder threading per mode (FFmpeg thread_type, threads; 0 threads = FFmpeg picks from the
# core count). Measured on the 2-core CI box, 1080p30 H.264, per-frame time (decode + RGB):
# asked for at 30 fps as a paced replay does, frame threading (AUTO) had the lowest tail,
# idle p50/p99 5.4/20.8 ms against 9.0/22.8 single-threaded and 33 against 48 ms p99 with
# both cores busy, because it decodes ahead in worker threads while the caller converts;
# flat out (lossless) it decoded 150 against 108 frames/s. So both file modes use it. With
# frame threads a corrupt packet can also cost the few frames in flight beside it: for a
# damaged recording where every frame counts, set thread_type none.
# Live network streams are different: a file's frames are all there to decode ahead, a
# stream's arrive one per 33 ms, so each frame a frame-threaded decoder holds in flight is
# 33 ms of latency. `python -m orstream.benchmarks.replay` feeds zero-latency 1080p packets at
# 30 fps:
# FRAME/AUTO held 2 frames, p50 68 ms from packet to RGB frame; single-threaded p50/p99
# 3.2/10.2 ms; AUTO with FFmpeg's low-delay flag (which the network source sets, and which
# turns frame threading into slice threading) 2.3/4.3 ms. Live streams therefore use slice
# threads, whatever source.low_latency says.
DECODER_DEFAULTS: dict[str, tuple[str, int]] = {
    "paced": ("auto", 0),
    "lossless": ("auto", 0),
    "live": ("slice", 0),
}


@dataclass
class DecodeStats:
    decoded: int = 0  # frames decoded in range and handed over
    corrupt_packets: int = 0  # flagged corrupt by the demuxer: skipped, not decoded
    decode_errors: int = 0  # packets the decoder rejected: skipped
    corrupt_frames: int = 0  # frames the decoder flagged corrupt: not shown
    late: int = 0  # paced: decoded after their slot had passed, skipped like a camera would
    demux_errors: int = 0  # the container became unreadable: the pass ended there
    ended_early: bool = False  # the last frame came well before the declared duration

    @property
    def skipped(self) -> int:
        return self.corrupt_packets + self.decode_errors + self.corrupt_frames


def _open_error(path: Path, exc: BaseException) -> SourceError:
    """What went wrong opening `path`, and what to do about it."""
    size = path.stat().st_size if path.is_file() else -1
    if size == 0:
        return SourceError(f"source {path}: the file is empty (0 bytes); was the recording "
                           "interrupted before anything was written? Give another file")
    hint = ("is it a video? FFmpeg could not read it. An MP4 cut short (crash, full disk) "
            "loses its index at the end: recover it with a tool such as untrunc, and record "
            "to .ts or fragmented MP4, which stay readable when cut")
    return SourceError(f"source {path}: cannot be read as video ({exc}); {hint}")


class _Decoder:
    """Decoded frames of one container, skipping what is broken instead of stopping.

    Bad input in the middle of a recording must not end a replay: packets the demuxer flags
    corrupt and packets the decoder rejects are skipped, frames it flags corrupt are not
    shown, each with a counter and a rate-limited warning. A container that becomes
    unreadable (a truncated file) ends the pass after the decoder is drained, so every frame
    already decoded is still delivered.
    """

    def __init__(self, name: str, stats: DecodeStats, live: bool = False) -> None:
        self.name = name
        self.stats = stats
        self.live = live  # a live stream's read error is a dropped link: the caller reports it
        self.error: BaseException | None = None  # why the last pass ended early
        self._log = RateLimitedLog()

    def frames(self, container: av.container.InputContainer, stream: av.VideoStream,
               stop: threading.Event) -> Iterator[av.VideoFrame]:
        import av

        packets = container.demux(stream)
        while not stop.is_set():
            try:
                packet = next(packets)
            except StopIteration:
                return  # PyAV's last packet is the flush: the decoder is already drained
            except av.error.FFmpegError as exc:
                self.stats.demux_errors += 1
                self.error = exc
                if self.live:
                    return  # frames in flight belong to a stream that is gone: not drained
                logger.warning("{}: unreadable from here on ({}); ending after the frames "
                               "already decoded", self.name, exc)
                yield from self._drain(stream)
                return
            if packet.is_corrupt:
                self.stats.corrupt_packets += 1
                self._warn("corrupt packet", "a corrupt packet", packet)
                continue
            try:
                decoded = packet.decode()
            except av.error.FFmpegError as exc:
                self.stats.decode_errors += 1
                self._warn("undecodable packet", f"an undecodable packet ({exc})", packet)
                continue
            for frame in decoded:
                if frame.is_corrupt:
                    self.stats.corrupt_frames += 1
                    self._warn("corrupt frame", "a corrupt frame", frame)
                    continue
                yield frame

    def _drain(self, stream: av.VideoStream) -> Iterator[av.VideoFrame]:
        import av

        try:
            yield from (f for f in stream.codec_context.decode(None) if not f.is_corrupt)
        except av.error.FFmpegError:
            return

    def _warn(self, reason: str, what: str, item: av.Packet | av.VideoFrame) -> None:
        at = f" at {float(item.pts * item.time_base):.3f} s" if (
            item.pts is not None and item.time_base is not None) else ""
        self._log.warn(reason, f"{self.name}: skipped {what}{at}; skipped so far: "
                               f"{self.stats.skipped}")


class _Pacer:
    """Release times on the recording's own clock, continued across loops.

    The first frame goes out at once; each later one at first + (its time - the first's).
    A loop restarts one frame duration after the last frame, so pacing runs on smoothly.
    """

    def __init__(self) -> None:
        self._anchor: float | None = None  # monotonic release time of the pass's first frame
        self._first: float | None = None  # its media time
        self.last_due: float | None = None

    def due(self, media_s: float) -> float:
        if self._anchor is None:
            self._anchor = time.monotonic()
        if self._first is None:
            self._first = media_s
        self.last_due = self._anchor + (media_s - self._first)
        return self.last_due

    def restart(self, gap_s: float) -> None:
        if self.last_due is not None:
            self._anchor, self._first = self.last_due + gap_s, None


class VideoFileSource(Source):
    """A recorded procedure: paced at its timestamps (live-like) or lossless (every frame)."""

    def __init__(self, cfg: SourceConfig) -> None:
        self.path = Path(cfg.spec)
        self.mode = cfg.mode
        self.loop = cfg.loop
        self.start_s = cfg.start
        self.end_s = cfg.end
        default_type, default_threads = DECODER_DEFAULTS[cfg.mode]
        self.thread_type = (cfg.thread_type or default_type).upper()
        self.threads = default_threads if cfg.decoder_threads is None else cfg.decoder_threads
        self.stats = DecodeStats()
        name = str(self.path)
        # Open and decode one frame now, so that a bad file fails before the pipeline starts.
        with self._open() as container:
            stream = container.streams.video[0]
            first = next(_Decoder(name, DecodeStats()).frames(container, stream,
                                                               threading.Event()), None)
            if first is None:
                raise SourceError(f"source {name}: no decodable video frame (a damaged or "
                                  "empty recording?); give another file")
            fps = float(stream.average_rate or stream.guessed_rate or 30)
            duration = self.duration_s = self._duration_s(container, stream)
            self.info = SourceInfo(name, cfg.mode == "paced", fps, first.width, first.height)
        if duration is not None and self.start_s >= duration:
            raise SourceError(f"source {name}: start {self.start_s:g} s is past the end of "
                              f"the recording ({duration:.2f} s); give an earlier start")
        logger.info("source {}: {}x{} ~{:.3g} fps{}, {} replay{}", name, first.width,
                    first.height, fps, f", {duration:.1f} s" if duration else "", cfg.mode,
                    " (looping)" if cfg.loop else "")

    def _open(self) -> av.container.InputContainer:
        import av

        if not self.path.exists():
            raise SourceError(f"source {self.path}: no such file (give a video path, or "
                              "'synthetic' for the built-in endoscope)")
        if not self.path.is_file():
            raise SourceError(f"source {self.path}: not a regular file; give a video file")
        try:
            container = av.open(str(self.path))
        except (av.error.FFmpegError, OSError) as exc:
            raise _open_error(self.path, exc) from None
        if not container.streams.video:
            container.close()
            raise SourceError(f"source {self.path}: has no video stream (audio or data "
                              "only?); give a video file")
        return container

    @staticmethod
    def _duration_s(container: av.container.InputContainer,
                    stream: av.VideoStream) -> float | None:
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        if container.duration is not None:
            return container.duration / 1e6  # av.time_base: microseconds
        return None

    # ----------------------------------------------------------------- decoding thread

    def frames(self, stop: threading.Event) -> Iterator[Captured]:
        passes = 0
        try:
            with self._open() as container:
                stream = container.streams.video[0]
                stream.codec_context.thread_type = self.thread_type
                stream.codec_context.thread_count = self.threads
                decoder = _Decoder(self.info.name, self.stats)
                pacer = _Pacer() if self.mode == "paced" else None
                index = 0
                while not stop.is_set():
                    passes += 1
                    shown, last_step, last_s = 0, 0.0, 0.0
                    for media_s, step, image in self._released(
                            self._in_range(container, stream, decoder, stop), pacer, stop):
                        last_step, last_s = step or last_step, media_s
                        if image is not None:
                            t_ns = time.monotonic_ns() if pacer else None
                            self.stats.decoded += 1
                            yield Captured(index, image, t_ns, media_s)
                        index += 1  # also past a late frame: the gap counts the drop
                        shown += 1
                    if shown and not stop.is_set():
                        self._check_ending(last_s, last_step)
                    if not self.loop or stop.is_set():
                        break
                    if shown == 0:
                        logger.warning("{}: nothing to replay between start and end; not "
                                       "looping", self.info.name)
                        break
                    if pacer:
                        pacer.restart(last_step or 1.0 / self.info.fps)
                    container.seek(0)  # back to the first packet (valid for every format)
        finally:
            self._report(passes)

    def _released(self, timed: Iterator[tuple[float, av.VideoFrame]], pacer: _Pacer | None,
                  stop: threading.Event) -> Iterator[tuple[float, float, np.ndarray | None]]:
        """(media time, step from the previous frame, RGB image or None if it came too late).

        Paced: each image is converted ahead, then released at its time on the recording's
        clock. Unpaced: as fast as they are taken.
        """
        previous = None
        for media_s, frame in timed:
            step = media_s - previous if previous is not None and media_s > previous else 0.0
            previous = media_s
            if pacer is None:
                yield media_s, step, frame.to_ndarray(format="rgb24")
                continue
            due = pacer.due(media_s)
            if time.monotonic() - due > 1.0 / self.info.fps:
                # Behind by more than a frame: skip the RGB conversion and let the index
                # gap count the drop, as a camera's missed frame would be.
                self.stats.late += 1
                yield media_s, step, None
                continue
            image = frame.to_ndarray(format="rgb24")
            delay = due - time.monotonic()
            if delay > 0 and stop.wait(delay):
                return
            yield media_s, step, image

    def _in_range(self, container: av.container.InputContainer, stream: av.VideoStream,
                  decoder: _Decoder, stop: threading.Event,
                  seek: bool | None = None) -> Iterator[tuple[float, av.VideoFrame]]:
        """(time from the recording's start, frame) for frames in [start, end).

        Seeks to the keyframe at or before `start` first (unless `seek` is False). Some
        demuxers land past the target (MPEG-TS does with few keyframes): then it decodes
        from the first packet instead and skips to `start` by timestamp, slower but exact.
        """
        if seek is None:
            seek = self.start_s > 0
        # The recording's start: the stream's declared start time (MPEG-TS starts late, at
        # its mux delay), else the first frame's timestamp.
        origin = (float(stream.start_time * stream.time_base)
                  if stream.start_time is not None else None)
        if seek and origin is not None:
            container.seek(int((origin + self.start_s) / stream.time_base), stream=stream)
        else:
            seek = False  # without a declared start, times are relative to the first frame
        step = 1.0 / self.info.fps
        checked = not seek
        media_s = None
        for frame in decoder.frames(container, stream, stop):
            if frame.time is not None:
                if origin is None:
                    origin = float(frame.time)
                media_s = float(frame.time) - origin
            else:  # no timestamp: assume the nominal rate
                media_s = 0.0 if media_s is None else media_s + step
            if not checked:
                checked = True
                if media_s > self.start_s + 1.5 * step:
                    logger.info("{}: seeking to {:g} s landed at {:.3f} s; decoding from the "
                                "start instead", self.info.name, self.start_s, media_s)
                    container.seek(0)
                    yield from self._in_range(container, stream, decoder, stop, seek=False)
                    return
            if media_s < self.start_s - step / 2:
                continue
            if self.end_s is not None and media_s >= self.end_s - step / 2:
                return
            yield media_s, frame
        if not checked and not stop.is_set():
            # The seek landed where nothing decodes: from the first packet instead.
            container.seek(0)
            yield from self._in_range(container, stream, decoder, stop, seek=False)

    def _check_ending(self, last_s: float, step: float) -> None:
        """Some demuxers end quietly at damage (Matroska, a cut file): compare with the
        declared duration so that a short replay is not mistaken for the whole recording."""
        ends = [x for x in (self.end_s, self.duration_s) if x is not None]
        if ends and last_s + 2 * (step or 1.0 / self.info.fps) < min(ends):
            if not self.stats.ended_early:
                logger.warning("{}: the last readable frame is at {:.2f} s of {:.2f} s; the "
                               "rest is damaged or missing", self.info.name, last_s, min(ends))
            self.stats.ended_early = True

    def _report(self, passes: int) -> None:
        s = self.stats
        damaged = s.skipped or s.demux_errors or s.ended_early
        (logger.warning if damaged else logger.info)(
            "{}: {} frames replayed in {} pass(es); skipped {} corrupt packets, {} "
            "undecodable packets, {} corrupt frames, {} late{}", self.info.name, s.decoded,
            passes, s.corrupt_packets, s.decode_errors, s.corrupt_frames, s.late,
            "; the file ended early (truncated?)" if s.demux_errors or s.ended_early else "")


# ------------------------------------------------------------------ live links


class ReconnectingSource(Source):
    """A live source whose link can drop: a network stream, a camera that is unplugged.

    Subclasses say how to connect, read and release; this class owns the loop around them.
    When the link drops or cannot be made, it waits (capped exponential backoff, woken at
    once by `stop`) and tries again, for at most `source.reconnect_max_s` of continuous
    outage (None: until stopped), then raises SourceError naming the source. Meanwhile
    `state` says it is down, so the pipeline keeps running and its status line shows it.
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
                        self._recovered()
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
                    raise SourceError(
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
        self.state = SourceState(False, attempt, s.reconnects, _reason(error), since)

    def _recovered(self) -> None:
        s = self.state
        down_s = time.monotonic() - s.down_since if s.down_since is not None else 0.0
        logger.info("source {}: reconnected after {:.1f} s down ({} failed attempt(s) "
                    "before)", self.name, down_s, s.attempt)
        self.state = SourceState(True, 0, s.reconnects + 1)

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


# ------------------------------------------------------------------ the factory

NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "srt", "udp", "rtp", "tcp", "http", "https")
_CAMERA = re.compile(r"camera:\d+|/dev/video\d+")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def source_kind(spec: str) -> str:
    """Which factory serves a spec: synthetic, network, camera, file, or unknown."""
    if spec == "synthetic":
        return "synthetic"
    scheme = _SCHEME.match(spec)
    if scheme:
        return "network" if scheme.group(1).lower() in NETWORK_SCHEMES else "unknown"
    if _CAMERA.fullmatch(spec):
        return "camera"
    return "file"


def _unknown(cfg: SourceConfig) -> Source:
    raise SourceError(f"source {cfg.spec}: unknown scheme; give 'synthetic', a video file "
                      f"path, camera:N, /dev/videoN, or one of "
                      f"{', '.join(s + '://' for s in NETWORK_SCHEMES)}")


def _network(cfg: SourceConfig) -> Source:
    from orstream.pipeline.network import NetworkSource  # imported here: it imports this module

    return NetworkSource(cfg)


def _camera(cfg: SourceConfig) -> Source:
    from orstream.pipeline.camera import CameraSource  # imported here: it imports this module

    return CameraSource(cfg)


_FACTORIES: dict[str, Callable[[SourceConfig], Source]] = {
    "synthetic": SyntheticSource,
    "file": VideoFileSource,
    "network": _network,
    "camera": _camera,
    "unknown": _unknown,
}


def open_source(cfg: SourceConfig) -> Source:
    """A source for the spec; SourceError (naming the spec and the fix) if it cannot open."""
    return _FACTORIES[source_kind(cfg.spec)](cfg)
