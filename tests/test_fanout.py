"""Eight displays on one publisher: one killed and one stalled hurt neither the pipeline
nor the six others."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

from orstream.common.net import free_port
from orstream.pipeline.config import load_config
from orstream.pipeline.runner import Pipeline

# A display as a third party would write it: plain pyzmq, newest-frame subscriber.
SUBSCRIBER = r"""
import json, sys, time, zmq
endpoint, seconds, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
sock = zmq.Context().socket(zmq.SUB)
sock.setsockopt(zmq.SUBSCRIBE, b"orstream/")
sock.setsockopt(zmq.RCVHWM, 16)  # ~0.8 s at 20 fps: 10 processes share 2 cores here
sock.connect(endpoint)
print("ready", flush=True)
seen = []
end = time.monotonic() + seconds
while time.monotonic() < end:
    if sock.poll(100):
        parts = sock.recv_multipart()
        seen.append([time.monotonic_ns(), json.loads(parts[1])["seq"]])
json.dump({"seen": seen, "until_ns": time.monotonic_ns()}, open(out, "w"))
"""


def test_one_killed_and_one_stalled_subscriber_leave_the_other_six_at_full_rate(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    # No model and no VLM: the subject is the publisher, and eight subscriber processes
    # already share the two cores with it.
    cfg = load_config(None, ["segment.enabled=false", "describe.enabled=false",
                             "source.width=480", "source.height=270", "source.fps=20",
                             f"publish.endpoint={endpoint}"])
    rendered: list[int] = []  # monotonic ns of every frame the pipeline published
    pipeline = Pipeline(cfg, on_frame=lambda f: rendered.append(time.monotonic_ns()))
    runner = threading.Thread(target=pipeline.run, daemon=True)
    runner.start()
    seconds = 7.0
    subs = [subprocess.Popen([sys.executable, "-c", SUBSCRIBER, endpoint, str(seconds),
                              str(tmp_path / f"sub{i}.json")], stdout=subprocess.PIPE)
            for i in range(8)]
    try:
        for sub in subs:
            assert sub.stdout.readline().strip() == b"ready"
        t0 = time.monotonic_ns()
        time.sleep(1.0)
        os.kill(subs[6].pid, signal.SIGSTOP)  # stalled: connected, reads nothing
        time.sleep(1.0)
        subs[7].kill()  # gone without a word
        t_faults = time.monotonic_ns()
        for sub in subs[:6]:
            sub.wait(timeout=seconds + 30)
        t_end = time.monotonic_ns()
    finally:
        pipeline.request_stop()
        runner.join(30)
        os.kill(subs[6].pid, signal.SIGCONT)
        for sub in subs[6:]:
            sub.kill()
            sub.wait()

    def rate(times: list[int], start: int, end: int) -> float:
        return sum(start <= t < end for t in times) / ((end - start) / 1e9)

    window = (t_faults + 500_000_000, t_end - 500_000_000)  # after both faults
    published_before = rate(rendered, t0, t_faults)
    published_after = rate(rendered, *window)
    # The pipeline itself: same rate with a stalled and a dead display as without them.
    assert published_after >= 0.9 * published_before, (published_before, published_after)
    assert published_after >= 15  # 20 fps configured, on a busy 2-core machine
    for i in range(6):
        out = json.loads((tmp_path / f"sub{i}.json").read_text())
        # Each display over the part of the window it was still reading in: the first to
        # start is the first to stop, up to a second before the last (2 loaded cores).
        mine = (window[0], min(window[1], out["until_ns"]))
        assert mine[1] - mine[0] > 2e9, f"display {i} stopped reading too early to judge"
        got = rate([t for t, _ in out["seen"]], *mine)
        published = rate(rendered, *mine)
        assert got >= 0.9 * published, (i, got, published, (out["until_ns"] - window[1]) // 10**6)
        seqs = [s for _, s in out["seen"]]
        assert seqs == sorted(seqs)
