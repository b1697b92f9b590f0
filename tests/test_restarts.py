"""Restarts under running displays, and a network source that dies and returns.

Real processes on free ports: `orstream run` publishers SIGKILLed and started again under an
`orstream view` process and a mask-stream subscriber, which are never restarted; an MPEG-TS
server process killed and started again under a running pipeline."""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
import zmq

from orstream.common.net import free_port
from orstream.pipeline import masks, wire
from orstream.pipeline.config import load_config
from orstream.pipeline.continuity import SeqTracker, Step
from orstream.pipeline.frame import Frame
from orstream.pipeline.runner import Pipeline
from orstream.pipeline.sources import open_source
from orstream.pipeline.transport import HEARTBEAT_TIMEOUT_MS

ORSTREAM = [sys.executable, "-m", "orstream.pipeline.cli"]
# Small frames, no model, no VLM: the publisher starts in about a second.
LIGHT = ["--set", "segment.enabled=false", "--set", "describe.enabled=false",
         "--set", "source.width=320", "--set", "source.height=256"]


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str,
             detail: Callable[[], str] = str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}\n"
                                 f"{detail()}")
        time.sleep(0.02)


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


class Lines:
    """A process's stderr, read line by line on a thread as it comes."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            self.lines.append(line)

    def has(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def text(self) -> str:
        self._thread.join(5)
        return "".join(self.lines)


class MaskSubscriber:
    """A display of the mask stream as PROTOCOL.md has one written: a SUB socket connected
    once, decoding each message and telling a restart from reordering by seq and t_wall_ns."""

    def __init__(self, endpoint: str) -> None:
        self.tracker = SeqTracker()
        self.kinds: list[str] = []
        self.rejected = 0
        self._stop = threading.Event()
        self._socket = zmq.Context.instance().socket(zmq.SUB)
        self._socket.setsockopt(zmq.SUBSCRIBE, b"orstream/")
        self._socket.setsockopt(zmq.RCVTIMEO, 100)
        self._socket.connect(endpoint)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._socket.recv_multipart()
            except zmq.Again:
                continue
            try:
                mask = masks.decode(message)
            except masks.WireError:
                self.rejected += 1
                continue
            self.kinds.append(self.tracker.step(mask.stream, mask.seq, mask.t_wall_ns,
                                                mask.run).kind)

    def since_restart(self) -> int:
        """Messages received since the last restart was seen."""
        if "restart" not in self.kinds:
            return 0
        return len(self.kinds) - 1 - max(i for i, k in enumerate(self.kinds) if k == "restart")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._socket.close(0)


@pytest.mark.parametrize("scheme", ["tcp", "ipc"])
def test_displays_pick_up_a_publisher_killed_and_started_again(tmp_path, scheme):
    if scheme == "tcp":
        publish, mask_ep = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
    else:
        publish, mask_ep = f"ipc://{tmp_path}/display", f"ipc://{tmp_path}/masks"
    publisher_args = [*ORSTREAM, "run", "--publish", publish, "--set",
                      f"masks.endpoint={mask_ep}", *LIGHT]
    # The displays start first and are never restarted.
    viewer = subprocess.Popen([*ORSTREAM, "view", publish, "--headless", "--json",
                               "--stall", "0.5"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    view_log = Lines(viewer)
    subscriber = MaskSubscriber(mask_ep)
    publishers: list[subprocess.Popen] = []
    try:
        publishers.append(subprocess.Popen(publisher_args, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL))
        wait_for(lambda: len(subscriber.kinds) >= 10, 60, "the first publisher's masks")
        killed_at = time.monotonic()
        kill(publishers[0])  # a crash: no goodbye to anyone
        wait_for(lambda: view_log.has("no frames for"), 10, "the viewer to report the stall")
        time.sleep(max(0.0, killed_at + 1.0 - time.monotonic()))
        publishers.append(subprocess.Popen(publisher_args, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL))
        wait_for(lambda: subscriber.since_restart() >= 10, 60, "masks after the restart")
        wait_for(lambda: view_log.has("restarted"), 10, "the viewer to see the restart")
        time.sleep(0.5)  # frames flowing again, into the viewer's summary
        viewer.send_signal(signal.SIGTERM)
        out, _ = viewer.communicate(timeout=20)
    finally:
        for proc in [*publishers, viewer]:
            kill(proc)
        subscriber.close()
    log = view_log.text()
    assert viewer.returncode == 0, log[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    print(summary)  # shown with -s or on failure: the gap as measured
    # Picked up again, seq from 0 known for a restart: not out of order, nothing dropped.
    assert summary["publisher_restarts"] == 1, log[-3000:]
    assert summary["seq_strictly_increasing"] is True
    assert summary["dropped"] == 0 and summary["rejected"] == 0
    assert summary["last_seq"] >= 5  # of the second run: frames came on after the restart
    # The silence is reported: at least the second it was down, plus the restart's start-up.
    gaps = summary["gaps"]
    assert gaps["count"] == 1 and 1.0 <= gaps["longest_s"] < 30, gaps
    assert "the publisher of or-1 restarted (seq " in log and "frames again after" in log
    # The mask subscriber likewise: one restart, no message taken for a stale one.
    assert subscriber.tracker.restarts == 1 and subscriber.tracker.stale == 0
    assert subscriber.rejected == 0
    assert subscriber.kinds[0] == "first" and subscriber.since_restart() >= 10


class Relay:
    """A TCP relay from displays to a publisher's port, standing for the network between
    them. `cut()` is the publisher's host losing power: every connection made so far stops
    carrying bytes either way but is never closed (no FIN, no RST reaches the display);
    connections made afterwards are carried to the port again, where the publisher runs
    once it is back."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.carried = 0  # bytes towards the displays
        self._cut = 0  # connections from before the latest cut are dead
        self._open: list[socket.socket] = []  # kept, so that none is ever closed
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.1)
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                display, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            try:
                publisher = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                display.close()  # nothing there (yet): the display retries
                continue
            self._open += [display, publisher]
            epoch = self._cut
            for src, dst, down in ((publisher, display, True), (display, publisher, False)):
                threading.Thread(target=self._pump, args=(src, dst, down, epoch),
                                 daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, down: bool, epoch: int) -> None:
        src.settimeout(0.1)
        while not self._stop.is_set() and epoch == self._cut:
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data or epoch != self._cut:
                return  # after a cut, not even the publisher's FIN is passed on
            try:
                dst.sendall(data)
            except OSError:
                return
            if down:
                self.carried += len(data)

    def cut(self) -> None:
        self._cut += 1

    def close(self) -> None:
        self._stop.set()
        self._server.close()
        for sock in self._open:
            sock.close()


def test_a_viewer_finds_a_publisher_whose_host_vanished_without_closing_the_connection():
    # ZeroMQ heartbeats (transport.HEARTBEAT_TIMEOUT_MS) notice the silent connection,
    # drop it and reconnect; without them the viewer would wait on it forever.
    port = free_port()
    relay = Relay(port)
    publisher_args = [*ORSTREAM, "run", "--publish", f"tcp://127.0.0.1:{port}", *LIGHT]
    viewer = subprocess.Popen([*ORSTREAM, "view", f"tcp://127.0.0.1:{relay.port}",
                               "--headless", "--json", "--stall", "0.5"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    view_log = Lines(viewer)
    publishers = [subprocess.Popen(publisher_args, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)]
    try:
        wait_for(lambda: relay.carried > 2_000_000, 60, "frames through the relay")
        relay.cut()  # the host is gone: the viewer's connection is left hanging
        kill(publishers[0])
        publishers.append(subprocess.Popen(publisher_args, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL))  # back after reboot
        wait_for(lambda: view_log.has("restarted"), 30, "the viewer to find it again",
                 lambda: "".join(view_log.lines[-20:]))
        time.sleep(0.5)
        viewer.send_signal(signal.SIGTERM)
        out, _ = viewer.communicate(timeout=20)
    finally:
        for proc in [*publishers, viewer]:
            kill(proc)
        relay.close()
    log = view_log.text()
    assert viewer.returncode == 0, log[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    print(summary)  # shown with -s or on failure: the gap as measured
    assert summary["publisher_restarts"] == 1 and summary["seq_strictly_increasing"]
    # Silent for at least the heartbeat timeout, and not much longer.
    assert summary["gaps"]["count"] == 1
    assert HEARTBEAT_TIMEOUT_MS / 1000 <= summary["gaps"]["longest_s"] < 20


# ------------------------------------------------------------------ a network source

W, H, FPS, CLIP_S = 160, 128, 30, 12

# An encoder's TCP output as a process of its own: each connection gets the MPEG-TS clip
# from its start, in real time. SIGKILL is the encoder dying; a new process on the same
# port is the encoder back.
SERVER = r"""
import socket, sys, time
data, port, seconds = open(sys.argv[1], "rb").read(), int(sys.argv[2]), float(sys.argv[3])
size = 188 * 7  # seven TS packets, as encoders send them
chunks = [data[i:i + size] for i in range(0, len(data), size)]
period = seconds / len(chunks)
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", port))
server.listen()
print("listening", flush=True)
while True:
    conn, _ = server.accept()
    start = time.monotonic()
    try:
        for k, chunk in enumerate(chunks):
            time.sleep(max(0.0, start + k * period - time.monotonic()))
            conn.sendall(chunk)
    except OSError:
        pass
    conn.close()
"""


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """H.264 in MPEG-TS, no B-frames, a keyframe every 10 frames (a receiver joins fast)."""
    out = io.BytesIO()
    with av.open(out, "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"preset": "ultrafast", "tune": "zerolatency", "g": "10"}
        for i in range(CLIP_S * FPS):
            frame = av.VideoFrame.from_ndarray(np.full((H, W, 3), (5 * i) % 220, np.uint8),
                                               format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    path = tmp_path_factory.mktemp("stream") / "clip.ts"
    path.write_bytes(out.getvalue())
    return path


def start_server(clip: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(clip), str(port), str(CLIP_S)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "listening"
    return proc


def test_a_network_source_that_dies_and_returns_is_reconnected_and_the_gap_counted(clip):
    port = free_port()
    servers = [start_server(clip, port)]
    cfg = load_config(None, [f"source.spec=tcp://127.0.0.1:{port}", "segment.enabled=false",
                             "describe.enabled=false", "publish.endpoint=null",
                             "source.open_timeout_s=2", "source.read_timeout_s=0.5",
                             "source.reconnect_delay_s=0.1", "source.reconnect_delay_max_s=0.4"])
    source = open_source(cfg.source)
    arrivals: list[float] = []
    pipeline = Pipeline(cfg, source=source, on_frame=lambda f: arrivals.append(time.monotonic()))
    runner = threading.Thread(target=pipeline.run, daemon=True)
    runner.start()
    try:
        wait_for(lambda: len(arrivals) >= 15, 30, "frames from the stream")
        killed_at = time.monotonic()
        kill(servers[0])
        wait_for(lambda: not source.state.up, 5, "the source to be seen down")
        time.sleep(max(0.0, killed_at + 1.5 - time.monotonic()))
        servers.append(start_server(clip, port))
        back_at = time.monotonic()
        wait_for(lambda: sum(t > back_at for t in arrivals) >= 15, 20, "frames again")
    finally:
        pipeline.request_stop()
        runner.join(30)
        for server in servers:
            kill(server)
    result = pipeline.result
    assert not runner.is_alive()
    assert result.source_reconnects == 1 and source.state.up
    # The outage counted is what the pipeline went without: the longest silence between
    # two frames out, which covers the 1.5 s the encoder was away.
    silence = max(np.diff(arrivals))
    print(result.source_reconnects, result.source_outage_s, result.source_missed, silence)
    assert 1.5 <= result.source_outage_s < 1.5 + 3.0
    assert abs(result.source_outage_s - silence) < 0.25, (result.source_outage_s, silence)
    assert result.source_missed == round(result.source_outage_s * FPS) - 1


# ------------------------------------------------------------------ the rules, one by one


def test_a_new_run_is_a_restart_whatever_seq_it_is_joined_at():
    seqs = SeqTracker()
    assert seqs.step("or-1", 0, 100, run=10).kind == "first"
    assert seqs.step("or-1", 3, 200, run=10) == Step("gap", 2)
    # Rejoined late: the new run's seq is already past the old run's last.
    assert seqs.step("or-1", 90, 300, run=20).kind == "restart"
    assert seqs.step("or-1", 91, 310, run=20).kind == "next"
    # A frame of the older run turning up afterwards is stale, not another restart.
    assert seqs.step("or-1", 4, 210, run=10).kind == "stale"
    assert (seqs.restarts, seqs.stale, seqs.missing) == (1, 1, 2)


def test_without_run_seq_falling_back_is_a_restart_only_when_captured_later():
    seqs = SeqTracker()
    seqs.step("or-1", 50, 1_000)
    assert seqs.step("or-1", 49, 900).kind == "stale"  # overtaken: captured before
    assert seqs.step("or-1", 50, 1_000).kind == "stale"  # a duplicate
    assert seqs.step("or-1", 51, 1_010).kind == "next"  # the stale ones left no gap
    assert seqs.step("or-1", 0, 5_000).kind == "restart"
    assert seqs.step("or-2", 0, 10).kind == "first"  # streams are counted apart


def test_the_run_crosses_the_wire_in_both_streams_and_a_bad_one_is_rejected():
    frame = Frame.capture("or-1", 7, np.zeros((256, 320, 3), np.uint8))
    frame.run = 1_795_846_212_345_678_901
    frame.labels = np.zeros((64, 80), np.uint8)
    def sent(message: list) -> list[bytes]:  # as a receiver gets it: bytes, not arrays
        return [p.tobytes() if isinstance(p, np.ndarray) else bytes(p) for p in message]

    assert wire.decode(sent(wire.encode(frame, ("image",)))).run == frame.run
    assert masks.decode(masks.encode(frame)).run == frame.run
    for bad in (-1, 1 << 63, "1", 1.5, True):
        message = sent(wire.encode(frame, ("image",)))
        header = json.loads(message[1])
        header["run"] = bad
        message[1] = json.dumps(header).encode()
        with pytest.raises(wire.WireError, match="run must be"):
            wire.decode(message)
