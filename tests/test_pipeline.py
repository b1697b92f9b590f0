"""The real pipeline, the real default config and shipped weights, a few frames."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import av
import numpy as np
import pytest
import zmq

from orstream.common.net import free_port
from orstream.pipeline.config import load_config
from orstream.pipeline.runner import Pipeline, PipelineError
from orstream.pipeline.stages import SegmentStage
from orstream.pipeline.view import view


def _decode(path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_default_config_end_to_end_publishes_and_records(tmp_path):
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    cfg = load_config(None, ["publish.parts=[overlay, labels]"], publish__endpoint=endpoint,
                      record__path=str(tmp_path / "out.mp4"))
    received = {}
    stop = threading.Event()
    viewer = threading.Thread(target=lambda: received.update(
        summary=view(endpoint, stop=stop, window=False, quiet=True)))
    viewer.start()
    time.sleep(0.3)
    result = Pipeline(cfg, max_frames=12, keep_traces=True).run()
    time.sleep(0.3)
    stop.set()
    viewer.join(10)

    assert result.frames_out == 12
    frames = _decode(tmp_path / "out.mp4")
    assert len(frames) == 12 and frames[0].shape == (1080, 1920, 3)
    # The recording is the overlay, not the camera picture: the status line (white text in
    # the top-right corner, outside the scope's black-bordered circle) is burnt in.
    assert frames[-1][:60, -500:].max() > 150
    summary = received["summary"]
    assert summary.frames >= 1 and summary.increasing
    for trace in result.traces:
        stages = [t[0] for t in trace]
        assert stages == ["capture", "segment", "render"]
        times = [t for _, a, b in trace for t in (a, b)]
        assert times == sorted(times), "trace times must increase along the path"


def test_published_frames_carry_the_overlay_and_labels_over_the_region():
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    cfg = load_config(None, ["publish.parts=[overlay, labels]", "source.width=640",
                             "source.height=360"], publish__endpoint=endpoint)
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"orstream/or-1/")
    sub.connect(endpoint)
    pipeline = Pipeline(cfg, max_frames=40)
    runner = threading.Thread(target=pipeline.run)
    runner.start()
    assert sub.poll(20000), "no frame published"
    message = sub.recv_multipart()
    pipeline.request_stop()
    runner.join(20)
    sub.close(0)
    from orstream.pipeline import wire

    frame = wire.decode(message)
    assert frame.overlay.shape == (360, 640, 3)
    assert frame.labels.shape == (256, 320)
    assert frame.region == (9, 107, 341, 427)  # the EndoVis crop scaled to 640x360
    assert wire.header_of(message)["classes"]["names"][1] == "Bipolar Forceps"


def test_a_failing_stage_stops_the_pipeline_and_is_named(monkeypatch):
    def boom(self, frame):
        raise RuntimeError("simulated inference failure")

    monkeypatch.setattr(SegmentStage, "process", boom)
    cfg = load_config(None, ["source.width=320", "source.height=256"], publish__endpoint=None)
    started = time.monotonic()
    with pytest.raises(PipelineError, match="stage 'segment' failed: RuntimeError: simulated"):
        Pipeline(cfg, max_frames=100).run()
    assert time.monotonic() - started < 30


def test_the_source_is_set_up_while_the_model_loads_and_its_failure_is_named(monkeypatch):
    """The synthetic source builds its generator in the capture thread, overlapping the
    segment stage's engine loading (start-up), and a failure there stops the pipeline with
    the stage named, as any other stage's does."""
    from orstream.pipeline.sources import SyntheticSource

    prepared_in: list[str] = []
    real_prepare = SyntheticSource.prepare

    def prepare(self):
        prepared_in.append(threading.current_thread().name)
        real_prepare(self)

    monkeypatch.setattr(SyntheticSource, "prepare", prepare)
    cfg = load_config(None, ["source.width=320", "source.height=256"], publish__endpoint=None)
    assert Pipeline(cfg, max_frames=5).run().frames_out == 5
    assert prepared_in[0] == "orstream-capture"

    def broken(self):
        raise MemoryError("simulated: no room for the textures")

    monkeypatch.setattr(SyntheticSource, "prepare", broken)
    started = time.monotonic()
    with pytest.raises(PipelineError, match="stage 'capture' failed: MemoryError: simulated"):
        Pipeline(cfg, max_frames=100).run()
    assert time.monotonic() - started < 30


def test_invalid_messages_into_a_stage_input_are_counted_and_frames_keep_flowing():
    port = free_port()
    cfg = load_config(None, ["source.width=320", "source.height=256",
                             f"edges.capture->segment.endpoint=tcp://127.0.0.1:{port}"],
                      publish__endpoint=None)
    flowing = threading.Event()  # the engine may take seconds to build: attack once it runs
    frames: list[int] = []
    pipeline = Pipeline(cfg, on_frame=lambda f: (frames.append(f.seq), flowing.set()))
    runner = threading.Thread(target=pipeline.run)
    runner.start()
    attacker = zmq.Context.instance().socket(zmq.PUB)
    attacker.connect(f"tcp://127.0.0.1:{port}")
    try:
        assert flowing.wait(60), "the pipeline never produced a frame"
        time.sleep(0.2)  # the PUB side's connection handshake
        header = (b'{"v":1,"stream":"or-1","seq":5,"t_capture_ns":1,"t_wall_ns":1,'
                  b'"parts":[{"name":"image","dtype":"uint8","shape":[4,4,3]}]}')
        for message in ([os.urandom(64)],
                        [b"orstream/or-1/frame", header.replace(b'"v":1', b'"v":7'), bytes(48)],
                        [b"orstream/or-1/frame", header, bytes(47)],
                        [b"orstream/or-1/frame", header, bytes(100 * 1024 * 1024)]):
            attacker.send_multipart(message)
            time.sleep(0.3)
        # Until all four are judged (100 MB over loopback takes a while on a loaded host):
        # a fixed frame count could end the run before the last one arrived.
        deadline = time.monotonic() + 30
        while (sum(pipeline.metrics.rejected()["segment"].values()) < 4
               and time.monotonic() < deadline):
            time.sleep(0.05)
        after_attack = len(frames)
        time.sleep(0.5)
        assert len(frames) > after_attack, "frames stopped flowing after the bad messages"
    finally:
        pipeline.request_stop()
        runner.join(60)
        attacker.close(0)
    rejected = pipeline.metrics.rejected()["segment"]
    assert rejected == {"bad_framing": 1, "bad_version": 1, "bad_length": 1, "oversize": 1}


@pytest.mark.slow
def test_sigterm_finalises_the_recording_and_exits_0(tmp_path):
    out = tmp_path / "x.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "orstream.pipeline.cli", "run",
                             "--record", str(out),
                             "--set", "publish.endpoint=null", "--set", "source.width=640",
                             "--set", "source.height=360"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out.exists() and out.stat().st_size > 50_000):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert len(_decode(out)) >= 10


# ------------------------------------------------------------------ segmentation off


def _no_model(monkeypatch):
    """Segmentation off must not touch the model: building the stage fails the test."""
    def refuse(self, cfg):
        raise AssertionError("SegmentStage built with segment.enabled=false")

    monkeypatch.setattr(SegmentStage, "__init__", refuse)


def test_segmentation_off_replays_every_frame_unlabelled_into_the_recording(tmp_path,
                                                                            monkeypatch):
    from orstream.training.synth.writers import write_video

    _no_model(monkeypatch)
    clip = write_video(tmp_path / "clip.mp4", seconds=1, width=640, height=360)
    source = _decode(clip)
    cfg = load_config(None, ["segment.enabled=false", "publish.endpoint=null",
                             f"source.spec={clip}", "source.mode=lossless"],
                      record__path=str(tmp_path / "out.mp4"))
    seen = []
    result = Pipeline(cfg, keep_traces=True, on_frame=seen.append).run()

    assert result.frames_out == len(source) == 30 and result.dropped == 0
    assert result.stages == {"render": 30, "record": 30}  # no segment stage at all
    assert [f.seq for f in seen] == list(range(30))
    assert all(f.labels is None and f.region is None for f in seen)
    for trace in result.traces:
        assert [t[0] for t in trace] == ["capture", "render"]
    recorded = _decode(tmp_path / "out.mp4")
    assert len(recorded) == 30
    # The status line is burnt in at the top right; the rest is the picture, no overlay
    # (two lossy encodes apart: compare loosely).
    status, rest = (slice(0, 30), slice(-300, None)), (slice(60, None), slice(None))
    assert not np.array_equal(seen[-1].overlay[status], source[-1][status])
    diff = np.abs(recorded[-1][rest].astype(int) - source[-1][rest].astype(int))
    assert diff.mean() < 3


def test_segmentation_off_publishes_the_plain_picture_beside_the_overlay(monkeypatch):
    from orstream.pipeline import wire

    _no_model(monkeypatch)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = load_config(None, ["segment.enabled=false", "publish.parts=[overlay, image]",
                             "source.width=320", "source.height=256"],
                      publish__endpoint=endpoint)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"orstream/or-1/")
    sub.connect(endpoint)
    pipeline = Pipeline(cfg, max_frames=60)
    runner = threading.Thread(target=pipeline.run)
    runner.start()
    try:
        assert sub.poll(20000), "no frame published"
        message = sub.recv_multipart()
    finally:
        pipeline.request_stop()
        runner.join(20)
        sub.close(0)
    frame = wire.decode(message)
    header = wire.header_of(message)
    assert [p["name"] for p in header["parts"]] == ["overlay", "image"]
    assert "classes" not in header and frame.labels is None
    # The status line went on the overlay only: a publisher of the plain picture gets it
    # untouched (render draws in place only when nobody sends the picture).
    assert not np.array_equal(frame.overlay, frame.image)
    assert np.array_equal(frame.overlay[60:], frame.image[60:])
