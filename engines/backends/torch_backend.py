"""The torch backend: eager PyTorch, channels_last, fp32 or bf16 autocast on the CPU,
fp32, fp16 or bf16 on CUDA. It runs straight from the weights (nothing is compiled), and it
is the reference every other backend is checked against."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from orstream.engines.backends.base import BackendError, Engine, refuse_precision, require_cuda
from orstream.engines.preprocess import normalize
from orstream.engines.tpsis_checkpoint import TPSISCheckpoint, load_any

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
        checkpoint = load_any(artifact)
        self.checkpoint = checkpoint
        # TP-SIS: the prompt state comes with every call (engines/tpsis_engine.py).
        self.prompted = isinstance(checkpoint, TPSISCheckpoint)
        self._device = torch.device(device)
        self.model = checkpoint.build().to(self._device, memory_format=torch.channels_last)
        self._mean, self._std = checkpoint.mean, checkpoint.std
        self._autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    @torch.inference_mode()
    def run(self, frames: np.ndarray, inputs: dict[str, np.ndarray] | None = None
            ) -> np.ndarray:
        x = torch.from_numpy(frames)
        if self._device.type == "cuda":
            x = x.pin_memory().to(self._device, non_blocking=True)
        return self.run_tensor(x, inputs).cpu().numpy()

    @torch.inference_mode()
    def run_tensor(self, frames: torch.Tensor, inputs: dict[str, np.ndarray] | None = None
                   ) -> torch.Tensor:
        """(N, H, W, 3) uint8 already on the engine's device -> (N, H, W) uint8 there."""
        x = normalize(frames, self._mean, self._std)
        if self.prompted != (inputs is not None):
            raise ValueError("a TP-SIS engine takes the prompt state with every frame, a "
                             "U-Net none")
        with torch.autocast(self._device.type, dtype=self._autocast_dtype or torch.float32,
                            enabled=self._autocast_dtype is not None):
            if inputs is None:
                return self.model(x).argmax(dim=1).to(torch.uint8)  # (N, K, H, W) -> labels
            return self._prompted(x, inputs)

    def _prompted(self, x: torch.Tensor, inputs: dict[str, np.ndarray]) -> torch.Tensor:
        """What engines/deploy.py's PromptLabelNet computes, eagerly."""
        from orstream.engines.tpsis import PromptState, labels_from_logits, singleton_groups
        from orstream.engines.tpsis_engine import ENGINE_STATE

        arrays = [torch.from_numpy(inputs[n]).to(self._device) for n in ENGINE_STATE]
        groups = singleton_groups(len(inputs["bias"])).to(self._device)  # each its own
        return labels_from_logits(self.model(x, PromptState(*arrays, groups)).float())

    def describe(self) -> dict:
        return {**super().describe(), "threads": torch.get_num_threads()}
