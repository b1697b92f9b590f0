"""The describe stage: captions beside the frame path, questions over `orstream ask`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zmq

from orstream.common.errors import UsageError
from orstream.common.net import free_port
from orstream.pipeline.config import load_config
from orstream.pipeline.describe import DescribeWorker, ask
from orstream.pipeline.frame import Frame
from orstream.pipeline.runner import Pipeline
from orstream.pipeline.security import curve_from_files, make_keys, stop_authenticators
from orstream.pipeline.transport import Receiver


@pytest.fixture(scope="module")
def vlm_weights(tmp_path_factory):
    """An untrained vlm_tiny: the real model and decoding, quick to load; what it says
    does not matter to the plumbing (the shipped weights' quality is tested elsewhere)."""
    from orstream.engines.vlm import checkpoint as ckpt
    from orstream.engines.vlm.model import VLM, model_config
    from orstream.engines.vlm.tokenizer import Tokenizer

    tok = Tokenizer.build(["describe the scene.", "is there smoke? yes no",
                           "bipolar forceps enter from the left"])
    torch.manual_seed(0)
    cfg = model_config("vlm_tiny", len(tok))
    return ckpt.save(ckpt.VLMCheckpoint("vlm_tiny", cfg, tok, VLM(cfg).state_dict()),
                     tmp_path_factory.mktemp("vlm") / "vlm_rand.pt")


def _until(condition, timeout_s: float = 90.0) -> None:
    """Wait for the model process to start and work (seconds on a loaded machine)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _config(vlm_weights, *more: str, ask_port: int | None = None):
    ask_endpoint = f"tcp://127.0.0.1:{ask_port}" if ask_port else "null"
    return load_config(None, [
        "source.width=640", "source.height=360", "segment.backend=torch",
        "segment.precision=fp32", "describe.enabled=true", f"describe.weights={vlm_weights}",
        f"describe.ask_endpoint={ask_endpoint}",
        *more])


def test_captions_reach_later_frames_and_the_header_with_the_frame_they_describe(
        vlm_weights, tmp_path, collect_frames):
    endpoint = f"ipc://{tmp_path}/displays"
    cfg = _config(vlm_weights, "describe.interval_s=0.3", f"publish.endpoint={endpoint}",
                  "publish.mode=lossless")
    frames: list[Frame] = []
    done = threading.Event()
    with Receiver(endpoint, "lossless") as display:
        t = collect_frames(display, done, frames)
        pipeline = Pipeline(cfg)
        runner = threading.Thread(target=pipeline.run, daemon=True)
        runner.start()
        _until(lambda: pipeline.describe is not None and pipeline.describe.captions >= 3)
        pipeline.request_stop()
        runner.join(30)
        result = pipeline.result
        time.sleep(0.3)
        done.set()
        t.join(5)
    assert result.captions >= 2
    captioned = [f for f in frames if f.caption is not None]
    assert captioned, "no frame carried a caption"
    seqs = {f.seq for f in frames}
    for f in captioned:
        # A caption describes an earlier (or this) frame that really went by, and its age
        # is what the header says it is.
        assert f.caption.seq <= f.seq and f.caption.t_capture_ns <= f.t_capture_ns
        assert f.caption.seq in seqs or f.caption.seq < min(seqs)
        assert isinstance(f.caption.text, str)
    assert len({f.caption.seq for f in captioned}) >= 2  # captions move on


def test_a_slow_describer_never_delays_the_frame_path(vlm_weights, monkeypatch):
    class Slow:
        def caption(self, image):
            time.sleep(1.0)  # a VLM far slower than a frame
            return "slow"

        def answer(self, image, question):
            return "slow"

    monkeypatch.setattr(DescribeWorker, "_load", lambda self: Slow())
    cfg = _config(vlm_weights, "describe.interval_s=0", "publish.endpoint=null")
    latencies: list[float] = []
    pipeline = Pipeline(cfg, max_frames=60, on_frame=lambda f: latencies.append(
        (time.monotonic_ns() - f.t_capture_ns) / 1e6))
    result = pipeline.run()
    assert result.captions >= 1 and result.frames_out == 60
    # A blocked describe would hold render for a second per caption.
    assert max(latencies[10:]) < 900, max(latencies)


def test_ask_answers_about_the_newest_frame_while_the_pipeline_runs(vlm_weights):
    port = free_port()
    cfg = _config(vlm_weights, "publish.endpoint=null", "describe.interval_s=0.5",
                  ask_port=port)
    pipeline = Pipeline(cfg)
    runner = threading.Thread(target=pipeline.run, daemon=True)
    runner.start()
    endpoint = f"tcp://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        reply = {"error": "not asked"}
        while time.monotonic() < deadline:
            reply = ask(endpoint, "is there smoke?", timeout_s=10)
            if "error" not in reply:
                break
            time.sleep(0.2)  # the model or the first frame is not there yet
        assert "answer" in reply, reply
        assert isinstance(reply["answer"], str) and reply["stream"] == "or-1"
        assert reply["seq"] >= 0 and reply["t_capture_ns"] > 0
        second = ask(endpoint, "how many instruments?", timeout_s=10)
        assert second["seq"] >= reply["seq"]  # the newest frame each time
        # A malformed request gets an error reply and the socket keeps serving.
        sock = zmq.Context.instance().socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 10_000)
        sock.connect(endpoint)
        sock.send(b"{not json")
        assert "error" in json.loads(sock.recv())
        sock.close(0)
        assert "answer" in ask(endpoint, "is there smoke?", timeout_s=10)
    finally:
        pipeline.request_stop()
        runner.join(30)
    assert not runner.is_alive()


def test_an_ask_port_in_use_fails_the_start_naming_the_key(vlm_weights):
    port = free_port()
    blocker = zmq.Context.instance().socket(zmq.REP)
    blocker.bind(f"tcp://127.0.0.1:{port}")
    try:
        with pytest.raises(UsageError, match=rf"describe.ask_endpoint tcp://127.0.0.1:{port}: "
                                             rf"port {port} is in use"):
            Pipeline(_config(vlm_weights, "publish.endpoint=null", ask_port=port),
                     max_frames=1).run()
    finally:
        blocker.close(0)


def test_every_n_frames_captions_at_that_rate(vlm_weights):
    cfg = _config(vlm_weights, "publish.endpoint=null", "describe.every_frames=10")
    worker = DescribeWorker(cfg.describe)
    worker.start()
    image = np.zeros((360, 640, 3), np.uint8)
    _until(worker.ready.is_set)
    try:
        for seq in range(40):
            worker.offer(Frame.capture("or-1", seq, image))
            time.sleep(0.05)  # 20 fps, slower than a tiny caption
    finally:
        worker.close()
    assert 3 <= worker.captions <= 4


def test_the_exported_vlm_captions_exactly_like_eager_in_the_worker():
    from orstream.engines.vlm.describer import Describer
    from orstream.training.synth.generator import SynthConfig, SyntheticEndoscope

    image = SyntheticEndoscope(SynthConfig(width=960, height=540, seed=77)).render(40).image
    cfg = load_config(None, ["describe.backend=onnxruntime", "describe.ask_endpoint=null",
                             "describe.every_frames=1"]).describe
    worker = DescribeWorker(cfg)
    worker.start()
    try:
        _until(worker.ready.is_set, 180)  # first use builds the two engines
        assert worker.failed is None, worker.failed
        worker.offer(Frame.capture("or-1", 0, image))
        _until(lambda: worker.latest() is not None)
    finally:
        worker.close()
    assert worker.latest().text == Describer.load().caption(image)
    assert worker.latest().text  # the shipped model says something about this scene


def _describe_worker_pids() -> list[int]:
    """Child processes of this one running pipeline.describe_worker."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
        if ppid == os.getpid() and b"orstream.pipeline.describe_worker" in cmdline:
            pids.append(int(stat.parent.name))
    return pids


# At idle priority on a saturated CPU the VLM's process can go seconds without running:
# Ctrl-C must not wait for the caption it owes (it took 10 s before the stop cut it short).
def test_stopping_never_waits_for_a_starved_describe_worker(vlm_weights):
    cfg = _config(vlm_weights, "publish.endpoint=null", "describe.every_frames=1")
    worker = DescribeWorker(cfg.describe)
    worker.start()
    _until(worker.ready.is_set)
    (pid,) = _describe_worker_pids()
    os.kill(pid, signal.SIGSTOP)  # starved: it will not answer
    try:
        worker.offer(Frame.capture("or-1", 0, np.zeros((360, 640, 3), np.uint8)))
        time.sleep(0.5)  # the caption request is out, its reply never comes
        t0 = time.monotonic()
        worker.close()
        took = time.monotonic() - t0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    assert took < 5.0, f"close took {took:.1f} s"
    assert _describe_worker_pids() == []  # the worker was ended, not left behind
    assert worker.failed is None  # a stop, not a failure
    assert not worker.running


def test_a_starved_describe_worker_is_waited_for_not_given_up(vlm_weights, monkeypatch):
    """At idle priority on a saturated CPU the VLM's process may not run for a long while:
    its caption is late, not failed, and captions resume once it runs (a CI run whose host
    was saturated lost them for the whole run to a 30 s limit). The wait is logged."""
    from loguru import logger

    from orstream.pipeline import describe

    monkeypatch.setattr(describe, "WORKER_SLOW_S", 0.5)
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="INFO")
    cfg = _config(vlm_weights, "publish.endpoint=null", "describe.every_frames=1")
    worker = DescribeWorker(cfg.describe)
    worker.start()
    try:
        _until(worker.ready.is_set)
        (pid,) = _describe_worker_pids()
        os.kill(pid, signal.SIGSTOP)  # starved: it does not run
        try:
            worker.offer(Frame.capture("or-1", 0, np.zeros((360, 640, 3), np.uint8)))
            time.sleep(2.0)  # four times the limit
            assert worker.failed is None and worker.latest() is None
        finally:
            os.kill(pid, signal.SIGCONT)  # the load is gone: it runs again
        _until(lambda: worker.latest() is not None, 30)
        assert worker.failed is None and worker.running
    finally:
        worker.close()
        logger.remove(sink)
    assert any("describe: no caption reply for" in line for line in lines), lines
    assert any("describe: the caption reply came after" in line for line in lines), lines


def test_a_vlm_that_cannot_load_is_reported_with_the_workers_reason(tmp_path):
    bad = tmp_path / "not_a_vlm.pt"
    bad.write_bytes(b"this is not a checkpoint")
    cfg = load_config(None, ["describe.enabled=true", f"describe.weights={bad}",
                             "describe.ask_endpoint=null"]).describe
    worker = DescribeWorker(cfg)
    worker.start()
    try:
        _until(worker.ready.is_set)
    finally:
        worker.close()
    # The worker's own words, not just "it exited": it sends them and exits at once.
    assert worker.failed is not None and "not_a_vlm.pt" in str(worker.failed), worker.failed
    assert _describe_worker_pids() == []


def test_folders_of_killed_pipelines_are_swept_and_live_ones_kept(tmp_path):
    from orstream.pipeline.describe import DIR_PREFIX, sweep_stale_dirs

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs (a pipeline killed with SIGKILL)
    dead = tmp_path / f"{DIR_PREFIX}{gone.pid}-abc123"
    live = tmp_path / f"{DIR_PREFIX}{os.getpid()}-def456"
    other = tmp_path / f"{DIR_PREFIX}notapid"
    for folder in (dead, live, other):
        folder.mkdir()
        (folder / "worker.log").write_text("log")
    assert sweep_stale_dirs(tmp_path) == 1
    assert not dead.exists() and live.exists() and other.exists()


# Beside a busy frame path the idle-priority worker can take many seconds to load; a stop
# in that time must not wait for a worker that cannot read the stop message yet.
def test_stopping_while_the_worker_still_loads_ends_it_at_once(vlm_weights):
    cfg = _config(vlm_weights, "publish.endpoint=null")
    worker = DescribeWorker(cfg.describe)
    worker.start()
    _until(lambda: _describe_worker_pids() != [], 30)
    time.sleep(0.2)  # importing torch takes seconds: still loading
    assert not worker.ready.is_set()
    t0 = time.monotonic()
    worker.close()
    took = time.monotonic() - t0
    assert took < 1.5, f"close took {took:.1f} s"
    assert _describe_worker_pids() == [] and worker.failed is None


def test_a_curve_pipeline_answers_questions_only_to_a_client_with_keys(vlm_weights, tmp_path):
    """With security.curve the ask socket is a CurveZMQ server like the publisher: the
    scene's description must not cross a network in the clear, nor to strangers."""
    made = {name: make_keys(tmp_path / "keys", name) for name in ("pipeline", "me", "stranger")}
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copy(made["me"][0], allowed / "me.key")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = _config(vlm_weights, f"describe.ask_endpoint={endpoint}").describe
    worker = DescribeWorker(cfg, curve_from_files(made["pipeline"][1], None, allowed))
    worker.start()
    pipeline_key = made["pipeline"][0]
    try:
        # No frame has been offered: the reply is an error, but a reply crossed the socket.
        reply = ask(endpoint, "is there smoke?", 10, curve_from_files(made["me"][1], pipeline_key))
        assert set(reply) == {"error"}, reply
        with pytest.raises(TimeoutError, match="--key/--server-key"):
            ask(endpoint, "is there smoke?", 1.5)  # plain: no handshake, no answer
        with pytest.raises(TimeoutError):
            ask(endpoint, "is there smoke?", 1.5,
                curve_from_files(made["stranger"][1], pipeline_key))
    finally:
        worker.close()
        stop_authenticators()
