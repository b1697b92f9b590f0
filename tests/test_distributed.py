"""Stages in separate processes, one inference process for several rooms, CurveZMQ."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from orstream.common.net import free_port
from orstream.pipeline.config import ConfigError, load_config
from orstream.pipeline.frame import Frame
from orstream.pipeline.runner import Pipeline
from orstream.pipeline.security import curve_from_files, make_keys, stop_authenticators
from orstream.pipeline.transport import Receiver, Sender


def _write_config(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree))
    return path


def _run(cfg: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "orstream.pipeline.cli", "run", "--config",
                             str(cfg), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _stop(proc: subprocess.Popen) -> str:
    """SIGTERM, then its stderr; it must have exited 0 (a graceful stop)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()  # never leave a pipeline process behind a failed test
        _, err = proc.communicate()
        raise AssertionError("did not stop within 60 s of SIGTERM: "
                             + err.decode()[-3000:]) from None
    assert proc.returncode == 0, err.decode()[-3000:]
    return err.decode()


# shm://: the same sockets, the pixels through shared-memory rings, read in place.
# Lossless from render to the display: with `latest`, how many of the 12 frames a display
# sees depends on how often the CPU lets it run (2 cores, four processes and the VLM's).
@pytest.mark.parametrize("scheme", ["ipc", "shm"])
def test_capture_segment_and_render_as_three_processes(tmp_path, collect_frames, scheme):
    publish = f"{scheme}://{tmp_path}/displays"
    cfg = _write_config(tmp_path / "three.yaml", {
        "stream": "or-7",
        "source": {"width": 640, "height": 360, "fps": 15},
        "segment": {"backend": "torch", "precision": "fp32"},
        "publish": {"endpoint": publish, "parts": ["overlay", "labels"], "mode": "lossless"},
        "edges": {"capture->segment": {"endpoint": f"{scheme}://{tmp_path}/capture"},
                  "segment->render": {"endpoint": f"{scheme}://{tmp_path}/segment"},
                  "render->publish": {"mode": "lossless"}},
    })
    frames: list[Frame] = []
    done = threading.Event()
    with Receiver(publish, "lossless") as display:
        collector = collect_frames(display, done, frames)
        render = _run(cfg, "--stages", "render", "--frames", "12")
        segment = _run(cfg, "--stages", "segment")
        capture = _run(cfg, "--stages", "capture")
        try:
            render.wait(timeout=180)
        finally:
            err_capture, err_segment = _stop(capture), _stop(segment)
            err_render = _stop(render)
            done.set()
            collector.join(5)
    assert len(frames) == 12, err_render[-2000:]  # every frame render drew reached the display
    seqs = [f.seq for f in frames]
    assert seqs == sorted(set(seqs))
    for frame in frames:
        assert frame.stream == "or-7"
        assert frame.overlay.shape == (360, 640, 3)
        assert frame.labels is not None and frame.region is not None
        # One host: every process stamps CLOCK_MONOTONIC, so the trace reads straight
        # across the three of them.
        assert [stage for stage, _, _ in frame.trace] == ["capture", "segment", "render"]
        times = [t for _, t_in, t_out in frame.trace for t in (t_in, t_out)]
        assert times == sorted(times), frame.trace
        assert times[0] == frame.t_capture_ns
        assert 0 < times[-1] - frame.t_capture_ns < 10e9
    if scheme == "shm":  # read in place (read-only) while the ring had a free slot
        assert not frames[0].overlay.flags.writeable
    assert "frames" in err_segment and "or-7" in err_segment  # per-stream status of the server
    assert err_capture


def test_an_inproc_edge_between_processes_is_refused_naming_it(tmp_path):
    cfg = load_config(None, ["publish.endpoint=null"])
    with pytest.raises(ConfigError, match=r"edges.segment->render.endpoint: inproc://"):
        Pipeline(cfg, stages=["capture", "segment"]).run()


def test_one_inference_process_serves_two_rooms_each_on_its_own_output(tmp_path, collect_frames):
    cfg = load_config(None, [
        "publish.endpoint=null", "segment.backend=torch", "segment.precision=fp32",
        f"edges.capture->segment.endpoint=ipc://{tmp_path}/in",
        f"edges.segment->render.endpoint=ipc://{tmp_path}/{{stream}}-out"])
    pipeline = Pipeline(cfg, stages=["segment"])
    runner = threading.Thread(target=pipeline.run, daemon=True)
    runner.start()
    got: dict[str, list[Frame]] = {"or-1": [], "or-2": []}
    done = threading.Event()
    outs = {room: Receiver(f"ipc://{tmp_path}/{room}-out", "lossless", bind=True)
            for room in got}
    threads = [collect_frames(outs[room], done, got[room]) for room in got]
    rooms = {room: Sender(f"ipc://{tmp_path}/in", "latest", bind=False) for room in got}
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (256, 320, 3), np.uint8)
    try:
        deadline = time.monotonic() + 60
        seq = 0
        while time.monotonic() < deadline and min(len(v) for v in got.values()) < 5:
            for room, sender in rooms.items():
                sender.send(Frame.capture(room, seq, image))
            seq += 1
            time.sleep(0.05)
    finally:
        pipeline.request_stop()
        runner.join(30)
        done.set()
        for t in threads:
            t.join(5)
        for s in [*rooms.values(), *outs.values()]:
            s.close()
    for room, frames in got.items():
        assert len(frames) >= 5
        assert {f.stream for f in frames} == {room}  # each room gets only its own results
        assert all(f.labels is not None for f in frames)
    assert set(pipeline.result.streams) == {"or-1", "or-2"}
    assert all(n >= 5 for n in pipeline.result.streams.values())


# ------------------------------------------------------------------ CurveZMQ


@pytest.fixture()
def keys(tmp_path):
    folder = tmp_path / "keys"
    made = {name: make_keys(folder, name) for name in ("server", "client", "intruder")}
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copy(made["client"][0], allowed / "client.key")
    yield made, allowed
    stop_authenticators()


def test_tcp_stages_with_curve_and_a_wrong_key_receives_nothing(tmp_path, keys, collect_frames):
    made, allowed = keys
    edge, displays = free_port(), free_port()
    tree = {
        "stream": "or-3",
        "source": {"width": 480, "height": 270, "fps": 20},
        "segment": {"enabled": False},
        "publish": {"endpoint": f"tcp://127.0.0.1:{displays}"},
        "edges": {"capture->segment": {"endpoint": f"tcp://127.0.0.1:{edge}"}},
        "security": {"curve": True, "key": str(made["server"][1]),
                     "allowed_clients": str(allowed)},
    }
    cfg = load_config(_write_config(tmp_path / "render.yaml", tree))
    pipeline = Pipeline(cfg, stages=["render"], max_frames=15)
    runner = threading.Thread(target=pipeline.run, daemon=True)
    runner.start()
    capture_cfg = _write_config(tmp_path / "capture.yaml", {**tree, "security": {
        "curve": True, "key": str(made["client"][1]),
        "server_public_key": str(made["server"][0])}})
    server_public = made["server"][0]
    display = Receiver(f"tcp://127.0.0.1:{displays}", "latest",
                       curve=curve_from_files(made["client"][1], server_public))
    intruder = Receiver(f"tcp://127.0.0.1:{displays}", "latest",
                        curve=curve_from_files(made["intruder"][1], server_public))
    plain = Receiver(f"tcp://127.0.0.1:{displays}", "latest")
    seen: dict[str, list[Frame]] = {"display": [], "intruder": [], "plain": []}
    done = threading.Event()
    threads = [collect_frames(r, done, seen[k]) for k, r in
               (("display", display), ("intruder", intruder), ("plain", plain))]
    capture = _run(capture_cfg, "--stages", "capture")
    try:
        runner.join(120)
    finally:
        _stop(capture)
        pipeline.request_stop()
        runner.join(30)
        done.set()
        for t in threads:
            t.join(5)
        for r in (display, intruder, plain):
            r.close()
    assert pipeline.result.frames_out == 15  # frames crossed the curve tcp edge
    assert len(seen["display"]) >= 5
    assert all(f.stream == "or-3" for f in seen["display"])
    assert seen["intruder"] == [] and seen["plain"] == []


def test_an_exposed_endpoint_without_curve_is_refused_unless_allowed():
    with pytest.raises(ConfigError, match=r"publish.endpoint: tcp://0.0.0.0:5600 .*"
                                          r"security.allow_insecure"):
        load_config(None, ["publish.endpoint=tcp://0.0.0.0:5600"])
    cfg = load_config(None, ["publish.endpoint=tcp://0.0.0.0:5600",
                             "security.allow_insecure=true"])
    assert cfg.publish.endpoint == "tcp://0.0.0.0:5600"
    with pytest.raises(ConfigError, match=r"security: .*security.key"):
        load_config(None, ["security.curve=true"])


def test_keys_are_not_overwritten(tmp_path):
    make_keys(tmp_path, "a")
    with pytest.raises(ValueError, match="already exists"):
        make_keys(tmp_path, "a")


def test_the_running_pipeline_publishes_a_mask_stream_matching_its_frames(tmp_path, collect_frames):
    from orstream.pipeline import masks

    full, mask = f"ipc://{tmp_path}/full", f"ipc://{tmp_path}/mask"
    cfg = load_config(None, [f"publish.endpoint={full}", f"masks.endpoint={mask}",
                             "publish.parts=[overlay, labels]", "publish.mode=lossless",
                             "masks.mode=lossless", "segment.backend=torch",
                             "segment.precision=fp32", "source.width=640",
                             "source.height=360"])
    import zmq

    sub = zmq.Context.instance().socket(zmq.PULL)
    sub.connect(mask)
    frames: list[Frame] = []
    done = threading.Event()
    with Receiver(full, "lossless") as display:
        collector = collect_frames(display, done, frames)
        result = Pipeline(cfg, max_frames=6).run()
        got = []
        while sub.poll(1000):
            got.append(masks.decode(sub.recv_multipart()))
        done.set()
        collector.join(5)
    sub.close(0)
    assert result.frames_out == 6 and len(got) == 6 and len(frames) == 6
    for message, frame in zip(got, frames, strict=True):
        assert message.seq == frame.seq and message.stream == frame.stream
        assert np.array_equal(message.labels, frame.labels)
        assert tuple(message.region) == frame.region
        assert message.classes["task"] == "types"


@pytest.mark.parametrize("scheme", ["ipc", "shm"])
def test_two_workers_share_the_frames_and_render_shows_them_in_order(tmp_path, scheme):
    overrides = ["publish.endpoint=null", "segment.backend=torch", "segment.precision=fp32",
                 "source.width=640", "source.height=360", "render.reorder_ms=200",
                 f"edges.capture->segment.endpoint={scheme}://{tmp_path}/dispatch",
                 "edges.capture->segment.mode=lossless", "edges.capture->segment.bind=sender",
                 "edges.capture->segment.hwm=1",
                 f"edges.segment->render.endpoint={scheme}://{tmp_path}/results"]
    cfg = load_config(None, overrides)
    workers = [Pipeline(cfg, stages=["segment"]) for _ in range(2)]
    threads = [threading.Thread(target=w.run, daemon=True) for w in workers]
    for t in threads:
        t.start()
    shown: list[Frame] = []
    front = Pipeline(cfg, stages=["capture", "render"], max_frames=40, on_frame=shown.append)
    try:
        result = front.run()
    finally:
        for w in workers:
            w.request_stop()
        for t in threads:
            t.join(30)
    seqs = [f.seq for f in shown]
    assert result.frames_out == 40 and seqs == sorted(set(seqs))  # in order, never repeated
    done = [w.result.stages["segment"] for w in workers]
    assert min(done) > 0 and sum(done) >= 40, done  # both workers took frames
    assert all(w.result.dropped == 0 for w in workers)  # a peer's frames are not a loss
    assert all(f.labels is not None for f in shown)
