"""The describe stage's model process: `python -m orstream.pipeline.describe_worker ENDPOINT ...`.

The VLM runs in its own process, not a thread of the pipeline: its Python between torch ops
would otherwise hold the pipeline's GIL, and a low-priority thread holding the GIL is a
priority inversion (the frame path waits on a thread the OS is told not to run). Alone in
its process it can take the lowest CPU class (SCHED_IDLE: only cores the frame path leaves
idle) without ever blocking a frame.

Protocol over one ZeroMQ PAIR socket (the pipeline binds, this connects): this process sends
`{"ready": true, "input_size": [H, W]}` (or `{"error": ...}`) once loaded; then each request
is [JSON `{"op": "caption" | "answer", "question": str}`, H*W*3 uint8 RGB bytes at
input_size], answered by `{"text": str, "ms": float}` or `{"error": str}`. An empty-op
request `{"op": "stop"}` ends it; so does the pipeline going away (it is its parent).
"""

from __future__ import annotations

import argparse
import json
import os
import time

# Before torch loads: an idle wait, not OpenMP spinning on cores the frame path needs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import zmq  # noqa: E402

PARENT_CHECK_MS = 1000  # how often an idle worker checks that the pipeline still exists


def lower_priority(priority: str) -> str:
    """This process below the frame path: 'idle' (SCHED_IDLE), 'low' (nice 10) or 'normal'.
    Returns what it got (an OS without SCHED_IDLE gets nice 19)."""
    if priority == "normal":
        return "normal"
    if priority == "idle":
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return "idle"
        except (AttributeError, OSError):
            os.nice(19)
            return "nice 19"
    os.nice(10)
    return "nice 10"


def serve(endpoint: str, weights: str | None, threads: int, max_new_tokens: int,
          priority: str, backend: str = "torch") -> int:
    got = lower_priority(priority)
    parent = os.getppid()
    socket = zmq.Context.instance().socket(zmq.PAIR)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(endpoint)
    try:
        if backend == "torch":
            from orstream.engines.vlm.describer import Describer

            describer = Describer.load(weights, threads=threads, max_new_tokens=max_new_tokens)
        else:  # the exported encoder + decoder step, from the engine cache (built if new)
            from orstream.engines.vlm.exported import ExportedVLM

            describer = ExportedVLM.load(weights, threads=threads,
                                         max_new_tokens=max_new_tokens, backend=backend)
    except Exception as exc:  # noqa: BLE001 - reported to the pipeline, which logs it
        socket.send(json.dumps({"error": f"{exc.__class__.__name__}: {exc}"}).encode())
        socket.close(linger=2000)  # delivered before the process goes (it exits at once)
        return 1
    h, w = describer.input_size
    socket.send(json.dumps({"ready": True, "input_size": [h, w], "priority": got}).encode())
    while True:
        if not socket.poll(PARENT_CHECK_MS):
            if os.getppid() != parent:
                return 0  # the pipeline died without a word: do not linger
            continue
        parts = socket.recv_multipart()
        try:
            request = json.loads(parts[0])
            op = request.get("op")
            if op == "stop":
                return 0
            image = np.frombuffer(parts[1], np.uint8).reshape(h, w, 3)
            t0 = time.monotonic()
            if op == "caption":
                text = describer.caption(image)
            elif op == "answer":
                text = describer.answer(image, str(request.get("question", "")))
            else:
                raise ValueError(f"unknown op {op!r}")
            reply = {"text": text, "ms": round((time.monotonic() - t0) * 1e3, 1)}
        except (ValueError, IndexError, KeyError) as exc:
            reply = {"error": str(exc)}
        socket.send(json.dumps(reply).encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("endpoint")
    parser.add_argument("--weights")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--priority", choices=["idle", "low", "normal"], default="idle")
    parser.add_argument("--backend", choices=["torch", "onnxruntime", "openvino"],
                        default="torch")
    args = parser.parse_args(argv)
    return serve(args.endpoint, args.weights, args.threads, args.max_new_tokens, args.priority,
                 args.backend)


if __name__ == "__main__":
    from orstream.pipeline.quick_exit import exit_now

    exit_now(main())  # 1.1 s of torch teardown saved on every stop
