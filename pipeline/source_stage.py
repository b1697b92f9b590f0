"""The capture node: the source on its own thread (CaptureThread), frames stamped and, where
asked, the timecode burnt in."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from loguru import logger

from orstream.pipeline import timecode
from orstream.pipeline.capture import CaptureThread
from orstream.pipeline.config import ConfigError, PipelineConfig
from orstream.pipeline.frame import Frame
from orstream.pipeline.sources import Captured, Source


class CaptureStage:
    name = "capture"
    activity: str | None = "opening the source"

    def __init__(self, cfg: PipelineConfig, source: Source) -> None:
        self.stream = cfg.stream
        self.source = source
        # Burn seq and capture time into frames (source.timecode)
        self.timecode = timecode_on(cfg, source)
        self._capture: CaptureThread | None = None

    def open(self) -> None:
        self.source.prepare()

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        self._capture = CaptureThread(self.source)
        run = time.time_ns()  # this run's seqs, from 0 (Frame.run)
        with self._capture:
            for item in self._capture.frames(stop):
                # seq is the source's index: frames the source produced but nobody took
                # (replaced in the capture holder, or late) show downstream as seq gaps and
                # are counted as dropped with the rest.
                frame = _frame_of(self.stream, item)
                frame.run = run
                if self.timecode:
                    # Here, once seq and both capture times are final: the code carries
                    # exactly the header's values, and its cost counts as capture.
                    _burn_timecode(frame)
                frame.stamp("capture", frame.t_capture_ns)
                yield frame

    def close(self) -> None:
        # The source itself belongs to whoever opened it (the Pipeline closes it).
        if self._capture is not None:
            logger.debug("capture: {} frames taken, {} replaced before they were taken",
                         self._capture.taken, self._capture.overwritten)


def timecode_on(cfg: PipelineConfig, source: Source) -> bool:
    """Whether capture burns the timecode in: source.timecode, `auto` asking the source."""
    setting = cfg.source.timecode
    info = source.info
    size_known = info.width > 0 and info.height > 0
    if setting == "auto":
        # A test feed at a size too small to carry it goes unmarked rather than failing.
        on = info.timecode and size_known and timecode.fits(info.height, info.width)
    elif setting and size_known and not timecode.fits(info.height, info.width):
        raise ConfigError(f"source.timecode: {info.name} gives {info.width}x{info.height} "
                          f"frames, too small for the timecode (at least 480x270); set "
                          f"source.timecode: false")
    else:
        on = setting
    if on and cfg.segment.enabled and cfg.segment.crop == "none":
        # Without the EndoVis crop the model sees the code and may draw over it.
        logger.warning("source.timecode is on with segment.crop none: the model sees the "
                       "timecode; keep crop endovis to leave it out of segmentation")
    return on


def _frame_of(stream: str, item: Captured) -> Frame:
    frame = Frame.capture(stream, item.index, item.image)
    if item.t_capture_ns is not None:
        # Acquired before it was taken (a render, a paced release): latency counts from
        # then; wall time is moved back by the same amount.
        frame.t_wall_ns -= frame.t_capture_ns - item.t_capture_ns
        frame.t_capture_ns = item.t_capture_ns
    frame.media_s = item.media_s
    return frame


def _burn_timecode(frame: Frame) -> None:
    try:
        timecode.write(frame.image, frame.seq, frame.t_capture_ns, frame.t_wall_ns)
    except timecode.TimecodeError as exc:  # the source changed size mid-stream
        raise ConfigError(f"source.timecode: {exc}; set source.timecode: false") from None
