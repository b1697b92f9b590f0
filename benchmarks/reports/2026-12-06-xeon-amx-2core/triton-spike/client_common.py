"""Client helpers shared by the spike scripts (tritonclient gRPC, system shared memory)."""

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm

MODEL = "unet_types"
H, W = 256, 320
IN_BYTES = H * W * 3
OUT_BYTES = H * W


def infer_plain(client, frames: np.ndarray, timeout_s: float | None = None,
                model: str = MODEL) -> np.ndarray:
    inp = grpcclient.InferInput("frames", list(frames.shape), "UINT8")
    inp.set_data_from_numpy(frames)
    out = grpcclient.InferRequestedOutput("labels")
    res = client.infer(model, [inp], outputs=[out], client_timeout=timeout_s)
    return res.as_numpy("labels")


class ShmChannel:
    """One input and one output system shared-memory region (batch 1), registered with the server.
    The frame is written into the input region; the server writes labels into the output one."""

    def __init__(self, client, tag: str, batch: int = 1) -> None:
        self.client, self.batch = client, batch
        self.in_name, self.out_name = f"{tag}_in", f"{tag}_out"
        self.in_key, self.out_key = f"/{tag}_in", f"/{tag}_out"
        self.in_h = shm.create_shared_memory_region(self.in_name, self.in_key, IN_BYTES * batch)
        self.out_h = shm.create_shared_memory_region(self.out_name, self.out_key, OUT_BYTES * batch)
        self.in_view = shm.get_contents_as_numpy(self.in_h, np.uint8, (batch, H, W, 3))
        self.out_view = shm.get_contents_as_numpy(self.out_h, np.uint8, (batch, H, W))
        self.register()

    def register(self) -> None:
        self.client.register_system_shared_memory(self.in_name, self.in_key, IN_BYTES * self.batch)
        self.client.register_system_shared_memory(self.out_name, self.out_key,
                                                  OUT_BYTES * self.batch)

    def infer(self, frames: np.ndarray, timeout_s: float | None = None,
              model: str = MODEL) -> np.ndarray:
        self.in_view[...] = frames  # the one host copy: frame -> shared region
        inp = grpcclient.InferInput("frames", [self.batch, H, W, 3], "UINT8")
        inp.set_shared_memory(self.in_name, IN_BYTES * self.batch)
        out = grpcclient.InferRequestedOutput("labels")
        out.set_shared_memory(self.out_name, OUT_BYTES * self.batch)
        self.client.infer(model, [inp], outputs=[out], client_timeout=timeout_s)
        return self.out_view  # a view: valid until the next infer on this channel

    def close(self) -> None:
        for name in (self.in_name, self.out_name):
            try:
                self.client.unregister_system_shared_memory(name)
            except Exception as e:  # server may be gone; the local regions are freed below
                print("unregister", name, type(e).__name__)
        shm.destroy_shared_memory_region(self.in_h)
        shm.destroy_shared_memory_region(self.out_h)


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values), q))


def summary(ms) -> str:
    return (f"p50 {pct(ms, 50):7.2f}  p95 {pct(ms, 95):7.2f}  p99 {pct(ms, 99):7.2f}  "
            f"max {max(ms):7.2f} ms  (n={len(ms)})")
