"""The Holoscan SDK peer of benchmarks/transport.py: a 1080p frame through a chain of Python
operators, with the event-based scheduler.

    python benchmarks/holoscan_peer.py --frames 300 --fps 30 [--ops 5] [--workers 4] [--warmup 10]
    python benchmarks/holoscan_peer.py --probe

Standalone on purpose: it runs under an interpreter that has Holoscan (often another venv) and
imports nothing from orstream. benchmarks/transport.py starts it with the CUDA runtime's lib
folder on LD_LIBRARY_PATH and a 32 MB stack limit, which Holoscan needs even CPU-only, and reads
the one JSON object it prints on stdout.

The chain mirrors orstream's 5-stage inproc chain in transport.py: a source emits the same
1080p uint8 image at `--fps` (0: as fast as the chain takes it), each message a Python tuple
(seq, stamps, image) passed by reference; `--ops - 2` pass-through operators and a sink. Each
operator appends (t_in, t_out) in time.monotonic_ns(), t_in right after receive() returns and
t_out right before emit(), as orstream's stage threads stamp a Frame's trace. A hop is the next
operator's t_in minus this one's t_out; a frame's latency is the sink's t_in minus the source's
t_out. Holoscan's default queues hold one message and the source waits for room downstream, so
saturated latency includes at most one frame queued per edge.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import holoscan
import numpy as np
from holoscan.conditions import CountCondition, PeriodicCondition, PeriodicConditionPolicy
from holoscan.core import Application, Operator, OperatorSpec
from holoscan.schedulers import EventBasedScheduler

HD = (1080, 1920, 3)


class SourceOp(Operator):
    """Emits (seq, [(t, t)], image), the same image every time, as orstream's source does."""

    def __init__(self, fragment, *args, image: np.ndarray, **kwargs) -> None:
        self.image = image
        self.seq = 0
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("out")

    def compute(self, op_input, op_output, context) -> None:
        t_out = time.monotonic_ns()
        op_output.emit((self.seq, [(t_out, t_out)], self.image), "out")
        self.seq += 1


class RelayOp(Operator):
    """Receives a frame, stamps it and sends it on: the cost of a hop and nothing else."""

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("in")
        spec.output("out")

    def compute(self, op_input, op_output, context) -> None:
        message = op_input.receive("in")
        t_in = time.monotonic_ns()
        message[1].append((t_in, time.monotonic_ns()))
        op_output.emit(message, "out")


class SinkOp(Operator):
    """Records each frame's latency through the chain and per hop; the first `warmup` frames
    are not kept."""

    def __init__(self, fragment, *args, warmup: int, source_image: np.ndarray,
                 **kwargs) -> None:
        self.warmup = warmup
        self.source_image = source_image
        self.received = 0
        self.by_reference = True
        self.lat_ns: list[int] = []
        self.hop_ns: list[list[int]] = []
        self.t_rx_ns: list[int] = []
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("in")

    def compute(self, op_input, op_output, context) -> None:
        seq, stamps, image = op_input.receive("in")
        t_in = time.monotonic_ns()
        self.received += 1
        self.by_reference &= image is self.source_image
        if seq < self.warmup:
            return
        stamps = [*stamps, (t_in, t_in)]
        self.lat_ns.append(t_in - stamps[0][1])
        self.hop_ns.append([stamps[k + 1][0] - stamps[k][1] for k in range(len(stamps) - 1)])
        self.t_rx_ns.append(t_in)


class ChainApp(Application):
    def __init__(self, frames: int, fps: float, ops: int, warmup: int) -> None:
        assert ops >= 2, "a chain needs at least a source and a sink"
        self.frames, self.fps, self.ops, self.warmup = frames, fps, ops, warmup
        self.image = np.random.default_rng(0).integers(0, 256, HD, dtype=np.uint8)
        self.sink: SinkOp | None = None
        super().__init__()

    def compose(self) -> None:
        conditions = [CountCondition(self, self.frames, name="frames")]
        if self.fps:
            # A late tick shifts the schedule, as orstream's paced sender does: no catch-up.
            conditions.append(PeriodicCondition(
                self, int(1e9 / self.fps), policy=PeriodicConditionPolicy.NO_CATCH_UP_MISSED_TICKS,
                name="pace"))
        chain: list[Operator] = [SourceOp(self, *conditions, image=self.image, name="source")]
        chain += [RelayOp(self, name=f"relay{k}") for k in range(1, self.ops - 1)]
        self.sink = SinkOp(self, warmup=self.warmup, source_image=self.image, name="sink")
        chain.append(self.sink)
        for upstream, downstream in zip(chain, chain[1:], strict=False):
            self.add_flow(upstream, downstream, {("out", "in")})


def run(frames: int, fps: float, ops: int, workers: int, warmup: int) -> dict:
    app = ChainApp(frames, fps, ops, warmup)
    app.scheduler(EventBasedScheduler(app, worker_thread_number=workers,
                                      stop_on_deadlock=True, name="event-based"))
    t0 = time.monotonic()
    app.run()
    wall_s = time.monotonic() - t0
    sink = app.sink
    assert sink is not None, "compose() did not run"
    return {"holoscan": holoscan.__version__, "numpy": np.__version__,
            "python": sys.version.split()[0], "ops": ops, "workers": workers,
            "frames": frames, "fps": fps, "warmup": warmup, "received": sink.received,
            "by_reference": sink.by_reference, "run_s": wall_s, "lat_ns": sink.lat_ns,
            "hop_ns": sink.hop_ns, "t_rx_ns": sink.t_rx_ns}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--fps", type=float, default=30.0, help="0: as fast as it goes")
    parser.add_argument("--ops", type=int, default=5, help="operators, source and sink included")
    parser.add_argument("--workers", type=int, default=4, help="event-based scheduler threads")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured frames")
    parser.add_argument("--probe", action="store_true", help="print versions and exit")
    args = parser.parse_args()
    if args.probe:
        print(json.dumps({"holoscan": holoscan.__version__, "numpy": np.__version__,
                          "python": sys.version.split()[0]}))
        return
    if args.frames <= args.warmup + 1:
        parser.error("--frames must exceed --warmup + 1")
    print(json.dumps(run(args.frames, args.fps, args.ops, args.workers, args.warmup)))


if __name__ == "__main__":
    main()
