"""Item 6: 1, 2 and 4 concurrent clients (threads, one gRPC client + own shm regions each) against
one server; does the dynamic batcher merge their requests? Reads the statistics API before and
after each phase. Run: REPO=repo nice -n 10 /tmp/tritonvenv/bin/python batching.py"""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

sys.path.insert(0, str(Path(__file__).parent))
from client_common import ShmChannel, summary  # noqa: E402
from serverctl import Server  # noqa: E402

HERE = Path(__file__).parent
PER_CLIENT = int(os.environ.get("PER_CLIENT", "60"))


def stats(client):
    ms = client.get_inference_statistics("unet_types", as_json=True)["model_stats"][0]
    batches = {int(b["batch_size"]): int(b["compute_infer"]["count"])
               for b in ms.get("batch_stats", [])}
    return int(ms.get("inference_count", 0)), int(ms.get("execution_count", 0)), batches


def room(url, tag, frames, out, barrier):
    client = grpcclient.InferenceServerClient(url)
    chan = ShmChannel(client, tag)
    chan.infer(frames[:1])  # warm this connection
    lat = []
    barrier.wait()
    for i in range(PER_CLIENT):
        t0 = time.perf_counter()
        chan.infer(frames[i % len(frames)][None])
        lat.append((time.perf_counter() - t0) * 1e3)
    chan.close()
    client.close()
    out.extend(lat)


def main():
    repo = HERE / os.environ.get("REPO", "repo")
    cfg = (repo / "unet_types/config.pbtxt").read_text()
    print("repo", repo, [ln.strip() for ln in cfg.splitlines()
                         if "dynamic" in ln or "instance" in ln or "threads" in ln])
    frames = np.load(HERE / "artifacts/unet_types.frames.npy")
    server = Server(repo, HERE / "server_batching.log")
    server.start()
    print(f"ready after {server.wait_ready():.2f} s")
    url = f"127.0.0.1:{server.grpc}"
    admin = grpcclient.InferenceServerClient(url)
    try:
        for rooms in (1, 2, 4):
            before = stats(admin)
            lat, threads = [], []
            barrier = threading.Barrier(rooms + 1)
            for r in range(rooms):
                t = threading.Thread(target=room, args=(url, f"b{os.getpid()}_{rooms}_{r}",
                                                        frames, lat, barrier))
                t.start()
                threads.append(t)
            barrier.wait()
            t0 = time.perf_counter()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            after = stats(admin)
            inf = after[0] - before[0]
            exe = after[1] - before[1]
            hist = {b: after[2].get(b, 0) - before[2].get(b, 0) for b in after[2]}
            hist = {b: n for b, n in sorted(hist.items()) if n}
            load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
            print(f"rooms={rooms}: {rooms * PER_CLIENT / wall:6.1f} frames/s total, per-request "
                  f"{summary(lat)}; inferences {inf} executions {exe} "
                  f"(mean batch {inf / max(exe, 1):.2f}); executions by batch size {hist}")
            print("   load:", load)
    finally:
        admin.close()
        server.stop()


if __name__ == "__main__":
    main()
