"""ZeroMQ transport between stages and to displays, built from config endpoints.

Two delivery modes:

- **latest**: PUB/SUB. The receiver drains its socket at every `recv` and keeps only the
  newest valid frame, so a slow consumer always gets the freshest picture and its latency does
  not grow with its slowness. ZMQ_CONFLATE would do this for single-part messages only; ours
  are multipart, hence the drain. Frames that never reach the consumer are counted from gaps
  in `seq`, wherever upstream they were lost.
- **lossless**: PUSH/PULL with a small high-water mark: every frame, in order, and a full
  queue blocks the sender (backpressure) instead of dropping.

One class per transport, each with the same methods (`send` / `recv`, `close`, `with`):

- `ZmqSender` / `ZmqReceiver`: `ipc://PATH` and `tcp://HOST:PORT`, the message on a socket.
- `ShmSender` / `ShmReceiver`: `shm://PATH` is `ipc://PATH` whose pixel parts go through a
  shared-memory ring instead of the socket (pipeline/shm.py): the sender copies a frame in,
  the receiver reads it in place (0.61x imagezmq's 1080p hop, against 1.02x over ipc://).
  Same host only, and the receiver must speak PROTOCOL.md's shared-memory section.
- `InprocSender` / `InprocReceiver`: `inproc://` does not go through ZeroMQ: within a process
  the Frame object itself is handed over (pipeline/inproc.py), with the same modes, because
  a ZeroMQ inproc hop costs a header round trip and a buffer-release wake-up for no isolation.

`Sender(endpoint, ...)` and `Receiver(endpoint, ...)` construct the class that the endpoint's
scheme names in SENDERS / RECEIVERS, so callers name an address, never a transport, and
`isinstance(x, Sender)` holds for every one of them.

Either side may bind. A display publisher binds and displays connect; between stages the
receiving stage binds its input and upstream connects to it, so several producers (cameras,
operating rooms) can feed one stage, and a stage's input is one known address. Endpoint
strings are parsed in pipeline/endpoints.py. A side that bound an ipc:// or shm:// path
removes its socket file when it closes; a path or port another socket holds is an
EndpointInUseError.
"""

from __future__ import annotations

import errno
import json
import os
import socket as stdsocket
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

import zmq
from loguru import logger

from orstream.pipeline import inproc, wire
from orstream.pipeline.endpoints import (
    EndpointInUseError,
    Mode,
    normalize_endpoint,
    parse,
    socket_file,
    zmq_address,
)
from orstream.pipeline.frame import Frame
from orstream.pipeline.security import Curve

if TYPE_CHECKING:
    from orstream.pipeline.shm import SlotReader, SlotRing

_CONTEXT_LOCK = threading.Lock()
_CONTEXT: zmq.Context | None = None
# ZMTP heartbeats on every connection: a peer that vanished without closing it (its host
# powered off or rebooted, a cable pulled: no FIN ever comes) is dropped once nothing at
# all (frames or PONGs) came for HEARTBEAT_TIMEOUT_MS after a PING, and a connecting side
# (a display) then reconnects by itself, so it finds the publisher again when it is back.
# Without them a SUB waits on the dead connection forever. A PING is a few bytes a second.
HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 4000


# Distinct stream ids one input takes (operating rooms feeding one stage). Each id costs
# state downstream (a seq counter, a reorder head, a sender socket per room on a
# `{stream}` edge), so a peer inventing ids must hit a wall, not grow the process.
MAX_STREAMS = 256
NO_REPLY_KEYS_HINT = " (a pipeline with security.curve answers only --key/--server-key clients)"


def request_json(endpoint: str, message: dict, timeout_s: float,
                 curve: Curve | None = None) -> dict | None:
    """One JSON request and its JSON reply over a REQ socket (the ask socket's clients:
    `orstream ask`, `orstream prompt`); None when no reply came within `timeout_s`.
    `endpoint` as normalize_endpoint gives it; `curve`: this client's keys and the server's."""
    deadline = time.monotonic() + timeout_s
    socket = context().socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    # The send is bounded too: once a handshake has failed (keys the server refuses, or
    # none where it wants them) a REQ socket has no peer, and an unbounded send blocked
    # forever instead of giving up after `timeout_s`.
    socket.setsockopt(zmq.SNDTIMEO, int(timeout_s * 1000))
    try:
        if curve is not None:
            curve.apply(socket, endpoint, bind=False)
        socket.connect(endpoint)
        try:
            socket.send(json.dumps(message).encode())
            socket.setsockopt(zmq.RCVTIMEO, max(1, int((deadline - time.monotonic()) * 1000)))
            return json.loads(socket.recv())
        except zmq.Again:
            return None
    finally:
        socket.close(0)


def context() -> zmq.Context:
    """One context per process: inproc endpoints only connect within the same context."""
    global _CONTEXT
    with _CONTEXT_LOCK:
        if _CONTEXT is None or _CONTEXT.closed:
            _CONTEXT = zmq.Context.instance()
        return _CONTEXT


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


# ----------------------------------------------------------------- sockets and their files


@dataclass(frozen=True)
class BoundFile:
    """The Unix socket file that binding an ipc:// or shm:// endpoint made. ZeroMQ leaves it
    behind at close; removing it is the binder's job, and only while it is still the file
    the bind made (same device and inode): a later binder of the path has replaced it, and
    what is there now is that binder's."""

    path: str
    device: int
    inode: int

    @classmethod
    def of(cls, endpoint: str) -> BoundFile | None:
        """The file a bind of `endpoint` just made; None for tcp and abstract sockets."""
        path = socket_file(endpoint)
        if path is None:
            return None
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return None
        return cls(path, info.st_dev, info.st_ino)

    def remove(self) -> None:
        try:
            info = os.lstat(self.path)
            if (info.st_dev, info.st_ino) == (self.device, self.inode):
                os.unlink(self.path)
        except FileNotFoundError:
            return
        except OSError as exc:  # the folder became read-only or not ours: say so, go on
            logger.warning("could not remove the socket file {}: {}", self.path, exc.strerror)


def _listening(path: str) -> bool:
    """Whether a process accepts connections on the Unix socket file `path`. Binding
    ipc:// replaces a file already there, so without this a second pipeline on the same
    path would silently take the first one's connections; a file left by a process that
    died refuses the connection and is replaced."""
    with stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM) as probe:
        probe.setblocking(False)
        try:
            probe.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            return False
        except BlockingIOError:  # a listener whose backlog is full: it is there
            return True
        except OSError:  # not a socket, too long a path...: the bind meets it and says so
            return False
    return True


def _attach(socket: zmq.Socket, endpoint: str, bind: bool,
            curve: Curve | None) -> BoundFile | None:
    """Bind or connect `socket` (closed again on failure); the socket file a bind made."""
    try:
        socket.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        if curve is not None:
            curve.apply(socket, endpoint, bind)
        if not bind:
            socket.connect(zmq_address(endpoint))
            return None
        path = socket_file(endpoint)
        if path is not None and _listening(path):
            raise EndpointInUseError(endpoint)
        socket.bind(zmq_address(endpoint))
        return BoundFile.of(endpoint)
    except zmq.ZMQError as exc:
        socket.close(0)
        if exc.errno == errno.EADDRINUSE:
            raise EndpointInUseError(endpoint) from exc
        raise OSError(f"cannot {'bind' if bind else 'connect'} {endpoint}: {exc}") from None
    except Exception:
        socket.close(0)
        raise


def _close(socket: zmq.Socket, bound: BoundFile | None) -> None:
    """Close `socket` (its LINGER applies) and remove the socket file its bind made."""
    if socket.closed:
        return
    socket.close()
    if bound is not None:
        bound.remove()


class _Side(ABC):
    """One side of an edge; `with` closes it when the block ends.

    `Sender(endpoint, ...)` / `Receiver(endpoint, ...)` return an instance of the class their
    `by_scheme` table (SENDERS, RECEIVERS) names for the endpoint's scheme; a concrete class
    is constructed as itself. Every class takes its base's constructor arguments and opens
    its side in `_open`."""

    by_scheme: dict[str, type[_Side]] = {}  # set on Sender and Receiver below their classes

    def __new__(cls, endpoint: str, *args: Any, **kwargs: Any) -> _Side:
        table = cls.__dict__.get("by_scheme")
        return super().__new__(table[parse(endpoint).scheme] if table else cls)

    @abstractmethod
    def close(self) -> None:
        """Detach; a second call does nothing."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------- senders


class Sender(_Side):
    """Sends frames in `mode` on `endpoint` (bound, or connected to a bound receiver)."""

    def __init__(self, endpoint: str, mode: Mode = "latest", hwm: int = 8,
                 parts: tuple[str, ...] = ("image",), classes: dict[str, Any] | None = None,
                 linger_ms: int = 200, bind: bool = True, curve: Curve | None = None) -> None:
        self.endpoint = normalize_endpoint(endpoint)
        self.mode = mode
        self.parts = parts
        self.classes = classes
        self.sent = 0
        self._open(hwm, linger_ms, bind, curve)

    @abstractmethod
    def _open(self, hwm: int, linger_ms: int, bind: bool, curve: Curve | None) -> None:
        """Attach to the endpoint; raises if it cannot (nothing is left open then)."""

    @abstractmethod
    def send(self, frame: Frame, timeout_ms: int = 100) -> bool:
        """Send one frame. Lossless: waits up to `timeout_ms` for room, False if none came
        (the caller checks for shutdown and tries again). Latest: never blocks."""

    @abstractmethod
    def send_raw(self, message: list[Any], timeout_ms: int = 100) -> bool:
        """Send an already-encoded message (another kind, such as the mask stream, or tools
        that speak the protocol by hand); same waiting rules as `send`."""


class InprocSender(Sender):
    """inproc://: hands the Frame itself to the endpoint's mailbox."""

    _box: inproc.Mailbox | None

    def _open(self, hwm: int, linger_ms: int, bind: bool, curve: Curve | None) -> None:
        self._box = inproc.attach(self.endpoint, self.mode, hwm)

    def send(self, frame: Frame, timeout_ms: int = 100) -> bool:
        assert self._box is not None, f"{self.endpoint}: send after close"
        # Each edge gets its own Frame (arrays shared, never copied) so that stages
        # downstream of a fan-out stamp their own traces.
        if not self._box.put(frame.branch(), timeout_ms / 1000):
            return False
        self.sent += 1
        return True

    def send_raw(self, message: list[Any], timeout_ms: int = 100) -> bool:
        raise inproc.InprocError(f"{self.endpoint}: inproc edges carry Frames, not encoded "
                                 "messages; use an ipc:// or tcp:// endpoint")

    def close(self) -> None:
        if self._box is not None:
            inproc.detach(self._box)
            self._box = None


class ZmqSender(Sender):
    """ipc:// and tcp://: PUB (latest) or PUSH (lossless), the whole message on the socket."""

    def _open(self, hwm: int, linger_ms: int, bind: bool, curve: Curve | None) -> None:
        self._socket = context().socket(zmq.PUB if self.mode == "latest" else zmq.PUSH)
        self._socket.setsockopt(zmq.SNDHWM, hwm)
        self._socket.setsockopt(zmq.LINGER, linger_ms)
        self._bound = _attach(self._socket, self.endpoint, bind, curve)

    def send(self, frame: Frame, timeout_ms: int = 100) -> bool:
        # Room first: a lossless edge that is full retries, and should not encode each time.
        if self.mode == "lossless" and not self._socket.poll(timeout_ms, zmq.POLLOUT):
            return False
        self._put(wire.encode(frame, self.parts, self.classes))
        return True

    def _put(self, message: list[Any]) -> None:
        # Topic and header are copied (for a few hundred bytes that is cheaper than a zero-copy
        # zmq.Frame and its release callback); pixel buffers go by reference (copy=False).
        # Part by part rather than send_multipart, which re-checks every part in Python.
        socket = self._socket
        socket.send(message[0], zmq.SNDMORE)
        socket.send(message[1], zmq.SNDMORE if len(message) > 2 else 0)
        for i in range(2, len(message)):
            socket.send(message[i], zmq.SNDMORE if i < len(message) - 1 else 0, copy=False)
        self.sent += 1

    def send_raw(self, message: list[Any], timeout_ms: int = 100) -> bool:
        if self.mode == "lossless" and not self._socket.poll(timeout_ms, zmq.POLLOUT):
            return False
        self._socket.send_multipart(message)
        self.sent += 1
        return True

    def close(self) -> None:
        _close(self._socket, self._bound)


class ShmSender(ZmqSender):
    """shm://: the message on the ipc socket, the pixel parts in a shared-memory ring."""

    _ring: SlotRing | None

    def _open(self, hwm: int, linger_ms: int, bind: bool, curve: Curve | None) -> None:
        from orstream.pipeline.shm import DEFAULT_SLOTS, SlotRing  # numba: only when used

        super()._open(hwm, linger_ms, bind, curve)
        lossless = self.mode == "lossless"
        # Lossless: the ring is the edge's window, so it holds what the sockets may queue
        # (send and receive side) and one frame being read.
        slots = max(DEFAULT_SLOTS, 2 * hwm + 1) if lossless else DEFAULT_SLOTS
        self._ring = SlotRing(slots, lossless=lossless)
        self._monitor = (self._socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
                         if lossless else None)

    @property
    def inline(self) -> int:
        """Frames that went in the message because every slot was held by receivers."""
        return self._ring.inline if self._ring is not None else 0

    def send(self, frame: Frame, timeout_ms: int = 100) -> bool:
        ring = self._ring
        assert ring is not None, f"{self.endpoint}: send after close"
        if self.mode == "lossless" and not (
                self._socket.poll(timeout_ms, zmq.POLLOUT)
                and ring.room(timeout_ms / 1000, self._disconnected)):
            return False
        self._put(wire.encode(frame, self.parts, self.classes, ring))
        return True

    def _disconnected(self) -> bool:
        """Whether a receiver disconnected since the last call (lossless: the slots it had
        not handed back will never be)."""
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


# ----------------------------------------------------------------- receivers


class Receiver(_Side):
    """Receives validated frames in `mode` on `endpoint` (connected, or bound as an input)."""

    def __init__(self, endpoint: str, mode: Mode = "latest", hwm: int = 8,
                 max_bytes: int = wire.DEFAULT_MAX_BYTES, stream: str | None = None,
                 name: str = "receiver", bind: bool = False, curve: Curve | None = None,
                 require: tuple[str, ...] = ()) -> None:
        self.endpoint = normalize_endpoint(endpoint)
        self.mode = mode
        self.max_bytes = max_bytes
        self.name = name
        # Parts a frame must carry to be of use here (a stage's input: "image"). A valid
        # message without them is rejected (`missing_part`), not handed to a stage that
        # would fail on it and stop the pipeline.
        self.require = require
        self.stats = ReceiverStats()
        self._last_seq: dict[str, int] = {}
        self._open(hwm, stream, bind, curve)

    @abstractmethod
    def _open(self, hwm: int, stream: str | None, bind: bool, curve: Curve | None) -> None:
        """Attach to the endpoint (`stream`: only that stream's frames, where the transport
        can filter); raises if it cannot (nothing is left open then)."""

    @abstractmethod
    def recv(self, timeout_ms: int = 100) -> Frame | None:
        """The next frame (lossless) or the newest one waiting (latest); None on timeout."""

    def _accept(self, frame: Frame) -> Frame | None:
        """Count `frame` as handed to the consumer (seq gaps are frames lost upstream) and
        return it; a subclass may refuse it (None) before it is counted."""
        stats = self.stats
        stats.received += 1
        if frame.clock_shift_ns:
            if not stats.rebased:
                logger.warning("{} on {}: frames come from another host (clocks {:+.3f} s "
                               "apart); their times are converted through the wall clocks, "
                               "so latencies across hosts are only as good as the hosts' "
                               "clock sync (NTP ~1 ms, PTP better)", self.name, self.endpoint,
                               frame.clock_shift_ns / 1e9)
            stats.rebased += 1
        last = self._last_seq.get(frame.stream)
        if last is not None and frame.seq > last + 1:
            stats.lost_by_stream[frame.stream] += frame.seq - last - 1
        self._last_seq[frame.stream] = frame.seq
        return frame

    @property
    def dropped(self) -> int:
        """Frames this consumer never got: superseded here or lost upstream (seq gaps)."""
        return self.stats.lost


class InprocReceiver(Receiver):
    """inproc://: takes Frames from the endpoint's mailbox (the mailbox does `latest`)."""

    _box: inproc.Mailbox | None

    def _open(self, hwm: int, stream: str | None, bind: bool, curve: Curve | None) -> None:
        self._box = inproc.attach(self.endpoint, self.mode, hwm)

    def recv(self, timeout_ms: int = 100) -> Frame | None:
        box = self._box
        assert box is not None, f"{self.endpoint}: recv after close"
        frame = box.get(timeout_ms / 1000)
        self.stats.superseded = box.superseded
        if frame is not None:
            self._accept(frame)
        return frame

    def close(self) -> None:
        if self._box is not None:
            inproc.detach(self._box)
            self._box = None


class ZmqReceiver(Receiver):
    """ipc:// and tcp://: SUB (latest, drained to the newest frame per stream) or PULL."""

    # Where shm:// parts are read; None here: every part comes in the message (a message
    # that points into shared memory is rejected).
    _shm: SlotReader | None = None

    def _open(self, hwm: int, stream: str | None, bind: bool, curve: Curve | None) -> None:
        self._log = RateLimitedLog()
        self._socket = context().socket(zmq.SUB if self.mode == "latest" else zmq.PULL)
        self._socket.setsockopt(zmq.RCVHWM, hwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._rcvtimeo = -1  # the socket's ZMQ_RCVTIMEO, set only when a wait needs another
        if self.mode == "latest":
            prefix = wire.topic(stream)[: -len(b"frame")] if stream else b""
            self._socket.setsockopt(zmq.SUBSCRIBE, prefix)
        # latest: the newest frame of each stream waiting to be taken. Several streams
        # (operating rooms) may feed one stage; each keeps its own newest frame, so a busy
        # room never starves a quiet one.
        self._pending: dict[str, Frame] = {}
        self._streams: set[str] = set()  # every stream id taken so far (at most MAX_STREAMS)
        self._bound = _attach(self._socket, self.endpoint, bind, curve)

    def close(self) -> None:
        _close(self._socket, self._bound)

    def _decode(self, message: list[zmq.Frame]) -> Frame | None:
        try:
            frame = wire.decode(message, self.max_bytes, self._shm)
        except wire.WireError as exc:
            self._reject(exc.reason, str(exc))
            return None
        for name in self.require:
            if getattr(frame, name) is None:
                self._reject("missing_part", f"missing_part: frame {frame.seq} has no "
                             f"{name!r} part")
                return None
        if frame.stream not in self._streams:
            if len(self._streams) >= MAX_STREAMS:
                self._reject("too_many_streams", f"too_many_streams: frame {frame.seq} is "
                             f"of a new stream {frame.stream!r} past the {MAX_STREAMS} "
                             f"streams this input takes")
                return None
            self._streams.add(frame.stream)
        return frame

    def _reject(self, reason: str, detail: str) -> None:
        self.stats.rejected[reason] += 1
        self._log.warn(reason, f"{self.name} on {self.endpoint} rejected a message "
                       f"({detail}); total rejected: {sum(self.stats.rejected.values())}")

    def recv(self, timeout_ms: int = 100) -> Frame | None:
        if self.mode == "latest" and self._pending:
            self._drain()  # frames of other streams are waiting: no need to block
            waiting = self._take_accepted()
            if waiting is not None:
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
                frame = self._take_accepted()
            elif frame is not None:
                frame = self._accept(frame)
            if frame is not None:
                return frame
            if time.monotonic() >= deadline:
                return None

    def _take_accepted(self) -> Frame | None:
        """The waiting frame captured longest ago that the consumer can have. One refused
        on the way (a shm:// slot reused before it was read) is counted and the next one
        taken: the frames behind it must not wait for another message or the timeout."""
        while self._pending:
            frame = self._accept(self._take())  # type: ignore[arg-type]  # pending: not None
            if frame is not None:
                return frame
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


class ShmReceiver(ZmqReceiver):
    """shm://: as ipc://, with the pixel parts read in place in the sender's ring."""

    _shm: SlotReader

    def _open(self, hwm: int, stream: str | None, bind: bool, curve: Curve | None) -> None:
        from orstream.pipeline.shm import SlotReader  # numba: only when used

        self._shm = SlotReader()
        super()._open(hwm, stream, bind, curve)

    def _accept(self, frame: Frame) -> Frame | None:
        if frame.lease is not None:  # None: the parts came in the message (ring full)
            claimed = self._claim(frame)
            if claimed is None:
                return None
            frame = claimed
        return super()._accept(frame)

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


# The class for each endpoint scheme (pipeline/endpoints.py SCHEMES).
SENDERS: dict[str, type[Sender]] = {
    "inproc": InprocSender, "ipc": ZmqSender, "tcp": ZmqSender, "shm": ShmSender}
RECEIVERS: dict[str, type[Receiver]] = {
    "inproc": InprocReceiver, "ipc": ZmqReceiver, "tcp": ZmqReceiver, "shm": ShmReceiver}
Sender.by_scheme = SENDERS
Receiver.by_scheme = RECEIVERS
