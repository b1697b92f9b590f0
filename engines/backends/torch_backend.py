"""The torch backend: eager PyTorch, channels_last, fp32 or bf16 autocast on the CPU,
fp32, fp16 or bf16 on CUDA. It runs straight from the weights (nothing is compiled), and it
is the reference every other backend is checked against."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from orstream.engines.backends.base import BackendError, Engine, refuse_precision, require_cuda
from orstream.engines.checkpoint import load as load_checkpoint
from orstream.engines.preprocess import normalize

__all__ = ["BackendError", "TorchSegmenter", "cpu_bf16_supported"]


def cpu_bf16_supported() -> bool:
    """Native bf16 on this CPU (AVX-512 BF16 or AMX): otherwise autocast emulates it slowly."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class TorchPrecisions(Engine):
    """What torch itself serves on each device: shared by the eager and compiled backends."""

    devices = ("cpu", "cuda")

    @classmethod
    def check(cls, precision: str, device: str) -> None:
        if device == "cuda":
            require_cuda(cls.name)
        served = {"cpu": ("fp32", "bf16"), "cuda": ("fp32", "fp16", "bf16")}[device]
        refuse_precision(cls.name, precision, device, served)
        if device == "cpu" and precision == "bf16" and not cpu_bf16_supported():
            raise BackendError(f"precision bf16 asked for ({cls.name} backend), but this CPU "
                               f"has no native bf16 (AVX-512 BF16 or AMX): use precision fp32")

    @classmethod
    def native_precisions(cls, device: str) -> tuple[str, ...]:
        if device == "cuda":
            return ("fp16", "fp32")
        return ("bf16", "fp32") if cpu_bf16_supported() else ("fp32",)


class TorchSegmenter(TorchPrecisions):
    """Eager torch on (N, H, W, 3) uint8 frames."""

    name = "torch"

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {"torch": torch.__version__}

    def __init__(self, artifact: Path, size: tuple[int, int], precision: str = "fp32",
                 device: str = "cpu", threads: int | None = None) -> None:
        """`artifact`: the weights (a checkpoint file); eager torch compiles nothing."""
        self.check(precision, device)
        super().__init__(artifact, size, precision, device, threads)
        if threads is not None:
            torch.set_num_threads(threads)
        checkpoint = load_checkpoint(artifact)
        self.checkpoint = checkpoint
        self._device = torch.device(device)
        self.model = checkpoint.build().to(self._device, memory_format=torch.channels_last)
        self._mean, self._std = checkpoint.mean, checkpoint.std
        self._autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    @torch.inference_mode()
    def run(self, frames: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(frames)
        if self._device.type == "cuda":
            x = x.pin_memory().to(self._device, non_blocking=True)
        return self.run_tensor(x).cpu().numpy()

    @torch.inference_mode()
    def run_tensor(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 already on the engine's device -> (N, H, W) uint8 there."""
        x = normalize(frames, self._mean, self._std)
        with torch.autocast(self._device.type, dtype=self._autocast_dtype or torch.float32,
                            enabled=self._autocast_dtype is not None):
            logits = self.model(x)  # (N, K, H, W)
        return logits.argmax(dim=1).to(torch.uint8)

    def describe(self) -> dict:
        return {**super().describe(), "threads": torch.get_num_threads()}
