"""The runner: builds the graph from the config in one place, one thread per stage.

    capture ──► segment ──► render ──┬──► publish
                                     ├──► record
                                     └──► null (when nothing else consumes)

With `segment.enabled: false` the segment stage is left out (capture ──► render): no model
is loaded and frames are drawn, recorded and published without labels.

Each arrow is a ZeroMQ edge whose endpoint and mode come from `config.edges`. Shutdown is
ordered and never hangs: a stop request (Ctrl-C, SIGTERM, `--frames N`) stops the capture;
each later stage finishes once its upstream has finished and its input is drained, so the
recorder gets every frame that was rendered and finalises its file. An exception in a stage
aborts every stage at once and `run_pipeline` raises PipelineError naming the stage.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from loguru import logger

from pipeline import timecode
from pipeline.capture import CaptureThread
from pipeline.config import ConfigError, PipelineConfig
from pipeline.frame import Frame
from pipeline.sources import Captured, Source, SourceError, open_source
from pipeline.stages import (
    NullStage,
    PublishStage,
    RecordStage,
    RenderStage,
    SegmentStage,
    Stage,
)
from pipeline.transport import Mode, Receiver, Sender

JOIN_TIMEOUT_S = 10.0  # per stage at shutdown; a stage stuck longer is reported, not awaited


class PipelineError(RuntimeError):
    """A stage failed; the message names it."""


@dataclass
class RunResult:
    frames_out: int = 0  # frames that reached the end of the render stage
    dropped: int = 0  # frames captured but never rendered (latest-frame policy)
    rejected: int = 0  # invalid messages received on any edge
    traces: list[list[tuple[str, int, int]]] = field(default_factory=list)
    elapsed_s: float = 0.0
    stages: dict[str, int] = field(default_factory=dict)  # stage -> frames processed


@dataclass
class _Node:
    stage: Stage
    inputs: list[Receiver]
    outputs: list[Sender]
    upstream: list[str]
    thread: threading.Thread | None = None
    processed: int = 0
    ready: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)


class Pipeline:
    """A configured pipeline; `run()` blocks until it ends."""

    def __init__(self, cfg: PipelineConfig, max_frames: int | None = None,
                 keep_traces: bool = False, on_frame: Callable[[Frame], None] | None = None,
                 source: Source | None = None, status_every_s: float | None = None) -> None:
        self.cfg = cfg
        self.status_every_s = status_every_s
        self.max_frames = max_frames
        self.keep_traces = keep_traces
        self.on_frame = on_frame
        self.stop_requested = threading.Event()  # graceful: drain and finish
        self.abort = threading.Event()  # an error: everyone out now
        self.errors: list[tuple[str, BaseException]] = []
        self.result = RunResult()
        self._source = source or open_source(cfg.source)
        self._nodes: dict[str, _Node] = {}
        self._sockets: list[Sender | Receiver] = []
        self._capture_receiver: Receiver | None = None  # the edge where frames are dropped
        self._capture_done = threading.Event()
        self._lock = threading.Lock()
        self._timecode = False  # burn seq and capture time into frames (source.timecode)

    # -------------------------------------------------------------- graph (the one place)

    def _edge(self, name: str, parts: tuple[str, ...],
              mode: Mode | None = None) -> tuple[Sender, Receiver]:
        edge = self.cfg.edges[name]
        mode = mode or edge.mode
        # The stage's input binds: its address is fixed and any number of producers connect.
        receiver = Receiver(edge.endpoint, mode, max_bytes=self.cfg.max_message_bytes,
                            name=name, bind=True)
        self._sockets.append(receiver)
        sender = Sender(edge.endpoint, mode, parts=parts, bind=False)
        self._sockets.append(sender)
        return sender, receiver

    def _build(self) -> None:
        self._timecode = self._timecode_on()
        # Segmentation off: no stage and no model. The capture edge (configured as
        # capture->segment: it is where the live policy drops frames) feeds render directly,
        # so traces read capture -> render and drops are counted as before.
        segment = SegmentStage(self.cfg) if self.cfg.segment.enabled else None
        task = segment.task if segment is not None else None
        capture_out, capture_in = self._edge("capture->segment", ("image",),
                                             self._capture_mode())
        self._capture_receiver = capture_in
        if segment is not None:
            segment_out, render_in = self._edge("segment->render", ("image", "labels"))
            self._nodes["segment"] = _Node(segment, [capture_in], [segment_out], ["capture"])
            render_upstream = "segment"
        else:
            logger.info("segment: off (segment.enabled is false): frames go unlabelled")
            render_in, render_upstream = capture_in, "capture"
        sinks: list[tuple[str, Stage]] = []
        if self.cfg.publish.endpoint:
            sinks.append(("publish", PublishStage(self.cfg, task)))
        if self.cfg.record.path:
            sinks.append(("record", RecordStage(self.cfg, self._source.info.fps)))
        if not sinks:
            sinks.append(("null", NullStage()))
        render = RenderStage(self.cfg, task, self.dropped)
        render_outs = []
        for name, stage in sinks:
            sender, receiver = self._edge(f"render->{name}", ("image", "overlay", "labels"))
            render_outs.append(sender)
            self._nodes[name] = _Node(stage, [receiver], [], ["render"])
        self._capture_sender = capture_out
        for _, stage in sinks:
            stage.stopping = self.stop_requested.is_set
        self._nodes["render"] = _Node(render, [render_in], render_outs, [render_upstream])

    def _timecode_on(self) -> bool:
        """Whether capture burns the timecode in: source.timecode, `auto` asking the source."""
        setting = self.cfg.source.timecode
        info = self._source.info
        size_known = info.width > 0 and info.height > 0
        if setting == "auto":
            # A test feed at a size too small to carry it goes unmarked rather than failing.
            on = info.timecode and size_known and timecode.fits(info.height, info.width)
        elif setting and size_known and not timecode.fits(info.height, info.width):
            raise ConfigError(f"source.timecode: {info.name} gives {info.width}x{info.height}"
                              f" frames, too small for the timecode (at least 480x270); set "
                              f"source.timecode: false")
        else:
            on = setting
        if on and self.cfg.segment.enabled and self.cfg.segment.crop == "none":
            # Without the EndoVis crop the model sees the code and may draw over it.
            logger.warning("source.timecode is on with segment.crop none: the model sees "
                           "the timecode; keep crop endovis to leave it out of segmentation")
        return on

    def _capture_mode(self) -> Mode:
        """The capture edge follows the source. A source that is not live (lossless replay)
        promises every frame once, so its edge is lossless whatever `edges` says; a live
        source uses the configured mode (latest by default: only the newest frame)."""
        configured = self.cfg.edges["capture->segment"].mode
        if self._source.info.live or configured == "lossless":
            return configured
        logger.info("capture->segment: lossless, because {} is replayed losslessly",
                    self._source.info.name)
        return "lossless"

    # -------------------------------------------------------------- counters

    def dropped(self) -> int:
        receiver = self._capture_receiver
        return receiver.dropped if receiver is not None else 0

    # -------------------------------------------------------------- threads

    def _capture_loop(self) -> None:
        # Capture starts when every stage is open (models loaded, kernels compiled): frames
        # taken earlier would only queue up, stale, or count as drops that never happened.
        while not all(n.ready.wait(0.05) for n in self._nodes.values()):
            if self.abort.is_set() or self.stop_requested.is_set():
                self._capture_done.set()
                return
        capture = CaptureThread(self._source)
        try:
            with capture:
                for item in capture.frames(self.stop_requested):
                    if self.abort.is_set():
                        break
                    # seq is the source's index: frames the source produced but nobody took
                    # (replaced in the capture holder, or late) show downstream as seq gaps
                    # and are counted as dropped with the rest.
                    frame = _frame_of(self.cfg.stream, item)
                    if self._timecode:
                        # Here, once seq and both capture times are final: the code carries
                        # exactly the header's values, and its cost counts as capture.
                        _burn_timecode(frame)
                    frame.stamp("capture", frame.t_capture_ns)
                    while not self._capture_sender.send(frame):
                        if self.abort.is_set() or self.stop_requested.is_set():
                            return
        except Exception as exc:  # noqa: BLE001 - any failure is reported with the stage name
            self._fail("capture", exc)
        finally:
            logger.debug("capture: {} frames taken, {} replaced before they were taken",
                         capture.taken, capture.overwritten)
            self._capture_done.set()

    def _upstream_done(self, node: _Node) -> bool:
        for name in node.upstream:
            if name == "capture":
                if not self._capture_done.is_set():
                    return False
            elif not self._nodes[name].done.is_set():
                return False
        return True

    def _stage_loop(self, name: str, node: _Node) -> None:
        stage = node.stage
        receiver = node.inputs[0]
        try:
            stage.open()
            node.ready.set()
            while not self.abort.is_set():
                finished_upstream = self._upstream_done(node)
                frame = receiver.recv(timeout_ms=20 if finished_upstream else 100)
                if frame is None:
                    if finished_upstream:
                        break  # upstream ended and nothing is left: drained
                    continue
                if name == "render" and self._render_limit_reached():
                    continue  # past --frames: drain quietly so upstream can finish
                t_in = time.monotonic_ns()
                out = stage.process(frame)
                frame.stamp(name, t_in)
                node.processed += 1
                if out is not None:
                    for sender in node.outputs:
                        while not sender.send(out):
                            if self.abort.is_set():
                                return
                if name == "render":
                    self._rendered(frame)
        except Exception as exc:  # noqa: BLE001 - reported with the stage name, then abort
            self._fail(name, exc)
        finally:
            try:
                stage.close()
            except Exception as exc:  # noqa: BLE001
                self._fail(name, exc)
            node.done.set()

    def _render_limit_reached(self) -> bool:
        return self.max_frames is not None and self.result.frames_out >= self.max_frames

    def _rendered(self, frame: Frame) -> None:
        with self._lock:
            self.result.frames_out += 1
            if self.keep_traces:
                self.result.traces.append(list(frame.trace))
        if self.on_frame is not None:
            self.on_frame(frame)
        if self._render_limit_reached():
            self.stop_requested.set()

    def _fail(self, stage: str, exc: BaseException) -> None:
        with self._lock:
            self.errors.append((stage, exc))
        # A SourceError already says what and why (a source gave up reconnecting): no
        # traceback; anything else is a bug worth one.
        logger.opt(exception=None if isinstance(exc, SourceError) else exc).error(
            "stage {} failed: {}", stage, exc)
        self.abort.set()
        self.stop_requested.set()

    # -------------------------------------------------------------- run

    def request_stop(self) -> None:
        """Graceful stop (Ctrl-C, SIGTERM): capture ends, the rest drains and finalises."""
        self.stop_requested.set()

    def run(self) -> RunResult:
        started = time.monotonic()
        try:
            self._build()
        except Exception:
            self._close_edges()
            self._source.close()
            raise
        threads = []
        for name, node in self._nodes.items():
            node.thread = threading.Thread(target=self._stage_loop, args=(name, node),
                                           name=f"orstream-{name}", daemon=True)
            threads.append(node.thread)
        capture = threading.Thread(target=self._capture_loop, name="orstream-capture",
                                   daemon=True)
        for t in threads:
            t.start()
        capture.start()
        next_status = time.monotonic() + (self.status_every_s or 0)
        try:
            while capture.is_alive() or any(t.is_alive() for t in threads):
                if self.abort.wait(0.1):
                    break
                if self.status_every_s and time.monotonic() >= next_status:
                    next_status += self.status_every_s
                    self._log_status()
        finally:
            self.stop_requested.set()
            stuck = []
            for t in [capture, *threads]:
                t.join(JOIN_TIMEOUT_S)
                if t.is_alive():
                    stuck.append(t.name)
            self._close_edges()
            self._source.close()
        self.result.elapsed_s = time.monotonic() - started
        self.result.dropped = self.dropped()
        self.result.rejected = sum(sum(n.inputs[0].stats.rejected.values())
                                   for n in self._nodes.values())
        self.result.stages = {name: n.processed for name, n in self._nodes.items()}
        if self.errors:
            stage, exc = self.errors[0]
            raise PipelineError(f"stage {stage!r} failed: {exc.__class__.__name__}: {exc}")
        if stuck:
            raise PipelineError(f"stages did not stop within {JOIN_TIMEOUT_S:.0f} s: "
                                f"{', '.join(stuck)}")
        return self.result

    def _log_status(self) -> None:
        render = self._nodes["render"].stage
        assert isinstance(render, RenderStage)
        fps, p50, p99 = render.window.summary()
        line = (f"{fps:.1f} fps | e2e p50 {p50:.0f} ms p99 {p99:.0f} ms | "
                f"{self.result.frames_out} frames | dropped {self.dropped()}")
        # A live source that dropped out is retried on the capture thread: the rest of the
        # pipeline keeps running, and this line is where an operator sees why no frames come.
        state = self._source.state
        if state.up:
            logger.info("{}", line)
        else:
            logger.warning("{} | {}", state.describe(), line)

    def _close_edges(self) -> None:
        for socket in self._sockets:
            socket.close()


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


def run_pipeline(cfg: PipelineConfig, max_frames: int | None = None,
                 keep_traces: bool = False) -> RunResult:
    """Run until the source ends, `max_frames` frames are rendered, or a stop request."""
    return Pipeline(cfg, max_frames=max_frames, keep_traces=keep_traces).run()
