"""ZeroMQ transport between stages and to displays, built from config endpoints.

Two delivery modes:

- **latest**: PUB/SUB. The receiver drains its socket at every `recv` and keeps only the
  newest valid frame, so a slow consumer always gets the freshest picture and its latency does
  not grow with its slowness. ZMQ_CONFLATE would do this for single-part messages only; ours
  are multipart, hence the drain. Frames that never reach the consumer are counted from gaps
  in `seq`, wherever upstream they were lost.
- **lossless**: PUSH/PULL with a small high-water mark: every frame, in order, and a full
  queue blocks the sender (backpressure) instead of dropping.

`shm://PATH` endpoints are `ipc://PATH` whose pixel parts go through a shared-memory ring
instead of the socket (pipeline/shm.py): the sender copies a frame in, the receiver reads
it in place (0.61x imagezmq's 1080p hop, against 1.02x over ipc://). Same host only, and
the receiver must speak PROTOCOL.md's shared-memory section.

`inproc://` endpoints do not go through ZeroMQ: within a process the Frame object itself is
handed over (pipeline/inproc.py), with the same modes, because a ZeroMQ inproc hop costs a
header round trip and a buffer-release wake-up for no isolation.

Either side may bind. A display publisher binds and displays connect; between stages the
receiving stage binds its input and upstream connects to it, so several producers (cameras,
operating rooms) can feed one stage, and a stage's input is one known address. A tcp endpoint
without a host, or with `localhost`, binds 127.0.0.1; any other interface must be named in
the config.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Self

import zmq
from loguru import logger
from orstream.pipeline import inproc, wire
from orstream.pipeline.frame import Frame
from orstream.pipeline.security import Curve

if TYPE_CHECKING:
    from orstream.pipeline.shm import SlotReader, SlotRing

Mode = Literal["latest", "lossless"]
_CONTEXT_LOCK = threading.Lock()
_CONTEXT: zmq.Context | None = None


def context() -> zmq.Context:
    """One context per process: inproc endpoints only connect within the same context."""
    global _CONTEXT
    with _CONTEXT_LOCK:
        if _CONTEXT is None or _CONTEXT.closed:
            _CONTEXT = zmq.Context.instance()
        return _CONTEXT


def normalize_endpoint(endpoint: str) -> str:
    """tcp://:5600 and tcp://localhost:5600 -> tcp://127.0.0.1:5600; others unchanged."""
    if endpoint.startswith("tcp://"):
        host, sep, port = endpoint[len("tcp://"):].rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"endpoint {endpoint!r}: expected tcp://HOST:PORT")
        if host in ("", "localhost"):
            host = "127.0.0.1"
        if host in ("*", "0.0.0.0"):
            logger.warning("{} binds every network interface, as configured", endpoint)
        return f"tcp://{host}:{port}"
    if endpoint.startswith(("ipc://", "inproc://", "shm://")):
        if endpoint.endswith("://"):
            raise ValueError(f"endpoint {endpoint!r}: names no path")
        return endpoint
    raise ValueError(f"endpoint {endpoint!r}: expected inproc://NAME, ipc://PATH, shm://PATH "
                     "or tcp://HOST:PORT")


def zmq_address(endpoint: str) -> str:
    """The ZeroMQ address of a normalized endpoint: shm://PATH sends its messages over
    ipc://PATH."""
    return "ipc://" + endpoint[len("shm://"):] if endpoint.startswith("shm://") else endpoint


class RateLimitedLog:
    """At most one warning per reason per `period_s`, with the count of those held back."""

    def __init__(self, period_s: float = 5.0) -> None:
        self.period_s = period_s
        self._last: dict[str, float] = {}
        self._held: Counter[str] = Counter()

    def warn(self, reason: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last.get(reason, -1e9) >= self.period_s:
            held = self._held.pop(reason, 0)
            extra = f" ({held} more since the last report)" if held else ""
            logger.warning("{}{}", message, extra)
            self._last[reason] = now
        else:
            self._held[reason] += 1


@dataclass
class ReceiverStats:
    received: int = 0  # valid frames handed to the consumer
    superseded: int = 0  # valid frames dropped by `latest` because a newer one was waiting
    rebased: int = 0  # frames from another host whose times were converted via wall clocks
    # stream -> frames missing from its seq sequence (dropped anywhere upstream)
    lost_by_stream: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)  # reason -> invalid messages

    @property
    def lost(self) -> int:
        return sum(self.lost_by_stream.values())


def _attach(socket: zmq.Socket, endpoint: str, bind: bool, curve: Curve | None) -> None:
    if curve is not None:
        try:
            curve.apply(socket, endpoint, bind)
        except Exception:
            socket.close(0)
            raise
    try:
        if bind:
            socket.bind(zmq_address(endpoint))
        else:
            socket.connect(zmq_address(endpoint))
    except zmq.ZMQError as exc:
        socket.close(0)
        raise OSError(f"cannot {'bind' if bind else 'connect'} {endpoint}: {exc}") from None


class _Endpoint:
    """One side of an edge: a ZeroMQ socket, or an in-process mailbox for inproc://."""

    _box: inproc.Mailbox | None = None
    _socket: zmq.Socket

    def close(self) -> None:
        if self._box is not None:
            inproc.detach(self._box)
            self._box = None
        elif not self._socket.closed:
            self._socket.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Sender(_Endpoint):
    """Sends frames in `mode` on `endpoint` (bound, or connected to a bound receiver)."""

    def __init__(self, endpoint: str, mode: Mode = "latest", hwm: int = 8,
                 parts: tuple[str, ...] = ("image",), classes: dict[str, Any] | None = None,
                 linger_ms: int = 200, bind: bool = True, curve: Curve | None = None) -> None:
        self.endpoint = normalize_endpoint(endpoint)
        self.mode = mode
        self.parts = parts
        self.classes = classes
        self.sent = 0
        self._box: inproc.Mailbox | None = None
        self._ring: SlotRing | None = None
        self._monitor: zmq.Socket | None = None
        if self.endpoint.startswith("inproc://"):
            self._box = inproc.attach(self.endpoint, mode, hwm)
            return
        self._socket = context().socket(zmq.PUB if mode == "latest" else zmq.PUSH)
        self._socket.setsockopt(zmq.SNDHWM, hwm)
        self._socket.setsockopt(zmq.LINGER, linger_ms)
        _attach(self._socket, self.endpoint, bind, curve)
        if self.endpoint.startswith("shm://"):
            from orstream.pipeline.shm import DEFAULT_SLOTS, SlotRing  # numba: only when used

            # Lossless: the ring is the edge's window, so it holds what the sockets may
            # queue (send and receive side) and one frame being read.
            slots = DEFAULT_SLOTS if mode == "latest" else max(DEFAULT_SLOTS, 2 * hwm + 1)
            self._ring = SlotRing(slots, lossless=mode == "lossless")
            if mode == "lossless":
                self._monitor = self._socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)

    def send(self, frame: Frame, timeout_ms: int = 100) -> bool:
        """Send one frame. Lossless: waits up to `timeout_ms` for room, False if none came
        (the caller checks for shutdown and tries again). Latest: never blocks."""
        if self._box is not None:
            # Each edge gets its own Frame (arrays shared, never copied) so that stages
            # downstream of a fan-out stamp their own traces.
            if not self._box.put(frame.branch(), timeout_ms / 1000):
                return False
            self.sent += 1
            return True
        socket = self._socket
        if self._ring is not None:
            if self.mode == "lossless" and not (
                    socket.poll(timeout_ms, zmq.POLLOUT)
                    and self._ring.room(timeout_ms / 1000, self._disconnected)):
                return False
            message = wire.encode(frame, self.parts, self.classes, self._ring)
        else:
            message = wire.encode(frame, self.parts, self.classes)
            if self.mode == "lossless" and not socket.poll(timeout_ms, zmq.POLLOUT):
                return False
        # Topic and header are copied (for a few hundred bytes that is cheaper than a zero-copy
        # zmq.Frame and its release callback); pixel buffers go by reference (copy=False).
        # Part by part rather than send_multipart, which re-checks every part in Python.
        socket.send(message[0], zmq.SNDMORE)
        socket.send(message[1], zmq.SNDMORE if len(message) > 2 else 0)
        for i in range(2, len(message)):
            socket.send(message[i], zmq.SNDMORE if i < len(message) - 1 else 0, copy=False)
        self.sent += 1
        return True

    def _disconnected(self) -> bool:
        """Whether a receiver disconnected since the last call (shm lossless: the slots it
        had not handed back will never be)."""
        monitor, seen = self._monitor, False
        while monitor is not None and monitor.poll(0):
            monitor.recv_multipart()
            seen = True
        if seen:
            logger.warning("{}: a receiver disconnected; the shared-memory slots of frames "
                           "it had not read are reused", self.endpoint)
        return seen

    def close(self) -> None:
        if self._monitor is not None:
            self._socket.disable_monitor()
            self._monitor.close(0)
            self._monitor = None
        super().close()
        if self._ring is not None:
            if self._ring.inline:
                logger.info("{}: {} of {} frames went in the message, every shared-memory "
                            "slot being held by receivers", self.endpoint, self._ring.inline,
                            self.sent)
            self._ring.close()
            self._ring = None

    def send_raw(self, message: list[Any], timeout_ms: int = 100) -> bool:
        """Send an already-encoded message (another kind, such as the mask stream, or tools
        that speak the protocol by hand); same waiting rules as `send`."""
        if self._box is not None:
            raise ValueError(f"{self.endpoint}: inproc edges carry Frames, not bytes")
        if self.mode == "lossless" and not self._socket.poll(timeout_ms, zmq.POLLOUT):
            return False
        self._socket.send_multipart(message)
        self.sent += 1
        return True


class Receiver(_Endpoint):
    """Receives validated frames in `mode` on `endpoint` (connected, or bound as an input)."""

    def __init__(self, endpoint: str, mode: Mode = "latest", hwm: int = 8,
                 max_bytes: int = wire.DEFAULT_MAX_BYTES, stream: str | None = None,
                 name: str = "receiver", bind: bool = False, curve: Curve | None = None) -> None:
        self.endpoint = normalize_endpoint(endpoint)
        self.mode = mode
        self.max_bytes = max_bytes
        self.name = name
        self.stats = ReceiverStats()
        self._log = RateLimitedLog()
        self._last_seq: dict[str, int] = {}
        self._box: inproc.Mailbox | None = None
        self._shm: SlotReader | None = None
        if self.endpoint.startswith("shm://"):
            from orstream.pipeline.shm import SlotReader  # numba: only when used

            self._shm = SlotReader()
        if self.endpoint.startswith("inproc://"):
            self._box = inproc.attach(self.endpoint, mode, hwm)
            return
        self._socket = context().socket(zmq.SUB if mode == "latest" else zmq.PULL)
        self._socket.setsockopt(zmq.RCVHWM, hwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._rcvtimeo = -1  # the socket's ZMQ_RCVTIMEO, set only when a wait needs another
        if mode == "latest":
            prefix = wire.topic(stream)[: -len(b"frame")] if stream else b""
            self._socket.setsockopt(zmq.SUBSCRIBE, prefix)
        # latest: the newest frame of each stream waiting to be taken. Several streams
        # (operating rooms) may feed one stage; each keeps its own newest frame, so a busy
        # room never starves a quiet one.
        self._pending: dict[str, Frame] = {}
        _attach(self._socket, self.endpoint, bind, curve)

    def _decode(self, message: list[zmq.Frame]) -> Frame | None:
        try:
            return wire.decode(message, self.max_bytes, self._shm)
        except wire.WireError as exc:
            self._reject(exc.reason, str(exc))
            return None

    def _reject(self, reason: str, detail: str) -> None:
        self.stats.rejected[reason] += 1
        self._log.warn(reason, f"{self.name} on {self.endpoint} rejected a message "
                       f"({detail}); total rejected: {sum(self.stats.rejected.values())}")

    def _claim(self, frame: Frame) -> Frame | None:
        """The frame with its parts made safe to keep (leased in the sender's slot, or
        copied out when the slot's leases are all taken); None if the sender reused the slot
        first (the frame is then lost, and counted)."""
        names = [name for name in wire.PART_NAMES if getattr(frame, name) is not None]
        copies = self._shm.claim([getattr(frame, name) for name in names], frame.lease,
                                 hand_back=self.mode == "lossless")
        frame.lease = None
        if copies is None:
            self._reject("shm_overwritten", f"shm_overwritten: frame {frame.seq}'s slot was "
                         "reused before it was read; the receiver is too slow for the ring")
            return None
        for name, array in zip(names, copies, strict=True):
            setattr(frame, name, array)
        return frame

    def recv(self, timeout_ms: int = 100) -> Frame | None:
        """The next frame (lossless) or the newest one waiting (latest); None on timeout."""
        if self._box is not None:
            frame = self._box.get(timeout_ms / 1000)
            self.stats.superseded = self._box.superseded
            if frame is not None:
                self._count(frame)
            return frame
        if self.mode == "latest" and self._pending:
            self._drain()  # frames of other streams are waiting: no need to block
            waiting = self._take()
            if waiting is not None and waiting.lease is not None:
                waiting = self._claim(waiting)
            if waiting is not None:
                self._count(waiting)
                return waiting
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            remaining = max(0, int((deadline - time.monotonic()) * 1000))
            message = self._wait_message(remaining)
            if message is None:
                return None
            frame = self._decode(message)
            if self.mode == "latest":
                if frame is not None:
                    self._keep(frame)
                self._drain()
                frame = self._take()
            if frame is not None and frame.lease is not None:
                frame = self._claim(frame)
            if frame is not None:
                self._count(frame)
                return frame
            if time.monotonic() >= deadline:
                return None

    def _keep(self, frame: Frame) -> None:
        if frame.stream in self._pending:
            self.stats.superseded += 1
        self._pending[frame.stream] = frame

    def _drain(self) -> None:
        """Decode what else has arrived, keeping the newest valid frame per stream.
        ZMQ_EVENTS asks the socket directly: poll(0) would build a Poller and make a poll
        syscall."""
        socket = self._socket
        while socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            newer = self._decode(self._rest([socket.recv(zmq.NOBLOCK, copy=False)]))
            if newer is not None:
                self._keep(newer)

    def _take(self) -> Frame | None:
        """The waiting frame captured longest ago (one stream: the only one)."""
        pending = self._pending
        if not pending:
            return None
        if len(pending) == 1:
            stream = next(iter(pending))
        else:
            stream = min(pending, key=lambda k: pending[k].t_capture_ns)
        return pending.pop(stream)

    def _wait_message(self, timeout_ms: int) -> list[zmq.Frame] | None:
        """One whole multipart message, waiting up to `timeout_ms`; None if none came.

        The wait is a blocking recv under ZMQ_RCVTIMEO rather than poll() then recv(): the
        thread wakes inside recv, so no poller bookkeeping runs between the frame's arrival
        and its decoding. ZeroMQ delivers the parts of a message together, so only the first
        part can wait."""
        socket = self._socket
        if timeout_ms != self._rcvtimeo:
            socket.setsockopt(zmq.RCVTIMEO, timeout_ms)
            self._rcvtimeo = timeout_ms
        try:
            first = socket.recv(copy=False)
        except zmq.Again:
            return None
        return self._rest([first])

    def _rest(self, message: list[zmq.Frame]) -> list[zmq.Frame]:
        """`message` completed with the parts that follow its first one. Frame.more reads the
        received part's flag: a tenth of the cost of getsockopt(ZMQ_RCVMORE)."""
        while message[-1].more:
            message.append(self._socket.recv(zmq.NOBLOCK, copy=False))
        return message

    def _count(self, frame: Frame) -> None:
        self.stats.received += 1
        if frame.clock_shift_ns:
            if not self.stats.rebased:
                logger.warning("{} on {}: frames come from another host (clocks {:+.3f} s "
                               "apart); their times are converted through the wall clocks, "
                               "so latencies across hosts are only as good as the hosts' "
                               "clock sync (NTP ~1 ms, PTP better)", self.name, self.endpoint,
                               frame.clock_shift_ns / 1e9)
            self.stats.rebased += 1
        last = self._last_seq.get(frame.stream)
        if last is not None and frame.seq > last + 1:
            self.stats.lost_by_stream[frame.stream] += frame.seq - last - 1
        self._last_seq[frame.stream] = frame.seq

    @property
    def dropped(self) -> int:
        """Frames this consumer never got: superseded here or lost upstream (seq gaps)."""
        return self.stats.lost
