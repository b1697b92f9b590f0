"""A headless display for the soak (benchmarks/soak.py): subscribes like `orstream view`
(the same public Receiver, latest mode) and writes one fixed-size record per frame to a file,
so the soak reads every frame's latency without this process holding them in memory (which
would itself look like the RSS growth the soak is looking for).

    python -m orstream.benchmarks.soak_display ENDPOINT RECORDS

RECORDS gets (seq, capture ns, received ns, segment in ns, segment out ns, render in ns,
render out ns) per frame, little-endian int64, all on this host's monotonic clock (the
stage times from the frame's trace, 0 where a stage is not in it): the soak splits the
end-to-end latency by where it was spent. SIGINT or SIGTERM ends it; it then prints a JSON
line of its receiver's counters (received, lost, superseded, rejected) and exits 0.
"""

from __future__ import annotations

import argparse
import json
import signal
import struct
import sys
import threading
import time
from pathlib import Path

# seq, t_capture_ns, t_received_ns, then (t_in, t_out) of each of STAGES
RECORD = struct.Struct("<qqqqqqq")
STAGES = ("segment", "render")


def stage_times(trace: list[tuple[str, int, int]]) -> list[int]:
    """(t_in, t_out) of each of STAGES in a frame's trace, flattened; 0 where absent."""
    times = {name: (t_in, t_out) for name, t_in, t_out in trace}
    return [t for name in STAGES for t in times.get(name, (0, 0))]


def serve(endpoint: str, records: Path, stop: threading.Event) -> dict:
    from orstream.pipeline.transport import Receiver

    # Unbuffered: each frame's 24 bytes reach the file at once, so the soak reads whole
    # records while this runs, and a display that dies loses none of its history.
    with Receiver(endpoint, "latest", name="soak-display") as receiver, \
            records.open("wb", buffering=0) as out:
        while not stop.is_set():
            frame = receiver.recv(timeout_ms=200)
            if frame is None:
                continue
            received = time.monotonic_ns()
            out.write(RECORD.pack(frame.seq, frame.t_capture_ns, received,
                                  *stage_times(frame.trace)))
            # What a display does with the picture: view's headless path only looks at it;
            # touching a row keeps the part from being an unread buffer.
            picture = frame.overlay if frame.overlay is not None else frame.image
            if picture is not None:
                int(picture[0, 0, 0])
        stats = receiver.stats
        return {"received": stats.received, "lost": stats.lost,
                "superseded": stats.superseded, "rejected": sum(stats.rejected.values())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("endpoint")
    parser.add_argument("records", type=Path)
    args = parser.parse_args(argv)
    from orstream.pipeline.capture import keep_frame_memory

    keep_frame_memory()  # as `orstream view` does
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print(json.dumps(serve(args.endpoint, args.records, stop)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
