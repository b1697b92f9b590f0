"""Items 3 and 4: start tritonserver directly, serve the exported U-Net through the Python backend,
check pixel agreement vs in-process onnxruntime, then interleaved latency: in-process ORT,
gRPC, gRPC + system shared memory, and both against a null model (the transport floor).
Run: REPO=repo N=300 nice -n 10 /tmp/tritonvenv/bin/python parity_and_latency.py"""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient

sys.path.insert(0, str(Path(__file__).parent))
from client_common import ShmChannel, infer_plain, summary  # noqa: E402
from serverctl import Server  # noqa: E402

HERE = Path(__file__).parent
N = int(os.environ.get("N", "300"))
WARM = 30


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    frames = np.load(HERE / "artifacts/unet_types.frames.npy")
    ref = np.load(HERE / "artifacts/unet_types.labels.npy")
    repo = HERE / os.environ.get("REPO", "repo")
    cfg = (repo / "unet_types/config.pbtxt").read_text().splitlines()
    print("repo", repo, "dynamic_batching:", [ln.strip() for ln in cfg if "dynamic" in ln])
    from hang_and_flags import QUIET
    server = Server(repo, HERE / "server_latency.log", extra=QUIET)
    server.start()
    print(f"server ready after {server.wait_ready():.2f} s; grpc port {server.grpc}")
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}")
    print("server live/ready, model ready:", client.is_server_live(), client.is_server_ready(),
          client.is_model_ready("unet_types"))
    print("metadata:", client.get_model_metadata("unet_types", as_json=True))
    try:
        # --- item 3: parity, batch 1 and batch 4 requests, plain gRPC and shm
        agree = []
        for i in range(len(frames)):
            got = infer_plain(client, frames[i:i + 1])
            agree.append((got == ref[i:i + 1]).mean())
        got4 = infer_plain(client, frames[:4])
        print(f"parity plain gRPC batch1: min {min(agree) * 100:.4f} % mean "
              f"{np.mean(agree) * 100:.4f} %; batch4: {(got4 == ref[:4]).mean() * 100:.4f} %; "
              f"dtype {got4.dtype} shape {got4.shape}")
        chan = ShmChannel(client, f"ors{os.getpid()}")
        agree_shm = [(chan.infer(frames[i:i + 1]) == ref[i:i + 1]).mean()
                     for i in range(len(frames))]
        print(f"parity shm gRPC batch1: min {min(agree_shm) * 100:.4f} %")
        print("shm status:", client.get_system_shared_memory_status(as_json=True))

        # --- item 4: interleaved latency, same ORT settings as the server's model.py
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = 2
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(str(HERE / "repo/unet_types/1/model.onnx"), opts,
                                    providers=["CPUExecutionProvider"])
        modes = {
            "inproc_ort": lambda f: sess.run(None, {"frames": f})[0],
            "grpc": lambda f: infer_plain(client, f),
            "grpc_shm": lambda f: chan.infer(f),
            "null_grpc": lambda f: infer_plain(client, f, model="null_labels"),
            "null_shm": lambda f: chan.infer(f, model="null_labels"),
        }
        names = list(modes)
        times = {n: [] for n in names}
        print("load before:", uptime())
        for it in range(WARM + N):
            f = frames[it % len(frames)][None]
            k = it % len(names)
            order = names[k:] + names[:k]  # rotate so no mode always runs first
            for name in order:
                t0 = time.perf_counter()
                modes[name](f)
                dt = (time.perf_counter() - t0) * 1e3
                if it >= WARM:
                    times[name].append(dt)
        print("load after: ", uptime())
        for name in names:
            print(f"{name:11s} {summary(times[name])}")
        base = np.array(times["inproc_ort"])
        for name in ("grpc", "grpc_shm"):
            d = np.array(times[name]) - base
            print(f"{name} - inproc (paired per iteration): p50 {np.percentile(d, 50):.2f} ms "
                  f"p99 {np.percentile(d, 99):.2f} ms; ratio of p50s "
                  f"{np.percentile(times[name], 50) / np.percentile(base, 50):.3f}")
        stats = client.get_inference_statistics("unet_types", as_json=True)
        ms = stats["model_stats"][0]
        print("server stats: inference_count", ms["inference_count"], "execution_count",
              ms["execution_count"])
        for k in ("queue", "compute_input", "compute_infer", "compute_output"):
            v = ms["inference_stats"][k]
            print(f"  {k}: avg {int(v['ns']) / int(v['count']) / 1e6:.3f} ms")
        chan.close()
    finally:
        client.close()
        server.stop()
        print("server stopped rc", server.proc.returncode)


if __name__ == "__main__":
    main()
