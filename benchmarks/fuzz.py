"""Fuzzing every socket orstream reads, while real frames flow through it.

    python -m orstream.benchmarks.fuzz [--messages 100000] [--sockets stage-tcp,view,...]
                                       [--seed 0] [--out benchmarks/results]

Each socket gets `--messages` malformed messages from benchmarks/fuzz_cases.py (hypothesis,
structure-aware: a real message with one rule of PROTOCOL.md broken), sent over a real
ZeroMQ socket into the real receiver, with real frames in between: one valid but adversarial
frame (unknown fields and parts, extreme but legal values, 1x1 pictures) among every
GOOD_EVERY messages, and a plain frame closing every batch of BATCH, which the harness waits
for (a `latest` receiver keeps only the newest frame: a frame behind the next would be
superseded, by design). It counts:

- crashes: an exception out of the receiver (or the stage, the viewer, the decoder) that
  is not its rejection of the message; the harness keeps receiving after one;
- hangs: a closing frame not delivered within HANG_S;
- rejected, by the receiver's own reason keys; every malformed message must be counted
  under one (rejected == messages), and every good frame delivered (delivered == sent).

Sockets:

- stage-tcp, stage-ipc, stage-shm: a stage's input (pipeline/transport.py Receiver, bound,
  `require=("image",)` as pipeline/edges.py opens it) over tcp:// lossless, ipc:// latest and
  shm:// lossless, each frame then drawn by the real RenderStage (a frame the receiver lets
  through must not fail the stage behind it). shm:// also gets descriptors forged against
  the real ring its good frames travel in (wrong stamps, other files, offsets past the end).
- view: `orstream view`'s function, subscribed to a PUB the harness binds.
- masks: pipeline/masks.py's decoder over a real SUB socket. orstream has no mask receiver
  class (displays decode the stream themselves), so the loop that counts the decoder's
  reasons is the harness's own: five lines, beside the decoder that is under test.
- ask: the describe stage's REP socket with the shipped VLM behind it; each request is a
  round trip, refused requests must get an error reply and good questions an answer.

Receivers are given a 256 KiB cap (the product default is 64 MiB) so that oversize messages
cost little to send; the check is the same code.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from orstream.benchmarks.common import machine, table, write_json
from orstream.benchmarks.fuzz_cases import (
    Case,
    FrameSpec,
    ShmForge,
    Template,
    adversarial_frame,
    bad_mask,
    bad_question,
    frame_case,
    good_question,
)
from orstream.common.net import free_port
from orstream.pipeline import masks, wire
from orstream.pipeline.endpoints import zmq_address
from orstream.pipeline.frame import Caption, Frame

MAX_BYTES = 256 * 1024  # the fuzzed receivers' cap (see the module docstring)
MAX_PIXELS = 512 * 512  # the mask decoder's pixel cap, likewise
BATCH = 8  # messages per hypothesis example; each example ends with a plain frame
GOOD_EVERY = 10  # one valid but adversarial frame among this many messages
HANG_S = 10.0  # a frame not delivered in this long is a hang
SOCKETS = ("stage-tcp", "stage-ipc", "stage-shm", "view", "masks", "ask")
REPORT = Path(__file__).parent / "reports" / "2026-12-05-xeon-amx-2core" / "fuzz.json"


@dataclass
class Tally:
    socket: str
    messages: int = 0  # malformed messages sent
    good_sent: int = 0
    good_delivered: int = 0
    rejected: Counter = field(default_factory=Counter)  # the receiver's reason -> count
    mutations: Counter = field(default_factory=Counter)  # what the messages broke
    crashes: int = 0
    hangs: int = 0
    bad_delivered: int = 0  # malformed messages handed on as if valid
    errors: list[str] = field(default_factory=list)  # the first crash/hang reports
    elapsed_s: float = 0.0

    def note(self, what: str) -> None:
        if len(self.errors) < 5:
            self.errors.append(what[-2000:])

    @property
    def ok(self) -> bool:
        return (self.crashes == 0 and self.hangs == 0 and self.bad_delivered == 0
                and sum(self.rejected.values()) == self.messages
                and self.good_delivered == self.good_sent)

    def row(self) -> dict[str, Any]:
        return {"socket": self.socket, "messages": self.messages,
                "rejected": sum(self.rejected.values()), "good_sent": self.good_sent,
                "good_delivered": self.good_delivered, "crashes": self.crashes,
                "hangs": self.hangs, "bad_delivered": self.bad_delivered,
                "msgs_per_s": (self.messages + self.good_sent) / max(self.elapsed_s, 1e-9),
                "ok": "yes" if self.ok else "NO"}

    def to_json(self) -> dict[str, Any]:
        return {**self.row(), "ok": self.ok, "elapsed_s": round(self.elapsed_s, 2),
                "rejected_by_reason": dict(sorted(self.rejected.items())),
                "mutations": dict(sorted(self.mutations.items())), "errors": self.errors}


class Delivered:
    """What a consumer thread got, waited on by the harness."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.keys: set[Any] = set()
        self.crashes = 0
        self.errors: list[str] = []

    def add(self, key: Any) -> None:
        with self.cond:
            self.keys.add(key)
            self.cond.notify_all()

    def crash(self) -> None:
        with self.cond:
            self.crashes += 1
            if len(self.errors) < 5:
                self.errors.append(traceback.format_exc())
            self.cond.notify_all()

    def wait(self, key: Any, timeout_s: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: key in self.keys, timeout_s)


# ----------------------------------------------------------------- targets


class Target(ABC):
    """One socket under test: sends cases to it and knows what came out."""

    name: str

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.delivered = Delivered()
        self.warmup = 0  # frames delivered while connecting, before any count
        self.hangs = 0  # requests that never got a reply (ask)
        self._seq = itertools.count(10 ** 9)  # as many digits in every header

    @abstractmethod
    def bad(self) -> st.SearchStrategy[Case]: ...

    @abstractmethod
    def good(self) -> st.SearchStrategy[Any]: ...

    @abstractmethod
    def plain(self) -> Any:
        """A plain valid message for send_good (the batch's closing frame)."""

    @abstractmethod
    def send_bad(self, case: Case) -> None: ...

    @abstractmethod
    def send_good(self, spec: Any) -> Any:
        """Send a valid message; the key its delivery is recorded under."""

    @abstractmethod
    def rejected(self) -> Counter: ...

    @abstractmethod
    def bad_delivered(self) -> int:
        """Malformed messages handed on as if they were valid."""

    @abstractmethod
    def close(self) -> None: ...


def _frame(rng: np.random.Generator, seq: int, spec: FrameSpec | None = None,
           stream: str = "or-1") -> Frame:
    """A real frame: random pixels and labels, a caption and a trace."""
    h, w = (spec.height, spec.width) if spec else (24, 32)
    now = time.monotonic_ns()
    frame = Frame(stream, seq, spec.t_capture_ns if spec else now,
                  spec.t_wall_ns if spec else time.time_ns(),
                  rng.integers(0, 256, (h, w, 3), np.uint8))
    shape = spec.labels if spec else (12, 16)
    if shape is not None:
        frame.labels = rng.integers(0, 8, shape, np.uint8)
        frame.region = spec.region if spec and spec.region else (0, 0, h, w)
    frame.caption = Caption(spec.caption if spec and spec.caption is not None else "smoke",
                            seq, frame.t_capture_ns)
    frame.media_s = spec.media_s if spec else None
    frame.stamp("capture", frame.t_capture_ns, frame.t_capture_ns)
    return frame


def _adversarial(message: list[Any], spec: FrameSpec) -> list[Any]:
    """`message` with the spec's unknown fields and part, and whitespace around the JSON."""
    header = json.loads(bytes(message[1]))
    header.update(spec.extra)
    parts = list(message[2:])
    if spec.unknown_part and "parts" in header:
        header["parts"].append({"name": "depth", "dtype": "float32", "shape": [2, 2]})
        if "shm" in header:
            header["parts"][-1]["offset"] = header["parts"][0]["offset"]
        else:
            parts.append(bytes(16))
    text = json.dumps(header)
    return [message[0], (" \n" + text + "\t " if spec.spaces else text).encode(), *parts]


def _publisher(kind: int, endpoint: str, bind: bool) -> zmq.Socket:
    """The harness's sending socket; its queue never drops what it was given."""
    socket = zmq.Context.instance().socket(kind)
    socket.setsockopt(zmq.SNDHWM, 100_000)
    socket.setsockopt(zmq.LINGER, 0)
    (socket.bind if bind else socket.connect)(zmq_address(endpoint))
    return socket


class FrameTarget(Target):
    """A receiver of the frame stream; the harness sends on `self.socket`."""

    socket: zmq.Socket
    parts: tuple[str, ...] = ("image", "labels")
    ring: Any = None  # shm://: the ring good frames travel in
    _template: Template | None = None

    def template(self) -> Template:
        """The real message every malformed one starts from: one per target, since
        hypothesis demands that the same choices draw the same way, and a case's choices
        depend on its template's sizes. Its seq is no good frame's: if a malformed message
        got through, it would show as a frame delivered that was never sent."""
        if self._template is None:
            frame = _frame(np.random.default_rng(0), next(self._seq))
            self._template = Template.of(wire.encode(frame, ("image", "labels")))
        return self._template

    def good(self) -> st.SearchStrategy[FrameSpec]:
        return adversarial_frame()

    def plain(self) -> FrameSpec | None:
        return None

    def send_bad(self, case: Case) -> None:
        self.socket.send_multipart(case.parts)

    def send_good(self, spec: FrameSpec | None) -> Any:
        frame = _frame(self.rng, next(self._seq), spec)
        message = wire.encode(frame, self.parts, None, self.ring)
        if spec is not None:
            message = _adversarial(message, spec)
        self.socket.send_multipart(message)
        return frame.stream, frame.seq


class StageTarget(FrameTarget):
    """A stage's input Receiver, bound as pipeline/edges.py binds it, and RenderStage."""

    def __init__(self, rng: np.random.Generator, scheme: str, mode: str) -> None:
        super().__init__(rng)
        from orstream.pipeline.config import load_config
        from orstream.pipeline.stages import RenderStage
        from orstream.pipeline.transport import Receiver

        self.name = f"stage-{scheme}"
        self._dir = Path(tempfile.mkdtemp(prefix="orstream-fuzz-"))
        endpoint = (f"tcp://127.0.0.1:{free_port()}" if scheme == "tcp"
                    else f"{scheme}://{self._dir}/in")
        self.receiver = Receiver(endpoint, mode, max_bytes=MAX_BYTES, name=self.name,
                                 bind=True, require=("image",))
        self.stage = RenderStage(load_config(None, ["render.threads=1"]), "parts",
                                 lambda: 0, None)
        self.stage.open()
        self.forge: ShmForge | None = None
        if scheme == "shm":
            from orstream.pipeline.shm import SlotRing

            self.ring = SlotRing(8, lossless=mode == "lossless")
            self.forge = ShmForge(self.ring, _decoys(self.ring.folder))
        self.socket = _publisher(zmq.PUSH if mode == "lossless" else zmq.PUB, endpoint,
                                 bind=False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._consume, daemon=True)
        self._thread.start()

    def _consume(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self.receiver.recv(50)
                if frame is None:
                    continue
                self.stage.process(frame)
                self.delivered.add((frame.stream, frame.seq))
            except Exception:  # noqa: BLE001 - what the fuzzing looks for: counted, go on
                self.delivered.crash()

    def bad(self) -> st.SearchStrategy[Case]:
        return frame_case(self.template(), MAX_BYTES, ("image",), self.forge)

    def rejected(self) -> Counter:
        return Counter(self.receiver.stats.rejected)

    def bad_delivered(self) -> int:
        return self.receiver.stats.received - len(self.delivered.keys)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.socket.close(0)
        self.receiver.close()
        if self.ring is not None:
            self.ring.close()
        for decoy in self.forge.decoys if self.forge else []:
            if decoy.is_dir() and not decoy.is_symlink():
                decoy.rmdir()
            else:
                decoy.unlink(missing_ok=True)
        shutil.rmtree(self._dir, ignore_errors=True)


def _decoys(folder: Path) -> list[Path]:
    """Files in the shared-memory folder named like rings that no receiver may read: a
    symlink (to a real file), a folder, a FIFO, an empty file, a file shorter than a slot
    header."""
    paths = [folder / f"orstream-{os.getpid()}-{k:016x}" for k in range(0xdec0, 0xdec5)]
    paths[0].symlink_to("/etc/hostname")
    paths[1].mkdir()
    os.mkfifo(paths[2])
    paths[3].touch()
    paths[4].write_bytes(bytes(40))
    return paths


class ViewTarget(FrameTarget):
    """`orstream view`'s function in a thread, subscribed to the harness's PUB."""

    name = "view"
    parts = ("overlay", "labels")

    def __init__(self, rng: np.random.Generator) -> None:
        super().__init__(rng)
        from orstream.pipeline.view import ViewSummary, view

        endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.socket = _publisher(zmq.PUB, endpoint, bind=True)
        self._stop = threading.Event()
        self.summary: ViewSummary | None = None

        def run() -> None:
            try:
                self.summary = view(endpoint, window=False, stop=self._stop, quiet=True,
                                    on_frame=lambda f: self.delivered.add((f.stream, f.seq)),
                                    max_bytes=MAX_BYTES)
            except Exception:  # noqa: BLE001 - a crash of the viewer: counted
                self.delivered.crash()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def bad(self) -> st.SearchStrategy[Case]:
        # A display takes any valid frame, pictureless or not: nothing is "missing".
        return frame_case(self.template(), MAX_BYTES, (), None)

    def rejected(self) -> Counter:
        # The viewer tells its counts when it ends (close() comes first).
        return Counter(self.summary.rejected_by_reason) if self.summary else Counter()

    def bad_delivered(self) -> int:
        return self.summary.frames - len(self.delivered.keys) if self.summary else 0

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.socket.close(0)


class MaskTarget(FrameTarget):
    """pipeline/masks.py's decoder behind a real SUB socket (see the module docstring)."""

    name = "masks"
    CLASSES = {"task": "parts", "names": ["background", "shaft", "wrist", "clasper", "probe"],
               "colors": [[0, 0, 0], [0, 160, 255], [255, 0, 0], [0, 255, 0], [255, 255, 0]]}

    def __init__(self, rng: np.random.Generator) -> None:
        super().__init__(rng)
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.socket = _publisher(zmq.PUB, endpoint, bind=True)
        self.sub = zmq.Context.instance().socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.setsockopt(zmq.RCVHWM, 100_000)
        self.sub.connect(endpoint)
        self._rejected: Counter = Counter()
        self._decoded = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._consume, daemon=True)
        self._thread.start()

    def _consume(self) -> None:
        while not self._stop.is_set():
            if not self.sub.poll(50):
                continue
            message = self.sub.recv_multipart(copy=False)
            try:
                decoded = masks.decode(message, MAX_BYTES, MAX_PIXELS)
            except wire.WireError as exc:
                self._rejected[exc.reason] += 1
                continue
            except Exception:  # noqa: BLE001 - what the fuzzing looks for
                self.delivered.crash()
                continue
            self._decoded += 1
            self.delivered.add((decoded.stream, decoded.seq))

    def _message(self, spec: FrameSpec | None, rng: np.random.Generator | None = None
                 ) -> tuple[list[bytes], tuple[str, int]]:
        frame = _frame(rng or self.rng, next(self._seq), spec)
        if frame.labels is not None:
            frame.labels %= len(self.CLASSES["names"])
        return masks.encode(frame, self.CLASSES), (frame.stream, frame.seq)

    def bad(self) -> st.SearchStrategy[Case]:
        if self._template is None:  # one for all: see FrameTarget.template
            spec = FrameSpec(24, 32, (12, 16), None, 1, 1, None, None, {}, False, False)
            self._template = Template.of(self._message(spec, np.random.default_rng(0))[0])
        return bad_mask(self._template, MAX_BYTES, MAX_PIXELS)

    def send_good(self, spec: FrameSpec | None) -> Any:
        message, key = self._message(spec)
        if spec is not None:
            header = json.loads(message[1])
            header.update(spec.extra)
            text = json.dumps(header)
            message[1] = (" \n" + text + "\t " if spec.spaces else text).encode()
        self.socket.send_multipart(message)
        return key

    def rejected(self) -> Counter:
        return Counter(self._rejected)

    def bad_delivered(self) -> int:
        return self._decoded - len(self.delivered.keys)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.socket.close(0)
        self.sub.close(0)


class AskTarget(Target):
    """The describe stage's ask socket (REP), the VLM in its worker process behind it."""

    name = "ask"

    def __init__(self, rng: np.random.Generator, weights: Path | None = None) -> None:
        super().__init__(rng)
        from orstream.pipeline.config import DescribeConfig
        from orstream.pipeline.describe import ASK_MAX_BYTES, DescribeWorker

        self.limit = ASK_MAX_BYTES
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.worker = DescribeWorker(DescribeConfig(
            weights=weights, interval_s=3600, ask_endpoint=self.endpoint, priority="normal"))
        self.worker.start()
        self.worker.offer(_frame(rng, 0, FrameSpec(256, 320, None, None, time.monotonic_ns(),
                                                   time.time_ns(), None, None, {}, False,
                                                   False)))
        self._socket: zmq.Socket | None = None
        self.unanswered = 0  # malformed requests that got anything but an error reply
        if not self.worker.ready.wait(120) or self.worker.failed is not None:
            self.worker.close()
            raise RuntimeError(f"the describe worker did not start: {self.worker.failed}")

    def _request(self, parts: list[bytes]) -> dict | None:
        if self._socket is None:
            self._socket = zmq.Context.instance().socket(zmq.REQ)
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.connect(self.endpoint)
        self._socket.send_multipart(parts)
        if not self._socket.poll(int(HANG_S * 1000)):
            self._socket.close(0)  # a REQ that got no reply cannot send again
            self._socket = None
            self.hangs += 1
            return None
        return json.loads(self._socket.recv())

    def bad(self) -> st.SearchStrategy[Case]:
        return bad_question(self.limit)

    def good(self) -> st.SearchStrategy[Case]:
        return good_question()

    def plain(self) -> Case:
        return Case([b'{"question": "is there smoke?"}'], "ask.plain", good=True)

    def send_bad(self, case: Case) -> None:
        reply = self._request(case.parts)
        if reply is not None and "error" not in reply:
            self.unanswered += 1

    def send_good(self, case: Case) -> Any:
        key = next(self._seq)
        reply = self._request(case.parts)
        if reply is not None and "answer" in reply:
            self.delivered.add(key)
        elif reply is not None:
            self.delivered.errors.append(f"a good question got {reply}: {case.parts[0][:80]!r}")
        return key

    def rejected(self) -> Counter:
        return Counter(self.worker.rejected)

    def bad_delivered(self) -> int:
        return self.unanswered

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(0)
        self.worker.close()


def make_target(name: str, rng: np.random.Generator) -> Target:
    if name == "stage-tcp":
        return StageTarget(rng, "tcp", "lossless")
    if name == "stage-ipc":
        return StageTarget(rng, "ipc", "latest")
    if name == "stage-shm":
        return StageTarget(rng, "shm", "lossless")
    return {"view": ViewTarget, "masks": MaskTarget, "ask": AskTarget}[name](rng)


# ----------------------------------------------------------------- driver


def fuzz(name: str, messages: int, seed_value: int = 0, derandomize: bool = False) -> Tally:
    """Send `messages` malformed messages to socket `name` with real ones in between."""
    tally = Tally(name)
    target = make_target(name, np.random.default_rng(seed_value))
    t0 = time.monotonic()
    try:
        _connect(target)

        def deliver(spec: Any) -> None:
            key = target.send_good(spec)
            tally.good_sent += 1
            if not target.delivered.wait(key, HANG_S) and name != "ask":
                tally.hangs += 1  # ask: its socket counts what got no reply
                tally.note(f"good message {key} not delivered within {HANG_S:.0f} s")

        # Examples to spend the budget in one run: a tenth of the draws are good frames.
        examples = math.ceil(messages / (BATCH * (1 - 1 / GOOD_EVERY)) * 1.02)

        @settings(max_examples=examples, database=None, deadline=None,
                  derandomize=derandomize, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(st.data())
        def batch(data: st.DataObject) -> None:
            # Past the budget the cases are still drawn, not sent: hypothesis demands that
            # the same choices draw the same way, whatever the tally.
            spent = tally.messages >= messages
            for _ in range(BATCH):
                if data.draw(st.integers(0, GOOD_EVERY - 1)) == 0:
                    spec = data.draw(target.good())
                    if not spent:
                        deliver(spec)
                    continue
                case = data.draw(target.bad())
                if spent or tally.messages >= messages:
                    continue
                target.send_bad(case)
                tally.messages += 1
                tally.mutations[case.mutation.rsplit(".", 1)[0]] += 1
            if not spent:
                deliver(target.plain())

        # A run of examples ends early when hypothesis thinks it has seen enough: go on
        # with the next seed until the budget is spent (or the socket hangs for good).
        while tally.messages < messages and tally.hangs + target.hangs < 3:
            (batch if derandomize else seed(seed_value)(batch))()
            seed_value += 1
    finally:
        target.close()
        tally.elapsed_s = time.monotonic() - t0
    tally.rejected = target.rejected()
    tally.good_delivered = len(target.delivered.keys) - target.warmup
    tally.crashes = target.delivered.crashes
    tally.hangs += target.hangs
    tally.bad_delivered = target.bad_delivered()
    for error in target.delivered.errors:
        tally.note(error)
    return tally


def _connect(target: Target) -> None:
    """Send plain frames until one arrives: a SUB hears nothing before its subscription
    reached the PUB, and those first frames are not the receiver's to count."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        key = target.send_good(target.plain())
        if target.delivered.wait(key, 0.2):
            target.warmup = len(target.delivered.keys)
            return
    raise RuntimeError(f"{target.name}: no frame got through in 30 s")


COLUMNS = [("socket", "socket", ""), ("messages", "malformed", "d"),
           ("rejected", "rejected", "d"), ("good_sent", "good sent", "d"),
           ("good_delivered", "good delivered", "d"), ("crashes", "crashes", "d"),
           ("hangs", "hangs", "d"), ("bad_delivered", "bad let through", "d"),
           ("msgs_per_s", "msg/s", ".0f"), ("ok", "ok", "")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000,
                        help="malformed messages per socket")
    parser.add_argument("--sockets", default=",".join(SOCKETS),
                        help=f"comma-separated, of {', '.join(SOCKETS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPORT, help="JSON report path")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.sockets.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SOCKETS))
    if unknown:
        parser.error(f"unknown socket(s) {', '.join(unknown)}; choose from {', '.join(SOCKETS)}")
    tallies = []
    t0 = time.monotonic()
    for name in names:
        tally = fuzz(name, args.messages, args.seed)
        tallies.append(tally)
        print(f"{name}: {tally.messages} malformed, {tally.elapsed_s:.0f} s, "
              f"{'ok' if tally.ok else 'FAILED'}", file=sys.stderr, flush=True)
    print(table([t.row() for t in tallies], COLUMNS))
    for t in tallies:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(t.rejected.items()))
        print(f"\n{t.socket} rejected by reason: {reasons}")
        for error in t.errors:
            print(f"  {error.splitlines()[-1] if error else error}")
    write_json(args.out, {"date": date.today().isoformat(), "machine": machine(),
                          "messages_per_socket": args.messages, "seed": args.seed,
                          "batch": BATCH, "good_every": GOOD_EVERY, "hang_s": HANG_S,
                          "max_bytes": MAX_BYTES, "wall_s": round(time.monotonic() - t0, 1),
                          "sockets": [t.to_json() for t in tallies]})
    print(f"\nwrote {args.out}")
    return 0 if all(t.ok for t in tallies) else 1


if __name__ == "__main__":
    sys.exit(main())
