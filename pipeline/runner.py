"""The runner: a configured pipeline, run in this process.

`Pipeline` composes the graph from the config (pipeline/graph.py, pure, the one place where
nodes and edges are declared), opens this process's side of its edges (pipeline/edges.py),
makes a stage for each node run here, and hands them to the executor (pipeline/executor.py),
which runs and stops them; pipeline/metrics.py reads what they did and logs the status line.

`stages` runs part of the graph here (`orstream run --stages segment`); see graph.py.
An expected error in a stage (a port in use, a backend this machine cannot serve) comes out
of `run()` as itself (an OrstreamError: one line); a bug as a PipelineError naming the stage.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection

from loguru import logger

from orstream.common.classes import PROMPTS_TASK
from orstream.pipeline.config import PipelineConfig, exposed_endpoints
from orstream.pipeline.describe import DescribeWorker
from orstream.pipeline.edges import EdgeSockets, open_edges
from orstream.pipeline.executor import Executor, PipelineError
from orstream.pipeline.frame import Frame
from orstream.pipeline.graph import STAGES, Graph, capture_mode, compose, local_stages
from orstream.pipeline.metrics import Metrics, RunResult, StatusLog
from orstream.pipeline.prompting import UNET_REFUSAL, PromptHandler, refuse
from orstream.pipeline.security import Curve, curve_from_files
from orstream.pipeline.source_stage import CaptureStage
from orstream.pipeline.sources import Source, open_source
from orstream.pipeline.stages import (
    MaskPublishStage,
    NullStage,
    PublishStage,
    RecordStage,
    RenderStage,
    SegmentStage,
    Stage,
)

__all__ = ["STAGES", "Pipeline", "PipelineError", "RunResult", "run_pipeline"]


class Pipeline:
    """A configured pipeline; `run()` blocks until it ends.

    Observable while it runs (all None before `run()`): `executor` (its `ready` event, the
    nodes and their counters), `metrics`, `describe` (the DescribeWorker, where it runs).
    `on_publishing(endpoint)` is called once the publisher is bound, so "publishing on ..."
    is never said of a port that turns out to be taken.
    """

    def __init__(self, cfg: PipelineConfig, max_frames: int | None = None,
                 keep_traces: bool = False, on_frame: Callable[[Frame], None] | None = None,
                 source: Source | None = None, status_every_s: float | None = None,
                 stages: Collection[str] | None = None,
                 on_publishing: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.local = local_stages(cfg, stages)
        self.status_every_s = status_every_s
        self.max_frames = max_frames
        self.keep_traces = keep_traces
        self.on_frame = on_frame
        self.on_publishing = on_publishing
        self.result = RunResult()
        self.executor: Executor | None = None
        self.metrics: Metrics | None = None
        self.describe: DescribeWorker | None = None
        self._stop = threading.Event()  # a stop asked for before the executor exists
        # The source is opened only where capture runs (a camera belongs to one process).
        self._source: Source | None = None
        if "capture" in self.local:
            self._source = source or open_source(cfg.source)
        try:
            self.graph: Graph = compose(cfg, stages, replayed=self._replayed())
        except BaseException:
            if self._source is not None:
                self._source.close()
            raise

    def _replayed(self) -> bool:
        """A source that is not live (lossless replay) promises every frame once: its edge is
        lossless whatever `edges` says."""
        if self._source is None or self._source.info.live:
            return False
        if capture_mode(self.cfg, False) != "lossless":
            logger.info("capture->segment: lossless, because {} is replayed losslessly",
                        self._source.info.name)
        return True

    # -------------------------------------------------------------- stages, by node

    def _task(self, segment: SegmentStage | None) -> str | None:
        """The segmentation task render draws: from the local model, or the configured
        weights' metadata when segmentation runs in another process."""
        if segment is not None:
            return segment.task
        if not self.cfg.segment.enabled:
            return None
        if self.cfg.segment.model == "tpsis":
            return PROMPTS_TASK  # frames carry their class table: nothing to load
        from orstream.engines import checkpoint as ckpt

        return ckpt.load(self.cfg.segment.weights).task

    def _make_stages(self, curve: Curve | None) -> dict[str, object]:
        cfg, here = self.cfg, self.graph.local
        stages: dict[str, object] = {}
        if "capture" in here:
            assert self._source is not None
            stages["capture"] = CaptureStage(cfg, self._source)
        segment = SegmentStage(cfg) if "segment" in here else None
        if segment is not None:
            stages["segment"] = segment
        if "render" not in here:
            return stages
        if not cfg.segment.enabled:
            logger.info("segment: off (segment.enabled is false): frames go unlabelled")
        task = self._task(segment)
        fps = self._source.info.fps if self._source is not None else cfg.source.fps
        sinks: dict[str, Callable[[], Stage]] = {
            "publish": lambda: PublishStage(cfg, task, curve, self.on_publishing),
            "masks": lambda: MaskPublishStage(cfg, task, curve),
            "record": lambda: RecordStage(cfg, fps),
            "null": NullStage,
        }
        for name in here & sinks.keys():
            stages[name] = sinks[name]()
        if "describe" in here:
            # With render: it sees every frame and draws the caption. Its ask socket also
            # takes TP-SIS prompt changes, handed to the segment stage.
            self.describe = DescribeWorker(cfg.describe, curve, self._prompt_handler(segment))
            stages["describe"] = self.describe
        captions = self.describe if cfg.describe.enabled else None
        stages["render"] = RenderStage(cfg, task, self._dropped, captions)
        return stages

    def _prompt_handler(self, segment: SegmentStage | None) -> PromptHandler | None:
        """Who answers prompt requests on the ask socket: the segment stage run here, or a
        refusal saying why there is none to change."""
        if segment is not None:
            return segment.change_prompts
        if not self.cfg.segment.enabled:
            return None
        if self.cfg.segment.model == "unet":
            return refuse(UNET_REFUSAL)
        return refuse("segment runs in another process (orstream run --stages): prompts "
                      "are changed only where segment runs beside describe.ask_endpoint")

    def _dropped(self) -> int:
        return self.metrics.dropped() if self.metrics is not None else 0

    # -------------------------------------------------------------- run

    def request_stop(self) -> None:
        """Graceful stop (Ctrl-C, SIGTERM): capture ends, the rest drains and finalises."""
        self._stop.set()
        if self.executor is not None:
            self.executor.request_stop()

    def run(self) -> RunResult:
        started = time.monotonic()
        curve = _curve_of(self.cfg)
        sockets: EdgeSockets | None = None
        try:
            sockets = open_edges(self.graph, self.cfg.stream, self.cfg.max_message_bytes,
                                 curve)
            stages = self._make_stages(curve)
        except BaseException:
            self._close_unstarted(sockets)
            raise
        self._warn_exposure(curve)
        self.executor = executor = Executor(self.graph, stages, sockets, self.max_frames,
                                            self.keep_traces, self.on_frame)
        self.metrics = Metrics(executor)
        if self._stop.is_set():
            executor.request_stop()
        status = self._status_log() if self.status_every_s else None
        try:
            executor.run(status.tick if status is not None else None)
        finally:
            if self._source is not None:
                self._source.close()
            captions = self.describe.captions if self.describe is not None else 0
            state = self._source.state if self._source is not None else None
            self.result = self.metrics.result(time.monotonic() - started, captions, state)
        return self.result

    def _close_unstarted(self, sockets: EdgeSockets | None) -> None:
        if sockets is not None:
            sockets.close()
        if self.describe is not None:
            self.describe.close()
        if self._source is not None:
            self._source.close()

    def _status_log(self) -> StatusLog:
        assert self.metrics is not None and self.status_every_s
        executor = self.metrics.executor
        counted = executor.nodes[executor.counted]
        render = counted.stage if isinstance(counted.stage, RenderStage) else None
        source = self._source
        return StatusLog(self.metrics, self.status_every_s, self.cfg.status.stall_warn_s,
                         self._upstream_text(executor.counted), render.window if render else None,
                         (lambda: None if source.state.up else source.state.describe())
                         if source is not None else None)

    def _upstream_text(self, node: str) -> str:
        """Whom to blame when `node` gets nothing: a stage here, or another process's
        endpoint."""
        if node == "capture":
            assert self._source is not None
            return f"source {self._source.info.name}"
        edge = self.graph.inputs(node)[0]
        if self.graph.nodes[edge.source].local:
            return edge.source
        return f"{edge.source} at {edge.endpoint}"

    def _warn_exposure(self, curve: Curve | None) -> None:
        if curve is None:
            for key, endpoint in exposed_endpoints(self.cfg):
                logger.warning("{}: {} is open to other machines WITHOUT authentication or "
                               "encryption (security.allow_insecure: true)", key, endpoint)


def _curve_of(cfg: PipelineConfig) -> Curve | None:
    sec = cfg.security
    if not sec.curve:
        return None
    assert sec.key is not None  # the config's validator requires it with curve on
    return curve_from_files(sec.key, sec.server_public_key, sec.allowed_clients)


def run_pipeline(cfg: PipelineConfig, max_frames: int | None = None,
                 keep_traces: bool = False, stages: Collection[str] | None = None) -> RunResult:
    """Run until the source ends, `max_frames` frames are rendered, or a stop request."""
    return Pipeline(cfg, max_frames=max_frames, keep_traces=keep_traces, stages=stages).run()
