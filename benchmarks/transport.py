"""Frame transport latency: orstream's ZeroMQ hop against a memory copy and imagezmq.

    python -m orstream.benchmarks.transport [--frames 600] [--saturated-frames 300] [--rounds 6]
                                   [--slow-seconds 5] [--out benchmarks/results]
                                   [--holoscan-python PATH] [--chain-only]

Everything runs in one process run, so the ratios are comparable on a noisy machine:

1. memcpy floor: np.copyto of a 1080p frame into a warm destination, into fresh pages, and
   paced at 30 fps (the caches cold, as in a paced hop). A process hop over ipc or tcp copies
   the frame twice, into the kernel's socket buffers and out of them, whatever the library on
   top: two paced copies are its floor.
2. orstream hop across processes (ipc, shm and tcp on 127.0.0.1): a spawned child sends with
   Sender, the parent receives with Receiver (which validates every message). Latency is the
   receipt time minus the frame's t_capture_ns (time.monotonic_ns() is system-wide on Linux).
   30 fps rows use "latest" (what displays use, the publisher binds), saturated rows use
   "lossless" (latest drops on purpose; the receiving stage binds its input).
   Over shm (`shm://`: the messages over ipc, the pixels through a shared-memory ring that
   the receiver reads in place) a hop copies the frame once: one paced copy is its floor.
3. imagezmq REQ/REP over ipc, same frame and rates (skipped if imagezmq is not installed).
   At 30 fps it runs with orstream's ipc and shm rows in `--rounds` rotating segments,
   pooled, so that the three see the same stretches of a shared machine. Both clocks start right
   before the library's send call (Sender.send, send_image) and stop right after its
   receive returns (Receiver.recv with its validation, recv_image); both receivers wait in
   a blocking recv with a 100 ms ZMQ_RCVTIMEO and drop the frame once stamped.
4. orstream hop between two threads over inproc, 1080p and 4K: buffers go by reference, so
   the cost should not grow with the frame size.
5. latest mode with a consumer three times slower than a 30 fps producer: the consumer must
   always get a fresh frame and the producer must not slow down. Ages count while the
   producer is sending (the last frame, taken after it stopped, has nothing newer).
6. a 1080p frame through a chain of 5 stages: orstream's runner in miniature (5 stage threads
   over inproc edges, each stamping the Frame's trace) against the Holoscan SDK's peer, 5 Python
   operators under the event-based scheduler with 4 workers (benchmarks/holoscan_peer.py), at
   30 fps and saturated, in `--rounds` alternating segments. Holoscan usually lives in its own
   venv: `--holoscan-python PATH` (or ORSTREAM_HOLOSCAN_PYTHON) names its interpreter, which
   runs the peer in a subprocess with the CUDA runtime's lib folder on LD_LIBRARY_PATH and a
   32 MB stack limit; without one (and without holoscan here) the Holoscan row says how to
   install it and the rest still runs. `--chain-only` runs the memcpy floor and this pair alone.

The first `--warmup` frames of every row are not measured; the sender waits for a start
signal after the connection is primed, so connecting and subscribing are not measured either.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from orstream.benchmarks.common import machine, stats, table, time_calls, write_json
from orstream.common.net import free_port
from orstream.pipeline.bench.hop import (
    IDLE_TIMEOUT_S,
    PRIME,
    START_TIMEOUT_S,
    Peer,
    frame_image,
    imagezmq_row,
    send_paced,
    summary,
    wait_for_prime,
)

# Only numpy and the standard library at the top: spawned children re-import this module and
# import what their role needs (orstream or imagezmq) inside their own function.

HD = (1080, 1920, 3)
UHD = (2160, 3840, 3)
STREAM = "bench"
FPS = 30.0
SLOW_CONSUMER_SLEEP_S = 0.1  # 3x slower than a 30 fps producer
AGE_TARGET_MS = 2 * 1000.0 / FPS  # never older than two frame periods
INPROC_TARGET_MS = 0.25
PRODUCER_TARGET_FPS = 29.0
CHAIN_STAGES = 5  # source, 3 pass-through stages, sink: 4 hops
HOLOSCAN_WORKERS = 4  # the event-based scheduler's worker threads, as in the figure
HOLOSCAN_STACK_BYTES = 32 * 1024 * 1024  # the stack limit issue 3 runs Holoscan with
HOLOSCAN_PYTHON_ENV = "ORSTREAM_HOLOSCAN_PYTHON"
HOLOSCAN_PEER = Path(__file__).resolve().parent / "holoscan_peer.py"
HOLOSCAN_INSTALL = ("python3 -m venv ~/holoscan-venv && ~/holoscan-venv/bin/pip install "
                    "holoscan-cu12 nvidia-cuda-runtime-cu12 numpy, then --holoscan-python "
                    "~/holoscan-venv/bin/python")


def _script_dir_off_path() -> None:
    """`python benchmarks/transport.py` puts benchmarks/ first on sys.path, where a module can
    shadow a library's (benchmarks/codecs.py shadows codecs). This module imports its
    siblings as orstream.benchmarks.*, so drop that entry; spawned children inherit sys.path."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]


# --------------------------------------------------------------------------- senders
# Each sender primes the connection until `go` is set, then sends `n` frames at `fps`
# (0: as fast as possible), puts {sent, fps} on `results` and waits for `done` before closing
# so nothing is dropped at close. The same function runs in a spawned process (multiprocessing
# Event and Queue) or in a thread (threading.Event, queue.Queue) for inproc.


def orstream_sender(endpoint: str, mode: str, bind: bool, shape: tuple[int, ...], n: int,
                    fps: float, go: Any, done: Any, results: Any) -> None:
    from orstream.pipeline.frame import Frame
    from orstream.pipeline.transport import Sender

    image = frame_image(shape)
    prime = np.zeros((2, 2, 3), np.uint8)
    with Sender(endpoint, mode, bind=bind) as sender:  # type: ignore[arg-type]
        deadline = time.monotonic() + START_TIMEOUT_S
        seq = 0
        while not go.is_set():
            if done.is_set() or time.monotonic() > deadline:
                results.put({"error": "no start signal"})
                return
            sender.send(Frame.capture(PRIME, seq, prime), timeout_ms=10)
            seq += 1
            time.sleep(0.01)
        def send_one(i: int) -> int:
            # The Frame is what the capture stage hands over; t_capture_ns is set just before
            # Sender.send, as imagezmq_sender takes its timestamp just before send_image, so
            # both clocks start at the library call and the hop is all that is measured.
            frame = Frame(STREAM, i, 0, time.time_ns(), image)
            frame.t_capture_ns = time.monotonic_ns()
            while not sender.send(frame):  # lossless: no room yet (backpressure)
                if done.is_set():
                    break
            return frame.t_capture_ns

        results.put(send_paced(n, fps, send_one, done))
        done.wait(30)


# --------------------------------------------------------------------------- runners


def orstream_row(endpoint: str, mode: str, sender_binds: bool, shape: tuple[int, ...],
                 n: int, fps: float, warmup: int, thread: bool = False) -> dict:
    from orstream.pipeline.transport import Receiver

    def recv(rx: Receiver) -> tuple[str, int, int, int] | None:
        frame = rx.recv(100)
        now_ns = time.monotonic_ns()  # receipt: right after Receiver.recv returns
        if frame is None:
            return None
        # The frame, and with it the receive buffer, is released on return, as imagezmq_row
        # releases its image: holding it until the next one arrives would make the receiving
        # side allocate a second buffer (fresh pages) for each frame, on one side only.
        return frame.stream, frame.seq, frame.t_capture_ns, now_ns

    with Receiver(endpoint, mode, bind=not sender_binds, name="bench") as rx, \
            Peer(orstream_sender, (endpoint, mode, sender_binds, shape, n, fps),
                  thread=thread) as peer:
        wait_for_prime(lambda: recv(rx), peer.go, f"orstream {endpoint}")
        dropped_before = rx.dropped
        lat, t_rx = [], []
        received = 0
        last_seen = time.monotonic()
        while time.monotonic() - last_seen < IDLE_TIMEOUT_S:
            got = recv(rx)
            if got is None or got[0] != STREAM:
                continue
            _stream, seq, t_capture_ns, now_ns = got
            last_seen = time.monotonic()
            received += 1
            if seq >= warmup:
                lat.append(now_ns - t_capture_ns)
                t_rx.append(now_ns)
            if seq >= n - 1:
                break
        peer.done.set()
        sent = peer.result()
        out = summary(lat, t_rx)
        out.update(received=received, sent=sent["sent"], sender_fps=sent["fps"],
                   dropped=rx.dropped - dropped_before,
                   rejected=sum(rx.stats.rejected.values()))
        return out


def paired_rows(endpoint: Any, n: int, fps: float, warmup: int, rounds: int) -> dict[str, dict]:
    """orstream over ipc, orstream over shm (latest) and imagezmq (REQ/REP, ipc) in `rounds`
    rotating segments of n / rounds frames, latencies pooled per side. On a shared machine
    the hop's p50 drifts by 10 % from one 10 s stretch to the next; back-to-back rows would
    compare different stretches, rotating segments compare the same ones."""
    per = max(n // rounds, warmup + 2)
    sides = ("orstream", "orstream shm", "imagezmq")
    segments: dict[str, list[dict]] = {who: [] for who in sides}
    for r in range(rounds):
        for who in sides[r % 3:] + sides[:r % 3]:
            if who == "imagezmq":
                row = imagezmq_row(endpoint(), HD, per, fps, warmup)
            else:
                address = endpoint()
                if who == "orstream shm":
                    address = "shm://" + address[len("ipc://"):]
                row = orstream_row(address, "latest", True, HD, per, fps, warmup)
            segments[who].append(row)
    out = {}
    for who, rows in segments.items():
        pooled = stats(np.asarray([x for row in rows for x in row["lat_ns"]]) / 1e6)
        pooled.update(
            throughput_fps=float(np.mean([row["throughput_fps"] or 0.0 for row in rows])),
            received=sum(row["received"] for row in rows),
            sent=sum(row["sent"] for row in rows),
            sender_fps=float(np.mean([row["sender_fps"] for row in rows])),
            rounds=rounds, rounds_p50=[row["p50"] for row in rows])
        if who != "imagezmq":
            pooled.update(dropped=sum(row["dropped"] for row in rows),
                          rejected=sum(row["rejected"] for row in rows),
                          rounds_vs_imagezmq=[o["p50"] / i["p50"] for o, i in zip(
                              rows, segments["imagezmq"], strict=True)])
        out[who] = pooled
    return out


def slow_consumer(endpoint: str, seconds: float, warmup: int) -> dict:
    """Producer (child) at 30 fps in latest mode, consumer here sleeping 100 ms per frame."""
    from orstream.pipeline.transport import Receiver

    n = int(seconds * FPS)
    with Receiver(endpoint, "latest", bind=False, name="slow") as rx, \
            Peer(orstream_sender, (endpoint, "latest", True, HD, n, FPS)) as peer:
        wait_for_prime(lambda: rx.recv(100), peer.go, "slow consumer")
        dropped_before = rx.dropped
        taken: list[tuple[int, int]] = []  # (capture, receipt) ns of each measured frame
        seqs = []
        received = 0
        last_capture_ns = None
        last_seen = time.monotonic()
        while time.monotonic() - last_seen < IDLE_TIMEOUT_S:
            frame = rx.recv(100)
            now_ns = time.monotonic_ns()
            if frame is None or frame.stream != STREAM:
                continue
            last_seen = time.monotonic()
            received += 1
            seqs.append(frame.seq)
            if frame.seq >= warmup:
                taken.append((frame.t_capture_ns, now_ns))
            if frame.seq >= n - 1:
                last_capture_ns = frame.t_capture_ns
                break
            time.sleep(SLOW_CONSUMER_SLEEP_S)  # the slow work
        peer.done.set()
        sent = peer.result()
        dropped = rx.dropped - dropped_before
    # Only frames taken while the producer was still sending say how fresh "latest" keeps a
    # slow consumer: the last frame, taken after the producer stopped, has no newer one to be
    # replaced by and ages with the consumer's wait (about 75 ms here, not a transport delay).
    ages = [rx_ns - cap_ns for cap_ns, rx_ns in taken
            if last_capture_ns is None or rx_ns <= last_capture_ns]
    if not ages:
        raise RuntimeError("slow consumer: no frame was taken while the producer was sending")
    age = stats(np.asarray(ages) / 1e6)
    return {
        "sent": sent["sent"], "producer_fps": sent["fps"], "received": received,
        "dropped": dropped, "gap_check": seqs[-1] - seqs[0] + 1 - received if seqs else None,
        "age_ms": age, "age_target_ms": AGE_TARGET_MS,
        "producer_ok": sent["fps"] >= PRODUCER_TARGET_FPS,
        "age_ok": age["max"] <= AGE_TARGET_MS,
    }


# --------------------------------------------------------------------------- 5-stage chain
# orstream's runner against the Holoscan SDK: the same 1080p image through 5 stages, each
# frame's latency through the chain and per hop, with the same stamps on both sides (t_in when
# a stage has its input, t_out just before it sends on).

_CHAIN_IDS = itertools.count()


def _run_threads(targets: list[Any]) -> list[threading.Thread]:
    """One started daemon thread per callable."""
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    return threads


def orstream_chain(n: int, fps: float, warmup: int, stages: int = CHAIN_STAGES) -> dict:
    """orstream's runner in miniature: a source, `stages - 2` pass-through stage threads and a
    sink thread chained over inproc edges, each stage receiving, stamping the Frame's trace and
    sending on as the executor's stage loop (pipeline/executor.py) does. Edges are lossless
    with room for one frame, as Holoscan's default queues are, so the saturated rows queue
    alike on both sides."""
    from orstream.pipeline.frame import Frame
    from orstream.pipeline.transport import Receiver, Sender

    chain_id = next(_CHAIN_IDS)
    endpoints = [f"inproc://chain-{chain_id}-{k}" for k in range(stages - 1)]
    image = frame_image(HD)
    stop, sink_done = threading.Event(), threading.Event()
    errors: list[Exception] = []
    lat: list[int] = []
    hops: list[list[int]] = []
    t_rx: list[int] = []
    received = 0

    def guarded(fn: Any) -> Any:
        def body() -> None:
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - re-raised by the caller after join
                errors.append(exc)
                stop.set()
                sink_done.set()
        return body

    def relay(name: str, rx: Receiver, tx: Sender) -> None:
        while not stop.is_set():
            frame = rx.recv(100)
            if frame is None:
                continue
            t_in = time.monotonic_ns()
            frame.stamp(name, t_in)
            while not tx.send(frame):  # lossless: wait for room downstream
                if stop.is_set():
                    return

    def sink(rx: Receiver) -> None:
        nonlocal received
        last_seen = time.monotonic()
        while not stop.is_set() and time.monotonic() - last_seen < IDLE_TIMEOUT_S:
            frame = rx.recv(100)
            t_in = time.monotonic_ns()
            if frame is None:
                continue
            last_seen = time.monotonic()
            received += 1
            if frame.seq >= warmup:
                # trace: [(source, t, t), (stage1, t_in, t_out), ...]; a hop is the next
                # stage's t_in minus this one's t_out, the last hop ends here.
                ins = [t for _, t, _ in frame.trace[1:]] + [t_in]
                hops.append([t1 - t_out for (_, _, t_out), t1
                             in zip(frame.trace, ins, strict=True)])
                lat.append(t_in - frame.trace[0][2])
                t_rx.append(t_in)
            if frame.seq >= n - 1:
                break
        sink_done.set()

    with contextlib.ExitStack() as edges:
        # Each edge's receiving stage binds its input and the upstream stage connects, as
        # between the runner's stages; inproc edges are mailboxes whoever opens them first.
        rxs = [edges.enter_context(Receiver(e, "lossless", hwm=1, name=f"stage{k + 1}",
                                            bind=True)) for k, e in enumerate(endpoints)]
        txs = [edges.enter_context(Sender(e, "lossless", hwm=1, bind=False))
               for e in endpoints]
        threads = _run_threads(
            [guarded(lambda k=k: relay(f"stage{k}", rxs[k - 1], txs[k]))
             for k in range(1, stages - 1)] + [guarded(lambda: sink(rxs[-1]))])
        source = txs[0]

        def send_one(i: int) -> int:
            frame = Frame(STREAM, i, 0, time.time_ns(), image)
            frame.t_capture_ns = time.monotonic_ns()
            frame.stamp("source", frame.t_capture_ns, frame.t_capture_ns)
            while not source.send(frame):
                if sink_done.is_set():
                    break
            return frame.t_capture_ns

        try:
            sent = send_paced(n, fps, send_one, sink_done)
            sink_done.wait(IDLE_TIMEOUT_S + 5)
        finally:
            stop.set()
            for thread in threads:
                thread.join(5)
    if errors:
        raise errors[0]
    out = summary(lat, t_rx)
    out.update(_hop_stats(hops), received=received, sent=sent["sent"],
               sender_fps=sent["fps"], hop_ns=hops)
    return out


def _hop_stats(hops: list[list[int]]) -> dict:
    """Pooled over every hop, and the p50 of each hop along the chain."""
    ms = np.asarray(hops) / 1e6  # (frames, hops)
    pooled = stats(ms.ravel())
    return {"hop_p50": pooled["p50"], "hop_p99": pooled["p99"],
            "hops_p50": [float(v) for v in np.percentile(ms, 50, axis=0)]}


def _holoscan_stack_limit() -> None:
    """preexec_fn of the Holoscan peer: the stack limit it needs (checked against the hard
    limit in HoloscanPeer.find, so this cannot fail here)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    resource.setrlimit(resource.RLIMIT_STACK, (HOLOSCAN_STACK_BYTES, hard))


@dataclass(frozen=True)
class HoloscanPeer:
    """An interpreter that has the Holoscan SDK, and the environment its subprocess needs."""

    python: str
    env: dict[str, str]
    version: str

    @classmethod
    def find(cls, python: str | None) -> HoloscanPeer | None:
        """The interpreter named (flag or ORSTREAM_HOLOSCAN_PYTHON), else this one if it has
        holoscan; None when neither: not installed. A named interpreter that cannot run
        Holoscan is an error, not a missing row."""
        if python is None:
            if importlib.util.find_spec("holoscan") is None:
                return None
            python = sys.executable
        found = shutil.which(python)
        if found is None:
            raise RuntimeError(f"{python}: no such interpreter")
        python = found
        _soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
        if hard != resource.RLIM_INFINITY and hard < HOLOSCAN_STACK_BYTES:
            raise RuntimeError(f"the stack's hard limit ({hard} bytes) is below the "
                               f"{HOLOSCAN_STACK_BYTES} Holoscan needs")
        sites = json.loads(subprocess.run(
            [python, "-c", "import json, sysconfig; p = sysconfig.get_paths(); "
                           "print(json.dumps([p['purelib'], p['platlib']]))"],
            capture_output=True, text=True, check=True, timeout=30).stdout)
        libs = [str(Path(site) / "nvidia" / "cuda_runtime" / "lib") for site in sites]
        lib = next((d for d in libs if Path(d).is_dir()), None)
        if lib is None:
            raise RuntimeError(f"no nvidia/cuda_runtime/lib under {python}'s site-packages "
                               f"({', '.join(dict.fromkeys(sites))}): pip install holoscan-cu12 "
                               "nvidia-cuda-runtime-cu12 there (Holoscan loads libcudart "
                               "even CPU-only)")
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [lib, *filter(None, [env.get("LD_LIBRARY_PATH")])])
        env.setdefault("HOLOSCAN_LOG_LEVEL", "WARN")  # its info lines would bury an error
        peer = cls(python, env, "")
        probe = peer._run(["--probe"], timeout_s=60)
        return cls(python, env, probe["holoscan"])

    def _run(self, args: list[str], timeout_s: float) -> dict:
        proc = subprocess.run([self.python, str(HOLOSCAN_PEER), *args], env=self.env,
                              preexec_fn=_holoscan_stack_limit, capture_output=True,
                              text=True, timeout=timeout_s)
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-5:]
            raise RuntimeError(f"{self.python} {HOLOSCAN_PEER.name} {' '.join(args)} exited "
                               f"{proc.returncode}: " + " / ".join(tail))
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def chain(self, n: int, fps: float, warmup: int, stages: int = CHAIN_STAGES,
              workers: int = HOLOSCAN_WORKERS) -> dict:
        """The peer's chain in a subprocess; the same summary as orstream_chain's."""
        got = self._run(["--frames", str(n), "--fps", str(fps), "--warmup", str(warmup),
                         "--ops", str(stages), "--workers", str(workers)],
                        timeout_s=60 + n / (fps or 100.0))
        if not got["by_reference"]:
            raise RuntimeError("Holoscan copied the image between operators: not the hop "
                               "this row measures")
        out = summary(got["lat_ns"], got["t_rx_ns"])
        out.update(_hop_stats(got["hop_ns"]), received=got["received"], sent=n,
                   hop_ns=got["hop_ns"])
        return out


def chain_rows(holoscan: HoloscanPeer, n: int, fps: float, warmup: int,
               rounds: int) -> list[dict]:
    """orstream's chain and Holoscan's in `rounds` alternating segments (A B, B A, ...) of
    n / rounds frames, pooled per side, as paired_rows does for imagezmq: on a shared
    machine only segments that alternate see the same stretches of load."""
    per = max(n // rounds, warmup + 2)
    segments: dict[str, list[dict]] = {"orstream": [], "holoscan": []}
    for r in range(rounds):
        for who in ("orstream", "holoscan") if r % 2 == 0 else ("holoscan", "orstream"):
            segments[who].append(orstream_chain(per, fps, warmup) if who == "orstream"
                                 else holoscan.chain(per, fps, warmup))
    out = []
    for rows in segments.values():
        pooled = stats(np.asarray([x for row in rows for x in row["lat_ns"]]) / 1e6)
        pooled.update(_hop_stats([h for row in rows for h in row["hop_ns"]]))
        pooled.update(
            throughput_fps=float(np.mean([row["throughput_fps"] or 0.0 for row in rows])),
            received=sum(row["received"] for row in rows),
            sent=sum(row["sent"] for row in rows),
            rounds=rounds, rounds_p50=[row["p50"] for row in rows])
        out.append(pooled)
    out[0]["rounds_vs_holoscan"] = [
        o["p50"] / h["p50"] for o, h in zip(segments["orstream"], segments["holoscan"],
                                            strict=True)]
    out[0]["vs_holoscan"] = out[0]["p50"] / out[1]["p50"]
    return out


def memcpy_rows(iters: int) -> list[dict]:
    import mmap

    src = frame_image(HD)
    dst = np.empty_like(src)
    warm = time_calls(lambda: np.copyto(dst, src), iters=iters, warmup=10)

    def cold() -> None:
        # np.empty would get the same pages back from malloc; fresh anonymous pages do not.
        with mmap.mmap(-1, src.nbytes) as m:
            view = np.frombuffer(m, np.uint8).reshape(src.shape)
            np.copyto(view, src)
            del view

    fresh = time_calls(cold, iters=iters, warmup=3)
    # At 30 fps the frame's bytes have left the caches (and the core may have gone idle)
    # between frames: this, not the hot loop, is what each copy in a paced hop costs.
    paced = time_calls(lambda: np.copyto(dst, src), iters=min(iters, 150), warmup=3,
                       idle_s=1 / FPS)
    return [{"what": "memcpy 1080p (warm dst)", **stats(warm)},
            {"what": "memcpy 1080p (fresh pages)", **stats(fresh)},
            {"what": "memcpy 1080p (paced 30 fps)", **stats(paced)}]


# --------------------------------------------------------------------------- main


def run(frames: int, saturated_frames: int, slow_seconds: float, warmup: int,
        rounds: int = 6, holoscan: HoloscanPeer | None = None,
        chain_only: bool = False) -> dict:
    have_imagezmq = importlib.util.find_spec("imagezmq") is not None
    tmp = tempfile.mkdtemp(prefix="orstream-bench-")
    counter = iter(range(10**6))

    def ipc() -> str:
        return f"ipc://{tmp}/hop-{next(counter)}"

    def shm() -> str:  # the messages over ipc, the pixels through a shared-memory ring
        return f"shm://{tmp}/hop-{next(counter)}"

    def tcp() -> str:
        return f"tcp://127.0.0.1:{free_port()}"

    # ([(what, transport, mode, rate), ...], callable returning one result per label)
    Label = tuple[str, str, str, str]
    plan: list[tuple[list[Label], Any]] = []
    for rate, fps, n, mode in (("30 fps", FPS, frames, "latest"),
                               ("saturated", 0.0, saturated_frames, "lossless")):
        # latest: the publisher binds and displays connect; lossless: the receiving stage
        # binds its input and upstream connects (pipeline/transport.py).
        sender_binds = mode == "latest"
        ours: Label = ("orstream process hop", "ipc", mode, rate)
        ours_shm: Label = ("orstream process hop", "shm", mode, rate)
        theirs: Label = ("imagezmq process hop", "ipc", "REQ/REP", rate)
        if have_imagezmq and rate == "30 fps":  # the compared three: rotating rounds
            plan.append(([ours, ours_shm, theirs], lambda fps=fps, n=n: list(
                paired_rows(ipc, n, fps, warmup, rounds).values())))
        else:
            plan.append(([ours], lambda fps=fps, n=n, m=mode, b=sender_binds: [
                orstream_row(ipc(), m, b, HD, n, fps, warmup)]))
            plan.append(([ours_shm], lambda fps=fps, n=n, m=mode, b=sender_binds: [
                orstream_row(shm(), m, b, HD, n, fps, warmup)]))
        plan.append(([("orstream process hop", "tcp", mode, rate)],
                     lambda fps=fps, n=n, m=mode, b=sender_binds: [
                         orstream_row(tcp(), m, b, HD, n, fps, warmup)]))
        if have_imagezmq and rate != "30 fps":
            plan.append(([theirs], lambda fps=fps, n=n: [
                imagezmq_row(ipc(), HD, n, fps, warmup)]))
    for rate, fps, n, mode in (("30 fps", FPS, frames, "latest"),
                               ("saturated", 0.0, saturated_frames, "lossless")):
        for label, shape in (("1080p", HD), ("4K", UHD)):
            plan.append(([(f"orstream thread hop {label}", "inproc", mode, rate)],
                         lambda fps=fps, n=n, m=mode, s=shape: [orstream_row(
                             f"inproc://bench-{next(counter)}", m, False, s, n, fps, warmup,
                             thread=True)]))
    if chain_only:
        plan = []
    chain_ours = f"orstream {CHAIN_STAGES}-stage chain"
    chain_theirs = f"Holoscan {CHAIN_STAGES}-operator chain"
    for rate, fps, n in (("30 fps", FPS, frames), ("saturated", 0.0, saturated_frames)):
        runner: Label = (chain_ours, "inproc", "lossless, 1 slot", rate)
        peer: Label = (chain_theirs, f"event-based x{HOLOSCAN_WORKERS}",
                       "queue 1, backpressure", rate)
        if holoscan is not None:
            plan.append(([runner, peer], lambda fps=fps, n=n: chain_rows(
                holoscan, n, fps, warmup, rounds)))
        else:
            plan.append(([runner], lambda fps=fps, n=n: [orstream_chain(n, fps, warmup)]))

    load_before = os.getloadavg()
    rows = memcpy_rows(max(frames, 50))
    for row in rows:
        row.update(transport="memory", mode="-", rate="-")
    failed = []
    try:
        for labels, fn in plan:
            print("  " + " and ".join(" ".join(label) for label in labels) + " ...",
                  file=sys.stderr, flush=True)
            planned: list[dict[str, Any]] = [
                {"what": what, "transport": transport, "mode": mode, "rate": rate}
                for what, transport, mode, rate in labels]
            try:
                for row, result in zip(planned, fn(), strict=True):
                    result.pop("lat_ns", None)  # pooled already; too long for the report
                    result.pop("hop_ns", None)
                    row.update(result)
            except Exception as exc:  # one broken row must not lose the others
                for row in planned:
                    row["error"] = f"{type(exc).__name__}: {exc}"
                    failed.append(row)
                print(f"  FAILED: {planned[0]['error']}", file=sys.stderr)
            rows.extend(planned)
            if holoscan is None and labels[0][0] == chain_ours:
                rows.append({"what": chain_theirs, "transport": "-", "mode": "-",
                             "rate": labels[0][3],
                             "note": f"not installed: {HOLOSCAN_INSTALL}"})
        slow: dict[str, dict] | None = None
        if not chain_only:
            slow = {}
            for transport, endpoint in (("ipc", ipc), ("shm", shm)):
                print(f"  slow consumer (latest, {transport}, {slow_seconds:.0f} s) ...",
                      file=sys.stderr, flush=True)
                try:
                    slow[transport] = slow_consumer(endpoint(), slow_seconds, warmup)
                except Exception as exc:
                    slow[transport] = {"error": f"{type(exc).__name__}: {exc}"}
                    failed.append(slow[transport])
                    print(f"  FAILED: {slow[transport]['error']}", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for transport, one in (slow or {}).items():
        if "age_ms" in one:
            rows.append({"what": "slow consumer: frame age", "transport": transport,
                         "mode": "latest", "rate": "30 fps -> 10 Hz", **one["age_ms"],
                         "throughput_fps": one["producer_fps"]})

    memcpy_p50 = rows[0]["p50"]
    izmq = {r["rate"]: r["p50"] for r in rows
            if r["what"].startswith("imagezmq") and "p50" in r}
    for r in rows:
        if "p50" not in r:
            continue
        r["vs_memcpy"] = r["p50"] / memcpy_p50
        if r["what"] == "orstream process hop" and r["rate"] in izmq:
            r["vs_imagezmq"] = r["p50"] / izmq[r["rate"]]

    def find(what: str, transport: str, rate: str) -> dict | None:
        return next((r for r in rows if r["what"] == what and r["transport"] == transport
                     and r["rate"] == rate and "p50" in r), None)

    # The chain pair has no target of its own: Holoscan is a peer to read beside the runner.
    checks = [] if slow is None else _transport_checks(find, slow)
    return {"frame": "1920x1080x3 uint8", "frames": frames, "saturated_frames": saturated_frames,
            "warmup": warmup, "rounds": rounds, "imagezmq": have_imagezmq,
            "holoscan": holoscan and {"python": holoscan.python, "version": holoscan.version},
            "chain_only": chain_only,
            "load_before": load_before,
            "load_after": os.getloadavg(), "rows": rows, "slow_consumer": slow,
            "checks": checks, "failed": len(failed)}


def _transport_checks(find: Any, slow: dict[str, dict]) -> list[dict]:
    """The issue's targets for the hop rows and the slow consumer; `find(what, transport,
    rate)` returns a measured row or None."""
    checks = []
    theirs = find("imagezmq process hop", "ipc", "30 fps")
    for transport in ("ipc", "shm"):
        ours = find("orstream process hop", transport, "30 fps")
        checks.append({
            "target": f"orstream p50 per hop at 30 fps over {transport} <= imagezmq's (ipc)",
            "value_ms": ours and ours["p50"], "reference_ms": theirs and theirs["p50"],
            "passed": None if not (ours and theirs) else ours["p50"] <= theirs["p50"]})
    for label in ("1080p", "4K"):
        r = find(f"orstream thread hop {label}", "inproc", "30 fps")
        checks.append({"target": f"inproc p50 per hop at 30 fps, {label} <= "
                                 f"{INPROC_TARGET_MS} ms",
                       "value_ms": r and r["p50"], "reference_ms": INPROC_TARGET_MS,
                       "passed": None if r is None else r["p50"] <= INPROC_TARGET_MS})
    for transport, one in slow.items():
        what = f"slow consumer over {transport}"
        if "age_ms" in one:
            checks.append({"target": f"{what}: producer keeps >= {PRODUCER_TARGET_FPS} fps",
                           "value_fps": one["producer_fps"], "passed": one["producer_ok"]})
            checks.append({"target": f"{what}: max frame age <= {AGE_TARGET_MS:.1f} ms",
                           "value_ms": one["age_ms"]["max"], "reference_ms": AGE_TARGET_MS,
                           "passed": one["age_ok"]})
        else:
            checks.append({"target": what, "passed": False, "error": one["error"]})
    return checks


def _verdict(passed: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "n/a"}[passed]


def _print_chains(result: dict) -> None:
    chains = [r for r in result["rows"] if "chain" in r["what"]]
    print(f"\nA 1080p frame through {CHAIN_STAGES} stages (4 hops): orstream's stage threads "
          f"over inproc edges against Holoscan's Python operators under its event-based "
          f"scheduler ({HOLOSCAN_WORKERS} workers)")
    print(table(chains, [
        ("what", "what", "s"), ("rate", "rate", "s"), ("p50", "chain p50 ms", ".3f"),
        ("p99", "chain p99 ms", ".3f"), ("max", "chain max ms", ".3f"),
        ("hop_p50", "hop p50 ms", ".3f"), ("hop_p99", "hop p99 ms", ".3f"),
        ("throughput_fps", "throughput fps", ".1f"),
        ("vs_holoscan", "p50 / Holoscan p50", ".2f"), ("note", "note", "s"),
    ]))
    for row in chains:
        if "rounds_vs_holoscan" in row:
            print(f"orstream / Holoscan chain p50, {row['rate']}, round by round: "
                  + ", ".join(f"{v:.2f}" for v in row["rounds_vs_holoscan"])
                  + f" ({row['rounds']} alternating rounds, pooled in the table)")
    if result["holoscan"]:
        print(f"Holoscan {result['holoscan']['version']} from {result['holoscan']['python']}, "
              "CPU only. Chain latency: the sink's receipt minus the source's send; a hop: "
              "a stage's receipt minus the previous stage's send.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=600,
                        help="frames per 30 fps row (20 s each at the default)")
    parser.add_argument("--saturated-frames", type=int, default=300,
                        help="frames per saturated row")
    parser.add_argument("--slow-seconds", type=float, default=5.0,
                        help="how long the slow-consumer producer runs")
    parser.add_argument("--warmup", type=int, default=10,
                        help="unmeasured frames per row (per round in the paired rows)")
    parser.add_argument("--rounds", type=int, default=6,
                        help="alternating rounds of the orstream / imagezmq 30 fps ipc pair "
                             "and of the orstream / Holoscan chains (their ratio moves by ~10 %% "
                             "from round to round on a shared machine)")
    parser.add_argument("--holoscan-python", default=os.environ.get(HOLOSCAN_PYTHON_ENV),
                        help="an interpreter with holoscan-cu12 and nvidia-cuda-runtime-cu12 "
                             f"(default: ${HOLOSCAN_PYTHON_ENV}, else this one if it has "
                             "holoscan)")
    parser.add_argument("--chain-only", action="store_true",
                        help="only the memcpy floor and the orstream / Holoscan 5-stage chains "
                             "(written to transport_chain.json)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    _script_dir_off_path()
    if min(args.frames // max(args.rounds, 1), args.saturated_frames) <= args.warmup + 1:
        parser.error("--frames / --rounds and --saturated-frames must exceed --warmup + 1")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    try:
        holoscan = HoloscanPeer.find(args.holoscan_python)
    except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
        parser.error(f"--holoscan-python: {exc}")
    result = run(args.frames, args.saturated_frames, args.slow_seconds, args.warmup,
                 args.rounds, holoscan, args.chain_only)
    print(f"Frame transport, {result['frame']}, {args.frames} frames per 30 fps row, "
          f"{args.saturated_frames} per saturated row, first {args.warmup} not measured "
          f"(per round in the orstream / imagezmq 30 fps ipc pair); "
          f"load average {result['load_before'][0]:.2f} before, "
          f"{result['load_after'][0]:.2f} after")
    print(table(result["rows"], [
        ("what", "what", "s"), ("transport", "transport", "s"), ("mode", "mode", "s"),
        ("rate", "rate", "s"), ("p50", "p50 ms", ".3f"), ("p99", "p99 ms", ".3f"),
        ("max", "max ms", ".3f"), ("throughput_fps", "throughput fps", ".1f"),
        ("vs_imagezmq", "p50 / imagezmq p50", ".2f"), ("vs_memcpy", "p50 / memcpy p50", ".2f"),
    ]))
    print("Latency is receipt minus the sender's timestamp (process and thread hops) or the "
          "copy time (memcpy); 'latest' rows: the sender binds, 'lossless' rows: the receiver "
          "binds. Saturated latency includes queueing behind the high-water marks. The slow "
          "consumer row gives frame age at receipt, and the producer's rate as throughput.")
    for row in result["rows"]:
        if "error" in row:
            print(f"FAILED {row['what']} {row['transport']} {row['rate']}: {row['error']}")
    for transport, slow in (result["slow_consumer"] or {}).items():
        if "age_ms" not in slow:
            continue
        print(f"Slow consumer over {transport}: producer sent {slow['sent']} at "
              f"{slow['producer_fps']:.1f} fps; consumer got {slow['received']}, "
              f"Receiver.dropped = {slow['dropped']}; age p50 {slow['age_ms']['p50']:.1f} ms, "
              f"max {slow['age_ms']['max']:.1f} ms over the {slow['age_ms']['n']} frames "
              "taken while the producer was sending")
    paired = [r for r in result["rows"] if "rounds_vs_imagezmq" in r]
    for row in paired:
        print(f"orstream over {row['transport']} / imagezmq over ipc, p50 at 30 fps, round by "
              "round: " + ", ".join(f"{v:.2f}" for v in row["rounds_vs_imagezmq"])
              + f" ({row['rounds']} rotating rounds, pooled in the table)")
    if paired:
        paced = next((r for r in result["rows"] if r["what"] == "memcpy 1080p (paced 30 fps)"),
                      None)
        if paced:
            print(f"A process hop over a socket copies the frame twice (into the socket, out "
                  f"of it): two paced memcpys = {2 * paced['p50']:.3f} ms p50, the floor under "
                  f"both libraries over ipc at 30 fps; over shm it copies once (into the ring; "
                  f"the receiver reads in place): {paced['p50']:.3f} ms")
    for transport in ("ipc", "shm", "tcp"):
        ours = next((r for r in result["rows"] if r["what"] == "orstream process hop"
                     and r["transport"] == transport and r["rate"] == "saturated"
                     and r.get("throughput_fps")), None)
        theirs = next((r for r in result["rows"] if r["what"] == "imagezmq process hop"
                       and r["rate"] == "saturated" and r.get("throughput_fps")), None)
        if ours and theirs:
            print(f"Saturated throughput, orstream lossless {transport} against imagezmq ipc: "
                  f"{ours['throughput_fps']:.0f} / {theirs['throughput_fps']:.0f} fps = "
                  f"{ours['throughput_fps'] / theirs['throughput_fps']:.2f} (REQ/REP keeps one "
                  "frame in flight; lossless queues up to the high-water marks, so its "
                  "saturated latency is queueing, not hop cost)")
    if not result["imagezmq"] and not args.chain_only:
        print("imagezmq is not installed: its rows are skipped "
              "(pip install -e '.[bench]' to compare)")
    _print_chains(result)
    for check in result["checks"]:
        value = check.get("value_ms", check.get("value_fps"))
        unit = " ms" if "value_ms" in check else " fps"
        shown = "" if value is None else f" ({value:.3f}{unit}"
        if shown and check.get("reference_ms") is not None:
            shown += f" vs {check['reference_ms']:.3f} ms"
        shown += ")" if shown else ""
        print(f"{_verdict(check['passed'])}: {check['target']}{shown}")
    name = "transport_chain.json" if args.chain_only else "transport.json"
    path = write_json(args.out / name, {"machine": machine(), **result})
    print(f"wrote {path}")
    if result["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
