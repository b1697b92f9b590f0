"""The torch backend: eager PyTorch, channels_last, fp32 or bf16 autocast on the CPU,
fp32 or fp16 on CUDA. Asking for what the machine cannot do is an error, never a downgrade."""

from __future__ import annotations

import numpy as np
import torch

from engines.checkpoint import Checkpoint
from engines.preprocess import normalize


class BackendError(RuntimeError):
    """A backend, device or precision this machine cannot serve; says what it can do."""


def cpu_bf16_supported() -> bool:
    """Native bf16 on this CPU (AVX-512 BF16 or AMX): otherwise autocast emulates it slowly."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class TorchSegmenter:
    """(H, W, 3) uint8 frames at the model's input size -> (H, W) uint8 label maps."""

    name = "torch"

    def __init__(self, checkpoint: Checkpoint, precision: str = "fp32", device: str = "cpu",
                 threads: int | None = None) -> None:
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendError("device cuda asked for, but torch sees no CUDA device here: "
                               "use device cpu")
        allowed = {"cpu": ("fp32", "bf16"), "cuda": ("fp32", "fp16", "bf16")}[device]
        if precision not in allowed:
            raise BackendError(f"precision {precision} is not served by the torch backend on "
                               f"{device}: choose {' or '.join(allowed)}")
        if device == "cpu" and precision == "bf16" and not cpu_bf16_supported():
            raise BackendError("precision bf16 asked for, but this CPU has no native bf16 "
                               "(AVX-512 BF16 or AMX): use precision fp32")
        if threads is not None:
            torch.set_num_threads(threads)
        self.checkpoint = checkpoint
        self.device = torch.device(device)
        self.precision = precision
        self.input_size = tuple(checkpoint.input_size)
        self.model = checkpoint.build().to(self.device, memory_format=torch.channels_last)
        self._mean, self._std = checkpoint.mean, checkpoint.std
        self._autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> np.ndarray:
        assert image.shape[:2] == self.input_size, (
            f"segmenter expects {self.input_size} frames, got {image.shape[:2]}")
        x = torch.from_numpy(image[None])
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        x = normalize(x, self._mean, self._std)
        with torch.autocast(self.device.type, dtype=self._autocast_dtype or torch.float32,
                            enabled=self._autocast_dtype is not None):
            logits = self.model(x)  # (1, K, H, W)
        return logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()

    def describe(self) -> dict:
        return {"backend": self.name, "device": str(self.device), "precision": self.precision,
                "torch": torch.__version__, "threads": torch.get_num_threads()}
