"""Every socket orstream reads survives malformed messages while real frames flow.

The bounded version of `python -m orstream.benchmarks.fuzz` (100,000 messages a socket):
a few thousand hypothesis-generated messages per socket, derandomized so that CI is
reproducible, sent over real sockets into the real receivers. Then the regressions the
fuzzing found, one test each, where the parametrized lists of test_wire.py and test_masks.py
do not already hold them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from orstream.benchmarks import fuzz, fuzz_cases
from orstream.common.net import free_port
from orstream.pipeline import wire
from orstream.pipeline.config import DescribeConfig
from orstream.pipeline.describe import ASK_MAX_BYTES, DescribeWorker
from orstream.pipeline.frame import Frame
from orstream.pipeline.transport import Receiver

BUDGET = {"ask": 200}  # each answer is a model run: fewer messages, same mutations
DEFAULT_BUDGET = 800


@pytest.mark.parametrize("socket", fuzz.SOCKETS)
def test_malformed_messages_are_all_counted_and_every_good_frame_arrives(socket):
    tally = fuzz.fuzz(socket, BUDGET.get(socket, DEFAULT_BUDGET), derandomize=True)
    report = json.dumps(tally.to_json(), indent=1)
    assert tally.crashes == 0 and tally.hangs == 0, report
    assert tally.bad_delivered == 0, report
    assert sum(tally.rejected.values()) == tally.messages >= BUDGET.get(socket,
                                                                         DEFAULT_BUDGET), report
    assert tally.good_delivered == tally.good_sent > 0, report
    assert len(tally.rejected) >= 5, report  # the cases reach many rules, not one


def _header_fields(protocol: str) -> set[str]:
    """The first column of PROTOCOL.md's header tables (frame stream and mask stream)."""
    fields, in_table = set(), False
    for line in protocol.splitlines():
        if line.startswith("| field | type | unit / meaning |"):
            in_table = True
        elif in_table and line.startswith("| `"):
            fields.add(line.split("`")[1])
        elif in_table and not line.startswith("|"):
            in_table = False
    return fields


def test_the_unknown_fields_of_good_frames_are_never_fields_the_protocol_defines():
    # Hypothesis writes the project's own string constants ("run") as dictionary keys: a
    # good frame's "unknown" field named like a real one made it invalid, and the stage-ipc
    # fuzz run counted seven good frames refused.
    protocol = (Path(__file__).parents[1] / "PROTOCOL.md").read_text()
    defined = _header_fields(protocol)
    assert {"v", "seq", "run", "prev_seq", "wall_minus_mono_ns", "polygons"} <= defined
    assert defined <= fuzz_cases.KNOWN_FIELDS, defined - fuzz_cases.KNOWN_FIELDS


def _frame(seq: int, stream: str = "or-1") -> Frame:
    frame = Frame.capture(stream, seq, np.zeros((8, 8, 3), np.uint8))
    frame.labels = np.zeros((4, 4), np.uint8)
    return frame


def test_a_stage_input_refuses_a_frame_without_the_picture_it_needs(tmp_path):
    endpoint = f"ipc://{tmp_path}/in"
    with Receiver(endpoint, "lossless", bind=True, require=("image",)) as receiver:
        push = zmq.Context.instance().socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.connect(endpoint)
        push.send_multipart(wire.encode(_frame(1), ("labels",)))  # valid, but no picture
        push.send_multipart(wire.encode(_frame(2), ("image", "labels")))
        got = receiver.recv(5000)
        push.close(0)
    assert got is not None and got.seq == 2 and got.image is not None
    assert receiver.stats.rejected == {"missing_part": 1}


def test_an_input_takes_a_bounded_number_of_streams_and_its_known_ones_keep_flowing(tmp_path):
    """Each stream id costs state downstream (a sender socket per room on a {stream} edge):
    a peer inventing ids is refused past MAX_STREAMS, counted, and the rooms already
    there are not disturbed."""
    from orstream.pipeline.transport import MAX_STREAMS

    endpoint = f"ipc://{tmp_path}/in"
    streams = [f"room-{i}" for i in range(MAX_STREAMS + 3)]
    with Receiver(endpoint, "lossless", bind=True, require=("image",)) as receiver:
        push = zmq.Context.instance().socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.connect(endpoint)
        for stream in [*streams, streams[0]]:
            push.send_multipart(wire.encode(_frame(1, stream), ("image",)))
        got = []
        while (frame := receiver.recv(2000)) is not None:
            got.append(frame.stream)
        push.close(0)
    assert got == [*streams[:MAX_STREAMS], streams[0]]
    assert receiver.stats.rejected == {"too_many_streams": 3}


def test_a_refused_shm_frame_does_not_hold_back_the_frame_behind_it(tmp_path):
    """latest over shm://: a frame whose slot stamp is stale is refused when taken; the
    next waiting frame must come out of the same recv, not after another timeout."""
    from orstream.pipeline.shm import SlotRing

    endpoint = f"shm://{tmp_path}/in"
    ring = SlotRing(4)
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    try:
        with Receiver(endpoint, "latest", bind=True) as receiver:
            pub.connect(f"ipc://{tmp_path}/in")
            # Subscriptions take a moment to reach a PUB: send until one frame arrives.
            for seq in range(1, 200):
                pub.send_multipart(wire.encode(_frame(seq), ("image",), None, ring))
                if receiver.recv(50) is not None:
                    break
            else:
                pytest.fail("no frame got through")
            stale = json.loads(wire.encode(_frame(500, "old"), ("image",), None, ring)[1])
            stale["shm"]["stamp"] += 2_000_000  # a generation the slot never had
            stale["t_capture_ns"] = 1  # captured first: taken first
            pub.send_multipart([wire.topic("old"), json.dumps(stale).encode()])
            pub.send_multipart(wire.encode(_frame(501), ("image",), None, ring))
            time.sleep(0.3)  # both are in the receiver's queue before it looks
            got = receiver.recv(timeout_ms=0)
            rejected = dict(receiver.stats.rejected)
    finally:
        pub.close(0)
        ring.close()
    assert rejected == {"shm_overwritten": 1}
    assert got is not None and got.seq == 501


def test_the_ask_socket_answers_refuses_and_keeps_serving():
    """Each of these once ended the ask thread or the model's process: a question in two
    parts (REP cannot reply to half a request: the thread died), a question longer than the
    model's prompt (an assert in the model killed the worker, and captions with it)."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    worker = DescribeWorker(DescribeConfig(interval_s=3600, ask_endpoint=endpoint,
                                           priority="normal"))
    worker.start()
    worker.offer(_frame(1))
    req = None
    try:
        assert worker.ready.wait(120) and worker.failed is None

        def ask(*parts: bytes) -> dict:
            nonlocal req
            req = zmq.Context.instance().socket(zmq.REQ)
            req.setsockopt(zmq.LINGER, 0)
            req.setsockopt(zmq.RCVTIMEO, 10_000)
            req.connect(endpoint)
            req.send_multipart(list(parts))
            reply = json.loads(req.recv())
            req.close(0)
            return reply

        question = json.dumps({"question": "is there smoke?"}).encode()
        assert "error" in ask(question, b"more")
        assert "error" in ask(json.dumps({"question": "a " * 1000}).encode())
        assert "too long" in ask(json.dumps({"question": "a" * ASK_MAX_BYTES}).encode())[
            "error"]
        assert "answer" in ask(question)  # still serving, the model still alive
        assert worker.rejected == {"bad_framing": 1, "model_refused": 1, "oversize": 1}
        assert worker.failed is None and worker.running
    finally:
        if req is not None:
            req.close(0)
        worker.close()
