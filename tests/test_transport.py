from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from orstream.common.errors import OrstreamError, UsageError
from orstream.common.net import free_port
from orstream.pipeline import endpoints, transport
from orstream.pipeline.config import ConfigError, load_config
from orstream.pipeline.frame import Frame
from orstream.pipeline.security import Curve, SecurityError
from orstream.pipeline.transport import Receiver, Sender


def _frame(seq: int, size=(32, 48)) -> Frame:
    return Frame.capture("or-1", seq, np.full((*size, 3), seq % 256, np.uint8))


def test_lossless_delivers_every_frame_in_order():
    with Receiver("inproc://t-lossless", "lossless", bind=True) as rx, \
            Sender("inproc://t-lossless", "lossless", bind=False) as tx:
        got = []

        def consume():
            while len(got) < 50:
                f = rx.recv(1000)
                assert f is not None
                got.append(f.seq)
                time.sleep(0.002)  # slower than the producer: backpressure, not loss

        t = threading.Thread(target=consume)
        t.start()
        for i in range(50):
            while not tx.send(_frame(i)):
                pass
        t.join(10)
    assert got == list(range(50))
    assert rx.dropped == 0


def test_latest_gives_a_slow_consumer_the_newest_frame_and_counts_drops(prime):
    period = 0.02
    with Receiver("inproc://t-latest", "latest", bind=True) as rx, \
            Sender("inproc://t-latest", "latest", bind=False) as tx:
        prime(tx, rx, _frame)
        newest = [0]
        done = threading.Event()

        def produce():
            for i in range(1, 41):
                newest[0] = i
                tx.send(_frame(i))
                time.sleep(period)
            done.set()

        producer = threading.Thread(target=produce)
        producer.start()
        lags = []
        while not done.is_set():
            frame = rx.recv(200)
            if frame is not None:
                lags.append(newest[0] - frame.seq)
            time.sleep(3 * period)  # a consumer three times slower than the producer
        producer.join()
        final = rx.recv(200)
    assert final is not None and final.seq == 40, "the newest frame was not delivered"
    assert max(lags) <= 3, f"stale frames reached the consumer: lags {lags}"
    assert rx.dropped >= 15  # about two of every three frames were skipped, and counted
    assert rx.stats.received + rx.dropped == 41  # frames 0..40, each received or counted


def test_bad_messages_are_counted_and_the_receiver_keeps_going(tmp_path):
    endpoint = f"ipc://{tmp_path}/bad"
    with Receiver(endpoint, "lossless", bind=True, max_bytes=1 << 20) as rx, \
            Sender(endpoint, "lossless", bind=False) as tx:
        tx.send_raw([b"\x13\x37garbage"])
        tx.send_raw([b"orstream/x/frame", b'{"v": 99}'])
        tx.send_raw([b"orstream/x/frame", b"{}", bytes(2 << 20)])
        tx.send(_frame(7))
        frame = rx.recv(1000)
        assert frame is not None and frame.seq == 7
        assert dict(rx.stats.rejected) == {"bad_framing": 1, "bad_version": 1, "oversize": 1}


def test_inproc_hands_over_the_arrays_without_copying_and_fans_out_traces():
    with Receiver("inproc://t-fan-a", "lossless", bind=True) as a, \
            Receiver("inproc://t-fan-b", "latest", bind=True) as b, \
            Sender("inproc://t-fan-a", "lossless") as to_a, \
            Sender("inproc://t-fan-b", "latest") as to_b:
        frame = _frame(1, (1080, 1920))
        frame.stamp("render", 0, 1)
        to_a.send(frame)
        to_b.send(frame)
        got_a, got_b = a.recv(100), b.recv(100)
    assert got_a.image is frame.image and got_b.image is frame.image  # never copied
    got_a.stamp("record", 2, 3)
    assert [t[0] for t in got_b.trace] == ["render"]  # each edge has its own trace


def test_frames_cross_tcp_on_loopback():
    port = free_port()
    with Receiver(f"tcp://:{port}", "lossless", bind=True) as rx, \
            Sender(f"tcp://localhost:{port}", "lossless", bind=False) as tx:
        assert rx.endpoint == f"tcp://127.0.0.1:{port}"
        tx.send(_frame(3, (270, 480)))
        f = rx.recv(2000)
    assert f is not None and f.image.shape == (270, 480, 3) and f.image[0, 0, 0] == 3


def test_endpoints_are_checked():
    assert transport.normalize_endpoint("tcp://:1") == "tcp://127.0.0.1:1"
    assert endpoints.normalize_endpoint("tcp://localhost:5600") == "tcp://127.0.0.1:5600"
    assert endpoints.normalize_endpoint("ipc:///tmp/x") == "ipc:///tmp/x"
    for bad, complaint in (("udp://1.2.3.4:5", "expected inproc"), ("tcp://nohost", "HOST:PORT"),
                           ("tcp://h:70000", "1 to 65535"), ("ipc://", "names no path"),
                           ("/tmp/x", "expected inproc")):
        with pytest.raises(endpoints.EndpointError, match=complaint):
            endpoints.normalize_endpoint(bad)
    with pytest.raises(UsageError):  # a user's typo is an expected error, not a bug
        Sender("tcp://nohost")


def test_endpoint_parts_loopback_and_stream_templates():
    assert endpoints.parse("tcp://:5600") == endpoints.Endpoint("tcp", "127.0.0.1", 5600)
    assert endpoints.parse("shm:///tmp/a").path == "/tmp/a"
    assert endpoints.is_loopback("tcp://[::1]:5600") and endpoints.is_loopback("ipc:///tmp/a")
    assert not endpoints.is_loopback("tcp://10.0.0.2:5600")
    assert endpoints.for_stream("ipc:///tmp/{stream}-out", "or-2") == "ipc:///tmp/or-2-out"
    assert endpoints.socket_file("ipc://rel/sock") == os.path.abspath("rel/sock")
    assert endpoints.socket_file("ipc://@abstract") is None
    assert endpoints.socket_file("tcp://127.0.0.1:5600") is None


def test_reading_a_config_does_not_load_the_transport():
    # A fresh interpreter: this one has imported the transport already.
    code = ("import orstream.pipeline.config, sys; "
            "print('orstream.pipeline.transport' in sys.modules, 'zmq' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.split() == ["False", "False"]


def test_streams_for_other_processes_refuse_inproc_and_shm():
    with pytest.raises(ConfigError, match="inproc:// stays inside this process"):
        load_config(None, ["masks.endpoint=inproc://masks"])
    with pytest.raises(ConfigError, match="use ipc:///tmp/m"):
        load_config(None, ["masks.endpoint=shm:///tmp/m"])


def _transports(tmp_path):
    return [("inproc://t-classes", transport.InprocSender, transport.InprocReceiver),
            (f"ipc://{tmp_path}/classes", transport.ZmqSender, transport.ZmqReceiver),
            (f"tcp://127.0.0.1:{free_port()}", transport.ZmqSender, transport.ZmqReceiver),
            (f"shm://{tmp_path}/classes-shm", transport.ShmSender, transport.ShmReceiver)]


@pytest.mark.parametrize("which", ["inproc", "ipc", "tcp", "shm"])
def test_the_endpoint_scheme_picks_the_transport_class_and_frames_cross_it(tmp_path, which):
    endpoint, sender_class, receiver_class = next(
        t for t in _transports(tmp_path) if t[0].startswith(which))
    with Receiver(endpoint, "lossless", bind=True) as rx, \
            Sender(endpoint, "lossless", bind=False) as tx:
        assert type(rx) is receiver_class and isinstance(rx, Receiver)
        assert type(tx) is sender_class and isinstance(tx, Sender)
        assert tx.send(_frame(5, (36, 64)), 1000)
        frame = rx.recv(2000)
    assert frame is not None and frame.seq == 5 and (frame.image == 5).all()
    assert tx.sent == 1 and rx.stats.received == 1


@pytest.mark.parametrize("scheme", ["ipc", "shm"])
def test_the_binder_removes_its_socket_file_when_it_closes(tmp_path, scheme):
    endpoint = f"{scheme}://{tmp_path}/edge"
    path = tmp_path / "edge"
    rx = Receiver(endpoint, "lossless", bind=True)
    with Sender(endpoint, "lossless", bind=False):
        assert path.exists()
    assert path.exists(), "a connecting side must not remove the binder's file"
    rx.close()
    assert not path.exists(), "socket file left behind after a clean close"
    rx.close()  # twice: nothing more happens

    # A path rebound by someone else meanwhile is theirs: closing must leave it.
    rx = Receiver(endpoint, "lossless", bind=True)
    path.unlink()
    path.write_text("another binder's")
    rx.close()
    assert path.read_text() == "another binder's"


def test_binding_a_taken_tcp_port_names_the_endpoint(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with Receiver(endpoint, "lossless", bind=True), \
            pytest.raises(endpoints.EndpointInUseError) as caught:
        Sender(endpoint, "latest", bind=True)
    error = caught.value
    assert isinstance(error, UsageError) and error.endpoint == endpoint
    assert str(error).count("\n") == 0 and endpoint in str(error) and "port is taken" in str(error)
    # The failed socket did not keep the port. ZeroMQ closes sockets in its I/O thread, so
    # the receiver's own port comes free a moment after close(): allow it that moment.
    deadline = time.monotonic() + 5
    while True:
        try:
            with Sender(endpoint, "latest", bind=True):
                break
        except endpoints.EndpointInUseError:
            assert time.monotonic() < deadline, "the port stayed taken after every close"
            time.sleep(0.05)


def test_binding_a_live_ipc_path_is_refused_but_a_stale_file_is_replaced(tmp_path):
    endpoint = f"ipc://{tmp_path}/live"
    with Receiver(endpoint, "lossless", bind=True), \
            pytest.raises(endpoints.EndpointInUseError, match="path is taken"):
        Receiver(endpoint, "lossless", bind=True)
    stale = socket.socket(socket.AF_UNIX)  # a file whose process is gone: nobody listens
    stale.bind(str(tmp_path / "stale"))
    stale.close()
    with Receiver(f"ipc://{tmp_path}/stale", "lossless", bind=True) as rx, \
            Sender(f"ipc://{tmp_path}/stale", "lossless", bind=False) as tx:
        tx.send(_frame(1))
        assert rx.recv(2000) is not None


def test_missing_curve_keys_are_an_expected_error():
    curve = Curve(b"x" * 40, b"y" * 40)  # no allowed_clients: cannot serve
    with pytest.raises(SecurityError, match="allowed_clients") as caught:
        Sender(f"tcp://127.0.0.1:{free_port()}", bind=True, curve=curve)
    assert isinstance(caught.value, OrstreamError) and isinstance(caught.value, ValueError)
