"""The built-in synthetic endoscope as a live source (training/synth renders it)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np

from orstream.pipeline.config import SourceConfig
from orstream.pipeline.sources.base import Captured, Source, SourceInfo


class SyntheticSource(Source):
    """The built-in synthetic endoscope, paced in real time at its fps."""

    def __init__(self, cfg: SourceConfig) -> None:
        from orstream.training.synth.generator import SynthConfig

        self._config = SynthConfig(width=cfg.width, height=cfg.height, fps=cfg.fps,
                                   seed=cfg.seed)
        self._synth = None
        self.info = SourceInfo("synthetic", True, cfg.fps, cfg.width, cfg.height,
                               timecode=True)
        self.late = 0  # frames skipped because the render before them ran late

    def prepare(self) -> None:
        # The generator's textures take 0.45-0.7 s to build at 1080p, time a start cannot
        # show or record a frame in: they come from the background cache (milliseconds)
        # after the first start, and are built here, in the capture thread, so that even a
        # first build overlaps the model's loading instead of preceding it.
        if self._synth is None:
            from orstream.training.synth.background_cache import BackgroundCache
            from orstream.training.synth.generator import SyntheticEndoscope

            self._synth = SyntheticEndoscope(self._config, cache=BackgroundCache())

    def render(self, index: int) -> np.ndarray:
        """The picture at moment `index` of the procedure, as frames() would capture it."""
        self.prepare()
        return self._synth.render_image(index)

    def frames(self, stop: threading.Event) -> Iterator[Captured]:
        self.prepare()
        period = 1.0 / self.info.fps
        start = time.monotonic()
        index = 0  # which moment of the procedure is rendered: the frame's seq
        while not stop.is_set():
            # Frame i is due at start + i * period; a late render is not made up for by
            # bursting, the schedule skips ahead as a camera's clock would. The moments
            # skipped are frames a camera would have made and nobody took (the CPU was
            # busy): their seqs are left out, so downstream counts them as dropped, as
            # for a paced replay's late frames.
            due = start + index * period
            delay = due - time.monotonic()
            if delay > 0 and stop.wait(delay):
                return
            if delay < -period:
                now_index = int((time.monotonic() - start) / period)
                self.late += now_index - index
                index = now_index
            # The render counts as capture latency, like a sensor's readout.
            started = time.monotonic_ns()
            yield Captured(index, self._synth.render_image(index), started)
            index += 1
