"""The runner's parts: the graph composed from the config, ports already taken, the status
line when upstream goes silent, and Ctrl-C while the engine builds."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from loguru import logger

from orstream.common.errors import UsageError
from orstream.common.net import free_port
from orstream.pipeline.config import load_config
from orstream.pipeline.graph import compose
from orstream.pipeline.runner import Pipeline

SMALL = ["source.width=320", "source.height=256", "describe.enabled=false"]


def test_compose_declares_every_node_port_and_edge_without_running_anything():
    cfg = load_config(None, ["publish.endpoint=tcp://127.0.0.1:1", "record.path=x.mp4",
                             "describe.ask_endpoint=tcp://127.0.0.1:2"])
    graph = compose(cfg)
    assert set(graph.nodes) == {"capture", "segment", "render", "publish", "record",
                                "describe"}
    assert graph.nodes["capture"].role == "source" and graph.nodes["describe"].role == "worker"
    assert graph.nodes["render"].inputs == ("frames",)
    assert graph.nodes["render"].outputs == ("frames", "describe")
    assert graph.nodes["publish"].serves == ("publish.endpoint", "tcp://127.0.0.1:1")
    assert graph.nodes["describe"].serves == ("describe.ask_endpoint", "tcp://127.0.0.1:2")
    flows = [(e.name, e.producer, e.consumer) for e in graph.edges]
    assert flows == [
        ("capture->segment", "capture.frames", "segment.frames"),
        ("segment->render", "segment.frames", "render.frames"),
        ("render->publish", "render.frames", "publish.frames"),
        ("render->record", "render.frames", "record.frames"),
        ("render->describe", "render.describe", "describe.frames"),
    ]
    assert graph.edge("render->describe").endpoint is None  # in-process: a reference
    assert graph.edge("capture->segment").mode == "latest"
    assert compose(cfg, replayed=True).edge("capture->segment").mode == "lossless"


def test_compose_without_segmentation_or_sinks_feeds_render_from_capture_into_null():
    cfg = load_config(None, ["segment.enabled=false", "publish.endpoint=null",
                             "describe.enabled=false",
                             "edges.capture->segment.endpoint=tcp://127.0.0.1:7"])
    graph = compose(cfg, stages=["render"])
    assert set(graph.nodes) == {"capture", "render", "null"}
    assert graph.local == {"render", "null"}
    assert [(e.producer, e.consumer) for e in graph.edges] == [
        ("capture.frames", "render.frames"), ("render.frames", "null.frames")]


def _orstream_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("orstream-")]


@pytest.mark.parametrize("key", ["publish.endpoint", "edges.capture->segment.endpoint",
                                 "describe.ask_endpoint"])
def test_a_port_in_use_is_one_line_naming_the_key_the_port_and_the_fix(key):
    port = free_port()
    taken = socket.socket()
    taken.bind(("127.0.0.1", port))
    taken.listen()
    endpoint = f"tcp://127.0.0.1:{port}"
    overrides = [*SMALL, "segment.enabled=false", "publish.endpoint=null", f"{key}={endpoint}"]
    if key == "describe.ask_endpoint":
        overrides.remove("describe.enabled=false")
    cfg = load_config(None, overrides)
    try:
        with pytest.raises(UsageError) as caught:
            Pipeline(cfg, max_frames=5).run()
    finally:
        taken.close()
    message = str(caught.value)
    assert message.startswith(f"{key} {endpoint}: port {port} is in use"), message
    assert "\n" not in message and ("--port-base" in message or f"--set {key}=" in message)
    assert _orstream_threads() == []  # nothing left running


def test_a_port_freed_a_moment_later_is_waited_for_and_one_kept_is_not():
    """ZeroMQ closes a socket on its I/O thread after close() returns, so a pipeline that
    stops and starts again in one process (a supervisor, an embedding app) can find its
    own port still held for a few milliseconds: that start must not fail. A port someone
    keeps fails within the grace, naming the key."""
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    overrides = [*SMALL, "segment.enabled=false", "publish.endpoint=null"]
    overrides.remove("describe.enabled=false")
    cfg = load_config(None, [*overrides, f"describe.ask_endpoint={endpoint}"])
    taken = socket.socket()
    taken.bind(("127.0.0.1", port))
    taken.listen()
    threading.Timer(0.3, taken.close).start()  # released while the pipeline starts
    assert Pipeline(cfg, max_frames=3).run().frames_out == 3
    for _ in range(3):  # back to back: each start meets the last one's closing socket
        assert Pipeline(cfg, max_frames=3).run().frames_out == 3
    kept = socket.socket()
    deadline = time.monotonic() + 2  # the last run's socket, too, is closed a moment late
    while True:
        try:
            kept.bind(("127.0.0.1", port))
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    kept.listen()
    started = time.monotonic()
    try:
        with pytest.raises(UsageError, match=f"describe.ask_endpoint {endpoint}: port"):
            Pipeline(cfg, max_frames=3).run()
    finally:
        kept.close()
    assert time.monotonic() - started < 5


def test_status_of_a_render_process_whose_upstream_is_silent_says_0_fps_and_warns():
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = load_config(None, [*SMALL, "publish.endpoint=null", "status.stall_warn_s=0.5",
                             f"edges.segment->render.endpoint={endpoint}"])
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO")
    pipeline = Pipeline(cfg, stages=["render"], status_every_s=0.2)
    runner = threading.Thread(target=pipeline.run)
    runner.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any("no frames for" in m for m in lines):
            time.sleep(0.05)
    finally:
        pipeline.request_stop()
        runner.join(20)
        logger.remove(sink)
    assert not runner.is_alive()
    status = [m for m in lines if " fps |" in m]
    assert status and all("0.0 fps | e2e - | 0 frames" in m for m in status), status
    warned = [m for m in lines if m.startswith("no frames for")]
    assert warned and f"(upstream segment at {endpoint} silent)" in warned[0], lines


@pytest.mark.slow
def test_ctrl_c_during_an_engine_build_says_so_and_stops_once_it_is_built(tmp_path):
    env = {**os.environ, "ORSTREAM_ENGINE_CACHE": str(tmp_path / "engines")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "orstream.pipeline.cli", "run", "--publish", "null",
         "--set", "describe.enabled=false", "--set", "source.width=320",
         "--set", "source.height=256"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[tuple[float, str]] = []  # (arrival, line)

    def read() -> None:
        for line in proc.stderr:
            lines.append((time.monotonic(), line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if any(" fps |" in m for _, m in lines):
                pytest.skip("this machine's backend runs without building an engine")
            if any("segment: building the" in m for _, m in lines):
                break
            time.sleep(0.05)
        else:
            pytest.fail("no engine build was reported:\n" + "".join(m for _, m in lines))
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(60)
        ended = time.monotonic()
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(5)
    log = "".join(m for _, m in lines)
    assert rc == 0, log[-3000:]
    assert "segment: finishing building the" in log and "then stopping" in log, log[-3000:]
    # The stage logs its engine once open: the process ends right after, without frames.
    opened = [t for t, m in lines if "segment: " in m and " on {" in m]
    assert opened and ended - opened[0] < 5, log[-3000:]
    assert " 0 frames in " in log, "frames flowed after the stop"
