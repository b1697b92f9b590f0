"""`orstream` as a user meets it: one-line errors and exit codes, --version, --help,
`config show`, --port-base, `view` on a silent publisher, `ask` with no question, and a
reader that closes the pipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import yaml
import zmq
from loguru import logger

from orstream import __version__
from orstream.common.net import free_port
from orstream.pipeline.config import DescribeConfig
from orstream.pipeline.describe import EMPTY_QUESTION, DescribeWorker
from orstream.pipeline.frame import Frame
from orstream.pipeline.transport import Sender
from orstream.pipeline.view import view

NO_KEY_HINT = "(is the publisher running? does it need --key?)"


def orstream(*args: str, cwd=None, stdout=subprocess.PIPE,
             timeout: float = 120) -> subprocess.CompletedProcess:
    """The command as a user runs it, in its own process (console(): the real exit path)."""
    return subprocess.run([sys.executable, "-m", "orstream.pipeline.cli", *args], cwd=cwd,
                          stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "| ERROR" in line]


@pytest.mark.parametrize(("args", "names"), [
    (["run", "--set", "render.alpah=0.5"],
     ["--set render.alpah=0.5", "did you mean render.alpha?"]),
    (["run", "--set", "segment.weights=missing.pt"],
     ["--set segment.weights=missing.pt", "missing.pt does not exist"]),
    (["export", "--weights", "missing.pt", "--backend", "torch"], ["missing.pt"]),
    (["run", "--source", "no/such/clip.mp4", "--publish", "null"],
     ["no/such/clip.mp4", "no such file"]),
    (["ask", "tcp://127.0.0.1:9", "  "], ["the question is empty"]),
    (["run", "--record", "out.avi", "--publish", "null", "--frames", "3"],
     ["out.avi", ".mp4"]),
    (["train", "unet", "--data", "d", "--size", "256"],
     ["size: expected WxH such as 320x256, got '256'"]),
    (["ask", "tcp://127.0.0.1:9", "is there smoke?", "--key", "gone.key_secret",
      "--server-key", "gone.key"], ["--key: gone.key_secret does not exist", "orstream keys"]),
    (["ask", "tcp://127.0.0.1:9", "is there smoke?", "--key", "mine.key_secret"],
     ["needs both --key", "--server-key (the pipeline's NAME.key)"]),
    (["run", "--publish", "5812", "--frames", "1"],
     ["--publish 5812", "did you mean tcp://127.0.0.1:5812?"]),
])
def test_expected_errors_are_one_line_and_exit_2(tmp_path, args, names):
    """Including the ones a newcomer hit: an unsupported recording name, a bad training size."""
    done = orstream(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = error_lines(done.stderr)
    assert len(errors) == 1, done.stderr
    for name in names:
        assert name in errors[0]


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback_of_an_expected_error(tmp_path, where):
    """Before the command or after it, where a user adds it once a command has failed."""
    args = ["run", "--set", "render.alpah=0.5"]
    done = orstream(*(["--debug", *args] if where == "before" else [*args, "--debug"]),
                    cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" in done.stderr and "did you mean render.alpha?" in done.stderr
    plain = orstream(*args, cwd=tmp_path)  # and without it, no traceback
    assert plain.returncode == 2 and "Traceback" not in plain.stderr


def test_version_and_help_speak_to_users():
    assert orstream("--version").stdout.strip() == f"orstream {__version__}" == "orstream 0.2.0"
    text = orstream("--help").stdout
    assert "examples:" in text and "orstream run --port-base" in text
    assert "orstream config show" in text and "orstream view tcp://" in text
    assert "plain functions" not in text  # the module's docstring is for developers


def test_config_show_prints_what_a_run_would_use(monkeypatch):
    monkeypatch.setenv("ORSTREAM_SET", "render.alpha=0.2;describe.interval_s=5")
    done = orstream("config", "show", "--set", "render.alpha=0.7", "--port-base", "7300")
    assert done.returncode == 0, done.stderr
    shown = yaml.safe_load(done.stdout)
    assert shown["render"]["alpha"] == 0.7  # --set over ORSTREAM_SET over the file
    assert shown["describe"]["interval_s"] == 5
    assert shown["publish"]["endpoint"] == "tcp://127.0.0.1:7300"
    assert shown["describe"]["ask_endpoint"] == "tcp://127.0.0.1:7301"
    assert shown["segment"]["backend"] == "auto" and "edges" in shown


def test_processes_started_by_tests_are_off_the_live_ports():
    """The environment conftest sets reaches the processes tests start: their pipelines
    would bind neither 5600 nor 5601."""
    shown = yaml.safe_load(orstream("config", "show").stdout)
    for endpoint in (shown["publish"]["endpoint"], shown["describe"]["ask_endpoint"]):
        assert endpoint.rsplit(":", 1)[1] not in ("5600", "5601")


def test_run_with_port_base_publishes_on_it():
    base = free_port()
    frames: list = []

    def watch() -> None:
        summary = view(f"tcp://127.0.0.1:{base}", frames=3, window=False, timeout_s=60,
                       quiet=True)
        frames.append(summary.frames)

    watcher = threading.Thread(target=watch)
    watcher.start()
    done = orstream("run", "--port-base", str(base), "--frames", "400",
                    "--set", "segment.enabled=false", "--set", "describe.enabled=false",
                    "--set", "source.width=320", "--set", "source.height=256",
                    "--set", "source.fps=120")
    watcher.join(60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"publishing on tcp://127.0.0.1:{base}" in done.stdout
    assert frames == [3]


def test_view_of_a_silent_endpoint_says_so_reports_null_and_fails(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    done = orstream("view", endpoint, "--headless", "--json", "--timeout", "1",
                    "--frames", "5", cwd=tmp_path)
    assert done.returncode == 1
    summary = json.loads(done.stdout)
    assert summary["frames"] == 0
    assert summary["latency_ms"] == {"p50": None, "p99": None, "max": None}
    errors = error_lines(done.stderr)
    assert len(errors) == 1 and "Traceback" not in done.stderr
    assert f"no frames received from {endpoint} in 1 s {NO_KEY_HINT}" in errors[0]


def _frame(seq: int) -> Frame:
    image = np.zeros((48, 64, 3), np.uint8)
    return Frame.capture("or-1", seq, image)


def test_a_viewer_whose_publisher_stops_warns_and_shows_0_fps():
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(m.record["message"]), level="INFO")
    result: list = []
    try:
        with Sender(endpoint, "latest", bind=True) as sender:
            watcher = threading.Thread(target=lambda: result.append(
                view(endpoint, window=False, timeout_s=2.5, stall_warn_s=0.5)))
            watcher.start()
            deadline, seq = time.monotonic() + 20, 0
            # Publish until the viewer has counted a second with frames, then go silent.
            while time.monotonic() < deadline and not any(
                    m[0].isdigit() and not m.startswith("0.0 fps") for m in messages):
                sender.send(_frame(seq))
                seq += 1
                time.sleep(0.02)
            watcher.join(30)
    finally:
        logger.remove(sink)
    summary = result[0]
    assert summary.frames > 0
    assert any(m.startswith("no frames for ") and endpoint in m for m in messages), messages
    assert any(m.startswith("0.0 fps | no frames for") for m in messages), messages
    assert summary.to_json()["latency_ms"]["p50"] is not None


def test_the_ask_handler_answers_a_blank_question_with_what_to_do():
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    worker = DescribeWorker(DescribeConfig(ask_endpoint=endpoint))
    worker.start()
    socket = zmq.Context.instance().socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVTIMEO, 10_000)
    try:
        socket.connect(endpoint)
        socket.send(json.dumps({"question": "   "}).encode())
        assert json.loads(socket.recv()) == {"error": EMPTY_QUESTION}
    finally:
        socket.close(0)
        worker.stop()
        worker.close()


def test_a_reader_that_closes_the_pipe_gets_no_traceback(tmp_path):
    """`orstream export --list --json | head -1`: the write that fails ends the command
    quietly, whether it fails in the command or at the final flush."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written
    try:
        done = orstream("export", "--list", "--json", "--cache", str(tmp_path),
                        stdout=write_end)
        assert done.stderr == "" and done.returncode == 1
        big = subprocess.run(
            [sys.executable, "-c", "import orstream.pipeline.cli as cli\n"
             "cli.main = lambda: print('x' * 1_000_000) or 0\ncli.console()"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
        assert big.stderr == "" and big.returncode == 1
    finally:
        os.close(write_end)


def test_a_source_lost_past_reconnect_max_s_ends_the_run_with_exit_1():
    """README: a run whose live source stays down past source.reconnect_max_s ends with
    exit status 1 and one line naming the source (2 is for a run that cannot start)."""
    url = f"tcp://127.0.0.1:{free_port()}"
    done = orstream("replay", url, "--set", "source.reconnect_max_s=1", "--publish", "null",
                    "--set", "describe.enabled=false", "--set", "segment.enabled=false")
    assert done.returncode == 1, done.stderr[-2000:]
    errors = error_lines(done.stderr)
    assert "Traceback" not in done.stderr
    assert any(f"source {url}: down for 1 s" in line for line in errors), done.stderr


@pytest.mark.parametrize("frames", ["0", "-5"])
def test_frames_below_one_is_refused_before_anything_starts(frames):
    """--frames 0 used to run forever in `run` and replay a whole clip in `replay`."""
    done = orstream("run", "--frames", frames, "--publish", "null", timeout=30)
    assert done.returncode == 2
    assert "expected 1 or more frames" in done.stderr
