"""Runs a Graph: one thread per stage run here, the source node once every stage is open,
workers (describe) beside them.

Shutdown is ordered and never hangs: a stop request (Ctrl-C, SIGTERM, `--frames N`) stops
the source; each later stage finishes once its upstream has finished and its input is
drained, so the recorder gets every frame that was rendered and finalises its file. A stage
fed from another process runs until stopped, since it cannot know when that process ends.
An exception in a stage aborts every stage at once; `run` raises it again when it is an
expected error (OrstreamError: one line for the CLI), or a PipelineError naming the stage
when it is a bug (whose traceback was logged).
"""

from __future__ import annotations

import gc
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from loguru import logger

from orstream.common.errors import OrstreamError
from orstream.pipeline.edges import EdgeSockets, Input, Output
from orstream.pipeline.frame import Frame
from orstream.pipeline.graph import Graph
from orstream.pipeline.stages import Stage

JOIN_TIMEOUT_S = 10.0  # per stage at shutdown; a stage stuck longer is reported, not awaited
REMOTE_DRAIN_S = 2.0  # stopping: how long a full lossless edge may hold a frame back
TICK_S = 0.1  # how often the running executor calls back (status) and checks for a stop


class PipelineError(RuntimeError):
    """A stage failed with a bug (its traceback is in the log), or stages did not stop."""

    def __init__(self, message: str, stage: str | None = None,
                 cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.stage, self.cause = stage, cause


class SourceStage(Protocol):
    """The node without inputs: `open()` (on its own thread, while the stages open),
    then `frames(stop)` until it ends or `stop` is set, then `close()`."""

    activity: str | None

    def open(self) -> None: ...
    def frames(self, stop: threading.Event) -> Iterator[Frame]: ...
    def close(self) -> None: ...


class Worker(Protocol):
    """Beside the frame path with threads of its own (describe)."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...


@dataclass
class Running:
    """A node of the graph running here, with what metrics read."""

    name: str
    stage: Stage | SourceStage
    inputs: list[Input]
    outputs: list[Output]
    upstream: list[tuple[str, bool]]  # (node, runs here)
    processed: int = 0
    by_stream: Counter = field(default_factory=Counter)  # stream id -> frames processed
    opening_since: float | None = None  # monotonic time open() began, until it returns
    thread: threading.Thread | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)


class Executor:
    """Runs the local nodes of `graph` over the opened `sockets`; `stages` maps node name to
    its stage (a SourceStage for the source node, a Worker for workers)."""

    def __init__(self, graph: Graph, stages: dict[str, object], sockets: EdgeSockets,
                 max_frames: int | None = None, keep_traces: bool = False,
                 on_frame: Callable[[Frame], None] | None = None) -> None:
        self.graph = graph
        self.sockets = sockets
        self.max_frames = max_frames
        self.keep_traces = keep_traces
        self.on_frame = on_frame
        self.counted = graph.last_local()  # the node whose output --frames counts
        self.frames_out = 0
        self.traces: list[list[tuple[str, int, int]]] = []
        self.errors: list[tuple[str, BaseException]] = []
        self.stop_requested = threading.Event()  # graceful: drain and finish
        self.abort = threading.Event()  # an error: everyone out now
        self.ready = threading.Event()  # every stage open, start-up garbage settled
        self._go = threading.Event()  # the source may start, or give up: ready or stopping
        self._lock = threading.Lock()
        self._stop_noted = False
        self.nodes: dict[str, Running] = {}
        self.workers: dict[str, Worker] = {}
        for name, node in graph.nodes.items():
            if not node.local:
                continue
            if node.role == "worker":
                self.workers[name] = stages[name]  # type: ignore[assignment]
                continue
            stage = stages[name]
            inputs = [sockets.receivers[e.name] for e in graph.inputs(name) if e.endpoint]
            outputs = [sockets.senders[e.name] for e in graph.outputs(name) if e.endpoint]
            upstream = [(e.source, graph.nodes[e.source].local) for e in graph.inputs(name)
                        if e.endpoint]
            if isinstance(stage, Stage):
                # A stage that waits on a peer (a lossless display that went away) gives up
                # once the pipeline is stopping instead of blocking shutdown.
                stage.stopping = self.stop_requested.is_set
            self.nodes[name] = Running(name, stage, inputs, outputs,  # type: ignore[arg-type]
                                       upstream)

    # -------------------------------------------------------------- control

    def request_stop(self) -> None:
        self.stop_requested.set()
        self._go.set()

    def opening(self) -> list[tuple[str, str | None, float]]:
        """(node, what it is doing, seconds so far) for each node still opening."""
        now = time.monotonic()
        return [(n.name, getattr(n.stage, "activity", None), now - n.opening_since)
                for n in self.nodes.values() if n.opening_since is not None]

    def run(self, tick: Callable[[], None] | None = None) -> None:
        """Run until every node has finished; `tick` is called every TICK_S meanwhile."""
        for name, node in self.nodes.items():
            source = self.graph.nodes[name].role == "source"
            loop = self._source_loop if source else self._stage_loop
            node.thread = threading.Thread(target=loop, args=(node,), name=f"orstream-{name}",
                                           daemon=True)
        for worker in self.workers.values():
            worker.start()
        for node in self.nodes.values():
            assert node.thread is not None
            node.thread.start()
        stages = [n for n in self.nodes.values() if self.graph.nodes[n.name].role == "stage"]
        try:
            while any(n.thread.is_alive() for n in self.nodes.values()):  # type: ignore[union-attr]
                if not self.ready.is_set() and all(n.ready.is_set() for n in stages):
                    _settle_garbage()
                    self.ready.set()
                    self._go.set()  # the source may start
                if self.abort.wait(0.02 if not self.ready.is_set() else TICK_S):
                    break
                if self.stop_requested.is_set():
                    self._note_stop()
                    for worker in self.workers.values():
                        worker.stop()  # captions end while the frame path drains
                if tick is not None:
                    tick()
        finally:
            self.request_stop()
            stuck = self._wind_down()
        if self.errors:
            stage, exc = self.errors[0]
            if isinstance(exc, OrstreamError):
                raise exc  # expected: its one line says what and how to fix it
            raise PipelineError(f"stage {stage!r} failed: {exc.__class__.__name__}: {exc}",
                                stage, exc) from exc
        if stuck:
            raise PipelineError(f"stages did not stop within {JOIN_TIMEOUT_S:.0f} s: "
                                f"{', '.join(stuck)}")

    def _wind_down(self) -> list[str]:
        for worker in self.workers.values():
            worker.stop()
        stuck = []
        for node in self.nodes.values():
            if node.thread is not None and node.thread.ident is not None:
                node.thread.join(JOIN_TIMEOUT_S)
                if node.thread.is_alive():
                    stuck.append(node.thread.name)
        self.sockets.close()
        for worker in self.workers.values():
            worker.close()
        if self.ready.is_set():
            gc.unfreeze()
        gc.enable()  # a run that failed before settling leaves the collector on too
        return stuck

    def _note_stop(self) -> None:
        """A stop while a stage is still opening (an engine build) is taken at once, but the
        build itself cannot be cut short: say so, so Ctrl-C never looks ignored."""
        if self._stop_noted:
            return
        self._stop_noted = True
        for name, activity, seconds in self.opening():
            logger.warning("{}: finishing {} ({:.0f} s so far), then stopping", name,
                           activity or "opening", seconds)

    # -------------------------------------------------------------- threads

    def _open(self, node: Running) -> None:
        node.opening_since = time.monotonic()
        try:
            node.stage.open()
        finally:
            node.opening_since = None
        node.ready.set()

    def _source_loop(self, node: Running) -> None:
        # The source starts when every stage is open (models loaded, kernels compiled):
        # frames taken earlier would only queue up, stale, or count as drops that never
        # happened. The source's own set-up overlaps the stages' opening.
        stage = node.stage
        assert not isinstance(stage, Stage)
        prev_seq: int | None = None
        try:
            self._open(node)
            self._go.wait()
            if self.abort.is_set() or self.stop_requested.is_set():
                return
            for frame in stage.frames(self.stop_requested):
                if self.abort.is_set():
                    break
                frame.prev_seq = prev_seq
                for sender in node.outputs:
                    while not sender.send(frame):
                        if self.abort.is_set() or self.stop_requested.is_set():
                            return
                prev_seq = frame.seq
                if node.name == self.counted:
                    self._counted(frame)
        except Exception as exc:  # noqa: BLE001 - any failure is reported with the stage name
            self._fail(node.name, exc)
        finally:
            self._close(node)

    def _upstream_done(self, node: Running) -> bool:
        for name, here in node.upstream:
            # Another process cannot tell us it ended: this stage drains and finishes once
            # a stop is requested here.
            if not (self.nodes[name].done.is_set() if here else self.stop_requested.is_set()):
                return False
        return True

    def _stage_loop(self, node: Running) -> None:
        name, stage, receiver = node.name, node.stage, node.inputs[0]
        assert isinstance(stage, Stage)
        counted = name == self.counted
        try:
            self._open(node)
            while not self.abort.is_set():
                finished_upstream = self._upstream_done(node)
                frame = receiver.recv(timeout_ms=20 if finished_upstream else 100)
                if frame is None:
                    if finished_upstream:
                        break  # upstream ended and nothing is left: drained
                    continue
                if counted and self._limit_reached():
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
                if counted:
                    self._counted(frame)
        except Exception as exc:  # noqa: BLE001 - reported with the stage name, then abort
            self._fail(name, exc)
        finally:
            self._close(node)

    def _close(self, node: Running) -> None:
        try:
            node.stage.close()
        except Exception as exc:  # noqa: BLE001
            self._fail(node.name, exc)
        node.done.set()

    def _send(self, name: str, sender: Output, frame: Frame) -> bool:
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
        return self.max_frames is not None and self.frames_out >= self.max_frames

    def _counted(self, frame: Frame) -> None:
        with self._lock:
            self.frames_out += 1
            if self.keep_traces:
                self.traces.append(list(frame.trace))
        if self.on_frame is not None:
            self.on_frame(frame)
        if self._limit_reached():
            self.request_stop()

    def _fail(self, stage: str, exc: BaseException) -> None:
        with self._lock:
            self.errors.append((stage, exc))
        if isinstance(exc, OrstreamError):
            # Expected, and raised again from run(): the CLI prints its one line.
            logger.debug("stage {} stopped the pipeline: {}", stage, exc)
        else:  # a bug: worth its traceback
            logger.opt(exception=exc).error("stage {} failed: {}", stage, exc)
        self.abort.set()
        self.request_stop()


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
