"""The runner: builds the graph from the config in one place, one thread per stage.

    capture ──► segment ──► render ──┬──► publish
                                     ├──► record
                                     └──► null (when nothing else consumes)

With `segment.enabled: false` the segment stage is left out (capture ──► render): no model
is loaded and frames are drawn, recorded and published without labels.

Each arrow is a ZeroMQ edge whose endpoint and mode come from `config.edges`. `stages`
runs part of the graph in this process (`orstream run --stages segment`): an edge to a stage
that runs elsewhere keeps only this side, over its ipc:// or tcp:// endpoint, so the same
config wires every process. A stage fed from another process runs until stopped (SIGTERM,
Ctrl-C or `--frames`), since it cannot know when the other process ends. Shutdown is
ordered and never hangs: a stop request (Ctrl-C, SIGTERM, `--frames N`) stops the capture;
each later stage finishes once its upstream has finished and its input is drained, so the
recorder gets every frame that was rendered and finalises its file. An exception in a stage
aborts every stage at once and `run_pipeline` raises PipelineError naming the stage.
"""

from __future__ import annotations

import gc
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from loguru import logger
from orstream.pipeline import timecode
from orstream.pipeline.capture import CaptureThread
from orstream.pipeline.config import ConfigError, PipelineConfig, exposed_endpoints
from orstream.pipeline.describe import DescribeWorker
from orstream.pipeline.frame import Frame
from orstream.pipeline.reorder import ReorderingReceiver
from orstream.pipeline.security import Curve, curve_from_files
from orstream.pipeline.sources import Captured, Source, SourceError, open_source
from orstream.pipeline.stages import (
    MaskPublishStage,
    NullStage,
    PublishStage,
    RecordStage,
    RenderStage,
    SegmentStage,
    Stage,
)
from orstream.pipeline.transport import Mode, Receiver, Sender

STAGES = ("capture", "segment", "render")  # what --stages picks from; sinks go with render
JOIN_TIMEOUT_S = 10.0  # per stage at shutdown; a stage stuck longer is reported, not awaited
LATEST_HWM, LOSSLESS_HWM = 2, 8  # edges.*.hwm left unset
REMOTE_DRAIN_S = 2.0  # stopping: how long a full lossless edge may hold a frame back


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
    captions: int = 0  # scene descriptions made (describe)
    # frames whose times came from another host's clock (converted via wall clocks): their
    # latencies are only as good as the hosts' clock sync
    rebased: int = 0
    streams: dict[str, int] = field(default_factory=dict)  # stream id -> frames processed
    dropped_by_stream: dict[str, int] = field(default_factory=dict)  # stream id -> frames lost


@dataclass
class _Node:
    stage: Stage
    inputs: list[Receiver | ReorderingReceiver]
    outputs: list[Sender | StreamSenders]
    upstream: list[str]
    thread: threading.Thread | None = None
    processed: int = 0
    by_stream: Counter = field(default_factory=Counter)  # stream id -> frames processed
    ready: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)


class Pipeline:
    """A configured pipeline; `run()` blocks until it ends."""

    def __init__(self, cfg: PipelineConfig, max_frames: int | None = None,
                 keep_traces: bool = False, on_frame: Callable[[Frame], None] | None = None,
                 source: Source | None = None, status_every_s: float | None = None,
                 stages: Collection[str] | None = None) -> None:
        self.cfg = cfg
        self.local = _local_stages(cfg, stages)
        self.status_every_s = status_every_s
        self.max_frames = max_frames
        self.keep_traces = keep_traces
        self.on_frame = on_frame
        self.stop_requested = threading.Event()  # graceful: drain and finish
        self.abort = threading.Event()  # an error: everyone out now
        self.errors: list[tuple[str, BaseException]] = []
        self.result = RunResult()
        # The source is opened only where capture runs (a camera belongs to one process).
        self._source: Source | None = None
        if "capture" in self.local:
            self._source = source or open_source(cfg.source)
        # The stage whose output --frames counts: the last one of the graph run here.
        self._counted_stage = next(s for s in ("render", "segment", "capture")
                                   if s in self.local)
        self._capture_sender: Sender | None = None
        self._nodes: dict[str, _Node] = {}
        self._sockets: list[Sender | Receiver] = []
        self._capture_receiver: Receiver | None = None  # the edge where frames are dropped
        self._capture_done = threading.Event()
        self._settled = threading.Event()  # stages open, start-up garbage dealt with
        self._lock = threading.Lock()
        self._timecode = False  # burn seq and capture time into frames (source.timecode)
        self._curve: Curve | None = None
        self._describe: DescribeWorker | None = None

    # -------------------------------------------------------------- graph (the one place)

    def _edge(self, name: str, parts: tuple[str, ...], producer: str, consumer: str,
              mode: Mode | None = None) -> tuple[Sender | StreamSenders | None,
                                                 Receiver | None]:
        """The sides of edge `name` that run here: (sender, receiver), None where elsewhere."""
        edge = self.cfg.edges[name]
        mode = mode or edge.mode
        here_p, here_c = producer in self.local, consumer in self.local
        endpoint = edge.endpoint
        if here_p != here_c and endpoint.startswith("inproc://"):
            raise ConfigError(f"edges.{name}.endpoint: {endpoint} only works inside one "
                              f"process, but {producer if here_p else consumer} runs here and "
                              f"{consumer if here_p else producer} elsewhere: give the edge an "
                              f"ipc://, shm:// (same host) or tcp:// endpoint")
        receiver_binds = edge.bind == "receiver"
        hwm = edge.hwm or (LATEST_HWM if mode == "latest" else LOSSLESS_HWM)
        receiver = sender = None
        if here_c:
            # One receiving process serves the streams its endpoint names: its own.
            receiver = Receiver(endpoint.replace("{stream}", self.cfg.stream), mode,
                                hwm=hwm, max_bytes=self.cfg.max_message_bytes, name=name,
                                bind=receiver_binds, curve=self._curve)
            self._sockets.append(receiver)
        if here_p:
            if "{stream}" in endpoint and not here_c:
                # A shared stage (one inference process for several rooms) answers each
                # stream on its own endpoint.
                sender = StreamSenders(endpoint, mode, hwm, parts, not receiver_binds,
                                       self._curve)
            else:
                sender = Sender(endpoint.replace("{stream}", self.cfg.stream), mode,
                                hwm=hwm, parts=parts, bind=not receiver_binds,
                                curve=self._curve)
            self._sockets.append(sender)
        return sender, receiver

    def _task(self, segment: SegmentStage | None) -> str | None:
        """The segmentation task render draws: from the local model, or the configured
        weights' metadata when segmentation runs in another process."""
        if segment is not None:
            return segment.task
        if not self.cfg.segment.enabled:
            return None
        from orstream.engines import checkpoint as ckpt

        return ckpt.load(self.cfg.segment.weights).task

    def _build(self) -> None:
        self._curve = _curve_of(self.cfg)
        local = self.local
        self._timecode = "capture" in local and self._timecode_on()
        # Segmentation off: no stage and no model. The capture edge (configured as
        # capture->segment: it is where the live policy drops frames) feeds render directly,
        # so traces read capture -> render and drops are counted as before.
        enabled = self.cfg.segment.enabled
        segment = SegmentStage(self.cfg) if enabled and "segment" in local else None
        task = self._task(segment)
        capture_out, capture_in = self._edge("capture->segment", ("image",), "capture",
                                             "segment" if enabled else "render",
                                             self._capture_mode())
        self._capture_sender = capture_out  # type: ignore[assignment]
        self._capture_receiver = capture_in
        render_in: Receiver | ReorderingReceiver | None
        if enabled:
            segment_out, render_in = self._edge("segment->render", ("image", "labels"),
                                                "segment", "render")
            if segment is not None:
                assert capture_in is not None and segment_out is not None
                self._nodes["segment"] = _Node(segment, [capture_in], [segment_out],
                                               ["capture"])
            render_upstream = "segment"
        else:
            logger.info("segment: off (segment.enabled is false): frames go unlabelled")
            render_in, render_upstream = capture_in, "capture"
        if "render" in local:
            assert render_in is not None
            if self.cfg.render.reorder_ms:
                render_in = ReorderingReceiver(render_in, self.cfg.render.reorder_ms)
            self._build_render(task, render_in, render_upstream)

    def _build_render(self, task: str | None, render_in: Receiver | ReorderingReceiver,
                      upstream: str) -> None:
        sinks: list[tuple[str, Stage]] = []
        if self.cfg.publish.endpoint:
            sinks.append(("publish", PublishStage(self.cfg, task, self._curve)))
        if self.cfg.masks.endpoint:
            sinks.append(("masks", MaskPublishStage(self.cfg, task, self._curve)))
        if self.cfg.record.path:
            fps = self._source.info.fps if self._source is not None else self.cfg.source.fps
            sinks.append(("record", RecordStage(self.cfg, fps)))
        if not sinks:
            sinks.append(("null", NullStage()))
        if self.cfg.describe.enabled:
            # With render: it sees every frame and draws the caption; a process without
            # render has no use for one.
            self._describe = DescribeWorker(self.cfg.describe)
        render = RenderStage(self.cfg, task, self.dropped, self._describe)
        render_outs: list[Sender | StreamSenders] = []
        for name, stage in sinks:
            sender, receiver = self._edge(f"render->{name}", ("image", "overlay", "labels"),
                                          "render", "render")
            assert sender is not None and receiver is not None
            render_outs.append(sender)
            stage.stopping = self.stop_requested.is_set
            self._nodes[name] = _Node(stage, [receiver], [], ["render"])
        self._nodes["render"] = _Node(render, [render_in], render_outs, [upstream])

    def _timecode_on(self) -> bool:
        """Whether capture burns the timecode in: source.timecode, `auto` asking the source."""
        setting = self.cfg.source.timecode
        assert self._source is not None, "the timecode is burnt in where capture runs"
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
        if self._source is None or self._source.info.live or configured == "lossless":
            return configured
        logger.info("capture->segment: lossless, because {} is replayed losslessly",
                    self._source.info.name)
        return "lossless"

    # -------------------------------------------------------------- counters

    def dropped(self) -> int:
        """Frames captured and never shown. The capture edge counts them from seq gaps
        where it ends here; where it ends in another process, render's input does."""
        receiver = self._capture_receiver
        if receiver is None and "render" in self._nodes:
            receiver = self._nodes["render"].inputs[0]
        elif receiver is not None and self._dealt_out() and "render" not in self.local:
            # One of several workers sees every Nth seq by design: its gaps are its peers'
            # frames, not losses. Render, where the results meet, counts the real ones.
            return 0
        return receiver.dropped if receiver is not None else 0

    def _dealt_out(self) -> bool:
        """capture->segment deals frames out to workers (the sender binds a lossless edge)."""
        edge = self.cfg.edges["capture->segment"]
        return edge.bind == "sender" and edge.mode == "lossless"

    # -------------------------------------------------------------- threads

    def _capture_loop(self) -> None:
        # Capture starts when every stage is open (models loaded, kernels compiled): frames
        # taken earlier would only queue up, stale, or count as drops that never happened.
        # The source's own set-up overlaps the stages' opening.
        assert self._source is not None and self._capture_sender is not None
        capture: CaptureThread | None = None
        sender = self._capture_sender
        prev_seq: int | None = None
        try:
            self._source.prepare()
            while not self._settled.wait(0.05):
                if self.abort.is_set() or self.stop_requested.is_set():
                    return
            capture = CaptureThread(self._source)
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
                    frame.prev_seq = prev_seq
                    while not sender.send(frame):
                        if self.abort.is_set() or self.stop_requested.is_set():
                            return
                    prev_seq = frame.seq
                    if self._counted_stage == "capture":
                        self._counted(frame)
        except Exception as exc:  # noqa: BLE001 - any failure is reported with the stage name
            self._fail("capture", exc)
        finally:
            if capture is not None:
                logger.debug("capture: {} frames taken, {} replaced before they were taken",
                             capture.taken, capture.overwritten)
            self._capture_done.set()

    def _upstream_done(self, node: _Node) -> bool:
        for name in node.upstream:
            if name not in self.local:
                # Another process: it cannot tell us it ended, so this stage drains and
                # finishes once a stop is requested here.
                if not self.stop_requested.is_set():
                    return False
            elif name == "capture":
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
                if name == self._counted_stage and self._limit_reached():
                    continue  # past --frames: drain quietly so upstream can finish
                t_in = time.monotonic_ns()
                out = stage.process(frame)
                frame.stamp(name, t_in)
                node.processed += 1
                node.by_stream[frame.stream] += 1
                if out is not None:
                    for sender in node.outputs:
                        if not self._send(name, sender, out):
                            return
                if name == self._counted_stage:
                    self._counted(frame)
        except Exception as exc:  # noqa: BLE001 - reported with the stage name, then abort
            self._fail(name, exc)
        finally:
            try:
                stage.close()
            except Exception as exc:  # noqa: BLE001
                self._fail(name, exc)
            node.done.set()

    def _send(self, name: str, sender: Sender | StreamSenders, frame: Frame) -> bool:
        """Send on, waiting while a lossless edge is full. False: give up (abort). A
        consumer in another process may be gone for good once we are stopping: after
        REMOTE_DRAIN_S the frame is dropped rather than holding the shutdown forever."""
        stopping_since = None
        while not sender.send(frame):
            if self.abort.is_set():
                return False
            if self.stop_requested.is_set():
                now = time.monotonic()
                stopping_since = stopping_since or now
                if now - stopping_since > REMOTE_DRAIN_S:
                    logger.warning("{}: nobody took frame {} within {:.0f} s of the stop "
                                   "request; dropped", name, frame.seq, REMOTE_DRAIN_S)
                    return True
        return True

    def _limit_reached(self) -> bool:
        return self.max_frames is not None and self.result.frames_out >= self.max_frames

    def _counted(self, frame: Frame) -> None:
        with self._lock:
            self.result.frames_out += 1
            if self.keep_traces:
                self.result.traces.append(list(frame.trace))
        if self.on_frame is not None:
            self.on_frame(frame)
        if self._limit_reached():
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
            if self._describe is not None:
                self._describe.close()
            if self._source is not None:
                self._source.close()
            raise
        self._warn_exposure()
        threads = []
        for name, node in self._nodes.items():
            node.thread = threading.Thread(target=self._stage_loop, args=(name, node),
                                           name=f"orstream-{name}", daemon=True)
            threads.append(node.thread)
        if self._source is not None:
            threads.append(threading.Thread(target=self._capture_loop, name="orstream-capture",
                                            daemon=True))
        else:
            self._capture_done.set()
        if self._describe is not None:
            self._describe.start()
        for t in threads:
            t.start()
        next_status = time.monotonic() + (self.status_every_s or 0)
        try:
            while any(t.is_alive() for t in threads):
                if not self._settled.is_set() and all(n.ready.is_set()
                                                      for n in self._nodes.values()):
                    _settle_garbage()
                    self._settled.set()  # capture may start
                if self.abort.wait(0.02 if not self._settled.is_set() else 0.1):
                    break
                if self.stop_requested.is_set() and self._describe is not None:
                    self._describe.stop()  # captions end while the frame path drains
                if self.status_every_s and time.monotonic() >= next_status:
                    next_status += self.status_every_s
                    self._log_status()
        finally:
            self.stop_requested.set()
            if self._describe is not None:
                self._describe.stop()
            stuck = []
            for t in threads:
                t.join(JOIN_TIMEOUT_S)
                if t.is_alive():
                    stuck.append(t.name)
            self._close_edges()
            if self._describe is not None:
                self._describe.close()
            if self._source is not None:
                self._source.close()
            if self._settled.is_set():
                gc.unfreeze()
            gc.enable()  # a run that failed before settling leaves the collector on too
        self.result.elapsed_s = time.monotonic() - started
        self.result.dropped = self.dropped()
        self.result.rejected = sum(sum(n.inputs[0].stats.rejected.values())
                                   for n in self._nodes.values())
        self.result.rebased = sum(n.inputs[0].stats.rebased for n in self._nodes.values())
        self.result.stages = {name: n.processed for name, n in self._nodes.items()}
        if self._describe is not None:
            self.result.captions = self._describe.captions
        first = self._nodes.get("segment") or self._nodes.get("render")
        self.result.streams = dict(first.by_stream) if first is not None else {}
        self.result.dropped_by_stream = (
            dict(first.inputs[0].stats.lost_by_stream)
            if first is not None and not (first is self._nodes.get("segment")
                                          and self._dealt_out()) else {})
        if self.errors:
            stage, exc = self.errors[0]
            raise PipelineError(f"stage {stage!r} failed: {exc.__class__.__name__}: {exc}")
        if stuck:
            raise PipelineError(f"stages did not stop within {JOIN_TIMEOUT_S:.0f} s: "
                                f"{', '.join(stuck)}")
        return self.result

    def _warn_exposure(self) -> None:
        if self._curve is None:
            for key, endpoint in exposed_endpoints(self.cfg):
                logger.warning("{}: {} is open to other machines WITHOUT authentication or "
                               "encryption (security.allow_insecure: true)", key, endpoint)

    def _log_status(self) -> None:
        node = self._nodes.get("render")
        if node is None:  # capture or segment only: frames on and dropped, per stream
            segment = self._nodes.get("segment")
            if segment is None:
                logger.info("{} frames sent", self.result.frames_out)
                return
            lost = segment.inputs[0].stats.lost_by_stream
            counts = ", ".join(f"{k} {v}" + ("" if self._dealt_out() else f" (dropped {lost[k]})")
                               for k, v in sorted(segment.by_stream.items()))
            logger.info("{} frames | {}", self.result.frames_out, counts or "no frames yet")
            return
        render = node.stage
        assert isinstance(render, RenderStage)
        fps, p50, p99 = render.window.summary()
        line = (f"{fps:.1f} fps | e2e p50 {p50:.0f} ms p99 {p99:.0f} ms | "
                f"{self.result.frames_out} frames | dropped {self.dropped()}")
        # A live source that dropped out is retried on the capture thread: the rest of the
        # pipeline keeps running, and this line is where an operator sees why no frames come.
        if self._source is None:
            logger.info("{}", line)
            return
        state = self._source.state
        if state.up:
            logger.info("{}", line)
        else:
            logger.warning("{} | {}", state.describe(), line)

    def _close_edges(self) -> None:
        for socket in self._sockets:
            socket.close()


class StreamSenders:
    """One Sender per stream on a `{stream}` endpoint, opened at a stream's first frame."""

    def __init__(self, template: str, mode: Mode, hwm: int, parts: tuple[str, ...],
                 bind: bool, curve: Curve | None) -> None:
        self.template, self.mode, self.hwm, self.parts = template, mode, hwm, parts
        self.bind, self.curve = bind, curve
        self._senders: dict[str, Sender] = {}

    def send(self, frame: Frame, timeout_ms: int = 100) -> bool:
        sender = self._senders.get(frame.stream)
        if sender is None:
            endpoint = self.template.replace("{stream}", frame.stream)
            sender = self._senders[frame.stream] = Sender(
                endpoint, self.mode, hwm=self.hwm, parts=self.parts, bind=self.bind,
                curve=self.curve)
            logger.info("stream {}: results go to {}", frame.stream, endpoint)
        return sender.send(frame, timeout_ms)

    def close(self) -> None:
        for sender in self._senders.values():
            sender.close()


def _settle_garbage() -> None:
    """Collect start-up garbage once and freeze what survives (models, modules, configs) out
    of the collector's reach. Otherwise the first full collection after start walks every
    object torch and the engines created, with the GIL held: measured 96 ms, one frame
    stopped dead. gc.unfreeze() at the end of the run hands them back.

    The collector runs from here on, also where the entry point turned it off for start-up
    (`orstream run` does: see cli._run_pipeline)."""
    gc.collect()
    gc.freeze()
    gc.enable()


def _local_stages(cfg: PipelineConfig, stages: Collection[str] | None) -> set[str]:
    if stages is None:
        return set(STAGES)
    chosen = set(stages)
    unknown = chosen - set(STAGES)
    if unknown or not chosen:
        raise ConfigError(f"--stages {','.join(sorted(stages))}: choose from "
                          f"{', '.join(STAGES)} (sinks run with render)")
    if "segment" in chosen and not cfg.segment.enabled:
        raise ConfigError("--stages lists segment but segment.enabled is false")
    return chosen


def _curve_of(cfg: PipelineConfig) -> Curve | None:
    sec = cfg.security
    if not sec.curve:
        return None
    assert sec.key is not None  # the config's validator requires it with curve on
    return curve_from_files(sec.key, sec.server_public_key, sec.allowed_clients)


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
                 keep_traces: bool = False, stages: Collection[str] | None = None) -> RunResult:
    """Run until the source ends, `max_frames` frames are rendered, or a stop request."""
    return Pipeline(cfg, max_frames=max_frames, keep_traces=keep_traces, stages=stages).run()
