"""One frame hop between two processes, measured: the paced sender, the peer process that
runs it, and imagezmq's REQ/REP hop (the simplest peer of the display hop).

`orstream bench` measures the imagezmq hop as a floor beside its run (pipeline/bench/floors.py);
benchmarks/transport.py measures orstream's own hops with the same sender and peer, so both
sides are timed the same way. Only numpy and the standard library at the top: spawned
children import this module and import what their role needs (imagezmq) inside its function.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import threading
import time
from typing import Any

import numpy as np

from orstream.common.timing import stats

PRIME = "prime"  # small frames sent until the receiver sees one; not measured
START_TIMEOUT_S = 60.0  # spawning a child on a busy machine can take a while
IDLE_TIMEOUT_S = 5.0  # no frame for this long ends a row


def frame_image(shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)


def sleep_until(deadline_ns: int) -> None:
    remaining = deadline_ns - time.monotonic_ns()
    if remaining > 0:
        time.sleep(remaining / 1e9)


def send_paced(n: int, fps: float, send_one: Any, done: Any) -> dict:
    """Call send_one(i) for i < n at `fps` (0: flat out); {sent, fps achieved}.

    send_one returns its send time (monotonic ns). A late frame shifts the schedule: no
    catch-up bursts.
    """
    period_ns = int(1e9 / fps) if fps else 0
    next_ns = time.monotonic_ns()
    first_ns = last_ns = 0
    sent = 0
    for i in range(n):
        if period_ns:
            sleep_until(next_ns)
        last_ns = send_one(i)
        sent += 1
        first_ns = first_ns or last_ns
        if period_ns:
            next_ns = max(next_ns + period_ns, time.monotonic_ns())
        if done.is_set():
            break
    rate = (sent - 1) / ((last_ns - first_ns) / 1e9) if sent > 1 and last_ns > first_ns else 0.0
    return {"sent": sent, "fps": rate}


def imagezmq_sender(endpoint: str, shape: tuple[int, ...], n: int, fps: float, go: Any,
                    done: Any, results: Any) -> None:
    import imagezmq
    import zmq

    image = frame_image(shape)
    prime = np.zeros((2, 2, 3), np.uint8)
    sender = imagezmq.ImageSender(connect_to=endpoint, REQ_REP=True)
    sender.zmq_socket.setsockopt(zmq.LINGER, 0)
    sender.zmq_socket.setsockopt(zmq.RCVTIMEO, int(START_TIMEOUT_S * 1000))  # no hang
    try:
        while not go.is_set():
            if done.is_set():
                return
            sender.send_image(PRIME, prime)  # REQ/REP: returns once the hub has replied
            time.sleep(0.01)
        def send_one(i: int) -> int:
            t_send = time.monotonic_ns()
            sender.send_image(f"{i}:{t_send}", image)
            return t_send

        results.put(send_paced(n, fps, send_one, done))
        done.wait(30)
    except zmq.Again:
        results.put({"error": "imagezmq hub stopped replying"})
    finally:
        sender.close()


class Peer:
    """A sender in a spawned process or a thread, stopped and joined whatever happens."""

    def __init__(self, target: Any, args: tuple, thread: bool = False) -> None:
        if thread:
            self.go, self.done = threading.Event(), threading.Event()
            self.results: Any = queue.Queue()
            self.worker: Any = threading.Thread(
                target=target, args=(*args, self.go, self.done, self.results), daemon=True)
        else:
            ctx = mp.get_context("spawn")
            self.go, self.done = ctx.Event(), ctx.Event()
            self.results = ctx.Queue()
            self.worker = ctx.Process(
                target=target, args=(*args, self.go, self.done, self.results), daemon=True)

    def __enter__(self) -> Peer:
        self.worker.start()
        return self

    def result(self, timeout_s: float = 15.0) -> dict:
        try:
            out = self.results.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError("the sender did not report its rate") from None
        if "error" in out:
            raise RuntimeError(out["error"])
        return out

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.worker.join(10)
        if isinstance(self.worker, mp.process.BaseProcess) and self.worker.is_alive():
            self.worker.terminate()
            self.worker.join(5)


def wait_for_prime(poll: Any, go: Any, what: str) -> None:
    """`poll()` receives one message (or None on a short timeout); the first one starts."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if poll() is not None:
            go.set()
            return
    raise TimeoutError(f"{what}: no message from the sender in {START_TIMEOUT_S:.0f} s")


def summary(lat_ns: list[int], t_rx_ns: list[int]) -> dict:
    if not lat_ns:
        raise RuntimeError("no frames measured")
    out = stats(np.asarray(lat_ns) / 1e6)
    span = (t_rx_ns[-1] - t_rx_ns[0]) / 1e9
    out["throughput_fps"] = (len(t_rx_ns) - 1) / span if span > 0 else None
    out["lat_ns"] = lat_ns  # for pooling rounds; dropped before the report
    return out


def imagezmq_row(endpoint: str, shape: tuple[int, ...], n: int, fps: float,
                 warmup: int) -> dict:
    import imagezmq
    import zmq

    hub = imagezmq.ImageHub(open_port=endpoint, REQ_REP=True)
    hub.zmq_socket.setsockopt(zmq.LINGER, 0)
    # Wait the way orstream's Receiver does, inside a blocking recv with a 100 ms
    # ZMQ_RCVTIMEO, so both sides wake at the same point; a poll() first would add a poller
    # round to imagezmq's side only.
    hub.zmq_socket.setsockopt(zmq.RCVTIMEO, 100)

    def recv() -> tuple[str, int] | None:
        try:
            msg, _image = hub.recv_image()
        except zmq.Again:
            return None
        now_ns = time.monotonic_ns()  # receipt, before the reply
        hub.send_reply(b"OK")
        return msg, now_ns

    try:
        with Peer(imagezmq_sender, (endpoint, shape, n, fps)) as peer:
            wait_for_prime(recv, peer.go, f"imagezmq {endpoint}")
            lat, t_rx = [], []
            received = 0
            last_seen = time.monotonic()
            while time.monotonic() - last_seen < IDLE_TIMEOUT_S:
                got = recv()
                if got is None or got[0] == PRIME:
                    continue
                last_seen = time.monotonic()
                received += 1
                seq, t_send = (int(v) for v in got[0].split(":"))
                if seq >= warmup:
                    lat.append(got[1] - t_send)
                    t_rx.append(got[1])
                if seq >= n - 1:
                    break
            peer.done.set()
            sent = peer.result()
    finally:
        hub.close()
    out = summary(lat, t_rx)
    out.update(received=received, sent=sent["sent"], sender_fps=sent["fps"])
    return out
