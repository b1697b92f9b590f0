"""Recorded procedures through PyAV: any container and codec FFmpeg reads, in any pixel format
(converted to RGB24), paced at the recording's own timestamps (live-like) or lossless (every
frame once, in order). Time comes from presentation timestamps, never from a nominal frame
rate, so variable-frame-rate recordings replay with their own gaps. The decoder here also
serves network streams (sources/network.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from loguru import logger

from orstream.pipeline.config import SourceConfig
from orstream.pipeline.sources.base import Captured, Source, SourceError, SourceInfo
from orstream.pipeline.transport import RateLimitedLog

if TYPE_CHECKING:
    import av


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


class Decoder:
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
            first = next(Decoder(name, DecodeStats()).frames(container, stream,
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
                decoder = Decoder(self.info.name, self.stats)
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
                  decoder: Decoder, stop: threading.Event,
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
