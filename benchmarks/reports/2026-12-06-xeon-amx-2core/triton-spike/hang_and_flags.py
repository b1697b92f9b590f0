"""Extra: (a) startup time to ready with default flags vs --disable-auto-complete-config and the
GPU-noise flags off; (b) a hung server (SIGSTOP 2.5 s, then SIGCONT): what the client sees with a
1 s client_timeout. Run: nice -n 10 /tmp/tritonvenv/bin/python hang_and_flags.py"""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

sys.path.insert(0, str(Path(__file__).parent))
from client_common import ShmChannel  # noqa: E402
from serverctl import Server  # noqa: E402

HERE = Path(__file__).parent
QUIET = ["--disable-auto-complete-config", "--allow-gpu-metrics", "false",
         "--pinned-memory-pool-byte-size", "0", "--cuda-memory-pool-byte-size", "0:0"]


def main():
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    for label, extra in (("default flags", []), ("quiet flags", QUIET)) * 2:
        log = HERE / f"server_flags_{label.split()[0]}.log"
        log.unlink(missing_ok=True)
        s = Server(HERE / "repo", log, extra=extra)
        s.start()
        ready = s.wait_ready()
        s.stop()
        noise = [ln for ln in log.read_text().splitlines() if ln[:1] in "WE" or "Error" in ln]
        print(f"{label}: ready after {ready:.2f} s; warning/error lines: {len(noise)}")
        for ln in noise[:4]:
            print("    ", ln[:150])

    frames = np.load(HERE / "artifacts/unet_types.frames.npy")
    s = Server(HERE / "repo", HERE / "server_hang.log", extra=QUIET)
    s.start()
    s.wait_ready()
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{s.grpc}")
    chan = ShmChannel(client, f"h{os.getpid()}")
    events = []
    t_origin = time.perf_counter()
    try:
        stopped_at = None
        while time.perf_counter() - t_origin < 7.0:
            now = time.perf_counter() - t_origin
            if stopped_at is None and now > 2.0:
                os.killpg(s.proc.pid, signal.SIGSTOP)  # server and its stub
                stopped_at = now
            if stopped_at is not None and now > stopped_at + 2.5 and stopped_at > 0:
                os.killpg(s.proc.pid, signal.SIGCONT)
                stopped_at = -1.0
                events.append((now, "SIGCONT", "", ""))
            t0 = time.perf_counter()
            try:
                chan.infer(frames[0][None], timeout_s=1.0)
                ms = (time.perf_counter() - t0) * 1e3
                events.append((t0 - t_origin, "ok", "", f"{ms:.0f} ms"))
            except InferenceServerException as e:
                events.append((t0 - t_origin, type(e).__name__, str(e.status()), e.message()[:90]))
        last = None
        for t, kind, st, msg in events:
            if ((kind, st) != last or kind != "ok") and t > 1.5:
                print(f"  t={t:5.2f} {kind:25s} {st:30s} {msg}")
            last = (kind, st)
        print("counts:", Counter(k for _, k, *_ in events))
        chan.close()
        client.close()
    finally:
        os.killpg(s.proc.pid, signal.SIGCONT)
        s.stop()


if __name__ == "__main__":
    main()
