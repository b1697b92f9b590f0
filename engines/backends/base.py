"""What every inference backend is: a model + input shape + precision made callable.

A backend class declares what it can serve (`check`), which library versions its engines
depend on (`versions`), how it builds an engine file from a checkpoint (`build`, for the
backends that compile ahead of time), and how a built engine runs (`__init__` + `run`).
Every backend is constructed the same way, `cls(artifact, size, precision, device, threads)`,
where the artifact is its cached engine file (the weights themselves for eager torch):
engines/export.py's open_engine is the one place that does it.
Asking for a device, precision or library the machine does not have raises BackendError
naming what it can do: a faster engine that silently computes in another precision, or on
another device, is worse than no engine.
"""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from orstream.common.errors import OrstreamError

if TYPE_CHECKING:
    from orstream.engines.checkpoint import Checkpoint

PRECISIONS = ("fp32", "bf16", "fp16", "int8")


class BackendError(OrstreamError, RuntimeError):
    """A backend, device or precision this machine cannot serve; says what it can do."""


@lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The instruction-set features that CPU inference kernels choose between. A model name does
# not pin them down: a hypervisor may hide AVX-512 from one "AMD EPYC" guest and show it to
# the next, and an engine (or an INT8 recipe) tuned for one set is wrong on the other.
ISA_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
                "amx_int8", "asimddp", "i8mm", "bf16")
# An 8-bit dot product that accumulates in 32 bits (x86 VNNI or AMX, Arm's dot product).
# Without one, x86 int8 kernels multiply u8 x s8 pairs into a saturating 16-bit sum.
INT8_DOT_FEATURES = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def parse_isa(cpuinfo: str) -> tuple[str, ...]:
    """The ISA_FEATURES present in a /proc/cpuinfo text, in ISA_FEATURES order."""
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            present = set(line.split(":", 1)[1].split())
            return tuple(f for f in ISA_FEATURES if f in present)
    return ()


@lru_cache(maxsize=1)
def cpu_isa() -> tuple[str, ...]:
    """This CPU's ISA_FEATURES (empty where /proc/cpuinfo cannot be read)."""
    try:
        return parse_isa(Path("/proc/cpuinfo").read_text())
    except OSError:
        return ()


def needs_reduced_int8_range(isa: tuple[str, ...] | None = None) -> bool:
    """True on x86 CPUs with no int8 dot-product instruction (AVX2 alone, or AVX-512 without
    VNNI): there the u8 x s8 pairs of an int8 convolution are summed in saturating 16-bit
    registers, and full-range weights overflow them. Measured on an AVX2-only AMD EPYC: the
    shipped U-Net's OpenVINO INT8 engine lost 2.2 Dice points with 8-bit weights and 0.02
    with 7-bit ones."""
    isa = cpu_isa() if isa is None else isa
    return "avx2" in isa and not set(isa) & set(INT8_DOT_FEATURES)


def device_name(device: str) -> str:
    """A device as the engine cache keys it: the GPU's name, or the CPU model with the ISA
    features its kernels depend on."""
    if device == "cuda":
        import torch

        return f"cuda:{torch.cuda.get_device_name(0)}"
    isa = cpu_isa()
    return f"cpu:{cpu_name()}" + (f" ({' '.join(isa)})" if isa else "")


def require_cuda(backend: str) -> None:
    import torch

    if not torch.cuda.is_available():
        raise BackendError(f"backend {backend} on device cuda asked for, but torch sees no CUDA "
                           f"device here: use device cpu (backends torch, compile, onnxruntime, "
                           f"openvino)")


def import_backend(module: str, backend: str, alternatives: str):
    """The library a backend runs on, or BackendError saying how to get it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendError(f"backend {backend} asked for, but {module} is not installed: "
                           f"pip install {module}, or use backend {alternatives}") from exc


def require_cpu(backend: str, device: str) -> None:
    if device != "cpu":
        raise BackendError(f"backend {backend} runs on the cpu here, not {device}: use "
                           f"backend tensorrt, compile or torch on cuda")


def refuse_precision(backend: str, precision: str, device: str,
                     served: tuple[str, ...]) -> None:
    if precision not in served:
        raise BackendError(f"precision {precision} is not served by the {backend} backend on "
                           f"{device}: choose {' or '.join(served)}")


class Engine:
    """A built engine: (N, H, W, 3) uint8 frames at `input_size` -> (N, H, W) uint8 labels."""

    name: ClassVar[str]
    artifact: ClassVar[str | None] = None  # engine file name in the cache; None: nothing built
    devices: ClassVar[tuple[str, ...]] = ("cpu",)

    input_size: tuple[int, int]
    precision: str
    device: str
    origin: Any = None  # set by engines.export.open_engine: how it was chosen, where from

    def __init__(self, artifact: Path, size: tuple[int, int], precision: str,
                 device: str = "cpu", threads: int | None = None) -> None:
        """Load `artifact` (the engine file, or the weights for eager torch) to run (H, W)
        `size` frames in `precision` on `device` with `threads` inference threads (None:
        the backend's default). Subclasses load, then call this."""
        self.input_size = (int(size[0]), int(size[1]))
        self.precision = precision
        self.device = device

    # ------------------------------------------------------------ what the machine serves
    @classmethod
    def check(cls, precision: str, device: str) -> None:
        """Raise BackendError unless this machine can serve `precision` on `device`."""
        raise NotImplementedError

    @classmethod
    def native_precisions(cls, device: str) -> tuple[str, ...]:
        """Float precisions this machine runs natively on `device`, fastest first; `auto`
        takes the first. int8 is never chosen automatically: it needs a calibrated engine."""
        return ("fp32",)

    @classmethod
    def versions(cls) -> dict[str, str]:
        """Library versions an engine file depends on (part of the cache key)."""
        raise NotImplementedError

    @classmethod
    def build(cls, checkpoint: Checkpoint, size: tuple[int, int], precision: str, device: str,
              out: Path) -> None:
        """Write the engine for this request to `out` (backends with an `artifact`)."""
        raise NotImplementedError(f"backend {cls.name} builds nothing ahead of time")

    # ------------------------------------------------------------------- running
    def run(self, frames: np.ndarray, inputs: dict[str, np.ndarray] | None = None
            ) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, H, W) uint8. `inputs`: the model's other inputs by name
        (TP-SIS: the prompt state, engines/tpsis_engine.py); None for a U-Net."""
        raise NotImplementedError

    def prepare(self, inputs: dict[str, np.ndarray]) -> None:
        """Get ready for frames with these other inputs (TP-SIS: a new prompt state), off the
        frame path. Most backends need nothing; OpenVINO compiles for their shapes."""

    def __call__(self, image: np.ndarray, inputs: dict[str, np.ndarray] | None = None
                 ) -> np.ndarray:
        """One (H, W, 3) uint8 frame -> (H, W) uint8 label map."""
        if image.shape[:2] != self.input_size:
            raise ValueError(f"{self.name} engine expects {self.input_size} frames, got "
                             f"{image.shape[:2]}")
        frames = np.ascontiguousarray(image)[None]
        return (self.run(frames) if inputs is None else self.run(frames, inputs))[0]

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": self.device, "precision": self.precision,
                "input": list(self.input_size), **self.versions()}
