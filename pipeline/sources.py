"""Frame sources, chosen by a factory keyed on the source spec.

A source yields RGB uint8 images at its own pace. `live` sources (the synthetic endoscope, a
camera) produce frames whether or not anyone keeps up; the capture edge then delivers only
the newest. Recorded files are read by the file source, which paces them at the recording's
frame rate (behaving like live) unless asked to run lossless.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import SourceConfig


class SourceError(RuntimeError):
    """A source that cannot be opened or read; names the source and the fix."""


@dataclass
class SourceInfo:
    name: str
    live: bool
    fps: float
    width: int
    height: int


class Source:
    """Iterates images; `stop` is checked between frames so shutdown never waits long."""

    info: SourceInfo
    # When the newest frame's acquisition began (monotonic ns): the synthetic endoscope sets
    # it before rendering, so its render time counts as capture latency, like a sensor's
    # readout. None: the frame's arrival is its capture time.
    started_ns: int | None = None

    def frames(self, stop: threading.Event) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file; safe to call twice."""


class SyntheticSource(Source):
    """The built-in synthetic endoscope, paced in real time at its fps."""

    def __init__(self, cfg: SourceConfig) -> None:
        from training.synth.generator import SynthConfig, SyntheticEndoscope

        self._synth = SyntheticEndoscope(SynthConfig(width=cfg.width, height=cfg.height,
                                                     fps=cfg.fps, seed=cfg.seed))
        self.info = SourceInfo("synthetic", True, cfg.fps, cfg.width, cfg.height)

    def frames(self, stop: threading.Event) -> Iterator[np.ndarray]:
        period = 1.0 / self.info.fps
        start = time.monotonic()
        index = 0
        while not stop.is_set():
            # Frame i is due at start + i * period; a late render is not made up for by
            # bursting, the schedule skips ahead as a camera's clock would.
            due = start + index * period
            delay = due - time.monotonic()
            if delay > 0 and stop.wait(delay):
                return
            if delay < -period:
                index = int((time.monotonic() - start) / period)
            self.started_ns = time.monotonic_ns()
            yield self._synth.render(index).image
            index += 1


class VideoFileSource(Source):
    """A recorded procedure through PyAV, paced at its frame rate or as fast as consumed."""

    def __init__(self, cfg: SourceConfig, paced: bool = True) -> None:
        import av

        path = Path(cfg.spec)
        if not path.is_file():
            raise SourceError(f"source {cfg.spec}: no such file (give a video path, or "
                              "'synthetic' for the built-in endoscope)")
        try:
            self._container = av.open(str(path))
            stream = self._container.streams.video[0]
        except (av.error.FFmpegError, IndexError) as exc:
            raise SourceError(f"source {cfg.spec}: not a readable video ({exc})") from None
        self._stream = stream
        self._loop = cfg.loop
        self._paced = paced
        fps = float(stream.average_rate or stream.guessed_rate or 30)
        self.info = SourceInfo(str(path), paced, fps, stream.codec_context.width,
                               stream.codec_context.height)

    def frames(self, stop: threading.Event) -> Iterator[np.ndarray]:
        period = 1.0 / self.info.fps
        start = time.monotonic()
        shown = 0
        while not stop.is_set():
            for frame in self._container.decode(self._stream):
                if stop.is_set():
                    return
                if self._paced:
                    delay = start + shown * period - time.monotonic()
                    if delay > 0 and stop.wait(delay):
                        return
                shown += 1
                yield frame.to_ndarray(format="rgb24")
            if not self._loop:
                return
            self._container.seek(0)

    def close(self) -> None:
        self._container.close()


_FACTORIES: dict[str, Callable[[SourceConfig], Source]] = {
    "synthetic": SyntheticSource,
}


def open_source(cfg: SourceConfig) -> Source:
    """A source for the spec: a registered name (`synthetic`) or a video file path."""
    factory = _FACTORIES.get(cfg.spec)
    if factory is not None:
        return factory(cfg)
    return VideoFileSource(cfg)
