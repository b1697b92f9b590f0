"""Opens this process's side of each edge of a Graph: a Sender where the producer runs
here, a Receiver where the consumer does (both for an edge inside the process)."""

from __future__ import annotations

from dataclasses import dataclass, field

from loguru import logger

from orstream.pipeline.frame import Frame
from orstream.pipeline.graph import Edge, Graph
from orstream.pipeline.ports import bind_as
from orstream.pipeline.reorder import ReorderingReceiver
from orstream.pipeline.security import Curve
from orstream.pipeline.transport import Mode, Receiver, Sender

Input = Receiver | ReorderingReceiver


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


Output = Sender | StreamSenders


@dataclass
class EdgeSockets:
    """This process's sides of the graph's edges, by edge name."""

    senders: dict[str, Output] = field(default_factory=dict)
    receivers: dict[str, Input] = field(default_factory=dict)

    def close(self) -> None:
        for receiver in self.receivers.values():
            receiver.close()
        for sender in self.senders.values():
            sender.close()


def open_edges(graph: Graph, stream: str, max_bytes: int, curve: Curve | None) -> EdgeSockets:
    """Bind or connect every transported edge with a side here; on any failure the ones
    already open are closed. A port in use is a UsageError naming edges.NAME.endpoint."""
    sockets = EdgeSockets()
    try:
        for edge in graph.edges:
            if edge.endpoint is not None:
                _open(graph, edge, stream, max_bytes, curve, sockets)
    except BaseException:
        sockets.close()
        raise
    return sockets


def _open(graph: Graph, edge: Edge, stream: str, max_bytes: int, curve: Curve | None,
          sockets: EdgeSockets) -> None:
    assert edge.endpoint is not None
    here_p, here_c = graph.nodes[edge.source].local, graph.nodes[edge.target].local
    key = f"edges.{edge.name}.endpoint"
    if here_c:
        # One receiving process serves the streams its endpoint names: its own.
        endpoint = edge.endpoint.replace("{stream}", stream)
        # Every stage works on the picture: a frame without one is rejected on receipt.
        receiver = bind_as(key, endpoint, lambda: Receiver(
            endpoint, edge.mode, hwm=edge.hwm, max_bytes=max_bytes, name=edge.name,
            bind=edge.receiver_binds, curve=curve, require=("image",)))
        sockets.receivers[edge.name] = (ReorderingReceiver(receiver, edge.reorder_ms)
                                        if edge.reorder_ms else receiver)
    if here_p:
        if "{stream}" in edge.endpoint and not here_c:
            # A shared stage (one inference process for several rooms) answers each stream
            # on its own endpoint.
            sockets.senders[edge.name] = StreamSenders(edge.endpoint, edge.mode, edge.hwm,
                                                       edge.parts, not edge.receiver_binds,
                                                       curve)
        else:
            endpoint = edge.endpoint.replace("{stream}", stream)
            sockets.senders[edge.name] = bind_as(key, endpoint, lambda: Sender(
                endpoint, edge.mode, hwm=edge.hwm, parts=edge.parts,
                bind=not edge.receiver_binds, curve=curve))
