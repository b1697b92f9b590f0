from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from orstream.pipeline import transport
from orstream.pipeline.frame import Frame
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
    with Receiver("tcp://:5731", "lossless", bind=True) as rx, \
            Sender("tcp://localhost:5731", "lossless", bind=False) as tx:
        assert rx.endpoint == "tcp://127.0.0.1:5731"
        tx.send(_frame(3, (270, 480)))
        f = rx.recv(2000)
    assert f is not None and f.image.shape == (270, 480, 3) and f.image[0, 0, 0] == 3


def test_endpoints_are_checked():
    assert transport.normalize_endpoint("tcp://:1") == "tcp://127.0.0.1:1"
    with pytest.raises(ValueError, match="expected inproc"):
        transport.normalize_endpoint("udp://1.2.3.4:5")
    with pytest.raises(ValueError, match="HOST:PORT"):
        transport.normalize_endpoint("tcp://nohost")
