"""The pipeline's graph, declared in one place: `compose(cfg)` returns every node, its named
ports and every edge, without opening a socket or loading a model.

    capture.frames ──► segment.frames ──► render.frames ──┬──► publish.frames
                                               │          ├──► masks.frames
                                               │          ├──► record.frames
                                               │          └──► null.frames (nothing else)
                                               └──(slot)──► describe.frames

With `segment.enabled: false` the segment node is left out and the capture edge (configured
as capture->segment: it is where the live policy drops frames) feeds render directly.
A node runs here (`local`) or in another process (`orstream run --stages ...`); an edge
between the two keeps only this side, over its ipc://, shm:// or tcp:// endpoint, so one
config wires every process. The executor (pipeline/executor.py) runs whatever this builds.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Literal

from orstream.pipeline.config import ConfigError, PipelineConfig
from orstream.pipeline.transport import Mode

STAGES = ("capture", "segment", "render")  # what --stages picks from; sinks go with render
LATEST_HWM, LOSSLESS_HWM = 2, 8  # edges.*.hwm left unset
Role = Literal["source", "stage", "worker"]  # worker: beside the frame path, own threads


@dataclass(frozen=True)
class Node:
    name: str
    role: Role
    local: bool  # runs in this process
    inputs: tuple[str, ...] = ()  # port names
    outputs: tuple[str, ...] = ()
    # (config key, endpoint) it serves to the outside: displays, `orstream ask`
    serves: tuple[str, str] | None = None


@dataclass(frozen=True)
class Edge:
    name: str  # the config.edges key ("capture->segment"), or "render->describe"
    producer: str  # "node.port"
    consumer: str
    endpoint: str | None = None  # None: an in-process slot (a reference, no transport)
    mode: Mode = "latest"
    hwm: int = LATEST_HWM
    receiver_binds: bool = True
    parts: tuple[str, ...] = ("image",)  # what the sender puts on the wire
    reorder_ms: float = 0.0  # the receiver puts frames back in capture order

    @property
    def source(self) -> str:
        return self.producer.partition(".")[0]

    @property
    def target(self) -> str:
        return self.consumer.partition(".")[0]


@dataclass
class Graph:
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)

    def add_node(self, node: Node) -> Node:
        assert node.name not in self.nodes, f"node {node.name} added twice"
        self.nodes[node.name] = node
        return node

    def add_flow(self, edge: Edge) -> Edge:
        """Connect producer port to consumer port; both nodes and ports must exist."""
        src, _, out_port = edge.producer.partition(".")
        dst, _, in_port = edge.consumer.partition(".")
        assert out_port in self.nodes[src].outputs, f"{edge.producer}: no such output port"
        assert in_port in self.nodes[dst].inputs, f"{edge.consumer}: no such input port"
        self.edges.append(edge)
        return edge

    @property
    def local(self) -> set[str]:
        return {name for name, node in self.nodes.items() if node.local}

    def inputs(self, name: str) -> list[Edge]:
        return [e for e in self.edges if e.target == name]

    def outputs(self, name: str) -> list[Edge]:
        return [e for e in self.edges if e.source == name]

    def edge(self, name: str) -> Edge:
        return next(e for e in self.edges if e.name == name)

    def last_local(self) -> str:
        """The node whose output `--frames` counts: the last frame-path stage run here."""
        return next(s for s in ("render", "segment", "capture")
                    if s in self.nodes and self.nodes[s].local)


def local_stages(cfg: PipelineConfig, stages: Collection[str] | None) -> set[str]:
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


def capture_mode(cfg: PipelineConfig, replayed: bool) -> Mode:
    """The capture edge follows the source. A source that is not live (lossless replay)
    promises every frame once, so its edge is lossless whatever `edges` says; a live source
    uses the configured mode (latest by default: only the newest frame)."""
    return "lossless" if replayed else cfg.edges["capture->segment"].mode


def ask_served(cfg: PipelineConfig) -> bool:
    """Whether the describe node runs: for the VLM, or, with describe off, for its ask
    socket alone, which takes TP-SIS's prompt changes (pipeline/prompting.py)."""
    return cfg.describe.enabled or (cfg.segment.enabled and cfg.segment.model == "tpsis"
                                    and cfg.describe.ask_endpoint is not None)


def compose(cfg: PipelineConfig, stages: Collection[str] | None = None,
            replayed: bool = False) -> Graph:
    """The whole graph for `cfg`, with `stages` (default all) running in this process.
    `replayed`: the source is replayed losslessly (known once it is open), which makes the
    capture edge lossless."""
    here = local_stages(cfg, stages)
    graph = Graph()
    graph.add_node(Node("capture", "source", "capture" in here, outputs=("frames",)))
    segmented = cfg.segment.enabled
    if segmented:
        graph.add_node(Node("segment", "stage", "segment" in here, ("frames",), ("frames",)))
    render_here = "render" in here
    graph.add_node(Node("render", "stage", render_here, ("frames",), ("frames", "describe")))
    sinks = [(name, key, endpoint) for name, key, endpoint in (
        ("publish", "publish.endpoint", cfg.publish.endpoint),
        ("masks", "masks.endpoint", cfg.masks.endpoint),
        ("record", "record.path", str(cfg.record.path) if cfg.record.path else None),
    ) if endpoint] or [("null", None, None)]
    for name, key, endpoint in sinks:
        serves = (key, endpoint) if key and name != "record" else None
        graph.add_node(Node(name, "stage", render_here, ("frames",), serves=serves))
    if ask_served(cfg):
        ask = cfg.describe.ask_endpoint
        graph.add_node(Node("describe", "worker", render_here, ("frames",),
                            serves=("describe.ask_endpoint", ask) if ask else None))

    # -------------------------------------------------------------- every edge, here
    first = "segment" if segmented else "render"
    _flow(graph, cfg, "capture->segment", "capture.frames", f"{first}.frames", ("image",),
          capture_mode(cfg, replayed))
    if segmented:
        _flow(graph, cfg, "segment->render", "segment.frames", "render.frames",
              ("image", "labels"))
    for name, _, _ in sinks:
        _flow(graph, cfg, f"render->{name}", "render.frames", f"{name}.frames",
              ("image", "overlay", "labels"))
    if cfg.describe.enabled:
        # A reference to the newest frame drawn, in this process: the VLM looks when due.
        graph.add_flow(Edge("render->describe", "render.describe", "describe.frames"))
    return graph


def _flow(graph: Graph, cfg: PipelineConfig, name: str, producer: str, consumer: str,
          parts: tuple[str, ...], mode: Mode | None = None) -> None:
    edge_cfg = cfg.edges[name]
    mode = mode or edge_cfg.mode
    src, dst = producer.partition(".")[0], consumer.partition(".")[0]
    here_p, here_c = graph.nodes[src].local, graph.nodes[dst].local
    if here_p != here_c and edge_cfg.endpoint.startswith("inproc://"):
        raise ConfigError(f"edges.{name}.endpoint: {edge_cfg.endpoint} only works inside one "
                          f"process, but {src if here_p else dst} runs here and "
                          f"{dst if here_p else src} elsewhere: give the edge an ipc://, "
                          f"shm:// (same host) or tcp:// endpoint")
    hwm = edge_cfg.hwm or (LATEST_HWM if mode == "latest" else LOSSLESS_HWM)
    # Only render's input is reordered: where several segment workers' results meet.
    reorder = cfg.render.reorder_ms if dst == "render" else 0.0
    graph.add_flow(Edge(name, producer, consumer, edge_cfg.endpoint, mode, hwm,
                        edge_cfg.bind == "receiver", parts, reorder))
