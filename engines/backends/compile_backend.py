"""torch.compile's inductor, ahead of time: the deployable graph is exported and compiled by
AOTInductor into a self-contained package (.pt2 with the generated C++/Triton kernels), which
is what the engine cache stores. Loading it takes milliseconds, where a just-in-time
torch.compile costs 10-40 s at every start. On CUDA the package's kernels are replayed through
a captured CUDA graph, which removes the per-kernel launch cost that dominates small U-Nets.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from orstream.engines.backends.base import BackendError
from orstream.engines.backends.torch_backend import TorchPrecisions
from orstream.engines.checkpoint import Checkpoint
from orstream.engines.deploy import LabelNet, example_input

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class CompiledEngine(TorchPrecisions):
    name = "compile"
    artifact = "model.pt2"

    @classmethod
    def versions(cls) -> dict[str, str]:
        versions = {"torch": torch.__version__}
        if torch.cuda.is_available():
            versions["cuda"] = str(torch.version.cuda)
        return versions

    @classmethod
    def build(cls, checkpoint: Checkpoint, size: tuple[int, int], precision: str, device: str,
              out: Path) -> None:
        model = LabelNet(checkpoint, _DTYPES[precision]).to(device).eval()
        # Batch 1 is the live path; a fixed shape lets inductor specialise every kernel.
        example = (example_input(size, batch=1, device=device),)
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(model, example)
            torch._inductor.aoti_compile_and_package(program, package_path=str(out))

    def __init__(self, artifact: Path, size: tuple[int, int], precision: str,
                 device: str = "cpu", threads: int | None = None) -> None:
        super().__init__(artifact, size, precision, device, threads)
        if threads is not None:
            torch.set_num_threads(threads)
        self.runner = torch._inductor.aoti_load_package(str(artifact))
        self._graph: torch.cuda.CUDAGraph | None = None
        if device == "cuda":
            self._capture()

    def _capture(self) -> None:
        """Record one call into a CUDA graph over static buffers; `run` copies in and out."""
        self._static_in = example_input(self.input_size, batch=1, device="cuda")
        self._pinned_in = torch.empty(self._static_in.shape, dtype=torch.uint8).pin_memory()
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):  # warm up on a side stream, as CUDA graph capture requires
                self.runner(self._static_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph), torch.inference_mode():
                self._static_out = self.runner(self._static_in)
        except RuntimeError as exc:
            raise BackendError(f"CUDA graph capture of the compiled engine failed "
                               f"({str(exc).splitlines()[0][:200]}): use backend tensorrt or "
                               f"torch on cuda") from exc
        self._graph = graph

    @torch.inference_mode()
    def run(self, frames: np.ndarray) -> np.ndarray:
        if self._graph is not None and frames.shape[0] == 1:
            self._pinned_in.copy_(torch.from_numpy(frames))
            self._static_in.copy_(self._pinned_in, non_blocking=True)
            self._graph.replay()
            return self._static_out.cpu().numpy()
        return self.run_tensor(torch.from_numpy(frames).to(self.device)).cpu().numpy()

    @torch.inference_mode()
    def run_tensor(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 on the engine's device -> (N, H, W) uint8 there."""
        if self._graph is not None and frames.shape[0] == 1:
            self._static_in.copy_(frames)
            self._graph.replay()
            return self._static_out.clone()
        # The package is compiled for batch 1: a batch runs frame by frame.
        return torch.cat([self.runner(f[None]) for f in frames])
