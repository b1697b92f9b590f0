"""What a run did, read from the receivers and the executor's counters (never from the
frame path: nothing here costs a frame anything), and the status line logged while it runs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from loguru import logger

from orstream.pipeline.executor import Executor
from orstream.pipeline.sources import SourceState
from orstream.pipeline.stages import LatencyWindow


@dataclass
class RunResult:
    frames_out: int = 0  # frames that reached the end of the last stage run here
    dropped: int = 0  # frames captured but never rendered (latest-frame policy)
    rejected: int = 0  # invalid messages received on any edge
    traces: list[list[tuple[str, int, int]]] = field(default_factory=list)
    elapsed_s: float = 0.0
    stages: dict[str, int] = field(default_factory=dict)  # stage -> frames processed
    captions: int = 0  # scene descriptions made (describe)
    # frames whose times came from another host's clock (converted via wall clocks): their
    # latencies are only as good as the hosts' clock sync
    rebased: int = 0
    streams: dict[str, int] = field(default_factory=dict)  # stream id -> frames processed
    dropped_by_stream: dict[str, int] = field(default_factory=dict)  # stream id -> frames lost
    # A live source that dropped out and came back (network stream, camera), where capture
    # ran here: outages recovered from, seconds without frames in them, and the frames the
    # source would have given meanwhile at its nominal rate (not in `dropped`: no seq was
    # ever given to them)
    source_reconnects: int = 0
    source_outage_s: float = 0.0
    source_missed: int = 0
    # segment.backend triton: frames passed on unlabelled while the server was down, and
    # the outages (each logged once when it starts and once when it ends)
    unlabelled: int = 0
    inference_outages: int = 0
    inference_outage_s: float = 0.0
    # record: the error that stopped the recording mid-run (it was logged then), and the
    # frames rendered after it that were not recorded; None: recorded to the end (or no record)
    recording_failed: str | None = None
    unrecorded: int = 0


class Metrics:
    """Counters of a running (or finished) executor."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        graph = executor.graph
        capture_edge = graph.edge("capture->segment")
        self.capture_receiver = executor.sockets.receivers.get(capture_edge.name)
        # capture->segment deals frames out to workers (the sender binds a lossless edge)
        self.dealt_out = not capture_edge.receiver_binds and capture_edge.mode == "lossless"
        self.render_here = graph.nodes["render"].local

    def dropped(self) -> int:
        """Frames captured and never shown. The capture edge counts them from seq gaps where
        it ends here; where it ends in another process, render's input does."""
        receiver = self.capture_receiver
        render = self.executor.nodes.get("render")
        if receiver is None and render is not None:
            receiver = render.inputs[0]
        elif receiver is not None and self.dealt_out and not self.render_here:
            # One of several workers sees every Nth seq by design: its gaps are its peers'
            # frames, not losses. Render, where the results meet, counts the real ones.
            return 0
        return receiver.dropped if receiver is not None else 0

    def segment_engine(self) -> object | None:
        """The engine of the segment stage run here, if any (its outage counters)."""
        node = self.executor.nodes.get("segment")
        return getattr(node.stage, "engine", None) if node is not None else None

    def segment_note(self) -> str | None:
        """What the status line adds about segmentation (the Triton server down), or None."""
        node = self.executor.nodes.get("segment")
        status = getattr(node.stage, "status", None) if node is not None else None
        return status() if status is not None else None

    def rejected(self) -> dict[str, dict[str, int]]:
        """Invalid messages per input edge of each stage run here: node -> reason -> count."""
        return {name: dict(node.inputs[0].stats.rejected)
                for name, node in self.executor.nodes.items() if node.inputs}

    def result(self, elapsed_s: float, captions: int = 0,
               source: SourceState | None = None) -> RunResult:
        """What the run did; `source`: the state of the source captured here, if any."""
        ex = self.executor
        source = source or SourceState()
        stages = {n: node for n, node in ex.nodes.items() if node.inputs}
        first = stages.get("segment") or stages.get("render")
        return RunResult(
            frames_out=ex.frames_out, dropped=self.dropped(),
            rejected=sum(sum(r.values()) for r in self.rejected().values()),
            traces=ex.traces, elapsed_s=elapsed_s,
            stages={n: node.processed for n, node in stages.items()}, captions=captions,
            rebased=sum(node.inputs[0].stats.rebased for node in stages.values()),
            streams=dict(first.by_stream) if first is not None else {},
            dropped_by_stream=(dict(first.inputs[0].stats.lost_by_stream)
                               if first is not None and not (first.name == "segment"
                                                             and self.dealt_out) else {}),
            source_reconnects=source.reconnects, source_outage_s=source.outage_s,
            source_missed=source.missed, **self._inference_outages(), **self._recording())

    def _recording(self) -> dict[str, object]:
        node = self.executor.nodes.get("record")
        failed = getattr(node.stage, "failed", None) if node is not None else None
        if failed is None:
            return {}
        return {"recording_failed": str(failed), "unrecorded": node.stage.unrecorded}

    def _inference_outages(self) -> dict[str, float]:
        engine = self.segment_engine()
        if not hasattr(engine, "unlabelled"):
            return {}
        return {"unlabelled": engine.unlabelled, "inference_outages": engine.outages,
                "inference_outage_s": engine.outage_s}


class StatusLog:
    """The status line every `every_s`: the rate over that interval (0.0 when nothing came,
    never a frozen window), latency, frames and drops; what a stage is doing while it opens
    (an engine build); and a warning naming the silent upstream once no frame came for
    `stall_warn_s`."""

    def __init__(self, metrics: Metrics, every_s: float, stall_warn_s: float, upstream: str,
                 window: LatencyWindow | None = None,
                 source_down: Callable[[], str | None] | None = None) -> None:
        self.metrics, self.every_s, self.stall_warn_s = metrics, every_s, stall_warn_s
        self.upstream = upstream  # what to blame for silence: a stage, or an endpoint
        self.window = window  # render's latency window, where render runs here
        self.source_down = source_down  # why a live source gives nothing, where capture runs
        now = time.monotonic()
        self._next = now + every_s
        self._last_count, self._last_t = 0, now
        self._progress_t: float | None = None  # last time frames_out moved (after opening)

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if now < self._next:
            return
        self._next += self.every_s
        self.log(now)

    def log(self, now: float) -> None:
        ex = self.metrics.executor
        opening = ex.opening()
        if opening:
            for name, activity, seconds in opening:
                logger.info("{}: {} ({:.0f} s)", name, activity or "opening", seconds)
            return
        count = ex.frames_out
        fps = (count - self._last_count) / max(now - self._last_t, 1e-6)
        moved = count != self._last_count
        self._last_count, self._last_t = count, now
        if moved or self._progress_t is None:
            self._progress_t = now
        line = self.line(fps, moved)
        why = self.source_down() if self.source_down is not None else None
        silent = now - self._progress_t
        if why is not None:
            # A live source that dropped out is retried on the capture thread: the rest of
            # the pipeline keeps running, and this line is where an operator sees why.
            logger.warning("{} | {}", why, line)
        elif silent >= self.stall_warn_s:
            logger.warning("no frames for {:.0f} s (upstream {} silent) | {}", silent,
                           self.upstream, line)
        else:
            logger.info("{}", line)

    def line(self, fps: float, moved: bool) -> str:
        ex = self.metrics.executor
        if self.window is not None:
            if moved:
                _, p50, p99 = self.window.summary()
                latency = f"e2e p50 {p50:.0f} ms p99 {p99:.0f} ms"
            else:
                latency = "e2e -"  # the window holds the last frames seen, however old
            note = self.metrics.segment_note()
            return (f"{fps:.1f} fps | {latency} | {ex.frames_out} frames | "
                    f"dropped {self.metrics.dropped()}" + (f" | {note}" if note else ""))
        segment = ex.nodes.get("segment")
        if segment is None:  # capture only
            return f"{fps:.1f} fps | {ex.frames_out} frames sent"
        # segment only: frames on and dropped, per stream
        lost = segment.inputs[0].stats.lost_by_stream
        counts = ", ".join(f"{k} {v}" + ("" if self.metrics.dealt_out else f" (dropped {lost[k]})")
                           for k, v in sorted(segment.by_stream.items()))
        note = self.metrics.segment_note()
        return (f"{fps:.1f} fps | {ex.frames_out} frames | {counts or 'no frames yet'}"
                + (f" | {note}" if note else ""))
