"""Item 5: stream frames (gRPC + system shm, 1 s client timeout), kill -9 the server mid-stream,
restart it on the same ports, and record what the client sees until frames flow again.
Run: nice -n 10 /tmp/tritonvenv/bin/python kill_restart.py"""

import glob
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

sys.path.insert(0, str(Path(__file__).parent))
from client_common import ShmChannel  # noqa: E402
from hang_and_flags import QUIET  # noqa: E402
from serverctl import Server  # noqa: E402

HERE = Path(__file__).parent
DOWN = float(os.environ.get("DOWN", "1.3"))  # seconds from kill to restart


def stubs() -> list[str]:
    out = subprocess.run(["pgrep", "-a", "-f", "triton_python_backend_stub"], capture_output=True,
                         text=True).stdout
    return [ln for ln in out.splitlines() if "pgrep" not in ln]


def main():
    frames = np.load(HERE / "artifacts/unet_types.frames.npy")
    ref = np.load(HERE / "artifacts/unet_types.labels.npy")
    extra = QUIET if os.environ.get("QUIET") else None
    print("extra flags", extra)
    server = Server(HERE / "repo", HERE / "server_kill.log", extra=extra)
    server.start()
    print(f"ready after {server.wait_ready():.2f} s; ports http {server.http} grpc {server.grpc}")
    print("stub processes:", stubs())
    print("/dev/shm python-backend regions:", glob.glob(f"/dev/shm/{server.prefix}*"))
    # FAST_RECONNECT=1: cap gRPC's reconnect backoff (default grows 1 s x1.6 up to 120 s).
    args = ([("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
             ("grpc.max_reconnect_backoff_ms", 500)] if os.environ.get("FAST_RECONNECT") else None)
    print("DOWN", DOWN, "s; channel_args", args)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}", channel_args=args)
    chan = ShmChannel(client, f"k{os.getpid()}")
    events, stop = [], threading.Event()
    t_origin = time.perf_counter()

    def stream():
        i = 0
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                got = chan.infer(frames[i % 8][None], timeout_s=1.0)
                ok = bool((got == ref[i % 8]).mean() > 0.995)
                events.append((t0 - t_origin, "ok" if ok else "WRONG", "", ""))
            except InferenceServerException as e:
                events.append((t0 - t_origin, type(e).__name__, str(e.status()),
                               e.message()[:140]))
                if "shared memory" in e.message().lower() or "not registered" in e.message():
                    # server restarted and forgot our regions: register them again
                    try:
                        chan.register()
                        events.append((time.perf_counter() - t_origin, "re-registered", "", ""))
                    except InferenceServerException as e2:
                        events.append((time.perf_counter() - t_origin, "re-register failed",
                                       str(e2.status()), e2.message()[:100]))
                time.sleep(0.05)  # spike only: the real client backs off
            except Exception as e:  # anything else, to report its type
                events.append((t0 - t_origin, type(e).__name__, "", str(e)[:140]))
                time.sleep(0.05)
            i += 1

    th = threading.Thread(target=stream)
    th.start()
    time.sleep(2.0)
    t_kill = time.perf_counter() - t_origin
    server.kill9()
    print(f"kill -9 at t={t_kill:.2f} s; rc {server.proc.returncode}")
    time.sleep(1.0)
    print("1 s after kill: stub processes:", stubs())
    left = glob.glob(f"/dev/shm/{server.prefix}*")
    print("1 s after kill: /dev/shm python-backend regions left:", left)
    server.reap_group()
    time.sleep(max(0.3, DOWN - 1.0))
    print("after reap_group (killpg SIGKILL + unlink): stubs", stubs(), "regions",
          glob.glob(f"/dev/shm/{server.prefix}*"))
    t_restart = time.perf_counter() - t_origin
    server2 = Server(HERE / "repo", HERE / "server_kill2.log",
                     ports=(server.http, server.grpc, server.metrics), extra=extra)
    server2.start()
    try:
        ready = server2.wait_ready()
        print(f"restart at t={t_restart:.2f} s on the same ports: ready after {ready:.2f} s")
        time.sleep(float(os.environ.get("POST", "2")))  # keep streaming after ready
        stop.set()
        th.join()
        first_ok_after = next((t for t, kind, *_ in events if t > t_restart and kind == "ok"),
                              float("nan"))
        print(f"first good frame {first_ok_after - t_kill:.2f} s after the kill, "
              f"{first_ok_after - (t_restart + ready):.2f} s after server ready")
        print("events around the outage:")
        last = None
        for t, kind, status, msg in events:
            key = (kind, status, msg)
            if t > t_kill - 0.2 and key != last:
                print(f"  t={t:6.2f} {kind:28s} {status:28s} {msg}")
            last = key
        print("counts:", Counter(k for _, k, *_ in events))
        chan.close()
        client.close()
    finally:
        server2.stop()
    print("after clean stop: stub processes:", stubs(),
          "regions:", glob.glob(f"/dev/shm/{server2.prefix}*"))


if __name__ == "__main__":
    main()
